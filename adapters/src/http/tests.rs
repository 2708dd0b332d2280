//! Tests of the HTTP/JSON transport against small in-process servers.

use std::{net::SocketAddr, sync::Mutex, time::Instant};

use axum::{body::Body, extract::Request, response::Response};
use hedui_proto::v1::{FinancialAccount, ProvidentFund, fact::Value};

use super::*;
use crate::catalog::Catalog;

/// What a test server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

type Handler = Arc<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

/// Serves `handler` on a loopback port, after `delay`; records requests.
async fn serve(delay: Duration, handler: Handler) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let handler = handler.clone();
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
            let s = Seen {
                method: parts.method.to_string(),
                path_and_query: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                headers: parts.headers,
                body,
            };
            log.lock().unwrap().push(s.clone());
            tokio::time::sleep(delay).await;
            let (status, body) = handler(&s);
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("retry-after", "7")
                .body(Body::from(body))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

const ALICE: &str = "110105194912310021";
const BOB: &str = "11010519491231002X";

fn request(ids: &[&str]) -> LookupRequest {
    LookupRequest {
        request_id: "req-1".into(),
        source_id: "provident-fund".into(),
        person_ids: ids.iter().map(|s| s.to_string()).collect(),
        fact_kinds: Vec::new(),
        purpose: 1,
        consent_reference: "SQ-1".into(),
    }
}

fn ctx() -> LookupContext {
    LookupContext::with_timeout(Duration::from_secs(5))
}

fn build(source: &str, text: &str) -> Result<HttpAdapter, String> {
    let spec = Catalog::dachuan().get(source).unwrap().clone();
    let table: toml::Table = toml::from_str(text).unwrap();
    let params: HttpParams = parse_params("http", &table).map_err(|e| e.to_string())?;
    HttpAdapter::new(&spec, &params)
}

fn pf_config(addr: SocketAddr) -> String {
    format!(
        r#"
        auth = {{ type = "header", name = "Authorization", prefix = "Bearer ", value = "t0ken" }}
        deadline_header = "X-Timeout-Ms"
        [request]
        url = "http://{addr}/gjj/api/v1/accounts/{{person_id}}"
        query = {{ purpose = "{{purpose}}" }}
        [response]
        code = "/code"
        ok_codes = [0]
        no_record_codes = [4004]
        unavailable_codes = [5003]
        message = "/msg"
        data = "/data"
        as_of = "/updated"
        [[facts]]
        kind = "PROVIDENT_FUND"
        record_id = "/grzh"
        record_id_prefix = "PF-"
        [facts.fields]
        monthly_contribution_fen = {{ from = "/yjce", unit = "yuan" }}
        contribution_base_fen = {{ from = "/jcjs", unit = "yuan" }}
        balance_fen = {{ from = "/zhye", unit = "yuan" }}
        loan_balance_fen = {{ from = "/dkye", unit = "yuan", default = 0 }}
        "#
    )
}

