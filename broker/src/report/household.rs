//! The household a verification is about, as resolved from the
//! household-registration source before the fan-out.
//!
//! The applicant's `HouseholdRegistration` gives the members; the active ones
//! are asked about by every other source and are the divisor `n` of per-capita
//! figures. When the source holds no registration of the applicant, or cannot
//! be used, the household is the applicant alone (see `docs/policy.md`).

use std::{collections::BTreeSet, sync::Arc};

use hedui_adapters::catalog::SourceSpec;
use hedui_proto::v1::{
    FactKind, HouseholdRegistration, HukouType, Member, PersonAnswer, RegistrationStatus,
    SourceResult, SourceStatus, fact,
};

/// What one source answered for one verification, with its catalog entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceOutcome {
    /// The source (shared: every outcome of the source holds the same).
    pub spec: Arc<SourceSpec>,
    /// Its result as the report lists it.
    pub result: SourceResult,
    /// Its answers, one per person asked about; present only when
    /// `result.status` is `OK` or `NO_RECORD`. Shared with the cache that
    /// served them: `Arc::make_mut` copies them before a change.
    pub answers: Arc<Vec<PersonAnswer>>,
}

impl SourceOutcome {
    /// The source's status (`UNSPECIFIED` for a value out of range).
    pub fn status(&self) -> SourceStatus {
        self.result.status()
    }

    /// Whether the source answered (`OK` or `NO_RECORD`).
    pub fn answered(&self) -> bool {
        matches!(self.status(), SourceStatus::Ok | SourceStatus::NoRecord)
    }

    /// Whether the source serves any of these fact kinds.
    pub fn serves_any(&self, kinds: &[FactKind]) -> bool {
        self.spec.fact_kinds.iter().any(|k| kinds.contains(k))
    }
}

/// How the household was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The applicant's registration was found; the members are its persons.
    Registered,
    /// The source answered and holds no registration of the applicant: the
    /// household is the applicant alone and the standard is unknown.
    NotRegistered,
    /// The source did not answer, or answered something that cannot be used:
    /// the household is the applicant alone and nothing that needs the
    /// register can be concluded.
    Failed,
}

/// The household as resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Household {
    /// How it was resolved.
    pub resolution: Resolution,
    /// Why it could not be resolved, for [`Resolution::Failed`] (and the
    /// reason for [`Resolution::NotRegistered`]); empty when registered.
    pub detail: String,
    /// Household register number; empty unless registered.
    pub household_number: String,
    /// GB/T 2260 code of the county of registration; empty unless registered.
    pub region_code: String,
    /// Urban or rural registration; unspecified unless registered.
    pub hukou_type: HukouType,
    /// Everyone in the register with their status, or the applicant alone.
    pub members: Vec<Member>,
    /// Resident identity numbers of the active members, in register order:
    /// the persons every other source is asked about.
    pub active_ids: Vec<String>,
}

impl Household {
    /// The household of the applicant alone, active, with nothing else known.
    pub fn applicant_alone(applicant_id: &str, resolution: Resolution, detail: String) -> Self {
        Household {
            resolution,
            detail,
            household_number: String::new(),
            region_code: String::new(),
            hukou_type: HukouType::Unspecified,
            members: vec![Member {
                person_id: applicant_id.to_owned(),
                status: RegistrationStatus::Active as i32,
                ..Member::default()
            }],
            active_ids: vec![applicant_id.to_owned()],
        }
    }

    /// Number of active members, the divisor of per-capita figures.
    pub fn active_count(&self) -> usize {
        self.active_ids.len()
    }

    /// Whether the person is an active member.
    pub fn is_active(&self, person_id: &str) -> bool {
        self.active_ids.iter().any(|id| id == person_id)
    }
}

