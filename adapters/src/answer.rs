//! Checks an answer against its request before the broker trusts it: a
//! source is outside the broker's control, and a wrong answer must become a
//! named error, not a wrong report.

use std::collections::HashMap;

use hedui_proto::v1::{FactKind, LookupRequest, LookupResponse};
use prost::Message;

use crate::{AdapterError, grpc::MAX_ANSWER_BYTES, values::check_fact_values};

/// Largest number of facts accepted about one person in one answer.
pub const MAX_FACTS_PER_PERSON: usize = 1_000;

/// The persons a request asks about, each once, in the order asked.
pub fn distinct_person_ids(request: &LookupRequest) -> Vec<String> {
    AskedPersons::new(&request.person_ids)
        .first_mentions()
        .cloned()
        .collect()
}

/// Checks that `response` answers `request`: every person asked about
/// appears exactly once, nobody else appears, every fact has a value and an
/// as-of time, every fact is of a kind in `served` (when not empty) and in
/// the kinds asked for (when the request names any), and every value is
/// possible (no negative money or area, no enum value the contract does not
/// define, no impossible date). The answer's encoding is at most
/// [`MAX_ANSWER_BYTES`], whatever the transport (a remote gRPC source cannot
/// send more; an in-process or mapped one may not hand over more either).
///
/// # Errors
/// [`AdapterError::Malformed`] naming the first problem found.
pub fn check_answer(
    request: &LookupRequest,
    response: &LookupResponse,
    served: &[FactKind],
) -> Result<(), AdapterError> {
    let bytes = response.encoded_len();
    if bytes > MAX_ANSWER_BYTES {
        return Err(AdapterError::Malformed(format!(
            "answer of {bytes} bytes, at most {MAX_ANSWER_BYTES} accepted"
        )));
    }
    let asked = AskedPersons::new(&request.person_ids);
    // Who has been answered, by the place of their first mention.
    let mut seen = vec![false; request.person_ids.len()];
    let mut answered = 0;
    let wanted: Vec<FactKind> = request.fact_kinds().collect();
    for answer in &response.answers {
        let Some(at) = asked.position(&answer.person_id) else {
            return Err(AdapterError::Malformed(
                "answer about a person not asked about".into(),
            ));
        };
        if std::mem::replace(&mut seen[at], true) {
            return Err(AdapterError::Malformed("a person is answered twice".into()));
        }
        answered += 1;
        if answer.facts.len() > MAX_FACTS_PER_PERSON {
            return Err(AdapterError::Malformed(format!(
                "{} facts about one person, at most {MAX_FACTS_PER_PERSON} accepted",
                answer.facts.len()
            )));
        }
        for fact in &answer.facts {
            let Some(value) = &fact.value else {
                return Err(AdapterError::Malformed("a fact has no value".into()));
            };
            if fact.as_of.is_none() {
                return Err(AdapterError::Malformed("a fact has no as-of time".into()));
            }
            let kind = value.kind();
            check_fact_values(fact)
                .map_err(|e| AdapterError::Malformed(format!("fact {:?}: {e}", fact.record_id)))?;
            if !served.is_empty() && !served.contains(&kind) {
                return Err(AdapterError::Malformed(format!(
                    "fact of kind {} which the source does not serve",
                    kind.as_str_name()
                )));
            }
            if !wanted.is_empty() && !wanted.contains(&kind) {
                return Err(AdapterError::Malformed(format!(
                    "fact of kind {} which was not asked for",
                    kind.as_str_name()
                )));
            }
        }
    }
    // Each answer took a different first mention: as many answers as ids
    // means every id was distinct and answered.
    if answered == request.person_ids.len() {
        return Ok(());
    }
    let distinct = asked.distinct();
    if answered != distinct {
        return Err(AdapterError::Malformed(format!(
            "{} of {distinct} persons asked about are not answered",
            distinct - answered,
        )));
    }
    Ok(())
}

/// The persons a request asks about, found by the place of their first
/// mention. A household has a handful of members, and comparing a handful
/// of ids costs less than hashing each (every answer of every source is
/// checked); a request about many persons gets a hash map.
#[derive(Debug)]
pub struct AskedPersons<'a> {
    ids: &'a [String],
    /// For a long request: each id's first mention.
    many: Option<HashMap<&'a str, usize>>,
}

impl<'a> AskedPersons<'a> {
    /// Up to this many ids are searched in order.
    pub const FEW: usize = 16;

    /// The persons `ids` names.
    pub fn new(ids: &'a [String]) -> Self {
        let many = (ids.len() > Self::FEW).then(|| {
            let mut map = HashMap::with_capacity(ids.len());
            for (at, id) in ids.iter().enumerate() {
                map.entry(id.as_str()).or_insert(at);
            }
            map
        });
        AskedPersons { ids, many }
    }

    /// Where `id` is first mentioned, if it is.
    pub fn position(&self, id: &str) -> Option<usize> {
        match &self.many {
            None => self.ids.iter().position(|asked| asked == id),
            Some(map) => map.get(id).copied(),
        }
    }

    /// Each id once, at its first mention.
    pub fn first_mentions(&self) -> impl Iterator<Item = &'a String> + '_ {
        self.ids
            .iter()
            .enumerate()
            .filter(|(at, id)| self.position(id) == Some(*at))
            .map(|(_, id)| id)
    }

