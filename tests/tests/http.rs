//! The HTTP/JSON API and gRPC-Web (issue 8), with the broker as its own
//! process:
//! - schemathesis (PyPI) fuzzes every resource from the served OpenAPI
//!   description, bounded in examples: no 5xx, every answer matches the
//!   description (the endless streams are left out; see docs/http.md);
//! - the served description is the committed `docs/openapi.json`;
//! - under mTLS an HTTP request passes the same gate as its RPC: roles,
//!   unknown identities, other clients' reports, quotas, each refusal a
//!   problem carrying the gRPC code; gRPC-Web calls work and are gated;
//! - hostile input: each bad request gets a 4xx problem naming the field
//!   or reason (never a stack trace or SQL), and nothing is written: no
//!   source asked, no report, no verification in the audit log.

use std::{path::PathBuf, time::Duration};

use hedui::security::certs::{DevCa, Issued, Usage};
use hedui_mock_agencies::{
    population::{Population, PopulationConfig},
    truth::TruthPolicy,
};
use hedui_tests::{BrokerProcess, SEED, china_today, total_lookups};
use serde_json::{Value, json};

const HOUSEHOLDS: usize = 30;
const PLATFORM_A: &str = "spiffe://hedui.test/platform/a";
const PLATFORM_B: &str = "spiffe://hedui.test/platform/b";
const PLATFORM_Q: &str = "spiffe://hedui.test/platform/quota";
const AUDITOR: &str = "spiffe://hedui.test/auditor";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn simulation() -> String {
    format!("[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n")
}

fn applicants() -> Vec<String> {
    Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: china_today().parse().unwrap(),
    })
    .truth(&TruthPolicy::default())
    .into_iter()
    .map(|t| t.applicant_id)
    .collect()
}

fn verification(applicant: &str) -> Value {
    json!({"request": {
        "applicant_id": applicant,
        "consent_reference": "SQ-2026-000123",
        "purpose": "PURPOSE_DIBAO_APPLICATION",
        "operator_id": "case-worker-07",
    }})
}

