//! Households under management (issue 6), with real processes:
//! - a car registered to a member of an enrolled Dibao household raises an
//!   alert naming the change, the verdicts and the indicator;
//! - an unacknowledged alert is delivered again after the broker is killed
//!   and restarted; an acknowledged one is not;
//! - the same through NATS JetStream, with the simulated agencies as their
//!   own process publishing the change.

use std::time::Duration;

use hedui_mock_agencies::{
    control::proto::{
        SimulateChangeRequest, agency_control_service_client::AgencyControlServiceClient,
    },
    population::{Population, PopulationConfig},
    truth::{GroundTruth, TruthPolicy},
};
use hedui_proto::v1::{
    AcknowledgeAlertRequest, Alert, ChangeKind, EnrolRequest, Outcome, Purpose,
    StreamAlertsRequest, StreamAlertsResponse, VerificationRequest,
    watch_service_client::WatchServiceClient,
};
use hedui_tests::{Agencies, Broker, BrokerProcess, SEED, china_today, unique_name};
use tonic::{Streaming, transport::Channel};

const HOUSEHOLDS: usize = 60;

fn review(applicant: &str) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant.into(),
        consent_reference: "SQ-2026-REVIEW".into(),
        purpose: Purpose::DibaoReview as i32,
        operator_id: "case-worker-07".into(),
        ..Default::default()
    }
}

async fn client(url: &str) -> WatchServiceClient<Channel> {
    WatchServiceClient::connect(url.to_owned()).await.unwrap()
}

/// Enrols households until one passes with more than one member; returns
/// its truth, enrolment id and a member other than the applicant.
async fn enrol_passing(watch: &mut WatchServiceClient<Channel>) -> (GroundTruth, String, String) {
    let truths = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: china_today().parse().unwrap(),
    })
    .truth(&TruthPolicy::default());
    for t in truths.into_iter().filter(|t| t.member_ids.len() > 1) {
        let r = watch
            .enrol(EnrolRequest {
                request: Some(review(&t.applicant_id)),
            })
            .await
            .unwrap()
            .into_inner();
        if r.baseline.as_ref().unwrap().verdict == Outcome::Pass as i32 {
            let member = t
                .member_ids
                .iter()
                .find(|m| **m != t.applicant_id)
                .unwrap()
                .clone();
            return (t, r.enrolment_id, member);
        }
    }
    panic!("no passing household of several members");
}

async fn next_alert(stream: &mut Streaming<StreamAlertsResponse>) -> Alert {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("an alert within 30 s")
        .unwrap()
        .expect("the stream goes on")
        .alert
        .unwrap()
}