fn pf_answer(s: &Seen) -> (u16, String) {
    if s.headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer t0ken") {
        return (401, r#"{"code": 401, "msg": "bad token"}"#.into());
    }
    if s.path_and_query.contains(ALICE) {
        (
            200,
            r#"{"code": 0, "updated": "2026-11-23 08:00:00", "data": {"grzh": "0042",
                "yjce": "480.00", "jcjs": 2400, "zhye": "12345.67", "dkye": null}}"#
                .into(),
        )
    } else if s.path_and_query.contains(BOB) {
        (200, r#"{"code": 4004, "msg": "no such account"}"#.into())
    } else {
        (200, r#"{"code": 0, "data": null}"#.into())
    }
}

#[tokio::test]
async fn per_person_answers_are_mapped_with_units_and_no_records() {
    let (addr, seen) = serve(Duration::ZERO, Arc::new(pf_answer)).await;
    let adapter = build("provident-fund", &pf_config(addr)).unwrap();
    let third = "110105194912310013";
    let resp = adapter
        .lookup(&ctx(), &request(&[ALICE, BOB, third]))
        .await
        .unwrap();
    assert_eq!(resp.answers.len(), 3);
    let alice = resp.answers.iter().find(|a| a.person_id == ALICE).unwrap();
    assert_eq!(alice.facts.len(), 1);
    assert_eq!(alice.facts[0].record_id, "PF-0042");
    assert_eq!(alice.facts[0].as_of.unwrap().seconds, 1_795_392_000);
    assert_eq!(
        alice.facts[0].value,
        Some(Value::ProvidentFund(ProvidentFund {
            monthly_contribution_fen: 48_000,
            contribution_base_fen: 240_000,
            balance_fen: 1_234_567,
            loan_balance_fen: 0,
        }))
    );
    for id in [BOB, third] {
        let a = resp.answers.iter().find(|a| a.person_id == id).unwrap();
        assert!(a.facts.is_empty(), "{id} has no record");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    let s = seen
        .iter()
        .find(|s| s.path_and_query.contains(ALICE))
        .unwrap();
    assert_eq!(s.method, "GET");
    assert_eq!(
        s.path_and_query,
        format!("/gjj/api/v1/accounts/{ALICE}?purpose=PURPOSE_DIBAO_APPLICATION")
    );
    let left: u64 = s.headers["x-timeout-ms"].to_str().unwrap().parse().unwrap();
    assert!((1..=5_000).contains(&left), "{left}");
}

#[tokio::test]
async fn a_person_id_cannot_change_the_request() {
    let (addr, seen) = serve(Duration::ZERO, Arc::new(pf_answer)).await;
    let adapter = build("provident-fund", &pf_config(addr)).unwrap();
    let evil = "' OR 1=1 --/../admin?x=1#";
    let resp = adapter.lookup(&ctx(), &request(&[evil])).await.unwrap();
    assert!(resp.answers[0].facts.is_empty());
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0].path_and_query,
        "/gjj/api/v1/accounts/%27%20OR%201%3D1%20--%2F..%2Fadmin%3Fx%3D1%23?purpose=PURPOSE_DIBAO_APPLICATION"
    );
}

fn bank_config(addr: SocketAddr, secret: &str) -> String {
    format!(
        r#"
        auth = {{ type = "hmac", key_id = "hedui-1", secret = "{secret}" }}
        [request]
        method = "POST"
        url = "http://{addr}/esb/query"
        batch = true
        max_batch = 2
        body = {{ head = {{ seq = "{{request_id}}" }}, ids = "{{person_ids}}" }}
        [response]
        code = "/retCode"
        ok_codes = ["0000"]
        message = "/retMsg"
        persons = "/rows"
        person_id = "/idNo"
        [[facts]]
        kind = "FINANCIAL_ACCOUNT"
        records = "/accts"
        record_id = "/serial"
        [facts.fields]
        institution = {{ value = "Dachuan Rural Commercial Bank" }}
        account_ref = "/acctNo"
        account_type = {{ from = "/prod", map = {{ "01" = "DEPOSIT", "05" = "WEALTH_MANAGEMENT" }} }}
        balance_fen = {{ from = "/bal", unit = "yuan" }}
        income_12m_fen = {{ from = "/int", unit = "yuan" }}
        [[facts]]
        kind = "ACCOUNT_OUTFLOW"
        records = "/out"
        record_id = "/serial"
        [facts.fields]
        institution = {{ value = "Dachuan Rural Commercial Bank" }}
        months = "/m"
        total_fen = {{ from = "/amt", unit = "yuan" }}
        "#
    )
}