/// Resolves the applicant's household from the household source's outcome.
///
/// - `NO_RECORD`, or an answer for the applicant without a registration:
///   [`Resolution::NotRegistered`].
/// - `TIMEOUT`, `UNAVAILABLE`, `ERROR`, `NOT_QUERIED` (or no status):
///   [`Resolution::Failed`].
/// - `OK` with exactly one registration that lists the applicant:
///   [`Resolution::Registered`], members from the register.
/// - `OK` with an answer that cannot be used: [`Resolution::Failed`]. Such an
///   answer is one without an answer for the applicant, from a source that
///   does not serve household registration, with two or more registrations
///   (which one is the household cannot be told), with a registration that
///   does not list the applicant (the register would describe somebody
///   else's household, and its members would be asked about and counted on
///   the applicant's consent), or with a person listed twice (the divisor
///   `n` would be wrong).
pub fn resolve_household(applicant_id: &str, outcome: &SourceOutcome) -> Household {
    let failed =
        |detail: String| Household::applicant_alone(applicant_id, Resolution::Failed, detail);
    let source = &outcome.spec.id;
    match outcome.status() {
        SourceStatus::Ok => {}
        SourceStatus::NoRecord => {
            return Household::applicant_alone(
                applicant_id,
                Resolution::NotRegistered,
                format!("{source}: no household registration of the applicant"),
            );
        }
        status => {
            let why = status_words(status);
            let detail = if outcome.result.detail.is_empty() {
                format!("{source}: {why}")
            } else {
                format!("{source}: {why}: {}", outcome.result.detail)
            };
            return failed(detail);
        }
    }
    if !outcome
        .spec
        .fact_kinds
        .contains(&FactKind::HouseholdRegistration)
    {
        return failed(format!("{source}: does not serve household registration"));
    }
    let Some(answer) = outcome.answers.iter().find(|a| a.person_id == applicant_id) else {
        return failed(format!("{source}: no answer for the applicant"));
    };
    let registrations: Vec<&HouseholdRegistration> = answer
        .facts
        .iter()
        .filter_map(|f| match &f.value {
            Some(fact::Value::HouseholdRegistration(r)) => Some(r),
            _ => None,
        })
        .collect();
    let registration = match registrations.as_slice() {
        [] => {
            return Household::applicant_alone(
                applicant_id,
                Resolution::NotRegistered,
                format!("{source}: no household registration of the applicant"),
            );
        }
        [one] => *one,
        many => {
            return failed(format!(
                "{source}: {} household registrations for the applicant",
                many.len()
            ));
        }
    };
    if !registration
        .members
        .iter()
        .any(|m| m.person_id == applicant_id)
    {
        return failed(format!(
            "{source}: household {} does not list the applicant",
            registration.household_number
        ));
    }
    let mut seen = BTreeSet::new();
    if let Some(twice) = registration
        .members
        .iter()
        .find(|m| !seen.insert(m.person_id.as_str()))
    {
        return failed(format!(
            "{source}: household {} lists person {} twice",
            registration.household_number, twice.person_id
        ));
    }

    let hukou_type = registration.hukou_type();
    let members: Vec<Member> = registration
        .members
        .iter()
        .map(|p| Member {
            person_id: p.person_id.clone(),
            name: p.name.clone(),
            relation: p.relation,
            hukou_type: hukou_type as i32,
            sex: p.sex,
            birth_date: p.birth_date,
            status: p.status,
        })
        .collect();
    let active_ids = registration
        .members
        .iter()
        .filter(|p| p.status() == RegistrationStatus::Active)
        .map(|p| p.person_id.clone())
        .collect();
    Household {
        resolution: Resolution::Registered,
        detail: String::new(),
        household_number: registration.household_number.clone(),
        region_code: registration.region_code.clone(),
        hukou_type,
        members,
        active_ids,
    }
}

