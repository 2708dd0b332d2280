//! Simulated sources over HTTP/JSON, in the shape their legacy REST systems
//! plausibly have: the Rural Commercial Bank's enterprise service bus (a
//! signed POST per customer, result codes, amounts in yuan as text), the
//! provident fund's query API (a GET per person with a bearer token, pinyin
//! field names), the employment agency's batch query (an API key, persons
//! without a record left out) and a second rural bank, the 29th source
//! ([`crate::population::SECOND_BANK_ID`], 404 for non-customers, amounts
//! as JSON numbers).
//!
//! Each answers from a [`SimulatedSource`], so latency, faults and counters
//! work as over gRPC. The broker's configuration for each is in
//! `mock-agencies/config/http/` ([`source_toml`]).

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hedui_adapters::{Adapter, AdapterError, LookupContext, catalog::SourceSpec, http::sign};
use hedui_proto::{
    v1::{FactKind, LookupRequest, LookupResponse, fact::Value},
    yuan,
};
use serde_json::{Value as J, json};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    population::{SECOND_BANK_ID, SECOND_BANK_NAME},
    sim::SimulatedSource,
};

/// The sources the simulation serves over HTTP/JSON.
pub const HTTP_SOURCES: [&str; 4] = [
    "rural-commercial-bank",
    "provident-fund",
    "employment",
    SECOND_BANK_ID,
];

/// The bank's key id for the broker.
pub const RCB_KEY_ID: &str = "hedui-dachuan";
/// The bank's shared secret for the broker (a test secret: it is in the
/// shipped configuration).
pub const RCB_SECRET: &str = "dachuan-rcb-test-secret";
/// The provident fund's bearer token for the broker.
pub const PF_TOKEN: &str = "pf-test-token";
/// The employment agency's API key for the broker.
pub const EMPLOYMENT_KEY: &str = "employment-test-key";
/// The second bank's API key for the broker.
pub const SECOND_BANK_KEY: &str = "tongchuan-test-key";

/// How long a request may wait when the caller sends no deadline.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// Signed requests more than this far from the bank's clock are refused.
const MAX_SKEW_SECS: i64 = 300;
/// Nonces the bank remembers, to refuse a replayed request.
const NONCES_KEPT: usize = 100_000;

/// The catalog entry of the second rural bank.
pub fn second_bank_spec() -> SourceSpec {
    SourceSpec {
        id: SECOND_BANK_ID.to_owned(),
        name: SECOND_BANK_NAME.to_owned(),
        fact_kinds: vec![FactKind::FinancialAccount],
    }
}

/// The broker's `[[sources]]` entry for a source served over HTTP at
/// `endpoint` (e.g. `http://127.0.0.1:40123`); `None` for a source not
/// served over HTTP.
pub fn source_toml(source_id: &str, endpoint: &str) -> Option<String> {
    let template = match source_id {
        "rural-commercial-bank" => include_str!("../config/http/rural-commercial-bank.toml"),
        "provident-fund" => include_str!("../config/http/provident-fund.toml"),
        "employment" => include_str!("../config/http/employment.toml"),
        SECOND_BANK_ID => include_str!("../config/http/tongchuan-rural-bank.toml"),
        _ => return None,
    };
    Some(template.replace("{endpoint}", endpoint))
}

/// One simulated source behind its REST API.
#[derive(Debug)]
struct Agency {
    source: Arc<SimulatedSource>,
    nonces: Mutex<(HashSet<String>, VecDeque<String>)>,
}

type Shared = State<Arc<Agency>>;

/// The REST API of a source; `None` for a source not served over HTTP.
pub fn router(source: Arc<SimulatedSource>) -> Option<Router> {
    let id = source.source_id().to_owned();
    let agency = Arc::new(Agency {
        source,
        nonces: Mutex::new((HashSet::new(), VecDeque::new())),
    });
    let r = match id.as_str() {
        "rural-commercial-bank" => Router::new().route("/esb/query/customerAssets", post(rcb)),
        "provident-fund" => Router::new().route("/gjj/api/v1/accounts", get(provident_fund)),
        "employment" => Router::new().route("/api/employment/query", post(employment)),
        SECOND_BANK_ID => Router::new().route("/api/v1/deposits/{id}", get(second_bank)),
        _ => return None,
    };
    Some(
        r.route("/health", get(|| async { "ok" }))
            .with_state(agency),
    )
}

