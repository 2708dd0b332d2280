//! Every HTTP/JSON resource answers as its gRPC method does (issue 8): for
//! each route of `hedui::http::ROUTES` the test calls the resource and the
//! method with the same inputs and compares the answers field by field, as
//! JSON (the gRPC answer through the broker's own JSON mapping), and the
//! errors code by code and message by message. A route without a
//! comparison here fails the test.
//!
//! Fields left out of a comparison differ between two calls by nature and
//! are named where they are removed: report ids and times, latencies and
//! as-of dates (a second call may be answered from the cache), ids the
//! broker mints per call, and figures of the audit log that the calls
//! themselves change (each audit query is recorded).

use std::{collections::BTreeSet, time::Duration};

use futures::StreamExt as _;
use hedui_mock_agencies::{
    control::proto::{
        Faults, SetFaultsRequest, SimulateChangeRequest,
        agency_control_service_client::AgencyControlServiceClient,
    },
    population::{Population, PopulationConfig},
    truth::{GroundTruth, TruthPolicy},
};
use hedui_proto::v1::{
    AcknowledgeAlertRequest, AuditFilter, AuditRecordKind, ChangeKind, CivilDate, Consent,
    EnrolRequest, ExportFormat, ExportRecordsRequest, GetChainStatusRequest, GetConsentRequest,
    GetInclusionProofRequest, GetReportRequest, GetSubjectAccessHistoryRequest,
    ListSourceHealthRequest, Outcome, Purpose, QueryRecordsRequest, RegisterConsentRequest,
    ReviewRequest, RevokeConsentRequest, StreamAlertsRequest, StreamVerifyRequest, UnenrolRequest,
    VerificationRequest, VerifyRequest, WatchReportRequest, WatchSourceHealthRequest,
    audit_service_client::AuditServiceClient, consent_service_client::ConsentServiceClient,
    source_health_service_client::SourceHealthServiceClient,
    verification_service_client::VerificationServiceClient,
    watch_service_client::WatchServiceClient,
};
use hedui_tests::{BrokerProcess, SEED, china_today};
use serde_json::{Value, json};
use tonic::{Status, transport::Channel};

const HOUSEHOLDS: usize = 40;
const BANK: &str = "rural-commercial-bank";
const WAIT: Duration = Duration::from_secs(30);

fn json_of<M: prost::Message>(name: &str, m: &M) -> Value {
    hedui::http::json::message_json(&format!("hedui.v1.{name}"), m).unwrap()
}

/// Removes `path` (dotted; `*` for every element of a list) from `v`.
fn drop_path(v: &mut Value, path: &str) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    match (head, v) {
        ("*", Value::Array(items)) => {
            for item in items {
                match rest {
                    Some(r) => drop_path(item, r),
                    None => *item = Value::Null,
                }
            }
        }
        (key, Value::Object(map)) => match rest {
            None => {
                map.remove(key);
            }
            Some(r) => {
                if let Some(inner) = map.get_mut(key) {
                    drop_path(inner, r);
                }
            }
        },
        _ => {}
    }
}

fn without(mut v: Value, paths: &[&str]) -> Value {
    for p in paths {
        drop_path(&mut v, p);
    }
    v
}

/// What differs between two verifications of the same household: the
/// report's id and times, and per source its latency, as-of date and
/// whether the cache answered.
const REPORT_VOLATILE: &[&str] = &[
    "report_id",
    "requested_at",
    "completed_at",
    "sources.*.latency",
    "sources.*.as_of",
    "sources.*.from_cache",
    "income.items.*.provenance.as_of",
    "assets.items.*.provenance.as_of",
];

fn report_paths(prefix: &str) -> Vec<String> {
    REPORT_VOLATILE
        .iter()
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

fn without_report(v: Value, prefix: &str) -> Value {
    let paths = report_paths(prefix);
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    without(v, &refs)
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    event: String,
    data: Value,
}

fn parse_events(text: &str) -> Vec<Event> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            (!data.is_empty()).then(|| Event {
                event,
                data: serde_json::from_str(&data).unwrap(),
            })
        })
        .collect()
}