/// The status and problem body of an error answer, checked to be a
/// problem that says what is wrong and nothing about the broker's insides.
async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap();
    assert_eq!(kind, "application/problem+json", "{status}: {text}");
    for leak in [
        "panicked",
        "sqlx",
        "SELECT",
        "INSERT",
        "src/",
        "backtrace",
        "RUST_",
    ] {
        assert!(!text.contains(leak), "{leak} in a problem: {text}");
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], status, "{text}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{text}"
    );
    assert!(body["code"].as_str().is_some(), "{text}");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_description() {
    let broker = BrokerProcess::start(&simulation(), &[]).await.unwrap();
    // Something to find: a report, and records in the audit log.
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{}/v1/verifications", broker.url))
        .json(&verification(&applicants()[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());

    let root = workspace();
    let tools = std::process::Command::new(root.join("scripts/tools"))
        .output()
        .expect("scripts/tools runs");
    assert!(
        tools.status.success(),
        "scripts/tools: {}",
        String::from_utf8_lossy(&tools.stderr)
    );
    let bin = PathBuf::from(String::from_utf8(tools.stdout).unwrap().trim()).join("schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: scripts/tools installs it",
        bin.display()
    );
    let examples = std::env::var("HEDUI_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".into());
    let seed = std::env::var("HEDUI_SCHEMATHESIS_SEED").unwrap_or_else(|_| "2018".into());
    let output = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(&bin)
            .arg("run")
            .arg(format!("{}/v1/openapi.json", broker.url))
            // Every check but positive_data_acceptance: the description
            // cannot say that an ID number's check digit must match or
            // that a consent letter must exist, so schema-valid requests
            // are refused with 400 by design.
            .args([
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
            ])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--max-examples", &examples, "--seed", &seed])
            // Endless streams (alerts, source health) never end a call.
            .args(["--exclude-path-regex", "alerts/stream$|health/stream$"])
            // One worker: with two, CPython 3.11 sometimes fails compiling
            // schemathesis's own modules in two threads at once (a
            // "Runtime Error" of the tool, not of the API).
            .args(["--workers", "1", "--request-timeout", "30"])
            .env("SCHEMATHESIS_HOOKS", "")
            .env("NO_COLOR", "1")
            .current_dir(broker.dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis finished within 10 minutes")
    .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let summary = out
        .lines()
        .rev()
        .find(|l| l.contains("generated"))
        .unwrap_or_default();
    eprintln!("schemathesis: {summary}");
    assert!(
        output.status.success(),
        "schemathesis failed:\n{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_description_is_the_committed_one() {
    let broker = BrokerProcess::start(&simulation(), &[]).await.unwrap();
    let served = reqwest::get(format!("{}/v1/openapi.json", broker.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let committed = std::fs::read_to_string(workspace().join("docs/openapi.json")).unwrap();
    assert!(
        served == committed,
        "docs/openapi.json differs from the served description: `cargo run -p hedui -- openapi > docs/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
}

/// A broker serving mTLS, and HTTP clients with certificates of its CA.
struct Tls {
    broker: BrokerProcess,
    ca: DevCa,
    _dir: tempfile::TempDir,
}

impl Tls {
    async fn start() -> Self {
        let ca = DevCa::new("hedui http test CA").unwrap();
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
        let config = format!(
            "[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = [{ca_file:?}]\n\n\
             [clients.\"{PLATFORM_A}\"]\nrole = \"platform\"\n\n\
             [clients.\"{PLATFORM_B}\"]\nrole = \"platform\"\n\n\
             [clients.\"{PLATFORM_Q}\"]\nrole = \"platform\"\nrate_per_s = 0.5\nburst = 2\n\n\
             [clients.\"{AUDITOR}\"]\nrole = \"auditor\"\n\n\
             [audit]\ncheckpoint_every_records = 1\n\n{}",
            simulation()
        );
        let broker = BrokerProcess::start(&config, &[]).await.unwrap();
        assert!(broker.url.starts_with("https://"), "{}", broker.url);
        Self {
            broker,
            ca,
            _dir: dir,
        }
    }

    fn client(&self, identity: &str) -> reqwest::Client {
        let issued: Issued = self.ca.issue(&[identity], Usage::Client).unwrap();
        let pem = format!("{}\n{}", issued.cert_pem, issued.key_pem);
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.cert_pem().as_bytes()).unwrap(),
            )
            .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.broker.url)
    }
}

/// A gRPC-Web call of `rpc` with an empty request message: the HTTP
/// status, the `grpc-status` (in the headers, or in the trailer frame at
/// the end of the body) and the body.
async fn grpc_web(client: &reqwest::Client, url: &str) -> (u16, String, Vec<u8>) {
    let response = client
        .post(url)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let in_headers = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.unwrap().to_vec();
    let grpc_status = in_headers.unwrap_or_else(|| {
        // The last frame: flag 0x80, then `grpc-status:N\r\n...`.
        let text = String::from_utf8_lossy(&body);
        text.split("grpc-status:")
            .nth(1)
            .and_then(|t| t.split(['\r', '\n']).next())
            .unwrap_or("none")
            .trim()
            .to_owned()
    });
    (status, grpc_status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_pass_the_same_gate_as_their_rpcs() {
    let f = Tls::start().await;
    let applicant = applicants()[1].clone();
    let platform = f.client(PLATFORM_A);

    // A platform verifies over HTTP/JSON.
    let answer = platform
        .post(f.url("/v1/verifications"))
        .json(&verification(&applicant))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let report: Value = answer.json().await.unwrap();
    let report_id = report["report"]["report_id"].as_str().unwrap().to_owned();
    assert!(report["report"]["verdict"].is_string(), "{report}");

    // Its own report it reads; another platform gets NOT_FOUND, word for
    // word as a report that does not exist.
    let own = platform
        .get(f.url(&format!("/v1/reports/{report_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    let (status, body) = problem(
        f.client(PLATFORM_B)
            .get(f.url(&format!("/v1/reports/{report_id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));
    assert_eq!(body["detail"], format!("report_id: no report {report_id}"));

    // An auditor may not verify; a platform may not read the access log.
    let (status, body) = problem(
        f.client(AUDITOR)
            .post(f.url("/v1/verifications"))
            .json(&verification(&applicant))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("/hedui.v1.VerificationService/Verify needs the role platform"),
        "{body}"
    );
    let (status, _) = problem(
        platform
            .post(f.url("/v1/audit/records/search"))
            .json(&json!({"auditor_id": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);

    // A certificate of the CA whose identity has no role here.
    let (status, body) = problem(
        f.client("spiffe://hedui.test/stranger")
            .get(f.url("/v1/sources/health"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );

    // The refusals are in the access log, which the auditor reads over
    // HTTP too.
    let auditor = f.client(AUDITOR);
    let mut denied = Vec::new();
    for _ in 0..50 {
        let found: Value = auditor
            .post(f.url("/v1/audit/records/search"))
            .json(&json!({"auditor_id": "inspector-1", "filter": {"kind": "AUDIT_RECORD_KIND_DENIED"}, "page_size": 100}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        denied = found["records"].as_array().cloned().unwrap_or_default();
        if denied.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcomes: Vec<&str> = denied
        .iter()
        .filter_map(|r| r["outcome"].as_str())
        .collect();
    for outcome in ["not_owner", "permission_denied", "unauthenticated"] {
        assert!(outcomes.contains(&outcome), "{outcome} not in {outcomes:?}");
    }

    // An auditor proves a record's inclusion against a signed checkpoint,
    // and the proof checks out; a platform may not ask.
    let seq = denied[0]["seq"].as_str().unwrap_or("0").to_owned();
    let mut proof = Value::Null;
    for _ in 0..50 {
        let answer = auditor
            .get(f.url(&format!(
                "/v1/audit/records/{seq}/proof?auditor_id=inspector-1"
            )))
            .send()
            .await
            .unwrap();
        if answer.status() == 200 {
            proof = answer.json().await.unwrap();
            break;
        }
        // No checkpoint covers it yet.
        assert_eq!(problem(answer).await.0, 400);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hash = |v: &Value| -> [u8; 32] {
        hex::decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let path: Vec<[u8; 32]> = proof["path"]
        .as_array()
        .map(|p| p.iter().map(hash).collect())
        .unwrap_or_default();
    let checkpoint = &proof["checkpoint"];
    assert!(
        hedui::audit::merkle::verify_inclusion(
            hedui::audit::crypto::Suite::Sha256Ed25519,
            &hash(&proof["leaf_hash"]),
            seq.parse().unwrap(),
            checkpoint["tree_size"].as_str().unwrap().parse().unwrap(),
            &path,
            &hash(&checkpoint["root"]),
        ),
        "the proof does not lead to the checkpoint's root: {proof}"
    );
    let (status, _) = problem(
        platform
            .get(f.url(&format!("/v1/audit/records/{seq}/proof?auditor_id=x")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);

    // Over its quota a client gets 429 with a retry hint.
    let quota = f.client(PLATFORM_Q);
    let mut refused = None;
    for _ in 0..6 {
        let answer = quota.get(f.url("/v1/sources/health")).send().await.unwrap();
        if answer.status() == 429 {
            let retry = answer.headers().get("retry-after").cloned();
            refused = Some((retry, problem(answer).await.1));
            break;
        }
    }
    let (retry, body) = refused.expect("a client over its rate is refused");
    assert!(retry.is_some());
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED");
    assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");

    // gRPC-Web, as a browser's generated stubs call it, through the same
    // gate.
    let url = f.url("/hedui.v1.SourceHealthService/ListSourceHealth");
    let (status, grpc_status, body) = grpc_web(&platform, &url).await;
    assert_eq!((status, grpc_status.as_str()), (200, "0"));
    assert!(
        String::from_utf8_lossy(&body).contains("rural-commercial-bank"),
        "the list names the sources"
    );
    let stranger = f.client("spiffe://hedui.test/stranger");
    let (_, grpc_status, _) = grpc_web(&stranger, &url).await;
    assert_eq!(grpc_status, "16", "UNAUTHENTICATED");
    let (_, grpc_status, _) =
        grpc_web(&auditor, &f.url("/hedui.v1.VerificationService/GetReport")).await;
    assert_eq!(grpc_status, "7", "PERMISSION_DENIED");
}

/// A hostile request: what it is, method, path, content type, body, the
/// HTTP status it gets, and the field (or a piece of the detail) its
/// problem names.
type Row<'a> = (&'a str, &'a str, String, &'a str, Vec<u8>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_input_is_refused_naming_the_field_and_writes_nothing() {
    let broker = BrokerProcess::start(&simulation(), &["--simulation-control", "127.0.0.1:0"])
        .await
        .unwrap();
    let control = broker.simulation_control.clone().unwrap();
    let valid = applicants()[2].clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = broker.url.clone();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let bad_check = {
        let mut id = valid.clone();
        let last = if id.ends_with('0') { "1" } else { "0" };
        id.replace_range(17.., last);
        id
    };
    let rows: Vec<Row<'_>> = vec![
        (
            "not JSON",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            b"{".to_vec(),
            400,
            "body",
        ),
        (
            "not an object",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            b"[1,2]".to_vec(),
            400,
            "body",
        ),
        (
            "not UTF-8",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            vec![0x7b, 0xff, 0xfe, 0x7d],
            400,
            "body",
        ),
        (
            "nested too deep",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            deep.into_bytes(),
            400,
            "body",
        ),
        (
            "a wrong type",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            br#"{"request": {"applicant_id": 5}}"#.to_vec(),
            400,
            "request.applicant_id",
        ),
        (
            "an unknown field",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            br#"{"request": {"applicant": "x"}}"#.to_vec(),
            400,
            "applicant",
        ),
        (
            "null",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            br#"{"request": {"purpose": null}}"#.to_vec(),
            400,
            "request.purpose",
        ),
        (
            "an unknown enum value",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            br#"{"request": {"purpose": "PURPOSE_ANYTHING"}}"#.to_vec(),
            400,
            "request.purpose",
        ),
        (
            "a 19-digit number",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            br#"{"request": {"deadline": "99999999999999999999s"}}"#.to_vec(),
            400,
            "request.deadline",
        ),
        (
            "a short ID number",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            verification(&valid[..17]).to_string().into_bytes(),
            400,
            "applicant_id",
        ),
        (
            "a wrong check digit",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            verification(&bad_check).to_string().into_bytes(),
            400,
            "applicant_id",
        ),
        (
            "no request",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            b"{}".to_vec(),
            400,
            "request",
        ),
        (
            "text, not JSON",
            "POST",
            "/v1/verifications".into(),
            "text/plain",
            verification(&valid).to_string().into_bytes(),
            415,
            "content-type",
        ),
        (
            "too large",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            format!(
                "{{\"request\": {{\"operator_id\": \"{}\"}}}}",
                "x".repeat(70_000)
            )
            .into_bytes(),
            413,
            "body",
        ),
        (
            "a wrong method",
            "PUT",
            "/v1/verifications".into(),
            "application/json",
            Vec::new(),
            405,
            "method",
        ),
        (
            "no such resource",
            "GET",
            "/v1/verification".into(),
            "",
            Vec::new(),
            404,
            "path",
        ),
        (
            "a report id that is no id",
            "GET",
            "/v1/reports/not-a-uuid".into(),
            "",
            Vec::new(),
            400,
            "report_id",
        ),
        (
            "a report that does not exist",
            "GET",
            format!("/v1/reports/{}", "0b5d4f1e-8c1a-4a57-9a3e-2f6a1c3b9d10"),
            "",
            Vec::new(),
            404,
            "report_id",
        ),
        (
            "a body where none is taken",
            "GET",
            "/v1/audit/chain".into(),
            "application/json",
            b"{}".to_vec(),
            400,
            "body",
        ),
        (
            "an unknown query parameter",
            "GET",
            "/v1/audit/chain?auditor_id=1&bogus=2".into(),
            "",
            Vec::new(),
            400,
            "bogus",
        ),
        (
            "a query value of the wrong type",
            "GET",
            "/v1/sources/health/stream?interval=soon".into(),
            "",
            Vec::new(),
            400,
            "interval",
        ),
        (
            "a path and body that disagree",
            "POST",
            "/v1/consents/SQ-1/revoke".into(),
            "application/json",
            br#"{"reference": "SQ-2"}"#.to_vec(),
            400,
            "reference",
        ),
        (
            "a bad deadline header",
            "POST",
            "/v1/verifications".into(),
            "application/json",
            verification(&valid).to_string().into_bytes(),
            400,
            "x-hedui-timeout-ms",
        ),
    ];
    for (what, method, path, kind, body, want, named) in rows {
        let mut request = http.request(method.parse().unwrap(), format!("{base}{path}"));
        if !kind.is_empty() {
            request = request.header("content-type", kind);
        }
        if what == "a bad deadline header" {
            request = request.header("x-hedui-timeout-ms", "soon");
        }
        let (status, problem) = problem(request.body(body).send().await.unwrap()).await;
        assert_eq!(status, want, "{what}: {problem}");
        let field = problem["field"].as_str().unwrap_or_default();
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            field == named || detail.contains(named),
            "{what}: the problem names neither field nor reason {named:?}: {problem}"
        );
    }
    // Nothing was written: no source asked, no verification recorded.
    assert_eq!(
        total_lookups(&control).await.unwrap(),
        0,
        "a source was asked"
    );
    let records: Value = http
        .post(format!("{base}/v1/audit/records/search"))
        .json(&json!({"auditor_id": "inspector-1", "filter": {"kind": "AUDIT_RECORD_KIND_VERIFICATION"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        records["records"].as_array().is_none_or(Vec::is_empty),
        "a verification was recorded: {records}"
    );
}