/// Serves `router` on `listener` until `stop` turns true.
pub fn spawn(
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let signal = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::error!(error = %e, "http agency stopped with an error");
        }
    })
}

/// Serves `router` over TLS (`config`, with client certificates required
/// when it says so) on `listener` until `stop` turns true. Handshakes run
/// apart from the accept loop, so a client that never finishes one holds
/// no one else up; a failed handshake is logged and dropped.
pub fn spawn_tls(
    listener: TcpListener,
    router: Router,
    config: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let addr = listener.local_addr().ok();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let accept = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let shake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                match shake.await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    let tls_listener = TlsListener { rx, addr };
    tokio::spawn(async move {
        let signal = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        if let Err(e) = axum::serve(tls_listener, router)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::error!(error = %e, "http agency stopped with an error");
        }
        accept.abort();
    })
}

/// The TLS connections handshaken by [`spawn_tls`]'s accept loop.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    addr: Option<std::net::SocketAddr>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.addr
            .ok_or_else(|| std::io::Error::other("the listener has no address"))
    }
}

fn deadline(headers: &HeaderMap, name: &str) -> LookupContext {
    let ms = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    LookupContext::with_timeout(ms.map_or(DEFAULT_DEADLINE, Duration::from_millis))
}

async fn ask(
    agency: &Agency,
    ids: Vec<String>,
    ctx: &LookupContext,
) -> Result<LookupResponse, AdapterError> {
    let req = LookupRequest {
        source_id: agency.source.source_id().to_owned(),
        person_ids: ids,
        ..Default::default()
    };
    match tokio::time::timeout_at(ctx.deadline, agency.source.lookup(ctx, &req)).await {
        Err(_) => Err(AdapterError::Timeout),
        Ok(r) => r,
    }
}

fn china_time(t: Option<prost_types::Timestamp>) -> String {
    let t = t.unwrap_or_default();
    chrono::DateTime::from_timestamp(t.seconds, 0)
        .unwrap_or_default()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("offset"))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// The facts of the one person a per-person request asked about; `None`
/// when the answer is not about that person (a simulated malformed answer).
fn facts_of(resp: &LookupResponse, id: &str) -> Option<Vec<hedui_proto::v1::Fact>> {
    match resp.answers.as_slice() {
        [a] if a.person_id == id => Some(a.facts.clone()),
        _ => None,
    }
}

