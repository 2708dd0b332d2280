//! The kit against a well-behaved adapter and against one deliberately
//! broken adapter per kind of breakage: each must fail the check that
//! names its breakage, in plain words, without a panic of the kit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use hedui_proto::v1::{CheckResponse, FinancialAccount, LookupResponse, PersonAnswer, fact::Value};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breakage {
    None,
    WrongFacts,
    FactsForStrangers,
    AnswersStrangers,
    DropsAPerson,
    NegativeMoney,
    UnknownEnum,
    IgnoresDeadline,
    UntypedErrors,
    PanicsOnBatches,
    SplicesIds,
    NotServing,
}

/// A bank's test system: a table of accounts, a switch for faults.
#[derive(Debug)]
struct TestBank {
    table: HashMap<String, Vec<Fact>>,
    fault: Mutex<Option<Fault>>,
    breakage: Breakage,
}

fn account(record: &str, balance_fen: i64) -> Fact {
    Fact {
        record_id: record.into(),
        as_of: Some(prost_types::Timestamp::default()),
        value: Some(Value::FinancialAccount(FinancialAccount {
            institution: "Test Bank".into(),
            account_ref: format!("6200****{record}"),
            account_type: 1,
            balance_fen,
            income_12m_fen: 10,
        })),
    }
}

fn known() -> Vec<(String, Vec<Fact>)> {
    vec![
        (
            fictional_id(500),
            vec![account("A1", 10_000), account("A2", 5)],
        ),
        (fictional_id(501), vec![account("B1", 700_000)]),
        (fictional_id(502), vec![account("C1", 0)]),
    ]
}

fn fixtures() -> Fixtures {
    Fixtures {
        known: known(),
        unknown: vec![fictional_id(600), fictional_id(601)],
    }
}

fn spec() -> SourceSpec {
    SourceSpec {
        id: "test-bank".into(),
        name: "Test Bank".into(),
        fact_kinds: vec![FactKind::FinancialAccount],
    }
}

fn looks_like_an_id(id: &str) -> bool {
    id.len() == 18
        && id[..17].bytes().all(|b| b.is_ascii_digit())
        && matches!(id.as_bytes()[17], b'0'..=b'9' | b'X')
}

#[async_trait]
impl Adapter for TestBank {
    fn source_id(&self) -> &str {
        "test-bank"
    }

    async fn lookup(
        &self,
        ctx: &LookupContext,
        request: &LookupRequest,
    ) -> Result<LookupResponse, AdapterError> {
        let b = self.breakage;
        if b == Breakage::IgnoresDeadline && ctx.remaining() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(3)).await;
        } else if ctx.remaining().is_zero() {
            return Err(AdapterError::Timeout);
        }
        let fault = *self.fault.lock().unwrap();
        match (fault, b) {
            (Some(_), Breakage::UntypedErrors) => {
                return Err(AdapterError::Internal("something went wrong".into()));
            }
            (Some(Fault::Unavailable), _) => return Err(AdapterError::Unavailable("down".into())),
            (Some(Fault::Internal), _) => return Err(AdapterError::Internal("bug".into())),
            (Some(Fault::Hang), _) => {
                tokio::time::sleep_until(ctx.deadline).await;
                return Err(AdapterError::Timeout);
            }
            (None, _) => {}
        }
        if b == Breakage::PanicsOnBatches && request.person_ids.len() > 10 {
            panic!("index out of bounds: the len is 10 but the index is 10");
        }
        let mut answers = Vec::new();
        for id in &request.person_ids {
            if !looks_like_an_id(id) {
                if b == Breakage::SplicesIds {
                    // As if `WHERE id = '{id}'` had been spliced: every row.
                    answers.push(PersonAnswer {
                        person_id: id.clone(),
                        facts: self.table.values().flatten().cloned().collect(),
                    });
                    continue;
                }
                if b == Breakage::UntypedErrors {
                    return Err(AdapterError::Internal("NullPointerException".into()));
                }
                return Err(AdapterError::Rejected(format!(
                    "person_ids: {id:?} is not an id"
                )));
            }
            let mut facts = self.table.get(id).cloned().unwrap_or_default();
            if facts.is_empty() && b == Breakage::FactsForStrangers {
                facts.push(account("Z9", 1));
            }
            for f in &mut facts {
                if let Some(Value::FinancialAccount(a)) = &mut f.value {
                    match b {
                        Breakage::WrongFacts if f.record_id == "A1" => a.balance_fen += 1,
                        Breakage::NegativeMoney if f.record_id == "B1" => a.balance_fen = -500,
                        Breakage::UnknownEnum if f.record_id == "C1" => a.account_type = 42,
                        _ => {}
                    }
                }
            }
            answers.push(PersonAnswer {
                person_id: id.clone(),
                facts,
            });
        }
        if b == Breakage::AnswersStrangers {
            answers.push(PersonAnswer {
                person_id: fictional_id(999),
                facts: Vec::new(),
            });
        }
        if b == Breakage::DropsAPerson && answers.len() > 1 {
            answers.pop();
        }
        Ok(LookupResponse {
            answers,
            as_of: None,
        })
    }

    async fn check(&self) -> Result<CheckResponse, AdapterError> {
        Ok(CheckResponse {
            serving: self.breakage != Breakage::NotServing,
            fact_kinds: vec![FactKind::FinancialAccount as i32],
            detail: String::new(),
        })
    }
}

