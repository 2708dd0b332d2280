//! Issue 6, against the real broker and simulated agencies over gRPC:
//! - 100 concurrent identical verifications reach each source exactly once;
//! - a source failing every call sees at most 1.2× the calls of a healthy
//!   run, and once its breaker is open at most one probe per interval;
//!   its status is `CIRCUIT_OPEN` and what needs it is inconclusive.
//!
//! Calls are counted at the agencies; nothing here asserts a time.

use std::time::{Duration, Instant};

use futures::future::join_all;
use hedui_mock_agencies::{
    control::proto::{
        Faults, GetStatsRequest, Latency, ResetStatsRequest, SetFaultsRequest,
        agency_control_service_client::AgencyControlServiceClient,
    },
    population::{Population, PopulationConfig},
    truth::TruthPolicy,
};
use hedui_proto::v1::{Outcome, Purpose, Report, SourceStatus, VerificationRequest, VerifyRequest};
use hedui_tests::{Agencies, Broker, SEED, china_today};
use tonic::transport::Channel;

fn request(applicant_id: &str) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant_id.to_owned(),
        consent_reference: "SQ-2026-000123".into(),
        purpose: Purpose::DibaoApplication as i32,
        operator_id: "case-worker-07".into(),
        ..Default::default()
    }
}

fn applicants(households: usize, today: &str) -> Vec<String> {
    Population::generate(&PopulationConfig {
        seed: SEED,
        households,
        today: today.parse().unwrap(),
    })
    .truth(&TruthPolicy::default())
    .into_iter()
    .map(|t| t.applicant_id)
    .collect()
}

