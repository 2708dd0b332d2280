//! Operations (issue 7), with the broker as its own process:
//! - `/healthz`, `/readyz` and `/metrics` on the operations listener, with
//!   the per-source, RPC, verification and audit metrics after a
//!   verification, and no identity number anywhere in them;
//! - no identity number in any log line or span field at debug level;
//! - SIGTERM: readiness turns 503, the verification in flight still gets
//!   its report, the process exits 0 within its grace period.

use std::time::Duration;

use hedui_mock_agencies::{
    population::{Population, PopulationConfig},
    truth::{GroundTruth, TruthPolicy},
};
use hedui_proto::v1::{Purpose, VerificationRequest, VerifyRequest};
use hedui_tests::{BrokerProcess, SEED, china_today};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOUSEHOLDS: usize = 30;

fn truths() -> Vec<GroundTruth> {
    Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: china_today().parse().unwrap(),
    })
    .truth(&TruthPolicy::default())
}

fn verify(applicant: &str) -> VerifyRequest {
    VerifyRequest {
        request: Some(VerificationRequest {
            applicant_id: applicant.into(),
            consent_reference: "SQ-2026-000123".into(),
            purpose: Purpose::DibaoApplication as i32,
            operator_id: "case-worker-07".into(),
            ..Default::default()
        }),
    }
}