/// The bank's fault switch.
struct Switch(Arc<TestBank>);

#[async_trait]
impl FaultInjector for Switch {
    async fn inject(&self, fault: Fault) -> Result<(), String> {
        *self.0.fault.lock().unwrap() = Some(fault);
        Ok(())
    }

    async fn clear(&self) -> Result<(), String> {
        *self.0.fault.lock().unwrap() = None;
        Ok(())
    }
}

fn bank(breakage: Breakage) -> Arc<TestBank> {
    Arc::new(TestBank {
        table: known().into_iter().collect(),
        fault: Mutex::new(None),
        breakage,
    })
}

async fn check(breakage: Breakage) -> ConformanceReport {
    let b = bank(breakage);
    let switch = Switch(b.clone());
    let report = run(b, &spec(), &fixtures(), Some(&switch), &Options::default()).await;
    // The report always reads.
    assert!(report.to_string().contains("checks:"));
    report
}

/// The check `name` failed, saying `words`.
fn failed_with(report: &ConformanceReport, name: &str, words: &str) {
    match report.outcome(name) {
        Some(Outcome::Failed(m)) => {
            assert!(m.contains(words), "{name}: {m:?} lacks {words:?}\n{report}")
        }
        other => panic!("{name} should fail, got {other:?}\n{report}"),
    }
}