async fn lookups(control: &mut AgencyControlServiceClient<Channel>) -> Vec<(String, u64)> {
    control
        .get_stats(GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sources
        .into_iter()
        .map(|s| (s.source_id, s.lookups))
        .collect()
}

async fn lookups_of(control: &mut AgencyControlServiceClient<Channel>, source: &str) -> u64 {
    lookups(control)
        .await
        .into_iter()
        .find(|(s, _)| s == source)
        .map(|(_, n)| n)
        .unwrap()
}

async fn verify(broker: &Broker, applicant: &str) -> Report {
    broker
        .client()
        .await
        .unwrap()
        .verify(VerifyRequest {
            request: Some(request(applicant)),
        })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_identical_verifications_reach_each_source_once() {
    let today = china_today();
    let agencies = Agencies::start(20, &today, &[]).await.unwrap();
    // Every source answers after 200 ms, so the hundred overlap.
    let mut control = AgencyControlServiceClient::connect(agencies.control.clone())
        .await
        .unwrap();
    for (source, _) in lookups(&mut control).await {
        control
            .set_faults(SetFaultsRequest {
                source_id: source,
                faults: None,
                latency: Some(Latency {
                    p50_ms: 200,
                    p99_ms: 200,
                }),
            })
            .await
            .unwrap();
    }
    let broker = Broker::start(&agencies, "").await.unwrap();
    let applicant = applicants(20, &today).swap_remove(3);
    let client = broker.client().await.unwrap();
    let reports = join_all((0..100).map(|_| {
        let mut c = client.clone();
        let applicant = applicant.clone();
        async move {
            c.verify(VerifyRequest {
                request: Some(request(&applicant)),
            })
            .await
            .unwrap()
            .into_inner()
            .report
            .unwrap()
        }
    }))
    .await;
    // The agencies also serve a 29th source the broker is not configured
    // with: it is never asked.
    let counts = lookups(&mut control).await;
    for (source, n) in &counts {
        assert!(*n <= 1, "{source} was asked {n} times");
    }
    assert_eq!(counts.iter().filter(|(_, n)| *n == 1).count(), 28);
    // Per source, one verification made the call and 99 shared it, and
    // their reports say so.
    for (i, source) in reports[0].sources.iter().enumerate() {
        let own = reports.iter().filter(|r| !r.sources[i].from_cache).count();
        assert_eq!(own, 1, "{}", source.source_id);
    }
    for r in &reports {
        assert_eq!(r.verdict, reports[0].verdict);
        assert_eq!(r.income, reports[0].income);
        assert_eq!(r.assets, reports[0].assets);
    }
    broker.stop().await;
    agencies.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_is_spared_by_retry_budget_and_breaker() {
    const SOURCE: &str = "traffic-police";
    const OPEN_MS: u64 = 1500;
    let today = china_today();
    let agencies = Agencies::start(120, &today, &[]).await.unwrap();
    let broker = Broker::start(
        &agencies,
        &format!(
            "[limits.default]\nbreaker_failures = 5\nbreaker_open_ms = {OPEN_MS}\nmax_retries = 3\nretry_backoff_ms = 0\n"
        ),
    )
    .await
    .unwrap();
    let ids = applicants(120, &today);
    let mut control = AgencyControlServiceClient::connect(agencies.control.clone())
        .await
        .unwrap();

    // Healthy: one call per verification.
    for id in &ids[..40] {
        verify(&broker, id).await;
    }
    let healthy = lookups_of(&mut control, SOURCE).await;
    assert_eq!(healthy, 40);

    // Down for every call: other households (no cache to hide behind).
    control
        .reset_stats(ResetStatsRequest::default())
        .await
        .unwrap();
    control
        .set_faults(SetFaultsRequest {
            source_id: SOURCE.into(),
            faults: Some(Faults {
                outage: true,
                ..Default::default()
            }),
            latency: None,
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut statuses = Vec::new();
    for id in &ids[40..80] {
        let report = verify(&broker, id).await;
        let s = report
            .sources
            .iter()
            .find(|s| s.source_id == SOURCE)
            .unwrap();
        statuses.push(s.status());
        if s.status() == SourceStatus::CircuitOpen {
            assert!(s.detail.contains("circuit breaker"), "{}", s.detail);
            let r3 = report.indicators.iter().find(|i| i.id == "R3").unwrap();
            assert_eq!(r3.outcome, Outcome::Inconclusive as i32);
            assert!(r3.missing_sources.iter().any(|m| m == SOURCE));
        }
    }
    let elapsed = started.elapsed();
    let failing = lookups_of(&mut control, SOURCE).await;
    assert!(
        failing as f64 <= 1.2 * healthy as f64,
        "{failing} calls failing vs {healthy} healthy"
    );
    // Five failed lookups opened the breaker; after that, at most one
    // probe per interval.
    let unavailable = statuses
        .iter()
        .filter(|s| **s == SourceStatus::Unavailable)
        .count() as u64;
    let open = statuses
        .iter()
        .filter(|s| **s == SourceStatus::CircuitOpen)
        .count();
    assert!(open >= 30, "{statuses:?}");
    let intervals = elapsed.as_millis() as u64 / OPEN_MS + 1;
    assert!(
        unavailable <= 5 + intervals,
        "{unavailable} lookups reached the source in {intervals} intervals: {statuses:?}"
    );

    // Back up: after the interval one probe closes the breaker.
    control
        .set_faults(SetFaultsRequest {
            source_id: SOURCE.into(),
            faults: None,
            latency: None,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(OPEN_MS + 100)).await;
    for id in &ids[80..84] {
        let report = verify(&broker, id).await;
        let s = report
            .sources
            .iter()
            .find(|s| s.source_id == SOURCE)
            .unwrap();
        assert!(
            matches!(s.status(), SourceStatus::Ok | SourceStatus::NoRecord),
            "{s:?}"
        );
    }
    broker.stop().await;
    agencies.stop().await;
}

/// A bank that answers late: the report returns by its deadline with the
/// bank `PENDING`; when the bank answers, `WatchReport` pushes and
/// `GetReport` returns the completed report, and the audit records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_completes_the_stored_report() {
    use hedui_proto::v1::{
        AuditFilter, AuditRecordKind, GetReportRequest, QueryRecordsRequest, WatchReportRequest,
    };
    const BANK: &str = "rural-commercial-bank";
    let today = china_today();
    let agencies = Agencies::start(40, &today, &[]).await.unwrap();
    let broker = Broker::start(
        &agencies,
        &format!("[limits.sources.{BANK}]\nlate_deadline_ms = 60000\n"),
    )
    .await
    .unwrap();
    let truths = Population::generate(&PopulationConfig {
        seed: SEED,
        households: 40,
        today: today.parse().unwrap(),
    })
    .truth(&TruthPolicy::default());
    let truth = &truths[5];
    let mut control = AgencyControlServiceClient::connect(agencies.control.clone())
        .await
        .unwrap();
    control
        .set_faults(SetFaultsRequest {
            source_id: BANK.into(),
            faults: Some(Faults {
                hang: true,
                ..Default::default()
            }),
            latency: None,
        })
        .await
        .unwrap();
    let mut client = broker.client().await.unwrap();
    let mut r = request(&truth.applicant_id);
    r.deadline = prost_types::Duration::try_from(Duration::from_millis(800)).ok();
    let started = Instant::now();
    let first = client
        .verify(VerifyRequest { request: Some(r) })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(800 + 700), "{took:?}");
    assert!(first.pending);
    assert!(first.pending_until.is_some());
    assert_eq!(first.revision, 0);
    let bank = |r: &Report| {
        r.sources
            .iter()
            .find(|s| s.source_id == BANK)
            .unwrap()
            .clone()
    };
    assert_eq!(bank(&first).status(), SourceStatus::Pending);
    assert!(
        bank(&first).detail.contains("waits for it"),
        "{}",
        bank(&first).detail
    );
    let r2 = first.indicators.iter().find(|i| i.id == "R2").unwrap();
    assert_eq!(r2.outcome, Outcome::Inconclusive as i32);
    assert_eq!(first.verdict, Outcome::Inconclusive as i32);
    // Every other source answered as usual.
    for s in first.sources.iter().filter(|s| s.source_id != BANK) {
        assert!(
            matches!(s.status(), SourceStatus::Ok | SourceStatus::NoRecord),
            "{s:?}"
        );
    }

    // A watcher gets the report as it stands, then its completion.
    let mut watch = client
        .watch_report(WatchReportRequest {
            report_id: first.report_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let now = watch.message().await.unwrap().unwrap().report.unwrap();
    assert!(now.pending);
    let stored = client
        .get_report(GetReportRequest {
            report_id: first.report_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert!(stored.pending);

    // The bank answers.
    control
        .set_faults(SetFaultsRequest {
            source_id: BANK.into(),
            faults: None,
            latency: None,
        })
        .await
        .unwrap();
    let completed = tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("the completion is pushed")
        .unwrap()
        .expect("a second message")
        .report
        .unwrap();
    assert!(
        watch.message().await.unwrap().is_none(),
        "then the stream ends"
    );
    assert!(!completed.pending);
    assert_eq!(completed.revision, 1);
    assert_eq!(completed.report_id, first.report_id);
    assert!(matches!(
        bank(&completed).status(),
        SourceStatus::Ok | SourceStatus::NoRecord
    ));
    assert_eq!(
        completed.verdict, truth.verdict as i32,
        "{}",
        completed.verdict_reason
    );
    let stored = client
        .get_report(GetReportRequest {
            report_id: first.report_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert_eq!(stored, completed);

    // The completion is in the audit log, found by the applicant's number.
    let records = broker
        .audit_client()
        .await
        .unwrap()
        .query_records(QueryRecordsRequest {
            auditor_id: "inspector-1".into(),
            filter: Some(AuditFilter {
                subject_id: truth.applicant_id.clone(),
                kind: AuditRecordKind::ReportCompleted as i32,
                ..Default::default()
            }),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].request_id, first.report_id);
    assert_eq!(records[0].sources.len(), 1);
    assert_eq!(records[0].sources[0].source_id, BANK);
    broker.stop().await;
    agencies.stop().await;
}
