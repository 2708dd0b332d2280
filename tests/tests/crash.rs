//! Issue 10, item 2 (the CI-sized run): under sustained load the broker is
//! killed with SIGKILL at pseudo-random moments, 10 times, and started
//! again on the same store. Then: every report a client received is
//! stored whole and has its audit record, the audit log verifies, and the
//! enrolled household's unacknowledged alert is still delivered.
//! `HEDUI_CRASH_ROUNDS` sets the number of kills (100 for a nightly run).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use hedui_mock_agencies::{
    control::proto::{
        SimulateChangeRequest, agency_control_service_client::AgencyControlServiceClient,
    },
    population::{Population, PopulationConfig},
    truth::TruthPolicy,
};
use hedui_proto::v1::{
    ChangeKind, EnrolRequest, ExportFormat, ExportRecordsRequest, GetChainStatusRequest,
    GetReportRequest, Outcome, Purpose, Report, StreamAlertsRequest, VerificationRequest,
    VerifyRequest, audit_service_client::AuditServiceClient,
    verification_service_client::VerificationServiceClient,
    watch_service_client::WatchServiceClient,
};
use hedui_tests::{BrokerProcess, SEED, china_today};

const HOUSEHOLDS: usize = 200;

fn request(applicant: &str, purpose: Purpose) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant.into(),
        consent_reference: "SQ-2026-CRASH".into(),
        purpose: purpose as i32,
        operator_id: "case-worker-07".into(),
        ..Default::default()
    }
}

/// A small deterministic generator for the kill moments.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_nothing_received_is_lost() {
    let rounds: usize = std::env::var("HEDUI_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let applicants: Vec<String> = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: china_today().parse().unwrap(),
    })
    .truth(&TruthPolicy::default())
    .into_iter()
    .map(|t| t.applicant_id)
    .collect();
    let mut broker = BrokerProcess::start(
        &format!(
            "[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 2\nlatency_p99_ms = 20\n\n[cache]\nenabled = false\n"
        ),
        &["--simulation-control", "127.0.0.1:0"],
    )
    .await
    .unwrap();

    // An enrolled household with an alert nobody acknowledged.
    let mut watch = WatchServiceClient::connect(broker.url.clone())
        .await
        .unwrap();
    let mut alert = None;
    for a in &applicants {
        let e = watch
            .enrol(EnrolRequest {
                request: Some(request(a, Purpose::DibaoReview)),
            })
            .await
            .unwrap()
            .into_inner();
        let baseline = e.baseline.unwrap();
        if baseline.verdict != Outcome::Pass as i32 {
            continue;
        }
        let mut alerts = watch
            .stream_alerts(StreamAlertsRequest {})
            .await
            .unwrap()
            .into_inner();
        AgencyControlServiceClient::connect(broker.simulation_control.clone().unwrap())
            .await
            .unwrap()
            .simulate_change(SimulateChangeRequest {
                person_id: a.clone(),
                kind: ChangeKind::VehicleRegistered as i32,
            })
            .await
            .unwrap();
        alert = tokio::time::timeout(Duration::from_secs(30), alerts.message())
            .await
            .expect("an alert")
            .unwrap()
            .and_then(|m| m.alert);
        break;
    }
    let alert = alert.expect("an alert was raised");

    // Load, killed at pseudo-random moments.
    let received: Arc<Mutex<BTreeMap<String, Report>>> = Arc::default();
    let mut rng = XorShift(0x5eed_cafe);
    let mut next = 0usize;
    for round in 0..rounds {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let url = broker.url.clone();
                let received = received.clone();
                let applicants = applicants.clone();
                let start = next + c * 1000;
                tokio::spawn(async move {
                    let Ok(mut client) = VerificationServiceClient::connect(url).await else {
                        return;
                    };
                    for i in start.. {
                        let a = &applicants[i % applicants.len()];
                        match client
                            .verify(VerifyRequest {
                                request: Some(request(a, Purpose::DibaoApplication)),
                            })
                            .await
                        {
                            Ok(r) => {
                                let r = r.into_inner().report.unwrap();
                                received.lock().unwrap().insert(r.report_id.clone(), r);
                            }
                            // The broker died under this call.
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        next += 17;
        tokio::time::sleep(Duration::from_millis(150 + rng.next(400))).await;
        broker = broker
            .restart()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for c in clients {
            let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
        }
    }
    let received = std::mem::take(&mut *received.lock().unwrap());
    eprintln!("{} reports received over {rounds} kills", received.len());
    assert!(
        received.len() > rounds,
        "{} reports under load",
        received.len()
    );

    // Every report received is stored whole.
    let mut client = VerificationServiceClient::connect(broker.url.clone())
        .await
        .unwrap()
        .max_decoding_message_size(16 * 1024 * 1024);
    for (id, report) in &received {
        let stored = client
            .get_report(GetReportRequest {
                report_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("report {id} received but not stored: {e}"))
            .into_inner()
            .report
            .unwrap();
        assert_eq!(&stored, report, "report {id} stored differently");
    }
    // Every report received has its verification record, and the log
    // verifies.
    let mut audit = AuditServiceClient::connect(broker.url.clone())
        .await
        .unwrap();
    let mut export = audit
        .export_records(ExportRecordsRequest {
            auditor_id: "inspector-1".into(),
            filter: None,
            format: ExportFormat::JsonLines as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    while let Some(chunk) = export.message().await.unwrap() {
        lines.extend_from_slice(&chunk.data);
    }
    let text = String::from_utf8(lines).unwrap();
    let recorded: std::collections::HashSet<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["entry"]["kind"] == "verification")
        .filter_map(|v| v["entry"]["request_id"].as_str().map(str::to_owned))
        .collect();
    for id in received.keys() {
        assert!(
            recorded.contains(id),
            "report {id} left without its audit record"
        );
    }
    let chain = audit
        .get_chain_status(GetChainStatusRequest {
            auditor_id: "inspector-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(chain.verified, "{}", chain.problem);

    // The enrolment and its unacknowledged alert survived every kill.
    let mut watch = WatchServiceClient::connect(broker.url.clone())
        .await
        .unwrap();
    let mut alerts = watch
        .stream_alerts(StreamAlertsRequest {})
        .await
        .unwrap()
        .into_inner();
    let again = tokio::time::timeout(Duration::from_secs(10), alerts.message())
        .await
        .expect("the alert again")
        .unwrap()
        .and_then(|m| m.alert)
        .unwrap();
    assert_eq!(again, alert);
    broker.stop().await;
}