/// A bank that checks signatures and answers with `body_of(ids)`.
fn bank(body_of: fn(&[String]) -> String) -> Handler {
    Arc::new(move |s: &Seen| {
        let v = sign::verify(
            "hedui-1",
            b"s3cret",
            &s.method,
            &s.path_and_query,
            &s.headers,
            &s.body,
            Utc::now().timestamp(),
            300,
        );
        if let Err(e) = v {
            return (401, format!(r#"{{"retCode": "9001", "retMsg": "{e}"}}"#));
        }
        let req: Json = serde_json::from_slice(&s.body).unwrap();
        let ids: Vec<String> = serde_json::from_value(req["ids"].clone()).unwrap();
        (200, body_of(&ids))
    })
}

fn good_bank(ids: &[String]) -> String {
    let rows: Vec<Json> = ids
        .iter()
        .filter(|id| id.as_str() != BOB)
        .map(|id| {
            serde_json::json!({"idNo": id, "accts": [
                {"serial": format!("RCB-{}", &id[14..]), "acctNo": "6230****1", "prod": "01", "bal": "100.50", "int": 1.2}
            ], "out": {"serial": "O1", "m": 12, "amt": "3000"}})
        })
        .collect();
    serde_json::json!({"retCode": "0000", "rows": rows}).to_string()
}

#[tokio::test]
async fn batches_are_signed_and_split() {
    let (addr, seen) = serve(Duration::ZERO, bank(good_bank)).await;
    let adapter = build("rural-commercial-bank", &bank_config(addr, "s3cret")).unwrap();
    let ids = [ALICE, BOB, "110105194912310013"];
    let resp = adapter.lookup(&ctx(), &request(&ids)).await.unwrap();
    assert_eq!(resp.answers.len(), 3);
    let alice = resp.answers.iter().find(|a| a.person_id == ALICE).unwrap();
    assert_eq!(alice.facts.len(), 2);
    assert_eq!(
        alice.facts[0].value,
        Some(Value::FinancialAccount(FinancialAccount {
            institution: "Dachuan Rural Commercial Bank".into(),
            account_ref: "6230****1".into(),
            account_type: 1,
            balance_fen: 10_050,
            income_12m_fen: 120,
        }))
    );
    let bob = resp.answers.iter().find(|a| a.person_id == BOB).unwrap();
    assert!(
        bob.facts.is_empty(),
        "absent from the batch answer: no record"
    );
    // Three persons, at most two per request.
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        let body: Json = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(body["head"]["seq"], "req-1");
    }

    // Only the kinds asked for.
    let mut only = request(&[ALICE]);
    only.fact_kinds = vec![FactKind::AccountOutflow as i32];
    let resp = adapter.lookup(&ctx(), &only).await.unwrap();
    assert_eq!(resp.answers[0].facts.len(), 1);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_source() {
    let (addr, _) = serve(Duration::ZERO, bank(good_bank)).await;
    let adapter = build("rural-commercial-bank", &bank_config(addr, "guess")).unwrap();
    let err = adapter
        .lookup(&ctx(), &request(&[ALICE]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AdapterError::Rejected("HTTP 401 Unauthorized: signature does not match".into())
    );
}

/// Each broken answer becomes an unusable answer (ERROR), naming why.
#[tokio::test]
async fn broken_answers_are_unusable_not_panics() {
    type Answer = fn(&[String]) -> String;
    let cases: [(Answer, &str); 7] = [
        (
            |_| {
                r#"{"retCode": "0000", "rows": [{"idNo": "110105194912310021", "accts": [{"serial": "1", "acctNo": "x", "prod": "01", "bal": "lots", "int": 0}]}]}"#.into()
            },
            "\"lots\" is not a number",
        ),
        (
            |_| {
                r#"{"retCode": "0000", "rows": [{"idNo": "110105194912310021", "accts": [{"serial": "1", "acctNo": "x", "prod": "77", "bal": "1", "int": 0}]}]}"#.into()
            },
            "unknown code \"77\"",
        ),
        (
            |_| {
                r#"{"retCode": "0000", "rows": [{"idNo": "110105194912310021", "accts": [{"serial": "1", "acctNo": "x", "prod": "01", "bal": "-5.00", "int": 0}]}]}"#.into()
            },
            "negative",
        ),
        (
            |_| r#"{"retCode": "0000", "rows": [{"idNo": "999", "accts": []}]}"#.into(),
            "not asked about",
        ),
        (
            |_| {
                r#"{"retCode": "0000", "rows": [{"idNo": "110105194912310021"}, {"idNo": "110105194912310021"}]}"#.into()
            },
            "answered twice",
        ),
        (|_| "<html>oops</html>".into(), "not JSON"),
        (
            |_| format!(r#"{{"retCode": "0000", "pad": "{}"}}"#, "x".repeat(5000)),
            "larger than 4096 bytes",
        ),
    ];
    for (answer, expected) in cases {
        let (addr, _) = serve(Duration::ZERO, bank(answer)).await;
        let mut text = bank_config(addr, "s3cret");
        text.insert_str(0, "max_response_bytes = 4096\n");
        let adapter = build("rural-commercial-bank", &text).unwrap();
        let err = adapter
            .lookup(&ctx(), &request(&[ALICE]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AdapterError::Malformed(m) if m.contains(expected)),
            "expected {expected:?}, got {err:?}"
        );
    }
}

#[tokio::test]
async fn statuses_become_typed_errors() {
    type Expected = fn(&AdapterError) -> bool;
    let cases: [(u16, &str, Expected); 6] = [
        (503, "{}", |e| matches!(e, AdapterError::Unavailable(_))),
        (429, "{}", |e| {
            *e == AdapterError::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
            }
        }),
        (500, "{}", |e| matches!(e, AdapterError::Internal(_))),
        (400, "{}", |e| matches!(e, AdapterError::Rejected(_))),
        (504, "{}", |e| *e == AdapterError::Timeout),
        (200, r#"{"code": 5003, "msg": "batch window"}"#, |e| {
            *e == AdapterError::Unavailable("code 5003: HTTP 200 OK: batch window".into())
        }),
    ];
    for (status, body, ok) in cases {
        let (addr, _) = serve(
            Duration::ZERO,
            Arc::new(move |_: &Seen| (status, body.into())),
        )
        .await;
        let adapter = build("provident-fund", &pf_config(addr)).unwrap();
        let err = adapter
            .lookup(&ctx(), &request(&[ALICE]))
            .await
            .unwrap_err();
        assert!(ok(&err), "HTTP {status}: {err:?}");
    }
    // Nobody listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let adapter = build("provident-fund", &pf_config(addr)).unwrap();
    let err = adapter
        .lookup(&ctx(), &request(&[ALICE]))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Unavailable(_)), "{err:?}");
    assert!(adapter.check().await.is_err());
}

