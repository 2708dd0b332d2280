//! Report folding from arbitrary adapter answers.
//!
//! A household of the simulated population is verified from the answers
//! the simulated agencies give for it, which the fuzzer then bends: any
//! source fails with any status (and may still carry answers it should not),
//! facts are dropped, duplicated, moved to strangers or to members who are
//! not active, given another source's kind, emptied, given odd as-of times,
//! and any scalar field of any fact is set to an extreme value (`i64::MAX`,
//! a negative amount, an unknown enum value, a very long string ...); fact
//! kinds may be withheld. Then [`hedui::report::fold`] must:
//!
//! - not panic (no overflow, no index out of range, on any amounts);
//! - read nothing from a source that did not answer: the report is the same
//!   when the answers of every failed source are removed;
//! - never decide an indicator on a missing answer: an indicator with an
//!   input source that gave no usable answer (none, or a household
//!   registration the household cannot be resolved from) is `INCONCLUSIVE`
//!   and names it in `missing_sources`, and names no other; the verdict is `FAIL` when an
//!   indicator fails, else `INCONCLUSIVE` when one is, else `REVIEW` when
//!   one needs review, else `PASS`;
//! - list every source once, and R1 to R9 once each, and encode.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use hedui::report::{
    FoldInput, Household, Policy, Resolution, SourceOutcome, fold, resolve_household,
};
use hedui_adapters::catalog::{Catalog, HOUSEHOLD_SOURCE, SourceSpec};
use hedui_mock_agencies::population::{Population, PopulationConfig};
use hedui_proto::v1::{
    Fact, FactKind, Outcome, PersonAnswer, Purpose, Report, SourceResult, SourceStatus,
    VerificationRequest,
};
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage as _, Value,
};

struct Fixture {
    population: Population,
    catalog: Catalog,
    policy: Policy,
    fact: MessageDescriptor,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pool = DescriptorPool::decode(hedui_proto::FILE_DESCRIPTOR_SET)
            .expect("the contract's descriptors decode");
        Fixture {
            population: Population::generate(&PopulationConfig {
                seed: 20_261_124,
                households: 300,
                today: chrono::NaiveDate::from_ymd_opt(2026, 11, 24).expect("a date"),
            }),
            catalog: Catalog::dachuan(),
            policy: Policy::dachuan(),
            fact: pool
                .get_message_by_name("hedui.v1.Fact")
                .expect("hedui.v1.Fact in the contract"),
        }
    })
}

const STATUSES: &[SourceStatus] = &[
    SourceStatus::Unspecified,
    SourceStatus::Timeout,
    SourceStatus::Unavailable,
    SourceStatus::Error,
    SourceStatus::NotQueried,
    SourceStatus::RateLimited,
    SourceStatus::CircuitOpen,
    SourceStatus::Pending,
];

fn answered(status: SourceStatus) -> bool {
    matches!(status, SourceStatus::Ok | SourceStatus::NoRecord)
}

fn as_of() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_795_000_000,
        nanos: 0,
    }
}

/// What the simulated agency answers about `persons`.
fn answers(spec: &SourceSpec, persons: &[String]) -> Vec<PersonAnswer> {
    let f = fixture();
    persons
        .iter()
        .map(|p| PersonAnswer {
            person_id: p.clone(),
            facts: f.population.facts_for(&spec.id, p, as_of()),
        })
        .collect()
}

fn outcome(spec: &SourceSpec, answers: Vec<PersonAnswer>) -> SourceOutcome {
    let facts: usize = answers.iter().map(|a| a.facts.len()).sum();
    let status = if facts > 0 {
        SourceStatus::Ok
    } else {
        SourceStatus::NoRecord
    };
    SourceOutcome {
        spec: std::sync::Arc::new(spec.clone()),
        result: SourceResult {
            source_id: spec.id.clone(),
            source_name: spec.name.clone(),
            status: status as i32,
            latency: Some(prost_types::Duration {
                seconds: 0,
                nanos: 1_000_000,
            }),
            as_of: Some(as_of()),
            fact_count: u32::try_from(facts).unwrap_or(u32::MAX),
            ..SourceResult::default()
        },
        answers: answers.into(),
    }
}

