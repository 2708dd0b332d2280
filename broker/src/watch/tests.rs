//! Households under management against the in-process simulated agencies.

use hedui_mock_agencies::{
    population::{Population, PopulationConfig},
    truth::TruthPolicy,
};
use hedui_proto::v1::{ChangeKind, Outcome, Purpose, VerificationRequest};

use super::*;
use crate::config::Config;

const HOUSEHOLDS: usize = 60;

async fn built() -> crate::app::Built {
    let config = Config::parse(
        &format!(
            "[store]\npath = ':memory:'\n[changes]\ntransport = 'none'\n[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n"
        ),
        "test.toml",
    )
    .unwrap();
    crate::app::build(&config).await.unwrap()
}

fn review(applicant: &str) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant.into(),
        consent_reference: "SQ-2026-REVIEW".into(),
        purpose: Purpose::DibaoReview as i32,
        operator_id: "case-worker-07".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_car_for_a_member_raises_one_alert_naming_the_change() {
    let b = built().await;
    let watch = Watch::new(b.verifier.clone());
    let truths = Population::generate(&PopulationConfig {
        seed: hedui_mock_agencies::population::DEFAULT_SEED,
        households: HOUSEHOLDS,
        today: crate::time::china_date(),
    })
    .truth(&TruthPolicy::default());
    let caller = Caller::new("platform-a");
    // A household that passes, with more than one member.
    let (truth, enrolment, baseline) = {
        let mut found = None;
        for t in truths.iter().filter(|t| t.member_ids.len() > 1) {
            let (id, report) = watch
                .enrol(&caller, Some(review(&t.applicant_id)))
                .await
                .unwrap();
            if report.verdict == Outcome::Pass as i32 {
                found = Some((t.clone(), id, report));
                break;
            }
        }
        found.expect("a passing household")
    };
    let member = truth
        .member_ids
        .iter()
        .find(|m| **m != truth.applicant_id)
        .unwrap()
        .clone();
    let event = b
        .simulated
        .simulate_change(&member, ChangeKind::VehicleRegistered)
        .unwrap();
    let alerts = watch.on_event(&event).await.unwrap();
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!(a.enrolment_id, enrolment);
    assert_eq!(a.old_verdict, Outcome::Pass as i32);
    assert_eq!(a.new_verdict, Outcome::Fail as i32);
    let r3 = a.changes.iter().find(|c| c.indicator_id == "R3").unwrap();
    assert_eq!(r3.new_outcome, Outcome::Fail as i32);
    assert!(
        a.reason.contains("vehicle registered at traffic-police"),
        "{}",
        a.reason
    );
    assert!(a.reason.contains(&event.record_id), "{}", a.reason);
    assert_ne!(a.report_id, baseline.report_id);
    // Stored until acknowledged; the same event again raises nothing.
    assert_eq!(watch.open_alerts("platform-a").await.unwrap().len(), 1);
    assert!(watch.on_event(&event).await.unwrap().is_empty());
    assert!(watch.open_alerts("platform-b").await.unwrap().is_empty());
    assert!(matches!(
        watch
            .acknowledge(&Caller::new("platform-b"), &a.alert_id)
            .await,
        Err(WatchError::NotFound(_))
    ));
    watch.acknowledge(&caller, &a.alert_id).await.unwrap();
    assert!(watch.open_alerts("platform-a").await.unwrap().is_empty());
    // A second car changes no outcome: no alert.
    let again = b
        .simulated
        .simulate_change(&member, ChangeKind::VehicleRegistered)
        .unwrap();
    assert!(watch.on_event(&again).await.unwrap().is_empty());
    // Unenrolled, the household is no longer re-verified.
    watch.unenrol(&caller, &enrolment).await.unwrap();
    let death = b
        .simulated
        .simulate_change(&member, ChangeKind::Death)
        .unwrap();
    assert!(watch.on_event(&death).await.unwrap().is_empty());
}

#[tokio::test]
async fn only_dibao_review_enrols() {
    let b = built().await;
    let watch = Watch::new(b.verifier.clone());
    let truths = Population::generate(&PopulationConfig {
        seed: hedui_mock_agencies::population::DEFAULT_SEED,
        households: HOUSEHOLDS,
        today: crate::time::china_date(),
    })
    .truth(&TruthPolicy::default());
    let mut r = review(&truths[0].applicant_id);
    r.purpose = Purpose::DibaoApplication as i32;
    let e = watch
        .enrol(&Caller::new("p"), Some(r))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("request.purpose"), "{e}");
}