#[tokio::test]
async fn a_good_adapter_passes() {
    let report = check(Breakage::None).await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.results.len(), 7);
    assert!(
        report
            .results
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Passed(_))),
        "{report}"
    );
    let text = report.to_string();
    assert!(
        text.contains("7 checks: 7 passed, 0 failed, 0 skipped"),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_facts_fail_known_persons() {
    let r = check(Breakage::WrongFacts).await;
    failed_with(&r, "known persons", "record A1 differs");
    failed_with(&r, "batch of 50", "record A1 differs");
}

#[tokio::test]
async fn facts_about_strangers_fail_unknown_person() {
    let r = check(Breakage::FactsForStrangers).await;
    failed_with(&r, "unknown person", "somebody else's records");
}

#[tokio::test]
async fn answers_about_persons_not_asked_about_are_unusable() {
    let r = check(Breakage::AnswersStrangers).await;
    failed_with(&r, "answers usable", "person not asked about");
    failed_with(&r, "known persons", "broker reports ERROR");
}

#[tokio::test]
async fn a_missing_person_is_unusable() {
    let r = check(Breakage::DropsAPerson).await;
    failed_with(&r, "batch of 50", "are not answered");
}

#[tokio::test]
async fn negative_money_is_unusable() {
    let r = check(Breakage::NegativeMoney).await;
    failed_with(&r, "answers usable", "balance_fen is negative (-500)");
}

#[tokio::test]
async fn unknown_enum_values_are_unusable() {
    let r = check(Breakage::UnknownEnum).await;
    failed_with(
        &r,
        "answers usable",
        "account_type is 42, which is not a value of AccountType",
    );
}

#[tokio::test]
async fn ignoring_the_deadline_fails() {
    let r = check(Breakage::IgnoresDeadline).await;
    failed_with(&r, "deadline", "must give up when the deadline passes");
}

#[tokio::test]
async fn untyped_errors_fail() {
    let r = check(Breakage::UntypedErrors).await;
    failed_with(
        &r,
        "typed errors",
        "a simulated Unavailable came back as source error",
    );
    failed_with(&r, "typed errors", "should be refused (INVALID_ARGUMENT)");
}

#[tokio::test]
async fn a_panic_is_reported_not_suffered() {
    let r = check(Breakage::PanicsOnBatches).await;
    failed_with(
        &r,
        "batch of 50",
        "the adapter panicked: index out of bounds",
    );
    failed_with(&r, "answers usable", "panicked");
}

#[tokio::test]
async fn spliced_ids_fail() {
    let r = check(Breakage::SplicesIds).await;
    failed_with(
        &r,
        "typed errors",
        "parameters must be bound, never spliced",
    );
}

#[tokio::test]
async fn not_serving_fails_health() {
    let r = check(Breakage::NotServing).await;
    failed_with(&r, "health", "not serving");
}

#[test]
fn fictional_ids_are_valid_and_distinct() {
    let ids: BTreeSet<String> = (0..2000).map(fictional_id).collect();
    assert_eq!(ids.len(), 2000);
    for id in ids.iter().take(50) {
        hedui_proto::resident_id::validate(id, (2026, 11, 23)).unwrap();
    }
}

/// Over gRPC, an answer larger than the transport accepts is unusable.
#[tokio::test]
async fn oversized_answers_over_grpc_are_unusable() {
    let mut table: HashMap<String, Vec<Fact>> = known().into_iter().collect();
    for facts in table.values_mut() {
        for f in facts.iter_mut() {
            if let Some(Value::FinancialAccount(a)) = &mut f.value {
                a.account_ref = "x".repeat(100_000);
            }
        }
    }
    let b: Arc<dyn Adapter> = Arc::new(TestBank {
        table,
        fault: Mutex::new(None),
        breakage: Breakage::None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(crate::server::AdapterServer::new([b]).into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let grpc = crate::grpc::GrpcAdapter::new(
        &spec(),
        &crate::grpc::GrpcParams {
            endpoint: format!("http://{addr}"),
            connect_timeout_ms: 1_000,
            max_answer_bytes: 64 * 1024,
            tls: None,
            auth: None,
        },
    )
    .unwrap();
    let r = run(
        Arc::new(grpc),
        &spec(),
        &fixtures(),
        None,
        &Options::default(),
    )
    .await;
    failed_with(&r, "known persons", "unusable answer");
    failed_with(&r, "known persons", "message length too large");
    // Persons it holds nothing about are still answered.
    assert!(
        matches!(r.outcome("unknown person"), Some(Outcome::Passed(_))),
        "{r}"
    );
}

/// Over HTTP/JSON, a field of the wrong type is unusable.
#[cfg(feature = "http")]
#[tokio::test]
async fn wrong_types_over_http_are_unusable() {
    use axum::{Json, extract::Path};
    let app = axum::Router::new().route(
        "/accounts/{id}",
        axum::routing::get(|Path(id): Path<String>| async move {
            let known = known();
            let rows: Vec<serde_json::Value> = known
                .iter()
                .filter(|(p, _)| *p == id)
                .flat_map(|(_, fs)| fs.iter())
                .map(|f| {
                    // The balance comes as an object instead of a number.
                    serde_json::json!({"ref": f.record_id, "bal": {"amount": 1}})
                })
                .collect();
            Json(serde_json::json!({"rows": rows}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let text = format!(
        r#"
        [request]
        url = "http://{addr}/accounts/{{person_id}}"
        [[facts]]
        kind = "FINANCIAL_ACCOUNT"
        records = "/rows"
        record_id = "/ref"
        fields = {{ balance_fen = {{ from = "/bal", unit = "yuan" }} }}
        "#
    );
    let table: toml::Table = toml::from_str(&text).unwrap();
    let params: crate::http::HttpParams = crate::registry::parse_params("http", &table).unwrap();
    let adapter = crate::http::HttpAdapter::new(&spec(), &params).unwrap();
    let r = run(
        Arc::new(adapter),
        &spec(),
        &fixtures(),
        None,
        &Options::default(),
    )
    .await;
    failed_with(
        &r,
        "known persons",
        "balance_fen: /bal: is an object, not a single value",
    );
    assert!(
        matches!(r.outcome("unknown person"), Some(Outcome::Passed(_))),
        "{r}"
    );
    assert!(
        matches!(r.outcome("health"), Some(Outcome::Passed(_))),
        "{r}"
    );
}
