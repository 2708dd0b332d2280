//! Builders of source outcomes and verifications for the report's unit tests.

use std::time::{Duration, SystemTime};

use chrono::NaiveDate;
use hedui_adapters::catalog::{Catalog, HOUSEHOLD_SOURCE, SourceSpec};
use hedui_proto::v1::{
    Fact, FactKind, HouseholdRegistration, HukouType, PersonAnswer, Purpose, RegisteredPerson,
    RegistrationStatus, Report, SourceResult, SourceStatus, VerificationRequest, fact,
};

use super::fold::{FoldInput, fold};
use super::household::{Household, SourceOutcome, resolve_household};
use super::policy::Policy;

pub(crate) const APPLICANT: &str = "511703198001010011";
pub(crate) const SPOUSE: &str = "511703198203040022";
pub(crate) const CHILD: &str = "511703201005060033";
pub(crate) const GRANDPA: &str = "511703194001010015";
pub(crate) const STRANGER: &str = "110101199001010099";

/// The as-of time of every fact: 2024-05-01T00:00:00Z.
pub(crate) fn as_of() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_714_521_600,
        nanos: 0,
    }
}

pub(crate) fn fact(record_id: &str, value: fact::Value) -> Fact {
    Fact {
        record_id: record_id.to_owned(),
        as_of: Some(as_of()),
        value: Some(value),
    }
}

pub(crate) fn registration(
    number: &str,
    hukou_type: HukouType,
    persons: &[(&str, RegistrationStatus)],
) -> HouseholdRegistration {
    HouseholdRegistration {
        household_number: number.to_owned(),
        region_code: "511703".to_owned(),
        hukou_type: hukou_type as i32,
        members: persons
            .iter()
            .map(|(id, status)| RegisteredPerson {
                person_id: (*id).to_owned(),
                name: format!("person {}", &id[14..]),
                status: *status as i32,
                ..RegisteredPerson::default()
            })
            .collect(),
    }
}

pub(crate) fn household_spec() -> SourceSpec {
    Catalog::dachuan()
        .get(HOUSEHOLD_SOURCE)
        .expect("household source in catalog")
        .clone()
}

pub(crate) fn result(spec: &SourceSpec, status: SourceStatus, fact_count: u32) -> SourceResult {
    let answered = matches!(status, SourceStatus::Ok | SourceStatus::NoRecord);
    SourceResult {
        source_id: spec.id.clone(),
        source_name: spec.name.clone(),
        status: status as i32,
        latency: Some(prost_types::Duration {
            seconds: 0,
            nanos: 5_000_000,
        }),
        as_of: answered.then(as_of),
        fact_count,
        from_cache: false,
        detail: if answered {
            String::new()
        } else {
            "test failure".to_owned()
        },
        withheld_fact_kinds: Vec::new(),
        aggregated_fact_kinds: Vec::new(),
    }
}

pub(crate) fn household_ok(applicant: &str, reg: HouseholdRegistration) -> SourceOutcome {
    let spec = household_spec();
    SourceOutcome {
        result: result(&spec, SourceStatus::Ok, 1),
        answers: vec![PersonAnswer {
            person_id: applicant.to_owned(),
            facts: vec![fact("hr-1", fact::Value::HouseholdRegistration(reg))],
        }]
        .into(),
        spec: spec.into(),
    }
}

pub(crate) fn household_status(status: SourceStatus) -> SourceOutcome {
    let spec = household_spec();
    SourceOutcome {
        result: result(&spec, status, 0),
        answers: std::sync::Arc::default(),
        spec: spec.into(),
    }
}

pub(crate) fn spec(id: &str, kinds: &[FactKind]) -> SourceSpec {
    SourceSpec {
        id: id.to_owned(),
        name: format!("{id} (test)"),
        fact_kinds: kinds.to_vec(),
    }
}

/// A whole verification: the Dachuan catalog, the household source answered
/// as given, every other source answering "no record" for every active
/// member until facts are added.
pub(crate) struct Scenario {
    pub(crate) outcomes: Vec<SourceOutcome>,
    pub(crate) household: Household,
    pub(crate) request: VerificationRequest,
    pub(crate) policy: Policy,
    pub(crate) today: NaiveDate,
    next_record: u32,
}

impl Scenario {
    /// A registered household of these persons (the applicant first).
    pub(crate) fn registered(
        hukou_type: HukouType,
        persons: &[(&str, RegistrationStatus)],
    ) -> Self {
        Self::with_household(household_ok(
            APPLICANT,
            registration("H0001", hukou_type, persons),
        ))
    }