#[tokio::test]
async fn the_deadline_bounds_a_slow_source() {
    let (addr, _) = serve(Duration::from_secs(10), Arc::new(pf_answer)).await;
    let adapter = build("provident-fund", &pf_config(addr)).unwrap();
    let started = Instant::now();
    let err = adapter
        .lookup(
            &LookupContext::with_timeout(Duration::from_millis(200)),
            &request(&[ALICE]),
        )
        .await
        .unwrap_err();
    assert_eq!(err, AdapterError::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let check = adapter.check().await.unwrap();
    assert!(check.serving);
}

#[test]
fn configuration_errors_name_the_key() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let base = pf_config(addr);
    let e = |text: &str| build("provident-fund", text).unwrap_err();
    let m = e(&base.replace("[request]", "[request]\ncolour = 1"));
    assert!(m.contains("unknown field `colour`"), "{m}");
    let m = e(&base.replace("http://", "https://"));
    assert!(
        m.starts_with("tls: required for the https:// request.url"),
        "{m}"
    );
    let m = e(&base.replace("[request]", "tls = { ca = \"/no/ca.pem\" }\n[request]"));
    assert!(
        m.starts_with("request.url: ") && m.contains("must start with https://"),
        "{m}"
    );
    let m = e(&base
        .replace("http://", "https://")
        .replace("[request]", "tls = { ca = \"/no/ca.pem\" }\n[request]"));
    assert_eq!(m, "tls.ca: cannot read /no/ca.pem: no such file");
    let m = e(&base.replace("{person_id}", "{personid}"));
    assert!(m.contains("unknown placeholder {personid}"), "{m}");
    let m = e(&base.replace("accounts/{person_id}", "accounts"));
    assert!(m.contains("{person_id} must appear"), "{m}");
    let m = e(&base.replace("ok_codes = [0]", ""));
    assert!(m.contains("response.ok_codes: required"), "{m}");
    let m = e(&base.replace("type = \"header\"", "type = \"kerberos\""));
    assert!(m.contains("kerberos"), "{m}");
    let m = e(&base.replace(
        "value = \"t0ken\"",
        "value_env = \"HEDUI_TEST_SURELY_UNSET\"",
    ));
    assert_eq!(
        m,
        "auth.value_env: environment variable HEDUI_TEST_SURELY_UNSET is not set"
    );
    let m = e(&base.replace("kind = \"PROVIDENT_FUND\"", "kind = \"VEHICLE\""));
    assert!(m.contains("does not report VEHICLE"), "{m}");
    // A bank that maps accounts but not outflows would read as "no
    // outflows": refused.
    let bank = bank_config(addr, "s");
    let cut = bank
        .find("[[facts]]\n        kind = \"ACCOUNT_OUTFLOW\"")
        .unwrap();
    let m = build("rural-commercial-bank", &bank[..cut]).unwrap_err();
    assert!(m.contains("no mapping for ACCOUNT_OUTFLOW"), "{m}");
}