/// `GET path` on `addr`: the status code and the body.
async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut raw))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn assert_no_identity_numbers(text: &str, truths: &[GroundTruth], what: &str) {
    for t in truths {
        for id in std::iter::once(&t.applicant_id).chain(&t.member_ids) {
            assert!(
                !text.contains(id.as_str()),
                "{what} holds an identity number"
            );
            // Nor the first 15 characters (the older ID format).
            assert!(!text.contains(&id[..15]), "{what} holds an identity number");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_without_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hedui.log");
    let broker = BrokerProcess::start_logged(
        &format!(
            "[ops]\nlisten = \"127.0.0.1:0\"\n\n[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n"
        ),
        &["--simulation-control", "127.0.0.1:0"],
        &log,
    )
    .await
    .unwrap();
    let ops = broker
        .ops
        .clone()
        .expect("the ready line names the ops listener");
    assert_eq!(get(&ops, "/healthz").await.0, 200);
    let (code, body) = get(&ops, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let truths = truths();
    let mut client = broker.client().await.unwrap();
    for t in truths.iter().take(3) {
        client.verify(verify(&t.applicant_id)).await.unwrap();
    }
    let (code, metrics) = get(&ops, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "hedui_source_requests_total{",
        "hedui_source_duration_seconds_bucket{",
        "hedui_breaker_state{",
        "hedui_cache_misses_total{",
        "hedui_verifications_total{",
        "hedui_verifications_in_flight",
        "hedui_audit_commit_duration_seconds_bucket",
        "rpc_server_duration_milliseconds_bucket{",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    assert!(metrics.contains("rpc_method=\"Verify\""), "{metrics}");
    assert!(
        metrics.contains("source=\"rural-commercial-bank\""),
        "{metrics}"
    );
    assert_no_identity_numbers(&metrics, &truths, "/metrics");
    // The calls the metrics count are the calls the departments saw.
    let counted: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("hedui_source_requests_total{") && l.contains("cache_hit=\"false\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let seen = hedui_tests::total_lookups(broker.simulation_control.as_deref().unwrap())
        .await
        .unwrap();
    assert!(seen > 0);
    assert_eq!(
        counted as u64, seen,
        "/metrics counts {counted} calls, the agencies saw {seen}"
    );
    assert_eq!(get(&ops, "/nothing").await.0, 404);
    broker.stop().await;
    // Every log line at debug level, span fields included (the log
    // prints each line's spans with their fields).
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("verification{"),
        "no verification span logged"
    );
    assert_no_identity_numbers(&logged, &truths, "the broker's debug log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_finishes_the_verification_in_flight() {
    let mut broker = BrokerProcess::start(
        &format!(
            "[ops]\nlisten = \"127.0.0.1:0\"\n\n[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 1500\nlatency_p99_ms = 2000\n"
        ),
        &[],
    )
    .await
    .unwrap();
    let ops = broker.ops.clone().unwrap();
    let applicant = truths()[0].applicant_id.clone();
    let mut client = broker.client().await.unwrap();
    let in_flight = tokio::spawn(async move { client.verify(verify(&applicant)).await });
    // The verification is under way (its sources take 1.5 s or more).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = broker.pid().unwrap();
    let killed = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, body) = get(&ops, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let report = in_flight
        .await
        .unwrap()
        .expect("the verification in flight is answered")
        .into_inner()
        .report
        .unwrap();
    assert!(!report.report_id.is_empty());
    let status = broker
        .wait(Duration::from_secs(30))
        .await
        .expect("the broker exits");
    assert!(status.success(), "{status:?}");
}

/// `hedui config check FILE` in `dir`: exit status and output.
async fn config_check(
    dir: &std::path::Path,
    file: &std::path::Path,
    env: &[(&str, String)],
) -> (bool, String) {
    let out = tokio::process::Command::new(hedui_tests::workspace_bin("hedui"))
        .arg("config")
        .arg("check")
        .arg(file)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("RUST_BACKTRACE")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_names_each_wrong_key_and_accepts_every_shipped_file() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        ("an unknown key", "[server]\nport = 3\n", "port"),
        (
            "a wrong type",
            "[verification]\nmax_deadline_ms = \"soon\"\n",
            "max_deadline_ms",
        ),
        (
            "a rate limit of zero",
            "[limits.default]\nrate_per_s = 0\n",
            "rate_per_s",
        ),
        (
            "a source's rate limit of zero",
            "[limits.sources.rural-commercial-bank]\nrate_per_s = 0\n",
            "rate_per_s",
        ),
        (
            "a client quota of zero",
            "[quotas]\nrate_per_s = 0\n",
            "rate_per_s",
        ),
        (
            "a missing secret file",
            "[audit]\nhmac_key_file = \"no-such-key\"\n",
            "hmac_key_file",
        ),
        (
            "a missing TLS key",
            "[tls]\ncert = \"b.pem\"\nkey = \"no-such-key.pem\"\nclient_ca = [\"ca.pem\"]\n[clients.\"spiffe://t/p\"]\nrole = \"platform\"\n",
            "tls.",
        ),
    ];
    for (what, text, names) in rows {
        let file = dir.path().join("hedui.toml");
        std::fs::write(&file, text).unwrap();
        let (ok, out) = config_check(dir.path(), &file, &[]).await;
        assert!(!ok, "{what}: accepted\n{out}");
        assert!(
            out.contains(names),
            "{what}: does not name {names:?}\n{out}"
        );
        assert!(!out.contains("panicked"), "{what}\n{out}");
    }
    // Nothing was created by checking.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "hedui.toml")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Every configuration shipped under deploy/config is accepted (the
    // compose and Kubernetes ones, with their environment and mounted
    // files, by scripts/validate-deploy in tests/tests/deploy.rs), with
    // the report store moved here as an operator would on this machine.
    let store = [(
        "HEDUI__STORE__PATH",
        dir.path().join("r.db").display().to_string(),
    )];
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
    let mut n = 0;
    for entry in std::fs::read_dir(&shipped).unwrap().flatten() {
        let (ok, out) = config_check(dir.path(), &entry.path(), &store).await;
        assert!(ok, "{}: {out}", entry.path().display());
        n += 1;
    }
    assert!(n >= 5, "only {n} shipped files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_cuts_nothing_and_every_answer_is_audited() {
    let mut broker = BrokerProcess::start(
        &format!(
            "[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 100\nlatency_p99_ms = 300\n\n[cache]\nenabled = false\n"
        ),
        &[],
    )
    .await
    .unwrap();
    let url = broker.url.clone();
    let truths = truths();
    // Eight clients, each verifying one household after another until the
    // broker stops answering (bounded: 40 calls each).
    let mut clients = Vec::new();
    for c in 0..8 {
        let url = url.clone();
        let ids: Vec<String> = truths.iter().map(|t| t.applicant_id.clone()).collect();
        clients.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            let mut refused = Vec::new();
            let Ok(channel) = tonic::transport::Channel::from_shared(url)
                .unwrap()
                .connect()
                .await
            else {
                return (answered, refused);
            };
            let mut client =
                hedui_proto::v1::verification_service_client::VerificationServiceClient::new(
                    channel,
                );
            for i in 0..40 {
                match client.verify(verify(&ids[(c * 5 + i) % ids.len()])).await {
                    Ok(r) => answered.push(r.into_inner().report.unwrap().report_id),
                    Err(status) => {
                        refused.push(status);
                        break;
                    }
                }
            }
            (answered, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = broker.pid().unwrap();
    assert!(
        tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .unwrap()
            .success()
    );
    let mut answered = Vec::new();
    let mut refused = Vec::new();
    for c in clients {
        let (a, r) = c.await.unwrap();
        answered.extend(a);
        refused.extend(r);
    }
    let status = broker
        .wait(Duration::from_secs(40))
        .await
        .expect("the broker exits");
    assert!(status.success(), "{status:?}");
    assert!(
        !answered.is_empty(),
        "nothing was answered before the signal"
    );
    // A call after the signal is refused as the server going away
    // (UNAVAILABLE, or CANCELLED when it raced the server's GOAWAY); none
    // is cut with another error.
    for s in &refused {
        assert!(
            matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled),
            "a call cut mid-way: {s:?}"
        );
    }
    // Every answered report has its audit record, in a log that verifies.
    let broker = broker.restart().await.unwrap();
    let mut audit = broker.audit_client().await.unwrap();
    let mut recorded = std::collections::BTreeSet::new();
    let mut token = String::new();
    loop {
        let page = audit
            .query_records(hedui_proto::v1::QueryRecordsRequest {
                auditor_id: "inspector-1".into(),
                filter: Some(hedui_proto::v1::AuditFilter {
                    kind: hedui_proto::v1::AuditRecordKind::Verification as i32,
                    ..Default::default()
                }),
                page_size: 1000,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        recorded.extend(page.records.into_iter().map(|r| r.request_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for id in &answered {
        assert!(
            recorded.contains(id),
            "report {id} was answered without its record"
        );
    }
    let chain = audit
        .get_chain_status(hedui_proto::v1::GetChainStatusRequest {
            auditor_id: "inspector-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(chain.verified, "{chain:?}");
    eprintln!(
        "{} answered, {} refused at shutdown ({:?}), all answered ones audited",
        answered.len(),
        refused.len(),
        refused.iter().map(|s| s.code()).collect::<Vec<_>>()
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_in_flight_calls_are_shed_at_once() {
    // Two verifications at once at most; sources take about a second.
    let broker = BrokerProcess::start_with_env(
        &format!(
            "[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 1000\nlatency_p99_ms = 1200\n\n[cache]\nenabled = false\n"
        ),
        &[],
        &[("HEDUI__SERVER__MAX_IN_FLIGHT", "2")],
    )
    .await
    .unwrap();
    let truths = truths();
    let client = broker.client().await.unwrap();
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let mut client = client.clone();
            let id = truths[i].applicant_id.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let result = client.verify(verify(&id)).await;
                (result.map(|_| ()), started.elapsed())
            })
        })
        .collect();
    let (mut served, mut shed) = (0, 0);
    for call in calls {
        let (result, took) = call.await.unwrap();
        match result {
            Ok(()) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    status.message().contains("server.max_in_flight"),
                    "{status:?}"
                );
                assert!(status.metadata().get("retry-after-ms").is_some());
                // At once, not after a source's second nor a deadline.
                assert!(took < Duration::from_millis(900), "shed after {took:?}");
                shed += 1;
            }
        }
    }
    assert_eq!(served, 2, "{served} served, {shed} shed");
    assert_eq!(shed, 6);
    broker.stop().await;
}