    /// An urban household of the applicant and the spouse, both active.
    pub(crate) fn couple() -> Self {
        Self::registered(
            HukouType::Urban,
            &[
                (APPLICANT, RegistrationStatus::Active),
                (SPOUSE, RegistrationStatus::Active),
            ],
        )
    }

    /// The household source's outcome given; the household is resolved from
    /// it and every other source answers "no record".
    pub(crate) fn with_household(household_outcome: SourceOutcome) -> Self {
        let household = resolve_household(APPLICANT, &household_outcome);
        let mut outcomes = vec![household_outcome];
        for spec in Catalog::dachuan()
            .iter()
            .filter(|s| s.id != HOUSEHOLD_SOURCE)
        {
            outcomes.push(no_record(spec.clone(), &household.active_ids));
        }
        Scenario {
            outcomes,
            household,
            request: VerificationRequest {
                applicant_id: APPLICANT.to_owned(),
                consent_reference: "AUTH-2024-0001".to_owned(),
                purpose: Purpose::DibaoApplication as i32,
                operator_id: "op-7".to_owned(),
                ..VerificationRequest::default()
            },
            policy: Policy::dachuan(),
            today: NaiveDate::from_ymd_opt(2024, 5, 10).expect("valid date"),
            next_record: 0,
        }
    }

    pub(crate) fn outcome_mut(&mut self, source_id: &str) -> &mut SourceOutcome {
        self.outcomes
            .iter_mut()
            .find(|o| o.spec.id == source_id)
            .unwrap_or_else(|| panic!("no source {source_id}"))
    }

    /// Adds a fact about a person at a source, which then answers OK; returns
    /// the record id.
    pub(crate) fn add(&mut self, source_id: &str, person_id: &str, value: fact::Value) -> String {
        self.next_record += 1;
        let record_id = format!("{source_id}-{}", self.next_record);
        self.add_record(source_id, person_id, &record_id, value);
        record_id
    }

    /// Adds a fact with a given record id.
    pub(crate) fn add_record(
        &mut self,
        source_id: &str,
        person_id: &str,
        record_id: &str,
        value: fact::Value,
    ) {
        let outcome = self.outcome_mut(source_id);
        let f = fact(record_id, value);
        let answers = std::sync::Arc::make_mut(&mut outcome.answers);
        match answers.iter_mut().find(|a| a.person_id == person_id) {
            Some(answer) => answer.facts.push(f),
            None => answers.push(PersonAnswer {
                person_id: person_id.to_owned(),
                facts: vec![f],
            }),
        }
        outcome.result.status = SourceStatus::Ok as i32;
        outcome.result.fact_count += 1;
    }

    /// Sets a source's status; a failed source keeps no answers.
    pub(crate) fn set_status(&mut self, source_id: &str, status: SourceStatus) {
        let outcome = self.outcome_mut(source_id);
        let spec = outcome.spec.clone();
        outcome.result = result(&spec, status, 0);
        if !matches!(status, SourceStatus::Ok | SourceStatus::NoRecord) {
            outcome.answers = std::sync::Arc::default();
        }
    }

    /// Adds a source to the verification (after the catalog's), answering
    /// "no record".
    pub(crate) fn add_source(&mut self, spec: SourceSpec) {
        let outcome = no_record(spec, &self.household.active_ids);
        self.outcomes.push(outcome);
    }

    pub(crate) fn purpose(&mut self, purpose: Purpose) -> &mut Self {
        self.request.purpose = purpose as i32;
        self
    }

    pub(crate) fn fold(&self) -> Report {
        let requested_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_715_300_000);
        fold(FoldInput {
            report_id: "report-1".to_owned(),
            request: &self.request,
            requested_at,
            completed_at: requested_at + Duration::from_millis(1500),
            today: self.today,
            policy: &self.policy,
            household: &self.household,
            outcomes: &self.outcomes,
        })
    }
}

fn no_record(spec: SourceSpec, persons: &[String]) -> SourceOutcome {
    SourceOutcome {
        result: result(&spec, SourceStatus::NoRecord, 0),
        answers: persons
            .iter()
            .map(|p| PersonAnswer {
                person_id: p.clone(),
                facts: Vec::new(),
            })
            .collect::<Vec<_>>()
            .into(),
        spec: spec.into(),
    }
}