    /// How many different persons are asked about.
    pub fn distinct(&self) -> usize {
        match &self.many {
            None => self.first_mentions().count(),
            Some(map) => map.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use hedui_proto::v1::{Fact, PersonAnswer, Vehicle, fact::Value};

    use super::*;

    fn request(ids: &[&str]) -> LookupRequest {
        LookupRequest {
            person_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn vehicle_fact() -> Fact {
        Fact {
            record_id: "r1".into(),
            as_of: Some(prost_types::Timestamp::default()),
            value: Some(Value::Vehicle(Vehicle::default())),
        }
    }

    fn answer(id: &str, facts: Vec<Fact>) -> PersonAnswer {
        PersonAnswer {
            person_id: id.into(),
            facts,
        }
    }

    #[test]
    fn accepts_a_complete_answer() {
        let resp = LookupResponse {
            answers: vec![answer("a", vec![vehicle_fact()]), answer("b", vec![])],
            as_of: None,
        };
        check_answer(&request(&["a", "b"]), &resp, &[FactKind::Vehicle]).unwrap();
    }

    #[test]
    fn refuses_missing_extra_and_duplicate_persons() {
        let req = request(&["a", "b"]);
        let missing = LookupResponse {
            answers: vec![answer("a", vec![])],
            as_of: None,
        };
        assert!(check_answer(&req, &missing, &[]).is_err());
        let extra = LookupResponse {
            answers: vec![
                answer("a", vec![]),
                answer("b", vec![]),
                answer("c", vec![]),
            ],
            as_of: None,
        };
        assert!(check_answer(&req, &extra, &[]).is_err());
        let twice = LookupResponse {
            answers: vec![answer("a", vec![]), answer("a", vec![])],
            as_of: None,
        };
        assert!(check_answer(&req, &twice, &[]).is_err());
    }

    #[test]
    fn persons_are_matched_in_short_and_long_requests_alike() {
        // Below and above the length where ids are hashed; each request
        // names its first person twice.
        for n in [3, AskedPersons::FEW + 5] {
            let ids: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            let mut asked: Vec<&str> = ids.iter().map(String::as_str).collect();
            asked.push("p0");
            let req = request(&asked);
            let each = |ids: &[String]| LookupResponse {
                answers: ids.iter().rev().map(|id| answer(id, vec![])).collect(),
                as_of: None,
            };
            check_answer(&req, &each(&ids), &[]).unwrap();
            let message = |r: Result<(), AdapterError>| match r {
                Err(AdapterError::Malformed(m)) => m,
                other => panic!("{n} persons: {other:?}"),
            };
            assert_eq!(
                message(check_answer(&req, &each(&ids[1..]), &[])),
                format!("1 of {n} persons asked about are not answered")
            );
            let mut twice = each(&ids);
            twice.answers.push(answer("p1", vec![]));
            assert_eq!(
                message(check_answer(&req, &twice, &[])),
                "a person is answered twice"
            );
            let mut stranger = each(&ids);
            stranger.answers[1].person_id = "q".into();
            assert_eq!(
                message(check_answer(&req, &stranger, &[])),
                "answer about a person not asked about"
            );
        }
    }

    #[test]
    fn refuses_kinds_not_served_and_empty_facts() {
        let req = request(&["a"]);
        let resp = LookupResponse {
            answers: vec![answer("a", vec![vehicle_fact()])],
            as_of: None,
        };
        let err = check_answer(&req, &resp, &[FactKind::Dwelling]).unwrap_err();
        assert!(err.to_string().contains("FACT_KIND_VEHICLE"), "{err}");
        let empty = LookupResponse {
            answers: vec![answer("a", vec![Fact::default()])],
            as_of: None,
        };
        assert!(check_answer(&req, &empty, &[]).is_err());
    }

    #[test]
    fn refuses_oversized_answers() {
        let req = request(&["a"]);
        // Too many facts about one person.
        let many = LookupResponse {
            answers: vec![answer("a", vec![vehicle_fact(); MAX_FACTS_PER_PERSON + 1])],
            as_of: None,
        };
        let err = check_answer(&req, &many, &[FactKind::Vehicle]).unwrap_err();
        assert!(matches!(err, AdapterError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("facts about one person"), "{err}");
        // As many as accepted is accepted.
        let limit = LookupResponse {
            answers: vec![answer("a", vec![vehicle_fact(); MAX_FACTS_PER_PERSON])],
            as_of: None,
        };
        check_answer(&req, &limit, &[FactKind::Vehicle]).unwrap();
        // One huge field, within the per-person count.
        let mut huge = vehicle_fact();
        huge.record_id = "x".repeat(MAX_ANSWER_BYTES);
        let big = LookupResponse {
            answers: vec![answer("a", vec![huge])],
            as_of: None,
        };
        let err = check_answer(&req, &big, &[FactKind::Vehicle]).unwrap_err();
        assert!(matches!(err, AdapterError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("bytes, at most"), "{err}");
        // Many ordinary-sized facts, each person within the count, over the
        // bytes in total.
        let mut wide = vehicle_fact();
        wide.record_id = "y".repeat(20 * 1024);
        let ids: Vec<String> = (0..2).map(|i| format!("p{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let total = LookupResponse {
            answers: ids
                .iter()
                .map(|id| answer(id, vec![wide.clone(); MAX_FACTS_PER_PERSON / 2]))
                .collect(),
            as_of: None,
        };
        let err = check_answer(&request(&ids), &total, &[FactKind::Vehicle]).unwrap_err();
        assert!(err.to_string().contains("bytes, at most"), "{err}");
    }
}