/// The first `n` events of an event stream that may not end.
async fn first_events(response: reqwest::Response, n: usize) -> Vec<Event> {
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    loop {
        // Only whole events: those ended by a blank line.
        let whole = &text[..text.rfind("\n\n").map_or(0, |i| i + 2)];
        let events = parse_events(whole);
        if events.len() >= n {
            return events.into_iter().take(n).collect();
        }
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("an event within 30 s")
            .expect("the stream goes on")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

struct Fixture {
    broker: BrokerProcess,
    http: reqwest::Client,
    channel: Channel,
    truths: Vec<GroundTruth>,
    covered: BTreeSet<&'static str>,
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.broker.url)
    }

    fn covers(&mut self, rpc: &'static str) {
        assert!(
            hedui::http::ROUTES.iter().any(|r| r.rpc == rpc),
            "{rpc} is not a route"
        );
        self.covered.insert(rpc);
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn control(&self) -> AgencyControlServiceClient<Channel> {
        AgencyControlServiceClient::connect(self.broker.simulation_control.clone().unwrap())
            .await
            .unwrap()
    }
}

async fn ok_json(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The HTTP problem matches the gRPC status: code name, message word for
/// word, and the HTTP status mapped from the code.
async fn same_error(what: &str, response: reqwest::Response, status: Status) {
    let http = response.status().as_u16();
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["code"],
        hedui::http::problem::code_name(status.code()),
        "{what}: {problem} vs {status:?}"
    );
    assert_eq!(problem["detail"], status.message(), "{what}");
    assert_eq!(
        http,
        hedui::http::problem::http_status(status.code()).as_u16(),
        "{what}"
    );
}

fn verification(applicant: &str, purpose: Purpose) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant.to_owned(),
        consent_reference: "SQ-2026-000123".into(),
        purpose: purpose as i32,
        operator_id: "case-worker-07".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_answers_as_its_rpc() {
    let broker = BrokerProcess::start(
        &format!(
            "[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n\n\
             [limits.sources.{BANK}]\nlate_deadline_ms = 60000\n\n[audit]\ncheckpoint_every_records = 1\n"
        ),
        &["--simulation-control", "127.0.0.1:0"],
    )
    .await
    .unwrap();
    let channel = Channel::from_shared(broker.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let truths = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: china_today().parse().unwrap(),
    })
    .truth(&TruthPolicy::default());
    let mut f = Fixture {
        broker,
        http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        channel,
        truths,
        covered: BTreeSet::new(),
    };
    verification_service(&mut f).await;
    watch_service(&mut f).await;
    consent_service(&mut f).await;
    audit_service(&mut f).await;
    source_health_service(&mut f).await;

    let missing: Vec<&str> = hedui::http::ROUTES
        .iter()
        .map(|r| r.rpc)
        .filter(|rpc| !f.covered.contains(rpc))
        .collect();
    assert!(
        missing.is_empty(),
        "routes without a parity check: {missing:?}"
    );
}

