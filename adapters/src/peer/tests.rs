//! Federation between in-process brokers on loopback: provenance through a
//! peer, and loops refused with their path.

use std::net::SocketAddr;

use hedui_proto::v1::{Fact, ForestRight, fact::Value};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;

const PERSON: &str = "11010519491231002X";

/// A forestry bureau that knows one forest right of [`PERSON`].
#[derive(Debug)]
struct Forestry;

#[async_trait]
impl Adapter for Forestry {
    fn source_id(&self) -> &str {
        "forestry"
    }

    async fn lookup(
        &self,
        _ctx: &LookupContext,
        request: &LookupRequest,
    ) -> Result<LookupResponse, AdapterError> {
        Ok(LookupResponse {
            answers: request
                .person_ids
                .iter()
                .map(|p| PersonAnswer {
                    person_id: p.clone(),
                    facts: if p == PERSON {
                        vec![Fact {
                            record_id: "FR-1".into(),
                            as_of: Some(prost_types::Timestamp::default()),
                            value: Some(Value::ForestRight(ForestRight {
                                certificate_number: "C".into(),
                                area_centi_m2: 1_000,
                                grants_12m_fen: 5,
                            })),
                        }]
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
            as_of: None,
        })
    }

    async fn check(&self) -> Result<CheckResponse, AdapterError> {
        Ok(CheckResponse {
            serving: true,
            fact_kinds: vec![FactKind::ForestRight as i32],
            detail: String::new(),
        })
    }
}

fn spec(id: &str) -> SourceSpec {
    SourceSpec {
        id: id.into(),
        name: id.into(),
        fact_kinds: vec![FactKind::ForestRight],
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn serve(l: TcpListener, server: PeerServer) {
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
}

fn peer(id: &str, to: SocketAddr, sources: &[&str], me: &str) -> PeerAdapter {
    PeerAdapter::new(
        &spec(id),
        &PeerParams {
            endpoint: format!("http://{to}"),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            connect_timeout_ms: 1_000,
            tls: None,
            auth: None,
        },
        me,
    )
    .unwrap()
}

fn ask() -> LookupRequest {
    LookupRequest {
        request_id: "r".into(),
        source_id: "forestry".into(),
        person_ids: vec![PERSON.into(), "110105194912310021".into()],
        fact_kinds: vec![FactKind::ForestRight as i32],
        ..Default::default()
    }
}

fn ctx() -> LookupContext {
    LookupContext::with_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn facts_through_a_peer_name_the_peer_and_its_source() {
    let (l, b) = listener().await;
    serve(
        l,
        PeerServer::new(
            "dazhou",
            [(spec("forestry"), Arc::new(Forestry) as Arc<dyn Adapter>)],
        ),
    );
    // Through two brokers: dachuan asks suzhou, which asks dazhou.
    let (l2, s) = listener().await;
    let suzhou_forestry: Arc<dyn Adapter> = Arc::new(peer("forestry", b, &["forestry"], "suzhou"));
    serve(
        l2,
        PeerServer::new("suzhou", [(spec("forestry"), suzhou_forestry)]),
    );

    let direct = peer("forestry", b, &["forestry"], "dachuan");
    let resp = direct.lookup(&ctx(), &ask()).await.unwrap();
    assert_eq!(resp.answers[0].facts[0].record_id, "dazhou/forestry/FR-1");
    assert!(resp.answers[1].facts.is_empty());
    assert!(direct.check().await.unwrap().serving);

    let two_hops = peer("forestry", s, &["forestry"], "dachuan");
    let resp = two_hops.lookup(&ctx(), &ask()).await.unwrap();
    assert_eq!(
        resp.answers[0].facts[0].record_id,
        "suzhou/forestry/dazhou/forestry/FR-1"
    );
}

#[tokio::test]
async fn a_loop_is_refused_with_its_path() {
    // dachuan's "forestry" is dazhou's, and dazhou's is dachuan's.
    let (la, a) = listener().await;
    let (lb, b) = listener().await;
    let a_forestry: Arc<dyn Adapter> = Arc::new(peer("forestry", b, &["forestry"], "dachuan"));
    let b_forestry: Arc<dyn Adapter> = Arc::new(peer("forestry", a, &["forestry"], "dazhou"));
    serve(
        la,
        PeerServer::new("dachuan", [(spec("forestry"), a_forestry.clone())]),
    );
    serve(
        lb,
        PeerServer::new("dazhou", [(spec("forestry"), b_forestry)]),
    );
    // dachuan's own verification asks its forestry source.
    let started = std::time::Instant::now();
    let err = a_forestry.lookup(&ctx(), &ask()).await.unwrap_err();
    let AdapterError::Rejected(m) = &err else {
        panic!("{err:?}")
    };
    assert!(
        m.contains("federation loop: dachuan → dazhou → dachuan"),
        "{m}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    let err = a_forestry.check().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("federation loop: dachuan → dazhou → dachuan"),
        "{err}"
    );
}

#[tokio::test]
async fn a_broker_that_asks_itself_is_a_loop() {
    let (l, a) = listener().await;
    let me: Arc<dyn Adapter> = Arc::new(peer("forestry", a, &["forestry"], "dachuan"));
    serve(
        l,
        PeerServer::new("dachuan", [(spec("forestry"), me.clone())]),
    );
    let err = me.lookup(&ctx(), &ask()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("federation loop: dachuan → dachuan"),
        "{err}"
    );
}

#[tokio::test]
async fn a_peer_source_that_does_not_report_a_kind_is_refused() {
    let (l, b) = listener().await;
    serve(
        l,
        PeerServer::new(
            "dazhou",
            [(spec("forestry"), Arc::new(Forestry) as Arc<dyn Adapter>)],
        ),
    );
    let wrong = PeerAdapter::new(
        &SourceSpec {
            id: "x".into(),
            name: "x".into(),
            fact_kinds: vec![FactKind::ForestRight, FactKind::Vehicle],
        },
        &PeerParams {
            endpoint: format!("http://{b}"),
            sources: vec!["forestry".into()],
            connect_timeout_ms: 1_000,
            tls: None,
            auth: None,
        },
        "dachuan",
    )
    .unwrap();
    let err = wrong.lookup(&ctx(), &ask()).await.unwrap_err();
    assert!(err.to_string().contains("reports VEHICLE"), "{err}");
    let unknown = peer("forestry", b, &["hydrology"], "dachuan");
    let err = unknown.lookup(&ctx(), &ask()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("\"hydrology\" is not a source of broker \"dazhou\""),
        "{err}"
    );
}

#[test]
fn configuration_errors_name_the_key() {
    let f = PeerFactory::new("dachuan");
    let build = |text: &str| {
        let t: toml::Table = toml::from_str(text).unwrap();
        f.build(&spec("forestry"), &t)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(
        build("endpoint = 'http://127.0.0.1:1'\nsources = []")
            .contains("sources: name at least one")
    );
    assert!(build("endpoint = 'http://127.0.0.1:1'").contains("missing field `sources`"));
    assert!(
        build("endpoint = 'http://127.0.0.1:1'\nsources = ['x']\nhops = 2")
            .contains("unknown field `hops`")
    );
    assert!(check_broker_id("Dachuan").is_err());
    assert!(check_broker_id("da-chuan_2").is_ok());
}
