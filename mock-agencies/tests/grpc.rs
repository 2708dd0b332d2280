//! A simulated source served over gRPC with `hedui_adapters::server::AdapterServer`
//! and called with the generated client and with the broker's `grpc`
//! transport.

use std::{sync::Arc, time::Duration};

use chrono::NaiveDate;
use hedui_adapters::{
    Adapter, AdapterError, LookupContext,
    catalog::Catalog,
    grpc::{GrpcAdapter, GrpcParams},
    server::AdapterServer,
};
use hedui_mock_agencies::{
    FaultConfig, LatencyConfig, Population, PopulationConfig, SimulatedSource,
};
use hedui_proto::v1::{
    CheckRequest, FactKind, LookupRequest, adapter_service_client::AdapterServiceClient,
};
use tokio_stream::wrappers::TcpListenerStream;

async fn serve(source: Arc<SimulatedSource>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let adapter: Arc<dyn Adapter> = source;
    let handle = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AdapterServer::new([adapter]).into_service())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (endpoint, handle)
}

#[tokio::test]
async fn a_simulated_source_over_grpc() {
    let population = Population::shared(&PopulationConfig {
        seed: 2018,
        households: 500,
        today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
    });
    let spec = Catalog::dachuan()
        .get("rural-commercial-bank")
        .unwrap()
        .clone();
    let source = Arc::new(SimulatedSource::new(
        &spec,
        population.clone(),
        LatencyConfig::ZERO,
    ));
    let (endpoint, server) = serve(source.clone()).await;

    // A household with accounts at the bank.
    let hh = population
        .households()
        .find(|h| {
            h.active_members().any(|p| {
                !p.facts(
                    hedui_mock_agencies::Agency::RuralCommercialBank,
                    Default::default(),
                )
                .is_empty()
            })
        })
        .unwrap();
    let ids = hh.active_member_ids();
    let request = LookupRequest {
        request_id: "grpc-test".into(),
        source_id: "rural-commercial-bank".into(),
        person_ids: ids.clone(),
        fact_kinds: vec![],
        purpose: 1,
        consent_reference: "consent-1".into(),
    };

    // The generated client.
    let mut client = AdapterServiceClient::connect(endpoint.clone())
        .await
        .unwrap();
    let resp = client.lookup(request.clone()).await.unwrap().into_inner();
    assert_eq!(resp.answers.len(), ids.len());
    let expected = source.answer(&request);
    for (got, want) in resp.answers.iter().zip(&expected.answers) {
        assert_eq!(got.person_id, want.person_id);
        let strip = |a: &hedui_proto::v1::PersonAnswer| {
            a.facts
                .iter()
                .map(|f| (f.record_id.clone(), f.value.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(got), strip(want));
    }
    assert!(resp.answers.iter().any(|a| !a.facts.is_empty()));
    let check = client
        .check(CheckRequest {
            source_id: "rural-commercial-bank".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(check.serving);
    assert_eq!(
        check.fact_kinds,
        vec![
            FactKind::FinancialAccount as i32,
            FactKind::AccountOutflow as i32
        ]
    );

    // The broker's transport, which checks every answer against the
    // contract.
    let grpc = GrpcAdapter::new(
        &spec,
        &GrpcParams {
            endpoint,
            connect_timeout_ms: 1_000,
            max_answer_bytes: hedui_adapters::grpc::MAX_ANSWER_BYTES,
            tls: None,
            auth: None,
        },
    )
    .unwrap();
    let ctx = LookupContext::with_timeout(Duration::from_secs(5));
    let resp = grpc.lookup(&ctx, &request).await.unwrap();
    assert_eq!(resp.answers.len(), ids.len());

    let control = source.control();
    control
        .set_faults(FaultConfig {
            malformed_rate: 1.0,
            ..FaultConfig::none()
        })
        .unwrap();
    let err = grpc.lookup(&ctx, &request).await.unwrap_err();
    assert!(matches!(err, AdapterError::Malformed(_)), "{err}");

    control
        .set_faults(FaultConfig {
            hang: true,
            ..FaultConfig::none()
        })
        .unwrap();
    let started = std::time::Instant::now();
    let short = LookupContext::with_timeout(Duration::from_millis(300));
    let err = grpc.lookup(&short, &request).await.unwrap_err();
    // The hang is cut at the deadline and reported as a timeout, whether
    // the broker's timer or tonic's own `grpc-timeout` timer fires first.
    assert!(matches!(&err, AdapterError::Timeout), "{err}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");

    control
        .set_faults(FaultConfig {
            outage: true,
            ..FaultConfig::none()
        })
        .unwrap();
    let err = grpc.lookup(&ctx, &request).await.unwrap_err();
    assert!(matches!(err, AdapterError::Unavailable(_)), "{err}");
    assert!(!grpc.check().await.unwrap().serving);

    control.set_faults(FaultConfig::none()).unwrap();
    grpc.lookup(&ctx, &request).await.unwrap();
    let stats = control.stats();
    assert_eq!(stats.lookups, 6);
    assert_eq!(stats.failures, 3);
    assert_eq!(stats.persons, 6 * ids.len() as u64);
    server.abort();
}