fn status(e: &AdapterError) -> StatusCode {
    match e {
        AdapterError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        AdapterError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AdapterError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        AdapterError::Rejected(_) => StatusCode::BAD_REQUEST,
        AdapterError::Malformed(_) | AdapterError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

// === Rural Commercial Bank ===

fn product_code(t: i32) -> String {
    format!("{t:02}")
}

async fn rcb(State(a): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let fail = |status: StatusCode, code: &str, msg: &str| {
        (status, Json(json!({"retCode": code, "retMsg": msg}))).into_response()
    };
    let verified = sign::verify(
        RCB_KEY_ID,
        RCB_SECRET.as_bytes(),
        "POST",
        "/esb/query/customerAssets",
        &headers,
        &body,
        chrono::Utc::now().timestamp(),
        MAX_SKEW_SECS,
    );
    if let Err(e) = verified {
        return fail(
            StatusCode::UNAUTHORIZED,
            "9001",
            &format!("签名验证失败: {e}"),
        );
    }
    let nonce = headers
        .get(sign::NONCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    {
        let mut n = a.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if !n.0.insert(nonce.clone()) {
            return fail(
                StatusCode::UNAUTHORIZED,
                "9001",
                "重复请求 (nonce replayed)",
            );
        }
        n.1.push_back(nonce);
        if n.1.len() > NONCES_KEPT
            && let Some(old) = n.1.pop_front()
        {
            n.0.remove(&old);
        }
    }
    let Ok(req) = serde_json::from_slice::<J>(&body) else {
        return fail(StatusCode::BAD_REQUEST, "9003", "报文格式错误");
    };
    let Some(id) = req["idNo"].as_str().map(str::to_owned) else {
        return fail(StatusCode::BAD_REQUEST, "9003", "缺少证件号码 idNo");
    };
    let ctx = deadline(&headers, "x-esb-timeout-ms");
    let resp = match ask(&a, vec![id.clone()], &ctx).await {
        Ok(r) => r,
        Err(AdapterError::Unavailable(_)) => {
            return fail(StatusCode::OK, "9002", "系统繁忙，请稍后再试");
        }
        Err(e) => return fail(status(&e), "9999", "系统错误"),
    };
    let Some(facts) = facts_of(&resp, &id) else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "9999", "系统错误");
    };
    if facts.is_empty() {
        return fail(StatusCode::OK, "1004", "客户不存在");
    }
    let mut accts = Vec::new();
    let mut outflows = Vec::new();
    for f in &facts {
        match &f.value {
            Some(Value::FinancialAccount(x)) => accts.push(json!({
                "serialNo": f.record_id, "acctNo": x.account_ref,
                "prodType": product_code(x.account_type),
                "bal": yuan(x.balance_fen), "int12m": yuan(x.income_12m_fen),
            })),
            Some(Value::AccountOutflow(x)) => outflows.push(json!({
                "serialNo": f.record_id, "periodMonths": x.months, "outAmt": yuan(x.total_fen),
            })),
            // A broken record: the bank's system writes what it has.
            _ => accts.push(json!({"serialNo": f.record_id})),
        }
    }
    Json(json!({
        "retCode": "0000", "retMsg": "交易成功",
        "data": {"asOfTime": china_time(resp.as_of), "acctList": accts, "outflowList": outflows},
    }))
    .into_response()
}

// === provident fund ===

#[derive(Debug, serde::Deserialize)]
struct PfQuery {
    idcard: Option<String>,
}

async fn provident_fund(
    State(a): Shared,
    headers: HeaderMap,
    Query(q): Query<PfQuery>,
) -> Response {
    let fail = |status: StatusCode, code: i64, msg: &str| {
        (
            status,
            Json(json!({"code": code, "msg": msg, "data": null})),
        )
            .into_response()
    };
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {PF_TOKEN}")) {
        return fail(StatusCode::UNAUTHORIZED, 401, "令牌无效");
    }
    let Some(id) = q.idcard.filter(|i| !i.is_empty()) else {
        return fail(StatusCode::BAD_REQUEST, 400, "缺少参数 idcard");
    };
    let resp = match ask(&a, vec![id.clone()], &deadline(&headers, "x-timeout-ms")).await {
        Ok(r) => r,
        Err(e) => return fail(status(&e), 500, "服务异常"),
    };
    let Some(facts) = facts_of(&resp, &id) else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, 500, "服务异常");
    };
    if facts.is_empty() {
        return Json(json!({"code": 0, "msg": "成功", "data": null})).into_response();
    }
    let updated = chrono::DateTime::from_timestamp(resp.as_of.unwrap_or_default().seconds, 0)
        .unwrap_or_default()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("offset"))
        .to_rfc3339();
    let accounts: Vec<J> = facts
        .iter()
        .map(|f| match &f.value {
            Some(Value::ProvidentFund(x)) => json!({
                "grzh": f.record_id, "gxsj": updated,
                "yjce": yuan(x.monthly_contribution_fen), "jcjs": yuan(x.contribution_base_fen),
                "zhye": yuan(x.balance_fen),
                "dkye": if x.loan_balance_fen == 0 { J::Null } else { J::String(yuan(x.loan_balance_fen)) },
            }),
            _ => json!({"grzh": f.record_id}),
        })
        .collect();
    Json(json!({"code": 0, "msg": "成功", "data": {"zhxx": accounts}})).into_response()
}

// === employment agency ===

fn employment_code(status: i32) -> &'static str {
    match status {
        1 => "E",
        2 => "U",
        3 => "P",
        4 => "F",
        _ => "N",
    }
}

