//! Verifications whose request declares the household's members: the other
//! sources are asked about them while household registration is asked, and
//! the answers are kept only when registration lists exactly those persons
//! (counted and timed on the in-process simulated agencies).

use std::time::Duration;

use hedui_adapters::catalog::HOUSEHOLD_SOURCE;
use hedui_mock_agencies::{
    population::{Population, PopulationConfig},
    sim::LatencyConfig,
    truth::{GroundTruth, TruthPolicy},
};
use hedui_proto::v1::{Purpose, Report, VerificationRequest};

use super::*;
use crate::{
    audit::store::{Filter, Row},
    config::Config,
};

const HOUSEHOLDS: usize = 40;

/// A broker on simulated agencies with no cache: every answer is a lookup.
async fn built() -> crate::app::Built {
    let config = Config::parse(
        &format!(
            "[store]\npath = ':memory:'\n[changes]\ntransport = 'none'\n[cache]\nenabled = false\n\
             [simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n"
        ),
        "test.toml",
    )
    .unwrap();
    crate::app::build(&config).await.unwrap()
}

/// A household of three or more active members.
fn family() -> GroundTruth {
    Population::generate(&PopulationConfig {
        seed: hedui_mock_agencies::population::DEFAULT_SEED,
        households: HOUSEHOLDS,
        today: crate::time::china_date(),
    })
    .truth(&TruthPolicy::default())
    .into_iter()
    .find(|t| t.member_ids.len() > 2)
    .expect("a household of three or more")
}

fn request(t: &GroundTruth, declared: &[String]) -> VerificationRequest {
    VerificationRequest {
        applicant_id: t.applicant_id.clone(),
        consent_reference: "SQ-2026-0001".into(),
        purpose: Purpose::DibaoApplication as i32,
        operator_id: "case-worker-07".into(),
        declared_member_ids: declared.to_vec(),
        ..Default::default()
    }
}

async fn verify(b: &crate::app::Built, r: VerificationRequest) -> Report {
    let valid = b.verifier.validate(Some(r), None).unwrap();
    b.verifier
        .run(valid, &Caller::new("platform-a"), None)
        .await
        .unwrap()
}

/// Lookups per source other than household registration.
fn other_lookups(b: &crate::app::Built) -> Vec<(String, u64)> {
    b.simulated
        .stats()
        .into_iter()
        .filter(|s| s.source_id != HOUSEHOLD_SOURCE)
        .map(|s| (s.source_id, s.lookups))
        .collect()
}

/// What a report found about the household, for comparing two reports on
/// the same household.
fn findings(r: &Report) -> impl PartialEq + std::fmt::Debug {
    let income = r.income.clone().unwrap_or_default();
    let assets = r.assets.clone().unwrap_or_default();
    let sources: Vec<_> = r
        .sources
        .iter()
        .map(|s| (s.source_id.clone(), s.status, s.fact_count))
        .collect();
    (
        r.members.clone(),
        (
            income.totals,
            income.items.len(),
            income.counted_monthly_fen,
            income.per_capita_monthly_fen,
            income.complete,
        ),
        (
            assets.totals,
            assets.items.len(),
            assets.money_assets_fen,
            assets.complete,
        ),
        sources,
    )
}