#[test]
fn secrets_do_not_leak_into_debug_output() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let a = build("rural-commercial-bank", &bank_config(addr, "do-not-print")).unwrap();
    let text = format!("{a:?}");
    assert!(!text.contains("do-not-print"), "{text}");
    let p = build("provident-fund", &pf_config(addr)).unwrap();
    assert!(!format!("{p:?}").contains("t0ken"));
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hedui-http-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_bearer_token_from_a_file_is_sent_and_never_printed() {
    let (addr, seen) = serve(Duration::ZERO, Arc::new(pf_answer)).await;
    let dir = scratch("bearer");
    let token = dir.join("token");
    // The test server takes `Bearer t0ken` only.
    std::fs::write(&token, "t0ken\n").unwrap();
    let config = pf_config(addr).replace(
        r#"auth = { type = "header", name = "Authorization", prefix = "Bearer ", value = "t0ken" }"#,
        &format!("auth = {{ bearer_token_file = {token:?} }}"),
    );
    let adapter = build("provident-fund", &config).unwrap();
    assert!(!format!("{adapter:?}").contains("t0ken"));
    adapter.lookup(&ctx(), &request(&[ALICE])).await.unwrap();
    assert_eq!(
        seen.lock().unwrap()[0].headers["authorization"],
        "Bearer t0ken"
    );

    // The typed header block takes its value from a file too.
    let config = pf_config(addr).replace("value = \"t0ken\"", &format!("value_file = {token:?}"));
    let adapter = build("provident-fund", &config).unwrap();
    assert!(!format!("{adapter:?}").contains("t0ken"));
    adapter.lookup(&ctx(), &request(&[ALICE])).await.unwrap();
    assert_eq!(
        seen.lock().unwrap()[1].headers["authorization"],
        "Bearer t0ken"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bearer_and_tls_errors_name_the_key_and_never_the_token() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let base = pf_config(addr);
    let with_auth = |auth: &str| {
        base.replace(
            r#"auth = { type = "header", name = "Authorization", prefix = "Bearer ", value = "t0ken" }"#,
            auth,
        )
    };
    let e = |text: &str| build("provident-fund", text).unwrap_err();
    let m = e(&with_auth("auth = { bearer_token = \"inl1ne\" }"));
    assert!(m.starts_with("auth.bearer_token: "), "{m}");
    assert!(
        m.contains("files or the environment") && !m.contains("inl1ne"),
        "{m}"
    );
    let m = e(&with_auth(
        "auth = { bearer_token_file = \"/no/such/token\" }",
    ));
    assert!(
        m.ends_with("auth.bearer_token_file: cannot read /no/such/token: no such file"),
        "{m}"
    );
    let m = e(&with_auth("auth = {}"));
    assert!(
        m.ends_with("auth: bearer_token_file or bearer_token_env is required"),
        "{m}"
    );
    let dir = scratch("empty");
    let empty = dir.join("empty");
    std::fs::write(&empty, "").unwrap();
    let m = e(&with_auth(&format!(
        "auth = {{ bearer_token_file = {empty:?} }}"
    )));
    assert!(
        m.ends_with(&format!(
            "auth.bearer_token_file: {} is empty",
            empty.display()
        )),
        "{m}"
    );
    let m = e(&base.replace("value = \"t0ken\"", &format!("value_file = {empty:?}")));
    assert!(
        m.ends_with(&format!("auth.value_file: {} is empty", empty.display())),
        "{m}"
    );
    let m = e(&base.replace("value = \"t0ken\"", "value = \"t0ken\", value_env = \"X\""));
    assert!(
        m.contains("auth: give one of value_file, value_env and value"),
        "{m}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let m = e(&base.replace("http://", "https://").replace(
        "[request]",
        "tls = { ca = \"/ca.pem\", cert = \"/c.pem\" }\n[request]",
    ));
    assert!(m.contains("tls.ca: cannot read /ca.pem"), "{m}");
}