async fn employment(State(a): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let fail = |status: StatusCode, code: &str, msg: &str| {
        (status, Json(json!({"resultCode": code, "resultMsg": msg}))).into_response()
    };
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(EMPLOYMENT_KEY) {
        return fail(StatusCode::FORBIDDEN, "41", "invalid api key");
    }
    let ids: Option<Vec<String>> = serde_json::from_slice::<J>(&body)
        .ok()
        .and_then(|b| serde_json::from_value(b["idCards"].clone()).ok());
    let Some(ids) = ids.filter(|i| !i.is_empty()) else {
        return fail(StatusCode::BAD_REQUEST, "40", "idCards is required");
    };
    if ids.len() > 50 {
        return fail(
            StatusCode::BAD_REQUEST,
            "40",
            "at most 50 idCards per query",
        );
    }
    let resp = match ask(&a, ids, &deadline(&headers, "x-timeout-ms")).await {
        Ok(r) => r,
        Err(e) => return fail(status(&e), "50", "query failed"),
    };
    let rows: Vec<J> = resp
        .answers
        .iter()
        .filter(|p| !p.facts.is_empty())
        .map(|p| {
            let records: Vec<J> = p
                .facts
                .iter()
                .map(|f| match &f.value {
                    Some(Value::Employment(x)) => json!({
                        "id": f.record_id, "status": employment_code(x.status),
                        "employer": x.employer, "wage": yuan(x.monthly_wage_fen),
                        "benefit": yuan(x.unemployment_benefit_fen),
                    }),
                    _ => json!({"id": f.record_id}),
                })
                .collect();
            json!({"idCard": p.person_id, "records": records})
        })
        .collect();
    Json(json!({"resultCode": "00", "resultMsg": "ok", "rows": rows})).into_response()
}

// === second rural bank ===

