//! Baseline A's server: `hedui.v1.AdapterService` whose `Check` echoes the
//! source id it is given in a canned answer and does nothing else, so a
//! call costs what tonic, HTTP/2 and loopback cost and nothing more. It runs
//! as its own process (`hedui-bench echo-server`), like the broker, so its
//! CPU time is read the same way.

use hedui_proto::v1::{
    CheckRequest, CheckResponse, FactKind, LookupRequest, LookupResponse, PersonAnswer,
    adapter_service_server::{AdapterService, AdapterServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, Copy)]
struct Echo;

#[tonic::async_trait]
impl AdapterService for Echo {
    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        // Every person answered with no record: a canned answer.
        let answers = request
            .into_inner()
            .person_ids
            .into_iter()
            .map(|person_id| PersonAnswer {
                person_id,
                facts: Vec::new(),
            })
            .collect();
        Ok(Response::new(LookupResponse {
            answers,
            as_of: None,
        }))
    }

    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            serving: true,
            fact_kinds: vec![FactKind::HouseholdRegistration as i32],
            detail: request.into_inner().source_id,
        }))
    }
}

/// Serves on an ephemeral loopback port, prints `{"listening":"ADDR"}`, and
/// stops when standard input closes (the benchmark went away) or on Ctrl-C.
pub(crate) async fn serve() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("{}", serde_json::json!({ "listening": addr.to_string() }));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // A plain thread: tokio's stdin would hold the runtime's shutdown.
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let stop = async move {
        tokio::select! {
            _ = rx => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // Served exactly as the broker serves its API (`broker/src/server.rs`).
    tonic::transport::Server::builder()
        .add_service(AdapterServiceServer::new(Echo))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop,
        )
        .await?;
    Ok(())
}