async fn verification_service(f: &mut Fixture) {
    let mut grpc = VerificationServiceClient::new(f.channel.clone());
    let applicant = f.truths[0].applicant_id.clone();
    let request = verification(&applicant, Purpose::DibaoApplication);

    // Verify.
    let by_grpc = grpc
        .verify(VerifyRequest {
            request: Some(request.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let by_http = ok_json(
        f.post(
            "/v1/verifications",
            &json_of(
                "VerifyRequest",
                &VerifyRequest {
                    request: Some(request.clone()),
                },
            ),
        )
        .await,
    )
    .await;
    assert_eq!(
        without_report(by_http.clone(), "report."),
        without_report(json_of("VerifyResponse", &by_grpc), "report.")
    );
    f.covers("/hedui.v1.VerificationService/Verify");
    let report_id = by_grpc.report.as_ref().unwrap().report_id.clone();

    // GetReport: the same stored report, exactly.
    let by_grpc = grpc
        .get_report(GetReportRequest {
            report_id: report_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let by_http = ok_json(f.get(&format!("/v1/reports/{report_id}")).await).await;
    assert_eq!(by_http, json_of("GetReportResponse", &by_grpc));
    for (what, id) in [
        ("a report that does not exist", uuid_like()),
        ("an id that is no id", "nope".to_owned()),
    ] {
        let status = grpc
            .get_report(GetReportRequest {
                report_id: id.clone(),
            })
            .await
            .unwrap_err();
        same_error(what, f.get(&format!("/v1/reports/{id}")).await, status).await;
    }
    f.covers("/hedui.v1.VerificationService/GetReport");

    // WatchReport of a complete report: the report, then the end.
    let mut stream = grpc
        .watch_report(WatchReportRequest {
            report_id: report_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut by_grpc = Vec::new();
    while let Some(m) = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        by_grpc.push(json_of("WatchReportResponse", &m));
    }
    let text = f
        .get(&format!("/v1/reports/{report_id}/watch"))
        .await
        .text()
        .await
        .unwrap();
    let by_http: Vec<Value> = parse_events(&text).into_iter().map(|e| e.data).collect();
    assert_eq!(by_http, by_grpc);
    assert_eq!(by_http.len(), 1);
    f.covers("/hedui.v1.VerificationService/WatchReport");

    // StreamVerify: the same events (sources in the order they landed,
    // which differs: compared sorted by source), the same final report.
    let stream_request = StreamVerifyRequest {
        request: Some(verification(
            &f.truths[1].applicant_id,
            Purpose::DibaoApplication,
        )),
    };
    let mut stream = grpc
        .stream_verify(stream_request.clone())
        .await
        .unwrap()
        .into_inner();
    let mut by_grpc = Vec::new();
    while let Some(m) = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        by_grpc.push(json_of("StreamVerifyResponse", &m));
    }
    let text = f
        .post(
            "/v1/verifications/stream",
            &json_of("StreamVerifyRequest", &stream_request),
        )
        .await
        .text()
        .await
        .unwrap();
    let events = parse_events(&text);
    assert!(events.iter().all(|e| e.event == "message"), "{text}");
    let by_http: Vec<Value> = events.into_iter().map(|e| e.data).collect();
    assert_eq!(by_http.len(), by_grpc.len());
    let normal = |events: Vec<Value>| {
        let mut events: Vec<Value> = events
            .into_iter()
            .map(|e| {
                let e = without_report(e, "report.");
                without(
                    e,
                    &[
                        // The report id is minted per verification.
                        "household_resolved.report_id",
                        "source_result.latency",
                        "source_result.as_of",
                        "source_result.from_cache",
                    ],
                )
            })
            .collect();
        events.sort_by_key(|e| e.to_string());
        events
    };
    assert_eq!(normal(by_http), normal(by_grpc));
    let status = grpc
        .stream_verify(StreamVerifyRequest {
            request: Some(verification("123", Purpose::DibaoApplication)),
        })
        .await
        .unwrap_err();
    let response = f
        .post(
            "/v1/verifications/stream",
            &json!({"request": {"applicant_id": "123", "consent_reference": "SQ-2026-000123", "purpose": "PURPOSE_DIBAO_APPLICATION", "operator_id": "case-worker-07"}}),
        )
        .await;
    same_error("StreamVerify with a short id", response, status).await;
    f.covers("/hedui.v1.VerificationService/StreamVerify");
}

fn uuid_like() -> String {
    "0b5d4f1e-8c1a-4a57-9a3e-2f6a1c3b9d10".to_owned()
}

async fn watch_service(f: &mut Fixture) {
    let mut grpc = WatchServiceClient::new(f.channel.clone());
    // A passing household of several members, for the alert.
    let mut chosen = None;
    for t in f.truths.iter().filter(|t| t.member_ids.len() > 1) {
        let request = verification(&t.applicant_id, Purpose::DibaoReview);
        let r = grpc
            .enrol(EnrolRequest {
                request: Some(request.clone()),
            })
            .await
            .unwrap()
            .into_inner();
        if r.baseline.as_ref().unwrap().verdict == Outcome::Pass as i32 {
            chosen = Some((t.clone(), request, r));
            break;
        }
        grpc.unenrol(UnenrolRequest {
            enrolment_id: r.enrolment_id,
        })
        .await
        .unwrap();
    }
    let (truth, request, first) = chosen.expect("a passing household");

    // Enrol and Unenrol, each way in turn on the same household.
    let by_http = ok_json(
        f.http
            .delete(f.url(&format!("/v1/enrolments/{}", first.enrolment_id)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let again = ok_json(
        f.post(
            "/v1/enrolments",
            &json_of(
                "EnrolRequest",
                &EnrolRequest {
                    request: Some(request.clone()),
                },
            ),
        )
        .await,
    )
    .await;
    // The enrolment id is minted per enrolment.
    assert_eq!(
        without_report(without(again.clone(), &["enrolment_id"]), "baseline."),
        without_report(
            without(json_of("EnrolResponse", &first), &["enrolment_id"]),
            "baseline."
        )
    );
    f.covers("/hedui.v1.WatchService/Enrol");
    let enrolment = again["enrolment_id"].as_str().unwrap().to_owned();
    let status = grpc
        .unenrol(UnenrolRequest {
            enrolment_id: first.enrolment_id.clone(),
        })
        .await
        .unwrap_err();
    same_error(
        "Unenrol of an ended enrolment",
        f.http
            .delete(f.url(&format!("/v1/enrolments/{}", first.enrolment_id)))
            .send()
            .await
            .unwrap(),
        status,
    )
    .await;
    assert_eq!(by_http, json!({}));
    f.covers("/hedui.v1.WatchService/Unenrol");

    // StreamAlerts: a car for a member raises one alert, the same on both
    // streams.
    let mut alerts = grpc
        .stream_alerts(StreamAlertsRequest {})
        .await
        .unwrap()
        .into_inner();
    let http_alerts = f.get("/v1/alerts/stream").await;
    let member = truth
        .member_ids
        .iter()
        .find(|m| **m != truth.applicant_id)
        .unwrap()
        .clone();
    f.control()
        .await
        .simulate_change(SimulateChangeRequest {
            person_id: member,
            kind: ChangeKind::VehicleRegistered as i32,
        })
        .await
        .unwrap();
    let by_grpc = tokio::time::timeout(WAIT, alerts.message())
        .await
        .expect("an alert")
        .unwrap()
        .unwrap();
    let by_http = first_events(http_alerts, 1).await;
    assert_eq!(by_http[0].data, json_of("StreamAlertsResponse", &by_grpc));
    assert_eq!(
        by_grpc.alert.as_ref().unwrap().enrolment_id,
        enrolment,
        "the alert is the enrolled household's"
    );
    drop(alerts);
    f.covers("/hedui.v1.WatchService/StreamAlerts");

    // AcknowledgeAlert: acknowledged over HTTP; a second and a third
    // acknowledgement, one each way, answer alike.
    let alert_id = by_grpc.alert.unwrap().alert_id;
    let first_ack = ok_json(
        f.post(&format!("/v1/alerts/{alert_id}/acknowledge"), &json!({}))
            .await,
    )
    .await;
    assert_eq!(first_ack, json!({}));
    let second = grpc
        .acknowledge_alert(AcknowledgeAlertRequest {
            alert_id: alert_id.clone(),
        })
        .await;
    let third = f
        .post(&format!("/v1/alerts/{alert_id}/acknowledge"), &json!({}))
        .await;
    match second {
        Ok(r) => assert_eq!(
            ok_json(third).await,
            json_of("AcknowledgeAlertResponse", &r.into_inner())
        ),
        Err(status) => same_error("a repeated acknowledgement", third, status).await,
    }
    let status = grpc
        .acknowledge_alert(AcknowledgeAlertRequest {
            alert_id: "not-an-id".into(),
        })
        .await
        .unwrap_err();
    same_error(
        "an alert id that is no id",
        f.post("/v1/alerts/not-an-id/acknowledge", &json!({})).await,
        status,
    )
    .await;
    f.covers("/hedui.v1.WatchService/AcknowledgeAlert");

    // Review: the same progress to the same end (the review id is minted
    // per review; cache hits and source answers depend on what the first
    // review left in the cache, alerts on what it already raised).
    let mut stream = grpc
        .review(ReviewRequest { concurrency: 2 })
        .await
        .unwrap()
        .into_inner();
    let mut by_grpc = Vec::new();
    while let Some(m) = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        by_grpc.push(json_of("ReviewResponse", &m));
    }
    let text = f
        .post("/v1/reviews", &json!({"concurrency": 2}))
        .await
        .text()
        .await
        .unwrap();
    let by_http: Vec<Value> = parse_events(&text).into_iter().map(|e| e.data).collect();
    let last = |v: &[Value]| {
        without(
            v.last().cloned().unwrap(),
            &["review_id", "cache_hits", "source_answers", "alerts"],
        )
    };
    assert_eq!(last(&by_http), last(&by_grpc));
    assert_eq!(by_http.last().unwrap()["finished"], true);
    f.covers("/hedui.v1.WatchService/Review");
}

async fn consent_service(f: &mut Fixture) {
    let mut grpc = ConsentServiceClient::new(f.channel.clone());
    let today = chrono::NaiveDate::parse_from_str(&china_today(), "%Y-%m-%d").unwrap();
    let date = |d: chrono::NaiveDate| {
        use chrono::Datelike;
        CivilDate {
            year: d.year(),
            month: i32::try_from(d.month()).unwrap(),
            day: i32::try_from(d.day()).unwrap(),
        }
    };
    let letter = |reference: &str| Consent {
        reference: reference.into(),
        person_ids: f.truths[2].member_ids.clone(),
        purposes: vec![Purpose::DibaoApplication as i32],
        valid_from: Some(date(today - chrono::Days::new(1))),
        valid_until: Some(date(today + chrono::Days::new(30))),
        operator_id: "case-worker-07".into(),
        ..Default::default()
    };
    // Two letters alike but for their reference: registered one each way.
    let by_grpc = grpc
        .register_consent(RegisterConsentRequest {
            consent: Some(letter("SQ-PARITY-1")),
        })
        .await
        .unwrap()
        .into_inner();
    let by_http = ok_json(
        f.post(
            "/v1/consents",
            &json_of(
                "RegisterConsentRequest",
                &RegisterConsentRequest {
                    consent: Some(letter("SQ-PARITY-2")),
                },
            ),
        )
        .await,
    )
    .await;
    let volatile = [
        "consent.reference",
        "consent.registered_at",
        "consent.revoked_at",
    ];
    assert_eq!(
        without(by_http, &volatile),
        without(json_of("RegisterConsentResponse", &by_grpc), &volatile)
    );
    let bad = Consent {
        reference: "SQ-PARITY-BAD".into(),
        person_ids: vec!["123".into()],
        ..letter("x")
    };
    let status = grpc
        .register_consent(RegisterConsentRequest {
            consent: Some(bad.clone()),
        })
        .await
        .unwrap_err();
    same_error(
        "a letter with a bad ID number",
        f.post(
            "/v1/consents",
            &json_of(
                "RegisterConsentRequest",
                &RegisterConsentRequest { consent: Some(bad) },
            ),
        )
        .await,
        status,
    )
    .await;
    f.covers("/hedui.v1.ConsentService/RegisterConsent");

    // GetConsent: the same letter, exactly.
    let by_grpc = grpc
        .get_consent(GetConsentRequest {
            reference: "SQ-PARITY-1".into(),
            platform: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let by_http = ok_json(f.get("/v1/consents/SQ-PARITY-1").await).await;
    assert_eq!(by_http, json_of("GetConsentResponse", &by_grpc));
    let status = grpc
        .get_consent(GetConsentRequest {
            reference: "SQ-PARITY-NONE".into(),
            platform: String::new(),
        })
        .await
        .unwrap_err();
    same_error(
        "a letter that does not exist",
        f.get("/v1/consents/SQ-PARITY-NONE").await,
        status,
    )
    .await;
    f.covers("/hedui.v1.ConsentService/GetConsent");

    // RevokeConsent: each letter one way.
    let by_grpc = grpc
        .revoke_consent(RevokeConsentRequest {
            reference: "SQ-PARITY-1".into(),
            platform: String::new(),
            operator_id: "case-worker-07".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let by_http = ok_json(
        f.post(
            "/v1/consents/SQ-PARITY-2/revoke",
            &json!({"operator_id": "case-worker-07"}),
        )
        .await,
    )
    .await;
    assert!(by_http["consent"]["revoked_at"].is_string());
    assert_eq!(
        without(by_http, &volatile),
        without(json_of("RevokeConsentResponse", &by_grpc), &volatile)
    );
    f.covers("/hedui.v1.ConsentService/RevokeConsent");
}

async fn audit_service(f: &mut Fixture) {
    let mut grpc = AuditServiceClient::new(f.channel.clone());
    // Verifications only: the queries themselves add audit queries, not
    // verifications, so both calls see the same records.
    let filter = AuditFilter {
        kind: AuditRecordKind::Verification as i32,
        ..Default::default()
    };
    let query = QueryRecordsRequest {
        auditor_id: "inspector-1".into(),
        filter: Some(filter.clone()),
        page_size: 100,
        page_token: String::new(),
    };
    let by_grpc = grpc
        .query_records(query.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!by_grpc.records.is_empty());
    let by_http = ok_json(
        f.post(
            "/v1/audit/records/search",
            &json_of("QueryRecordsRequest", &query),
        )
        .await,
    )
    .await;
    assert_eq!(by_http, json_of("QueryRecordsResponse", &by_grpc));
    let status = grpc
        .query_records(QueryRecordsRequest::default())
        .await
        .unwrap_err();
    same_error(
        "a search without an auditor",
        f.post("/v1/audit/records/search", &json!({})).await,
        status,
    )
    .await;
    f.covers("/hedui.v1.AuditService/QueryRecords");

    // ExportRecords: the same bytes.
    let export = ExportRecordsRequest {
        auditor_id: "inspector-1".into(),
        filter: Some(filter),
        format: ExportFormat::Csv as i32,
    };
    let mut stream = grpc
        .export_records(export.clone())
        .await
        .unwrap()
        .into_inner();
    let mut by_grpc = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        by_grpc.extend(chunk.data);
    }
    let response = f
        .post(
            "/v1/audit/records/export",
            &json_of("ExportRecordsRequest", &export),
        )
        .await;
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let by_http = response.bytes().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&by_http),
        String::from_utf8_lossy(&by_grpc)
    );
    f.covers("/hedui.v1.AuditService/ExportRecords");

    // GetChainStatus: the same verdict; the number of records and the
    // latest checkpoint move with each call (the call is recorded, and a
    // checkpoint follows each record here).
    let by_grpc = grpc
        .get_chain_status(GetChainStatusRequest {
            auditor_id: "inspector-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let by_http = ok_json(f.get("/v1/audit/chain?auditor_id=inspector-1").await).await;
    let moving = ["records", "latest_checkpoint"];
    assert_eq!(
        without(by_http, &moving),
        without(json_of("GetChainStatusResponse", &by_grpc), &moving)
    );
    assert!(by_grpc.verified);
    f.covers("/hedui.v1.AuditService/GetChainStatus");

    // GetInclusionProof: the same record and leaf; the checkpoint (and so
    // the path) is the latest, which each recorded call moves on.
    let by_grpc = grpc
        .get_inclusion_proof(GetInclusionProofRequest {
            auditor_id: "inspector-1".into(),
            seq: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let by_http = ok_json(
        f.get("/v1/audit/records/1/proof?auditor_id=inspector-1")
            .await,
    )
    .await;
    let moving = ["checkpoint", "path"];
    assert_eq!(
        without(by_http, &moving),
        without(json_of("GetInclusionProofResponse", &by_grpc), &moving)
    );
    let status = grpc
        .get_inclusion_proof(GetInclusionProofRequest {
            auditor_id: String::new(),
            seq: 1,
        })
        .await
        .unwrap_err();
    same_error(
        "a proof without an auditor",
        f.get("/v1/audit/records/1/proof").await,
        status,
    )
    .await;
    f.covers("/hedui.v1.AuditService/GetInclusionProof");

    // GetSubjectAccessHistory: the accesses to one person (the history
    // shows verifications and report reads, not the queries for it).
    let history = GetSubjectAccessHistoryRequest {
        subject_id: f.truths[0].applicant_id.clone(),
        requester_id: "self-service".into(),
        page_size: 50,
        page_token: String::new(),
    };
    let by_grpc = grpc
        .get_subject_access_history(history.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!by_grpc.accesses.is_empty());
    let by_http = ok_json(
        f.post(
            "/v1/audit/subject-access-history",
            &json_of("GetSubjectAccessHistoryRequest", &history),
        )
        .await,
    )
    .await;
    assert_eq!(
        by_http,
        json_of("GetSubjectAccessHistoryResponse", &by_grpc)
    );
    let status = grpc
        .get_subject_access_history(GetSubjectAccessHistoryRequest {
            requester_id: "self-service".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    same_error(
        "a history without a subject",
        f.post(
            "/v1/audit/subject-access-history",
            &json!({"requester_id": "self-service"}),
        )
        .await,
        status,
    )
    .await;
    f.covers("/hedui.v1.AuditService/GetSubjectAccessHistory");
}

async fn source_health_service(f: &mut Fixture) {
    let mut grpc = SourceHealthServiceClient::new(f.channel.clone());
    // Nothing asks a source between the two calls.
    let by_grpc = grpc
        .list_source_health(ListSourceHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    let by_http = ok_json(f.get("/v1/sources/health").await).await;
    assert_eq!(by_http, json_of("ListSourceHealthResponse", &by_grpc));
    assert_eq!(by_grpc.sources.len(), 28);
    f.covers("/hedui.v1.SourceHealthService/ListSourceHealth");

    let mut stream = grpc
        .watch_source_health(WatchSourceHealthRequest {
            interval: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let by_grpc = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(stream);
    let by_http = first_events(f.get("/v1/sources/health/stream?interval=1s").await, 1).await;
    assert_eq!(
        by_http[0].data,
        json_of("WatchSourceHealthResponse", &by_grpc)
    );
    let status = grpc
        .watch_source_health(WatchSourceHealthRequest {
            interval: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    same_error(
        "an interval out of range",
        f.get("/v1/sources/health/stream?interval=3600s").await,
        status,
    )
    .await;
    f.covers("/hedui.v1.SourceHealthService/WatchSourceHealth");

    // Late answers: a report waiting for the bank is stored pending on
    // either side, and its completion reaches the HTTP watcher as it
    // reaches a gRPC one.
    let mut control = f.control().await;
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
    let mut verifier = VerificationServiceClient::new(f.channel.clone());
    let mut request = verification(&f.truths[5].applicant_id, Purpose::DibaoApplication);
    request.deadline = prost_types::Duration::try_from(Duration::from_millis(800)).ok();
    let pending = verifier
        .verify(VerifyRequest {
            request: Some(request),
        })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert!(pending.pending);
    let mut by_grpc = verifier
        .watch_report(WatchReportRequest {
            report_id: pending.report_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let http_watch = f
        .get(&format!("/v1/reports/{}/watch", pending.report_id))
        .await;
    let first = by_grpc.message().await.unwrap().unwrap();
    control
        .set_faults(SetFaultsRequest {
            source_id: BANK.into(),
            faults: None,
            latency: None,
        })
        .await
        .unwrap();
    let completed = tokio::time::timeout(WAIT, by_grpc.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let by_http = first_events(http_watch, 2).await;
    assert_eq!(by_http[0].data, json_of("WatchReportResponse", &first));
    assert_eq!(by_http[1].data, json_of("WatchReportResponse", &completed));
    assert_eq!(by_http[1].data["report"]["revision"], 1);
}
