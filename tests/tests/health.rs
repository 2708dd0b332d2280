//! Source health (issue 7), with a real broker process whose simulated
//! sources run in it: one source fails every call; after a few
//! verifications `ListSourceHealth` shows it degraded or its breaker open,
//! with its errors counted, while the others are up; `WatchSourceHealth`
//! streams the same and refuses an interval out of range naming the field;
//! the standard `grpc.health.v1` check says `SERVING`; and `hedui sources`
//! prints the table. Over mTLS, every client role may read source health
//! (`hedui sources` with `--ca`, `--cert`, `--key` too), a client without a
//! certificate may not.

use std::time::Duration;

use hedui::health::grpc_health_v1::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use hedui::security::certs::{DevCa, Usage};
use hedui_mock_agencies::{
    control::proto::{
        Faults, SetFaultsRequest, agency_control_service_client::AgencyControlServiceClient,
    },
    population::{Population, PopulationConfig},
    truth::TruthPolicy,
};
use hedui_proto::v1::{
    ListSourceHealthRequest, Purpose, SourceHealth, SourceState, VerificationRequest,
    VerifyRequest, WatchSourceHealthRequest,
    source_health_service_client::SourceHealthServiceClient,
    verification_service_client::VerificationServiceClient,
};
use hedui_tests::{BrokerProcess, SEED, china_today, workspace_bin};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const HOUSEHOLDS: usize = 20;
const FAILING: &str = "traffic-police";

fn request(applicant_id: &str) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant_id.to_owned(),
        consent_reference: "SQ-HEALTH".into(),
        purpose: Purpose::DibaoApplication as i32,
        operator_id: "health-checker".into(),
        ..Default::default()
    }
}