/// Sets one scalar field somewhere in `message` (at any depth) to a value
/// the fuzzer picks among the extremes of its type.
fn bend_field(u: &mut Unstructured<'_>, message: &mut DynamicMessage) -> AResult<()> {
    let fields: Vec<_> = message.descriptor().fields().collect();
    if fields.is_empty() {
        return Ok(());
    }
    let field = u.choose(&fields)?.clone();
    if field.is_list() || field.is_map() {
        message.clear_field(&field);
        return Ok(());
    }
    let value = match field.kind() {
        Kind::Message(_) => {
            let mut inner = message
                .get_field(&field)
                .as_message()
                .cloned()
                .unwrap_or_else(|| {
                    DynamicMessage::new(field.kind().as_message().expect("a message").clone())
                });
            bend_field(u, &mut inner)?;
            Value::Message(inner)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            let any: i64 = u.arbitrary()?;
            Value::I64(*u.choose(&[i64::MAX, i64::MIN, -1, 0, 1, i64::MAX / 2, any])?)
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            let any: i32 = u.arbitrary()?;
            Value::I32(*u.choose(&[i32::MAX, i32::MIN, -1, 0, 1, any])?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            let any: u64 = u.arbitrary()?;
            Value::U64(*u.choose(&[u64::MAX, 0, 1, any])?)
        }
        Kind::Uint32 | Kind::Fixed32 => {
            let any: u32 = u.arbitrary()?;
            Value::U32(*u.choose(&[u32::MAX, 0, 1, any])?)
        }
        Kind::Double => {
            let any: f64 = u.arbitrary()?;
            Value::F64(*u.choose(&[
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MAX,
                -1.0,
                0.0,
                any,
            ])?)
        }
        Kind::Float => {
            let any: f32 = u.arbitrary()?;
            Value::F32(*u.choose(&[f32::NAN, f32::INFINITY, -1.0, any])?)
        }
        Kind::Bool => Value::Bool(u.arbitrary()?),
        Kind::String => {
            let s: String = u.arbitrary()?;
            Value::String(match u.int_in_range(0..=2)? {
                0 => s,
                1 => String::new(),
                _ => "9".repeat(4096),
            })
        }
        Kind::Bytes => {
            let b: &[u8] = u.arbitrary()?;
            Value::Bytes(b.to_vec().into())
        }
        Kind::Enum(_) => {
            let any: i32 = u.arbitrary()?;
            Value::EnumNumber(*u.choose(&[-1, 0, 1, 2, 99, any])?)
        }
    };
    message.set_field(&field, value);
    Ok(())
}

/// Bends one fact.
fn bend_fact(u: &mut Unstructured<'_>, fact: &mut Fact) -> AResult<()> {
    match u.int_in_range(0..=4)? {
        0 => fact.value = None,
        1 => {
            fact.as_of = *u.choose(&[
                None,
                Some(prost_types::Timestamp {
                    seconds: i64::MIN,
                    nanos: -1,
                }),
                Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 999_999_999,
                }),
            ])?;
        }
        2 => {
            let id: String = u.arbitrary()?;
            fact.record_id = id;
        }
        _ => {
            let descriptor = fixture().fact.clone();
            let mut dynamic = DynamicMessage::decode(descriptor, fact.encode_to_vec().as_slice())
                .expect("a fact transcodes");
            bend_field(u, &mut dynamic)?;
            *fact = Fact::decode(dynamic.encode_to_vec().as_slice()).expect("a fact transcodes");
        }
    }
    Ok(())
}