async fn verification_records(b: &crate::app::Built) -> Vec<Row> {
    b.verifier
        .audit()
        .backend()
        .query(&Filter {
            kind: Some("verification".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn declared_members_are_asked_about_once_with_the_same_findings() {
    let b = built().await;
    let t = family();
    let undeclared = verify(&b, request(&t, &[])).await;
    b.simulated.reset_stats();
    // Declared in another order than the register's, the applicant among
    // them: the same persons.
    let mut declared: Vec<String> = t.member_ids.clone();
    declared.reverse();
    let report = verify(&b, request(&t, &declared)).await;
    assert_eq!(findings(&report), findings(&undeclared));
    assert!(report.members.len() > 2);
    for (source, n) in other_lookups(&b) {
        assert_eq!(n, 1, "{source} asked once");
    }
    let records = verification_records(&b).await;
    let body = records[0].body.as_deref().unwrap();
    assert!(!body.contains("asked again"), "{body}");
}

#[tokio::test]
async fn members_registration_does_not_confirm_are_asked_about_again() {
    let b = built().await;
    let t = family();
    let undeclared = verify(&b, request(&t, &[])).await;
    // Registration answers after every other source was asked.
    b.simulated
        .set_latency(HOUSEHOLD_SOURCE, LatencyConfig::new(200, 200))
        .unwrap();
    b.simulated.reset_stats();
    // The platform declares one member fewer than registration lists.
    let declared = &t.member_ids[..t.member_ids.len() - 1];
    let report = verify(&b, request(&t, declared)).await;
    assert_eq!(findings(&report), findings(&undeclared));
    for (source, n) in other_lookups(&b) {
        assert_eq!(
            n, 2,
            "{source}: asked about the declared, then the registered"
        );
    }
    // The discrepancy is the report's to show (R8), and the audit record
    // says the first answers were dropped.
    let records = verification_records(&b).await;
    let body = records[0].body.as_deref().unwrap();
    assert!(body.contains("asked again"), "{body}");
    let key = b.verifier.audit().subject_key();
    for m in &t.member_ids {
        assert!(
            body.contains(&key.subject(m)),
            "every person asked about: {body}"
        );
    }
}

#[tokio::test]
async fn the_other_sources_are_asked_while_registration_is() {
    let b = built().await;
    let t = family();
    // Registration answers after a fixed 3 s: a source asked sooner was
    // asked before the household was known.
    let slow = Duration::from_secs(3);
    b.simulated
        .set_latency(HOUSEHOLD_SOURCE, LatencyConfig::new(3000, 3000))
        .unwrap();
    for declared in [t.member_ids.clone(), Vec::new()] {
        b.simulated.reset_stats();
        let started = std::time::Instant::now();
        let (verifier, r) = (b.verifier.clone(), request(&t, &declared));
        let run = tokio::spawn(async move {
            let valid = verifier.validate(Some(r), None).unwrap();
            verifier.run(valid, &Caller::new("platform-a"), None).await
        });
        // Bounded: until every other source was asked or the run ended.
        let asked_at = loop {
            let done = run.is_finished();
            if other_lookups(&b).iter().all(|(_, n)| *n > 0) {
                break Some(started.elapsed());
            }
            if done {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.members.len(), t.member_ids.len());
        let asked_at = asked_at.expect("every source was asked before the report");
        if declared.is_empty() {
            assert!(asked_at >= slow, "asked after registration: {asked_at:?}");
        } else {
            assert!(
                asked_at < slow,
                "asked while registration was: {asked_at:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_streaming_caller_gets_the_household_before_any_early_answer() {
    use hedui_proto::v1::stream_verify_response::Event;
    let b = built().await;
    let t = family();
    // The others answer while registration is still out.
    b.simulated
        .set_latency(HOUSEHOLD_SOURCE, LatencyConfig::new(200, 200))
        .unwrap();
    let sources = b.verifier.sources().len();
    let (tx, mut rx) = tokio::sync::mpsc::channel(sources + 3);
    let valid = b
        .verifier
        .validate(Some(request(&t, &t.member_ids)), None)
        .unwrap();
    let report = b
        .verifier
        .run(valid, &Caller::new("platform-a"), Some(tx))
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e.event.unwrap());
    }
    assert_eq!(events.len(), sources + 2, "{events:?}");
    let Event::HouseholdResolved(resolved) = &events[0] else {
        panic!("first: {:?}", events[0]);
    };
    assert_eq!(resolved.members.len(), t.member_ids.len());
    let Event::SourceResult(first) = &events[1] else {
        panic!("second: {:?}", events[1]);
    };
    assert_eq!(first.source_id, HOUSEHOLD_SOURCE);
    let mut seen: Vec<&str> = events[1..=sources]
        .iter()
        .map(|e| match e {
            Event::SourceResult(r) => r.source_id.as_str(),
            other => panic!("a source result: {other:?}"),
        })
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), sources, "each source once");
    let Event::Report(last) = &events[sources + 1] else {
        panic!("last: {:?}", events[sources + 1]);
    };
    assert_eq!(last.report_id, report.report_id);
}