async fn second_bank(State(a): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(SECOND_BANK_KEY) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "bad api key"})),
        )
            .into_response();
    }
    let resp = match ask(&a, vec![id.clone()], &deadline(&headers, "x-timeout-ms")).await {
        Ok(r) => r,
        Err(e) => return (status(&e), Json(json!({"error": e.to_string()}))).into_response(),
    };
    let Some(facts) = facts_of(&resp, &id) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "internal"})),
        )
            .into_response();
    };
    if facts.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not a customer"})),
        )
            .into_response();
    }
    let as_of = chrono::DateTime::from_timestamp(resp.as_of.unwrap_or_default().seconds, 0)
        .unwrap_or_default()
        .to_rfc3339();
    let deposits: Vec<J> = facts
        .iter()
        .map(|f| match &f.value {
            Some(Value::FinancialAccount(x)) => json!({
                "ref": f.record_id, "account": x.account_ref, "type": "SAVINGS",
                // JSON numbers, as this bank writes them.
                "balanceYuan": x.balance_fen as f64 / 100.0,
                "interestYuan": x.income_12m_fen as f64 / 100.0,
            }),
            _ => json!({"ref": f.record_id}),
        })
        .collect();
    Json(json!({"customer": id, "asOf": as_of, "deposits": deposits})).into_response()
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;
    use hedui_adapters::{
        answer::check_answer,
        catalog::Catalog,
        registry::{Registry, TransportConfig},
    };

    use super::*;
    use crate::{
        population::{Population, PopulationConfig},
        sim::{FaultConfig, LatencyConfig},
    };

    fn population() -> Arc<Population> {
        Population::shared(&PopulationConfig {
            seed: 21,
            households: 600,
            today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
        })
    }

    /// Serves `source_id` over HTTP and builds the broker's adapter for it
    /// from the shipped configuration.
    async fn served(
        source_id: &str,
    ) -> (
        Arc<SimulatedSource>,
        Arc<dyn Adapter>,
        SourceSpec,
        watch::Sender<bool>,
    ) {
        let spec = Catalog::dachuan()
            .get(source_id)
            .cloned()
            .unwrap_or_else(second_bank_spec);
        let source = Arc::new(SimulatedSource::new(
            &spec,
            population(),
            LatencyConfig::ZERO,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        spawn(listener, router(source.clone()).unwrap(), rx);
        let text = source_toml(source_id, &format!("http://{addr}")).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let entry = &table["sources"].as_array().unwrap()[0];
        let transport: TransportConfig = entry["transport"].clone().try_into().unwrap();
        let adapter = Registry::with_builtin().build(&spec, &transport).unwrap();
        (source, adapter, spec, stop)
    }

    /// Over HTTP, every source answers exactly what it answers in-process.
    #[tokio::test]
    async fn http_answers_equal_the_simulation() {
        let pop = population();
        let ts = prost_types::Timestamp::default();
        // Persons each source knows, persons it does not, and a stranger.
        let ids_for = |source_id: &str| -> Vec<String> {
            let (known, unknown): (Vec<String>, Vec<String>) = pop
                .households()
                .flat_map(|h| h.members().map(|p| p.id().to_owned()).collect::<Vec<_>>())
                .partition(|id| !pop.facts_for(source_id, id, ts).is_empty());
            known
                .into_iter()
                .take(60)
                .chain(unknown.into_iter().take(30))
                .chain(["110105194912310021".to_owned()])
                .collect()
        };
        for source_id in HTTP_SOURCES {
            let (source, adapter, spec, _stop) = served(source_id).await;
            let req = LookupRequest {
                request_id: "t".into(),
                source_id: source_id.into(),
                person_ids: ids_for(source_id),
                fact_kinds: spec.fact_kinds.iter().map(|k| *k as i32).collect(),
                ..Default::default()
            };
            let ctx = LookupContext::with_timeout(Duration::from_secs(10));
            let got = adapter.lookup(&ctx, &req).await.unwrap();
            check_answer(&req, &got, &spec.fact_kinds).unwrap();
            let want = source.answer(&req);
            let mut n = 0;
            for w in &want.answers {
                let g = got
                    .answers
                    .iter()
                    .find(|g| g.person_id == w.person_id)
                    .unwrap();
                let strip = |fs: &[hedui_proto::v1::Fact]| {
                    let mut v: Vec<_> = fs
                        .iter()
                        .map(|f| (f.record_id.clone(), f.value.clone()))
                        .collect();
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                    v
                };
                assert_eq!(
                    strip(&g.facts),
                    strip(&w.facts),
                    "{source_id} {}",
                    w.person_id
                );
                n += w.facts.len();
            }
            assert!(n > 0, "{source_id} holds no record of anyone asked");
        }
    }

    /// The HTTP example shipped in deploy/config is the configuration the
    /// tests run against the simulation.
    #[test]
    fn the_shipped_example_is_the_tested_configuration() {
        let text = include_str!("../../deploy/config/http-sources.toml");
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut seen = Vec::new();
        for entry in table["sources"].as_array().unwrap() {
            if entry["transport"]["type"].as_str() != Some("http") {
                continue;
            }
            let id = entry["id"].as_str().unwrap();
            let url = entry["transport"]["request"]["url"].as_str().unwrap();
            let endpoint: Vec<&str> = url.split('/').take(3).collect();
            let ours = source_toml(id, &endpoint.join("/")).unwrap();
            let ours: toml::Table = toml::from_str(&ours).unwrap();
            assert_eq!(&ours["sources"].as_array().unwrap()[0], entry, "{id}");
            seen.push(id.to_owned());
        }
        seen.sort();
        let mut all: Vec<String> = HTTP_SOURCES.iter().map(|s| s.to_string()).collect();
        all.sort();
        assert_eq!(seen, all);
    }

    #[tokio::test]
    async fn faults_become_statuses() {
        let (source, adapter, _, _stop) = served("rural-commercial-bank").await;
        let id = population()
            .household_at(0)
            .unwrap()
            .applicant()
            .id()
            .to_owned();
        let req = LookupRequest {
            person_ids: vec![id],
            ..Default::default()
        };
        let ctx = LookupContext::with_timeout(Duration::from_secs(5));
        for (fault, check) in [
            (
                FaultConfig {
                    outage: true,
                    ..FaultConfig::none()
                },
                (|e: &AdapterError| matches!(e, AdapterError::Unavailable(m) if m.contains("9002")))
                    as fn(&AdapterError) -> bool,
            ),
            (
                FaultConfig {
                    error_rate: 1.0,
                    ..FaultConfig::none()
                },
                |e| matches!(e, AdapterError::Internal(m) if m.contains("系统错误")),
            ),
        ] {
            source.control().set_faults(fault).unwrap();
            let e = adapter.lookup(&ctx, &req).await.unwrap_err();
            assert!(check(&e), "{e:?}");
        }
        source
            .control()
            .set_faults(FaultConfig {
                hang: true,
                ..FaultConfig::none()
            })
            .unwrap();
        let started = std::time::Instant::now();
        let e = adapter
            .lookup(
                &LookupContext::with_timeout(Duration::from_millis(300)),
                &req,
            )
            .await
            .unwrap_err();
        assert_eq!(e, AdapterError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