/// Removes item `i`, or appends a copy of it.
fn drop_or_copy<T: Clone>(list: &mut Vec<T>, i: usize, copy: bool) {
    if copy {
        let item = list[i].clone();
        list.push(item);
    } else {
        list.remove(i);
    }
}

/// Bends a source's answers.
fn bend_answers(
    u: &mut Unstructured<'_>,
    answers: &mut Vec<PersonAnswer>,
    strangers: &[String],
) -> AResult<()> {
    for _ in 0..u.int_in_range(0..=6)? {
        if answers.is_empty() {
            answers.push(PersonAnswer {
                person_id: u.choose(strangers)?.clone(),
                facts: Vec::new(),
            });
        }
        let a = u.choose_index(answers.len())?;
        match u.int_in_range(0..=6)? {
            0 => drop_or_copy(answers, a, false),
            1 => drop_or_copy(answers, a, true),
            2 => answers[a].person_id = u.choose(strangers)?.clone(),
            3 => {
                let id: String = u.arbitrary()?;
                answers[a].person_id = id;
            }
            _ => {
                let facts = &mut answers[a].facts;
                if facts.is_empty() {
                    // A fact of any kind, from any source's answers.
                    let sources: Vec<&SourceSpec> = fixture().catalog.iter().collect();
                    let other = u.choose(&sources)?;
                    let person = u.choose(strangers)?;
                    facts.extend(
                        fixture()
                            .population
                            .facts_for(&other.id, person, as_of())
                            .into_iter()
                            .take(1),
                    );
                    continue;
                }
                let i = u.choose_index(facts.len())?;
                match u.int_in_range(0..=3)? {
                    0 => drop_or_copy(facts, i, false),
                    1 => drop_or_copy(facts, i, true),
                    _ => bend_fact(u, &mut facts[i])?,
                }
            }
        }
    }
    Ok(())
}

/// Whether to fail the source, and with what.
fn fail(u: &mut Unstructured<'_>, outcome: &mut SourceOutcome) -> AResult<bool> {
    if u.ratio(1, 4)? {
        let status = *u.choose(STATUSES)?;
        outcome.result.status = status as i32;
        outcome.result.detail = format!("fuzz: {}", status.as_str_name());
        outcome.result.fact_count = 0;
        return Ok(true);
    }
    if u.ratio(1, 8)? && !outcome.spec.fact_kinds.is_empty() {
        let kind = *u.choose(&outcome.spec.fact_kinds)?;
        outcome.result.withheld_fact_kinds.push(kind as i32);
    }
    Ok(false)
}

struct Case {
    request: VerificationRequest,
    household: Household,
    outcomes: Vec<SourceOutcome>,
    /// Indexes of the failed sources.
    failed: Vec<usize>,
}

fn case(u: &mut Unstructured<'_>) -> AResult<Case> {
    let f = fixture();
    let h = f
        .population
        .household_at(u.choose_index(f.population.len())?)
        .expect("a household");
    let members: Vec<String> = h.members().map(|p| p.id().to_owned()).collect();
    let applicant = u.choose(&members)?.clone();
    // Persons of other households, and the household's own members (active
    // or not), for answers about the wrong person.
    let mut strangers = members.clone();
    for _ in 0..3 {
        let other = f
            .population
            .household_at(u.choose_index(f.population.len())?)
            .expect("a household");
        strangers.push(other.applicant().id().to_owned());
    }
    let purpose = *u.choose(&[
        Purpose::DibaoApplication,
        Purpose::DibaoReview,
        Purpose::ExtremePoverty,
        Purpose::LowIncome,
        Purpose::TemporaryAssistance,
        Purpose::MedicalAssistance,
        Purpose::EducationAssistance,
    ])?;
    let request = VerificationRequest {
        applicant_id: applicant.clone(),
        consent_reference: "AUTH-FUZZ-1".into(),
        purpose: purpose as i32,
        operator_id: "op-fuzz".into(),
        ..VerificationRequest::default()
    };

    let mut failed = Vec::new();
    let household_spec = f.catalog.get(HOUSEHOLD_SOURCE).expect("household source");
    let mut first = answers(household_spec, std::slice::from_ref(&applicant));
    bend_answers(u, &mut first, &strangers)?;
    let mut household_outcome = outcome(household_spec, first);
    if fail(u, &mut household_outcome)? {
        failed.push(0);
    }
    let household = resolve_household(&applicant, &household_outcome);
    let mut outcomes = vec![household_outcome];
    for spec in f.catalog.iter().filter(|s| s.id != HOUSEHOLD_SOURCE) {
        let mut list = answers(spec, &household.active_ids);
        bend_answers(u, &mut list, &strangers)?;
        let mut o = outcome(spec, list);
        if fail(u, &mut o)? {
            failed.push(outcomes.len());
        }
        outcomes.push(o);
    }
    Ok(Case {
        request,
        household,
        outcomes,
        failed,
    })
}

