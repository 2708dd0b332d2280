//! Traces (issue 7): the broker exports over OTLP to an in-process
//! receiver; one verification's trace continues the caller's, has an
//! `rpc` span under the caller's span, a `verification` span under it and
//! one `source` span per source asked under that, and no span name or
//! attribute holds an identity number.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use hedui_mock_agencies::{
    population::{Population, PopulationConfig},
    truth::TruthPolicy,
};
use hedui_proto::v1::{Purpose, SourceStatus, VerificationRequest, VerifyRequest};
use hedui_tests::{BrokerProcess, SEED, china_today};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};

const HOUSEHOLDS: usize = 30;
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{:?}", v.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_is_one_trace_with_a_span_per_source_and_no_identity_number() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut broker = BrokerProcess::start(
        &format!(
            "[telemetry]\notlp_endpoint = \"http://{at}\"\n\n[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n"
        ),
        &[],
    )
    .await
    .unwrap();
    let truths = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: china_today().parse().unwrap(),
    })
    .truth(&TruthPolicy::default());
    let mut request = tonic::Request::new(VerifyRequest {
        request: Some(VerificationRequest {
            applicant_id: truths[0].applicant_id.clone(),
            consent_reference: "SQ-TRACE".into(),
            purpose: Purpose::DibaoApplication as i32,
            operator_id: "case-worker-07".into(),
            ..Default::default()
        }),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
            .parse()
            .unwrap(),
    );
    let report = broker
        .client()
        .await
        .unwrap()
        .verify(request)
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    // SIGTERM: the broker flushes its spans as it stops.
    tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(broker.pid().unwrap().to_string())
        .status()
        .await
        .unwrap();
    assert!(
        broker
            .wait(Duration::from_secs(30))
            .await
            .unwrap()
            .success()
    );
    let asked: Vec<&str> = report
        .sources
        .iter()
        .filter(|s| s.status() != SourceStatus::NotQueried)
        .map(|s| s.source_id.as_str())
        .collect();
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = receiver.0.lock().unwrap().clone();
        if spans.iter().filter(|s| s.name == "source").count() >= asked.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ours: Vec<&Span> = spans
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == CALLER_TRACE)
        .collect();
    let by_id: HashMap<String, &Span> =
        ours.iter().map(|s| (hex::encode(&s.span_id), *s)).collect();
    let named =
        |name: &str| -> Vec<&Span> { ours.iter().copied().filter(|s| s.name == name).collect() };
    let rpc = named("rpc");
    assert_eq!(rpc.len(), 1, "{} spans in the trace", ours.len());
    assert_eq!(
        hex::encode(&rpc[0].parent_span_id),
        CALLER_SPAN,
        "the rpc span continues the caller's"
    );
    let verification = named("verification");
    assert_eq!(verification.len(), 1);
    let verification_id = hex::encode(&verification[0].span_id);
    // Under the rpc span (directly or through the service's own spans).
    let mut at = hex::encode(&verification[0].parent_span_id);
    let mut under_rpc = false;
    for _ in 0..10 {
        if at == hex::encode(&rpc[0].span_id) {
            under_rpc = true;
            break;
        }
        match by_id.get(&at) {
            Some(s) => at = hex::encode(&s.parent_span_id),
            None => break,
        }
    }
    assert!(under_rpc, "the verification span is not under the rpc span");
    let sources = named("source");
    assert_eq!(
        sources.len(),
        asked.len(),
        "one source span per source asked"
    );
    let mut seen: Vec<String> = Vec::new();
    for s in &sources {
        assert_eq!(
            hex::encode(&s.parent_span_id),
            verification_id,
            "a source span's parent"
        );
        let id = attribute(s, "source").expect("the source id");
        for key in ["transport", "status", "cache_hit", "attempts"] {
            assert!(attribute(s, key).is_some(), "a source span without {key}");
        }
        assert!(attribute(s, "transport").unwrap().contains("simulated"));
        seen.push(id);
    }
    for id in asked {
        assert!(seen.iter().any(|s| s.contains(id)), "no span for {id}");
    }
    // No identity number anywhere in the spans.
    let text = format!("{spans:?}");
    for t in &truths {
        for id in std::iter::once(&t.applicant_id).chain(&t.member_ids) {
            assert!(!text.contains(&id[..15]), "a span holds an identity number");
        }
    }
}