fn state(s: &SourceHealth) -> SourceState {
    SourceState::try_from(s.state).unwrap_or(SourceState::Unspecified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_shows_in_source_health_and_the_broker_serves() {
    let today = china_today();
    // No cache: every verification asks every source again.
    let broker = BrokerProcess::start(
        &format!(
            "[simulation]\nseed = {SEED}\nhouseholds = {HOUSEHOLDS}\ntoday = \"{today}\"\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n\n[cache]\nenabled = false\n"
        ),
        &["--simulation-control", "127.0.0.1:0"],
    )
    .await
    .unwrap();

    // The standard health check: serving (the audit log is ready).
    let channel = tonic::transport::Channel::from_shared(broker.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in [
        "",
        "hedui.v1.VerificationService",
        "hedui.v1.SourceHealthService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }

    // Before any verification: nothing to judge by.
    let mut sources = SourceHealthServiceClient::connect(broker.url.clone())
        .await
        .unwrap();
    let before = sources
        .list_source_health(ListSourceHealthRequest {})
        .await
        .unwrap()
        .into_inner()
        .sources;
    assert!(before.len() >= 20, "{} sources", before.len());
    assert!(
        before
            .iter()
            .all(|s| state(s) == SourceState::Unknown && s.calls == 0),
        "{before:#?}"
    );

    let mut control =
        AgencyControlServiceClient::connect(broker.simulation_control.clone().unwrap())
            .await
            .unwrap();
    control
        .set_faults(SetFaultsRequest {
            source_id: FAILING.to_owned(),
            faults: Some(Faults {
                error_rate: 1.0,
                ..Faults::default()
            }),
            latency: None,
        })
        .await
        .unwrap();

    let truths = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: today.parse().unwrap(),
    })
    .truth(&TruthPolicy::default());
    let mut verification = VerificationServiceClient::connect(broker.url.clone())
        .await
        .unwrap();
    for t in truths.iter().take(8) {
        verification
            .verify(VerifyRequest {
                request: Some(request(&t.applicant_id)),
            })
            .await
            .unwrap();
    }

    let after = sources
        .list_source_health(ListSourceHealthRequest {})
        .await
        .unwrap()
        .into_inner()
        .sources;
    let failing = after.iter().find(|s| s.source_id == FAILING).unwrap();
    assert!(
        matches!(
            state(failing),
            SourceState::Degraded | SourceState::BreakerOpen
        ),
        "{failing:#?}"
    );
    assert!(failing.errors >= 5, "{failing:#?}");
    assert_eq!(failing.errors, failing.calls, "{failing:#?}");
    assert!((failing.error_rate - 1.0).abs() < 1e-9, "{failing:#?}");
    if state(failing) == SourceState::BreakerOpen {
        // Opened after 5 failures: the later lookups were not sent.
        assert_eq!(failing.breaker, hedui_proto::v1::BreakerState::Open as i32);
        assert!(failing.circuit_open >= 1, "{failing:#?}");
    }
    assert_eq!(failing.last_error_status, "error");
    assert!(failing.last_error.is_some());
    assert!(!failing.source_name.is_empty());
    let mut up = 0;
    for s in after.iter().filter(|s| s.source_id != FAILING) {
        assert_eq!(s.errors, 0, "{s:#?}");
        assert!(
            matches!(state(s), SourceState::Up | SourceState::Unknown),
            "{s:#?}"
        );
        if state(s) == SourceState::Up {
            up += 1;
            assert!(s.calls >= 1 && s.p50_latency.is_some() && s.p95_latency.is_some());
            assert!(s.last_success.is_some() && s.last_error.is_none(), "{s:#?}");
        }
    }
    assert!(up >= 5, "{up} sources up: {after:#?}");

    // The watch: the list at once; an interval out of range is refused,
    // naming the field.
    let mut watch = sources
        .watch_source_health(WatchSourceHealthRequest {
            interval: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the list within 10 s")
        .unwrap()
        .expect("the stream goes on");
    assert_eq!(first.sources.len(), after.len());
    let second = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the list again within the interval")
        .unwrap()
        .expect("the stream goes on");
    assert_eq!(second.sources.len(), after.len());
    drop(watch);
    for seconds in [0, 61] {
        let e = sources
            .watch_source_health(WatchSourceHealthRequest {
                interval: Some(prost_types::Duration { seconds, nanos: 0 }),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("interval: "), "{}", e.message());
    }

    // `hedui sources`, as an operator runs it.
    let out = tokio::process::Command::new(workspace_bin("hedui"))
        .args(["sources", "--server", &broker.url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("SOURCE"), "{stdout}");
    assert!(lines[0].contains("ERROR RATE"), "{stdout}");
    assert_eq!(lines.len(), after.len() + 1, "{stdout}");
    let row = lines
        .iter()
        .find(|l| l.starts_with(FAILING))
        .expect("a row for the failing source");
    assert!(
        row.contains("degraded") || row.contains("breaker_open"),
        "{row}"
    );
    assert!(row.contains("100 %"), "{row}");
    assert!(row.contains("error at "), "{row}");
    assert!(
        lines.iter().filter(|l| l.contains("  up  ")).count() >= 5,
        "{stdout}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_role_may_read_source_health_over_mtls() {
    const CLIENTS: [(&str, &str); 3] = [
        ("spiffe://hedui.test/platform/a", "platform"),
        ("spiffe://hedui.test/auditor", "auditor"),
        ("spiffe://hedui.test/admin", "admin"),
    ];
    let ca = DevCa::new("hedui health test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let server = ca
        .issue(&["localhost", "127.0.0.1"], Usage::Server)
        .unwrap();
    let cert = write("broker.pem", &server.cert_pem);
    let key = write("broker-key.pem", &server.key_pem);
    let ca_file = write("ca.pem", ca.cert_pem());
    let mut config =
        format!("[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = [{ca_file:?}]\n\n");
    for (identity, role) in CLIENTS {
        config.push_str(&format!("[clients.\"{identity}\"]\nrole = \"{role}\"\n\n"));
    }
    config.push_str(&format!(
        "[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n"
    ));
    let broker = BrokerProcess::start(&config, &[]).await.unwrap();
    assert!(broker.url.starts_with("https://"), "{}", broker.url);
    let channel = |identity: Option<&str>| {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.cert_pem()));
        if let Some(identity) = identity {
            let c = ca.issue(&[identity], Usage::Client).unwrap();
            tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
        }
        let endpoint = Channel::from_shared(broker.url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5));
        async move { endpoint.connect().await }
    };

    for (identity, role) in CLIENTS {
        let channel = channel(Some(identity)).await.unwrap();
        let list = SourceHealthServiceClient::new(channel.clone())
            .list_source_health(ListSourceHealthRequest {})
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}"))
            .into_inner();
        assert!(list.sources.len() >= 20, "{role}");
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{role}");
    }
    // Without a client certificate there is no connection at all, or no
    // call through it.
    if let Ok(anonymous) = channel(None).await {
        SourceHealthServiceClient::new(anonymous)
            .list_source_health(ListSourceHealthRequest {})
            .await
            .expect_err("no client certificate, no source health");
    }

    // `hedui sources` as the auditor, with explicit certificate files.
    let auditor = ca.issue(&[CLIENTS[1].0], Usage::Client).unwrap();
    let auditor_cert = write("auditor.pem", &auditor.cert_pem);
    let auditor_key = write("auditor-key.pem", &auditor.key_pem);
    let out = tokio::process::Command::new(workspace_bin("hedui"))
        .args(["sources", "--server", &broker.url, "--ca", &ca_file])
        .args(["--cert", &auditor_cert, "--key", &auditor_key])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("SOURCE"), "{stdout}");
    assert!(stdout.contains("traffic-police"), "{stdout}");
    broker.stop().await;
}
