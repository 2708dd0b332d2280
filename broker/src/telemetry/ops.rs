//! The operations listener: `GET /healthz` (200 while the process runs),
//! `GET /readyz` (200 only when the audit store answers and the broker is
//! not draining, else 503 with the reason) and `GET /metrics` (Prometheus
//! text). Plain HTTP without client certificates, for probes and scrapers
//! on the operations network; nothing on it concerns a household.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use super::Telemetry;
use crate::audit::AuditLog;

/// What the operations endpoints read.
#[derive(Debug, Clone)]
pub struct Ops {
    telemetry: Arc<Telemetry>,
    audit: AuditLog,
    draining: Arc<AtomicBool>,
}

impl Ops {
    /// The endpoints over `telemetry` and `audit`.
    pub fn new(telemetry: Arc<Telemetry>, audit: AuditLog) -> Self {
        Self {
            telemetry,
            audit,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// From now on `/readyz` says 503: the broker is shutting down and
    /// load balancers should stop sending it calls.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self)
    }

    /// Serves the routes on `listener` until `shutdown`.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn ready(State(ops): State<Ops>) -> impl IntoResponse {
    if ops.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutting down\n".to_owned(),
        );
    }
    match ops.audit.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: audit log: {e}\n"),
        ),
    }
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        ops.telemetry.prometheus_text(),
    )
}