/// A source status in words, e.g. `"timeout"`.
pub fn status_words(status: SourceStatus) -> &'static str {
    match status {
        SourceStatus::Unspecified => "no status",
        SourceStatus::Ok => "answered",
        SourceStatus::NoRecord => "no record",
        SourceStatus::Timeout => "timeout",
        SourceStatus::Unavailable => "unavailable",
        SourceStatus::Error => "error",
        SourceStatus::NotQueried => "not queried",
        SourceStatus::RateLimited => "rate limited",
        SourceStatus::CircuitOpen => "circuit breaker open",
        SourceStatus::Pending => "pending",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testkit::*;

    #[test]
    fn registered_household_lists_everyone_and_counts_the_active() {
        let reg = registration(
            "H1",
            HukouType::Rural,
            &[
                (APPLICANT, RegistrationStatus::Active),
                (SPOUSE, RegistrationStatus::Active),
                (GRANDPA, RegistrationStatus::Deceased),
            ],
        );
        let h = resolve_household(APPLICANT, &household_ok(APPLICANT, reg));
        assert_eq!(h.resolution, Resolution::Registered);
        assert_eq!(h.household_number, "H1");
        assert_eq!(h.region_code, "511703");
        assert_eq!(h.hukou_type, HukouType::Rural);
        assert_eq!(h.members.len(), 3);
        assert!(h.members.iter().all(|m| m.hukou_type() == HukouType::Rural));
        assert_eq!(h.members[2].status(), RegistrationStatus::Deceased);
        assert_eq!(h.active_ids, [APPLICANT, SPOUSE]);
        assert_eq!(h.active_count(), 2);
        assert!(h.detail.is_empty());
    }

    #[test]
    fn no_record_means_the_applicant_alone_not_registered() {
        let h = resolve_household(APPLICANT, &household_status(SourceStatus::NoRecord));
        assert_eq!(h.resolution, Resolution::NotRegistered);
        assert_eq!(h.members.len(), 1);
        assert_eq!(h.members[0].person_id, APPLICANT);
        assert_eq!(h.members[0].status(), RegistrationStatus::Active);
        assert_eq!(h.members[0].relation, 0);
        assert_eq!(h.hukou_type, HukouType::Unspecified);
        assert_eq!(h.active_ids, [APPLICANT]);

        // An answer for the applicant without any registration is the same.
        let mut o = household_ok(APPLICANT, registration("H1", HukouType::Urban, &[]));
        Arc::make_mut(&mut o.answers)[0].facts.clear();
        assert_eq!(
            resolve_household(APPLICANT, &o).resolution,
            Resolution::NotRegistered
        );
    }

    #[test]
    fn failures_mean_the_applicant_alone_failed() {
        for status in [
            SourceStatus::Timeout,
            SourceStatus::Unavailable,
            SourceStatus::Error,
            SourceStatus::NotQueried,
            SourceStatus::Unspecified,
        ] {
            let h = resolve_household(APPLICANT, &household_status(status));
            assert_eq!(h.resolution, Resolution::Failed, "{status:?}");
            assert_eq!(h.active_ids, [APPLICANT]);
            assert!(h.detail.starts_with("public-security: "), "{}", h.detail);
        }
        let mut o = household_status(SourceStatus::Timeout);
        o.result.detail = "deadline of 2s passed".into();
        assert_eq!(
            resolve_household(APPLICANT, &o).detail,
            "public-security: timeout: deadline of 2s passed"
        );
    }

    #[test]
    fn unusable_answers_fail() {
        // The register does not list the applicant.
        let other = registration(
            "H9",
            HukouType::Urban,
            &[(SPOUSE, RegistrationStatus::Active)],
        );
        let h = resolve_household(APPLICANT, &household_ok(APPLICANT, other));
        assert_eq!(h.resolution, Resolution::Failed);
        assert_eq!(
            h.detail,
            "public-security: household H9 does not list the applicant"
        );
        assert_eq!(h.active_ids, [APPLICANT]);

        // Two registrations.
        let reg = registration(
            "H1",
            HukouType::Urban,
            &[(APPLICANT, RegistrationStatus::Active)],
        );
        let mut o = household_ok(APPLICANT, reg.clone());
        let second = o.answers[0].facts[0].clone();
        Arc::make_mut(&mut o.answers)[0].facts.push(second);
        let h = resolve_household(APPLICANT, &o);
        assert_eq!(h.resolution, Resolution::Failed);
        assert_eq!(
            h.detail,
            "public-security: 2 household registrations for the applicant"
        );

        // A person listed twice.
        let twice = registration(
            "H1",
            HukouType::Urban,
            &[
                (APPLICANT, RegistrationStatus::Active),
                (SPOUSE, RegistrationStatus::Active),
                (SPOUSE, RegistrationStatus::Active),
            ],
        );
        let h = resolve_household(APPLICANT, &household_ok(APPLICANT, twice));
        assert_eq!(h.resolution, Resolution::Failed);

        // No answer for the applicant.
        let h = resolve_household(SPOUSE, &household_ok(APPLICANT, reg.clone()));
        assert_eq!(h.resolution, Resolution::Failed);
        assert_eq!(h.active_ids, [SPOUSE]);

        // A source that does not serve household registration.
        let mut o = household_ok(APPLICANT, reg);
        Arc::make_mut(&mut o.spec).fact_kinds = vec![FactKind::Vehicle];
        assert_eq!(
            resolve_household(APPLICANT, &o).resolution,
            Resolution::Failed
        );
    }
}