async fn car_for(control: &str, person: &str) -> String {
    AgencyControlServiceClient::connect(control.to_owned())
        .await
        .unwrap()
        .simulate_change(SimulateChangeRequest {
            person_id: person.to_owned(),
            kind: ChangeKind::VehicleRegistered as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap()
        .record_id
}

fn check(alert: &Alert, enrolment: &str, record: &str) {
    assert_eq!(alert.enrolment_id, enrolment);
    assert_eq!(alert.old_verdict, Outcome::Pass as i32);
    assert_eq!(alert.new_verdict, Outcome::Fail as i32);
    let r3 = alert
        .changes
        .iter()
        .find(|c| c.indicator_id == "R3")
        .expect("R3 changed");
    assert_eq!(r3.new_outcome, Outcome::Fail as i32);
    let event = alert.event.as_ref().unwrap();
    assert_eq!(event.source_id, "traffic-police");
    assert_eq!(event.record_id, record);
    assert!(
        alert
            .reason
            .contains("vehicle registered at traffic-police"),
        "{}",
        alert.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_car_raises_an_alert_which_survives_a_restart_until_acknowledged() {
    let broker = BrokerProcess::start(
        &format!(
            "[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n"
        ),
        &["--simulation-control", "127.0.0.1:0"],
    )
    .await
    .unwrap();
    let mut watch = client(&broker.url).await;
    let (_, enrolment, member) = enrol_passing(&mut watch).await;
    let mut alerts = watch
        .stream_alerts(StreamAlertsRequest {})
        .await
        .unwrap()
        .into_inner();
    let record = car_for(broker.simulation_control.as_ref().unwrap(), &member).await;
    let alert = next_alert(&mut alerts).await;
    check(&alert, &enrolment, &record);
    drop(alerts);

    // Killed and started again: the alert, not acknowledged, comes again.
    let broker = broker.restart().await.unwrap();
    let mut watch = client(&broker.url).await;
    let mut alerts = watch
        .stream_alerts(StreamAlertsRequest {})
        .await
        .unwrap()
        .into_inner();
    let again = next_alert(&mut alerts).await;
    assert_eq!(again, alert);
    watch
        .acknowledge_alert(AcknowledgeAlertRequest {
            alert_id: alert.alert_id.clone(),
        })
        .await
        .unwrap();
    drop(alerts);
    // Acknowledged: not delivered again (a fresh stream has nothing).
    let mut alerts = watch
        .stream_alerts(StreamAlertsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), alerts.message())
            .await
            .is_err(),
        "no alert after the acknowledgement"
    );
    let e = watch
        .acknowledge_alert(AcknowledgeAlertRequest {
            alert_id: "not-an-id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("alert_id"), "{}", e.message());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_car_published_on_nats_jetstream_raises_an_alert() {
    let stream = unique_name("HEDUI_TEST").to_ascii_uppercase();
    let subject = unique_name("hedui_test").replace('-', "_");
    let agencies = Agencies::start(
        HOUSEHOLDS,
        &china_today(),
        &[
            "--nats",
            "nats://127.0.0.1:4222",
            "--nats-stream",
            &stream,
            "--nats-subject",
            &subject,
        ],
    )
    .await
    .expect("simulated agencies publishing on the NATS server at 127.0.0.1:4222");
    let broker = Broker::start(
        &agencies,
        &format!(
            "[changes]\ntransport = \"nats\"\nstream = \"{stream}\"\nsubject = \"{subject}\"\ndurable = \"broker\"\n"
        ),
    )
    .await
    .unwrap();
    let mut watch = client(&broker.url).await;
    let (_, enrolment, member) = enrol_passing(&mut watch).await;
    let mut alerts = watch
        .stream_alerts(StreamAlertsRequest {})
        .await
        .unwrap()
        .into_inner();
    let record = car_for(&agencies.control, &member).await;
    let alert = next_alert(&mut alerts).await;
    check(&alert, &enrolment, &record);
    broker.stop().await;
    agencies.stop().await;
}

/// Bulk review: every enrolled household verified again at the household
/// source's rate limit; cut by a crash, resumed without repeating the
/// households done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_review_cut_by_a_crash_resumes_without_repeating_households() {
    use hedui_mock_agencies::control::proto::{GetStatsRequest, ResetStatsRequest};
    use hedui_proto::v1::ReviewRequest;
    const ENROLLED: usize = 24;
    let broker = BrokerProcess::start(
        &format!(
            "[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n\n[cache]\nenabled = false\n\n[limits.sources.public-security]\nrate_per_s = 8\nburst = 1\n"
        ),
        &["--simulation-control", "127.0.0.1:0"],
    )
    .await
    .unwrap();
    let truths = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: china_today().parse().unwrap(),
    })
    .truth(&TruthPolicy::default());
    let mut watch = client(&broker.url).await;
    for t in &truths[..ENROLLED] {
        watch
            .enrol(EnrolRequest {
                request: Some(review(&t.applicant_id)),
            })
            .await
            .unwrap();
    }
    let household_lookups = |control: String| async move {
        let mut c = AgencyControlServiceClient::connect(control).await.unwrap();
        c.get_stats(GetStatsRequest {
            source_id: "public-security".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sources[0]
            .lookups
    };
    AgencyControlServiceClient::connect(broker.simulation_control.clone().unwrap())
        .await
        .unwrap()
        .reset_stats(ResetStatsRequest::default())
        .await
        .unwrap();
    let mut progress = watch
        .review(ReviewRequest { concurrency: 4 })
        .await
        .unwrap()
        .into_inner();
    let first = progress.message().await.unwrap().unwrap();
    assert_eq!(first.total as usize, ENROLLED);
    assert!(!first.resumed);
    // Killed once a few households are done.
    loop {
        let p = progress.message().await.unwrap().expect("progress");
        if p.done >= 6 {
            break;
        }
    }
    let broker = broker.restart().await.unwrap();
    let mut watch = client(&broker.url).await;
    let mut progress = watch
        .review(ReviewRequest { concurrency: 4 })
        .await
        .unwrap()
        .into_inner();
    let resumed = progress.message().await.unwrap().unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.review_id, first.review_id);
    assert!(
        resumed.done >= 6 && (resumed.done as usize) < ENROLLED,
        "{resumed:?}"
    );
    let mut last = resumed.clone();
    while let Some(p) = progress.message().await.unwrap() {
        last = p;
    }
    assert!(last.finished, "{last:?}");
    assert_eq!(last.done as usize, ENROLLED);
    assert_eq!(last.failed, 0);
    // The restarted broker asked the household source only for the
    // households not done before the crash.
    let asked = household_lookups(broker.simulation_control.clone().unwrap()).await;
    assert_eq!(asked, u64::from(resumed.total - resumed.done));
    // A review after a finished one is a new one.
    let mut progress = watch
        .review(ReviewRequest { concurrency: 4 })
        .await
        .unwrap()
        .into_inner();
    let again = progress.message().await.unwrap().unwrap();
    assert!(!again.resumed);
    assert_ne!(again.review_id, first.review_id);
    let e = watch
        .review(ReviewRequest {
            concurrency: 100_000,
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("concurrency"), "{}", e.message());
    broker.stop().await;
}