fn folded(case: &Case, outcomes: &[SourceOutcome]) -> Report {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    fold(FoldInput {
        report_id: "fuzz".into(),
        request: &case.request,
        requested_at: at,
        completed_at: at + Duration::from_millis(30),
        today: chrono::NaiveDate::from_ymd_opt(2026, 11, 24).expect("a date"),
        policy: &fixture().policy,
        household: &case.household,
        outcomes,
    })
}

fn check(case: &Case, report: &Report) {
    // No usable answer: none, or a household-registration answer the
    // household could not be resolved from.
    let unusable = |id: &str| {
        let o = case
            .outcomes
            .iter()
            .find(|o| o.spec.id == id)
            .unwrap_or_else(|| panic!("indicator input {id} is not a source"));
        !answered(o.status())
            || (case.household.resolution == Resolution::Failed
                && o.spec.fact_kinds.contains(&FactKind::HouseholdRegistration))
    };
    let ids: Vec<&str> = report.indicators.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        ["R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9"],
        "indicators"
    );
    for i in &report.indicators {
        let missing: Vec<&str> = i
            .input_sources
            .iter()
            .map(String::as_str)
            .filter(|s| unusable(s))
            .collect();
        let named: Vec<&str> = i.missing_sources.iter().map(String::as_str).collect();
        assert_eq!(named, missing, "{}: missing_sources", i.id);
        if !missing.is_empty() {
            assert_eq!(
                i.outcome(),
                Outcome::Inconclusive,
                "{} decided without {missing:?}: {i:?}",
                i.id
            );
        }
        assert_ne!(i.outcome(), Outcome::Unspecified, "{}", i.id);
    }
    let any = |o: Outcome| report.indicators.iter().any(|i| i.outcome() == o);
    let verdict = if any(Outcome::Fail) {
        Outcome::Fail
    } else if any(Outcome::Inconclusive) {
        Outcome::Inconclusive
    } else if any(Outcome::Review) {
        Outcome::Review
    } else {
        Outcome::Pass
    };
    assert_eq!(report.verdict(), verdict, "{}", report.verdict_reason);
    let sources: Vec<&str> = report
        .sources
        .iter()
        .map(|s| s.source_id.as_str())
        .collect();
    let catalog: Vec<&str> = case.outcomes.iter().map(|o| o.spec.id.as_str()).collect();
    assert_eq!(sources, catalog, "sources");
    let bytes = report.encode_to_vec();
    assert_eq!(&Report::decode(bytes.as_slice()).expect("decodes"), report);
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(case) = case(&mut u) else {
        return;
    };
    let report = folded(&case, &case.outcomes);
    check(&case, &report);
    // A failed source's answers, which the fan-out never keeps, are never
    // read: without them the report is the same.
    if !case.failed.is_empty() {
        let mut cleared = case.outcomes.clone();
        for &i in &case.failed {
            cleared[i].answers = Default::default();
        }
        assert_eq!(
            folded(&case, &cleared),
            report,
            "a failed source's answers changed the report"
        );
    }
});
