//! The remote gRPC transport: the department serves
//! `hedui.v1.AdapterService`, in any language, and the broker calls it.
//!
//! Configuration:
//! ```toml
//! [sources.transport]
//! type = "grpc"
//! endpoint = "http://10.1.2.3:7001"   # where the department serves
//! connect_timeout_ms = 1000           # optional, default 1000
//! max_answer_bytes = 16777216         # optional, default 16 MiB
//! ```
//!
//! A source over its limits answers `RESOURCE_EXHAUSTED`, with a
//! `retry-after` metadata entry (seconds) when it knows when to come back.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use hedui_proto::v1::{
    CheckRequest, CheckResponse, FactKind, LookupRequest, LookupResponse,
    adapter_service_client::AdapterServiceClient,
};
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint};

use crate::{
    Adapter, AdapterError, LookupContext,
    answer::check_answer,
    catalog::SourceSpec,
    registry::{AdapterFactory, BuildError, parse_params},
};

/// Largest answer accepted from a source, in bytes.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Parameters of the `grpc` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcParams {
    /// URL of the department's `AdapterService`, e.g. `http://10.1.2.3:7001`.
    pub endpoint: String,
    /// How long to wait for a connection, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Largest answer accepted, in bytes; a larger one is unusable.
    #[serde(default = "default_max_answer_bytes")]
    pub max_answer_bytes: usize,
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}

fn default_max_answer_bytes() -> usize {
    MAX_ANSWER_BYTES
}

/// An adapter that calls a remote `AdapterService`.
#[derive(Debug, Clone)]
pub struct GrpcAdapter {
    source_id: String,
    fact_kinds: Vec<FactKind>,
    client: AdapterServiceClient<Channel>,
}

impl GrpcAdapter {
    /// An adapter for `source` at `params.endpoint`; connects lazily.
    ///
    /// # Errors
    /// [`BuildError::Params`] when the endpoint is not a valid URL.
    pub fn new(source: &SourceSpec, params: &GrpcParams) -> Result<Self, BuildError> {
        let endpoint = Endpoint::from_shared(params.endpoint.clone())
            .map_err(|e| BuildError::Params {
                kind: "grpc".into(),
                message: format!("endpoint {:?} is not a valid URL: {e}", params.endpoint),
            })?
            .connect_timeout(Duration::from_millis(params.connect_timeout_ms))
            .tcp_nodelay(true);
        if params.max_answer_bytes == 0 || params.max_answer_bytes > MAX_ANSWER_BYTES {
            return Err(BuildError::Params {
                kind: "grpc".into(),
                message: format!("max_answer_bytes: must be between 1 and {MAX_ANSWER_BYTES}"),
            });
        }
        let client = AdapterServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(params.max_answer_bytes);
        Ok(Self {
            source_id: source.id.clone(),
            fact_kinds: source.fact_kinds.clone(),
            client,
        })
    }
}

#[async_trait]
impl Adapter for GrpcAdapter {
    fn source_id(&self) -> &str {
        &self.source_id
    }

    async fn lookup(
        &self,
        ctx: &LookupContext,
        request: LookupRequest,
    ) -> Result<LookupResponse, AdapterError> {
        let remaining = ctx.remaining();
        if remaining.is_zero() {
            return Err(AdapterError::Timeout);
        }
        let mut req = tonic::Request::new(request.clone());
        // tonic does not carry a deadline across calls: the time left is
        // sent as `grpc-timeout` so the department stops working when the
        // broker stops waiting.
        req.set_timeout(remaining);
        let mut client = self.client.clone();
        let response = match tokio::time::timeout_at(ctx.deadline, client.lookup(req)).await {
            Err(_) => return Err(AdapterError::Timeout),
            Ok(Err(status)) => return Err(classify(&status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        check_answer(&request, &response, &self.fact_kinds)?;
        Ok(response)
    }

    async fn check(&self) -> Result<CheckResponse, AdapterError> {
        let mut req = tonic::Request::new(CheckRequest {
            source_id: self.source_id.clone(),
        });
        req.set_timeout(Duration::from_secs(5));
        self.client
            .clone()
            .check(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| classify(&s))
    }
}

/// Reads a status from the remote source; transport failures (connection
/// refused, reset) come back from tonic as `UNAVAILABLE` or `UNKNOWN` with a
/// source error, and are unavailability, not an error of the department.
fn classify(status: &tonic::Status) -> AdapterError {
    use std::error::Error;
    // The channel enforces `grpc-timeout` itself and reports its expiry as
    // CANCELLED carrying `TimeoutExpired`: that is a timeout, not an outage.
    let mut cause = status.source();
    while let Some(e) = cause {
        if e.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            return AdapterError::Timeout;
        }
        cause = e.source();
    }
    let transport_failure = status
        .source()
        .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
    if transport_failure {
        return AdapterError::Unavailable(format!("cannot reach the source: {}", status.message()));
    }
    if status.code() == tonic::Code::OutOfRange || status.code() == tonic::Code::Internal {
        // A message too large or one that does not decode is an unusable
        // answer; tonic reports both as one of these codes.
        let m = status.message();
        if m.contains("decode") || m.contains("message length too large") {
            return AdapterError::Malformed(m.to_owned());
        }
    }
    if status.code() == tonic::Code::ResourceExhausted {
        let retry_after = status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return AdapterError::RateLimited { retry_after };
    }
    AdapterError::from_status(status)
}

/// The factory of the `grpc` transport.
#[derive(Debug, Clone, Copy)]
pub struct GrpcFactory;

impl AdapterFactory for GrpcFactory {
    fn transport(&self) -> &'static str {
        "grpc"
    }

    fn build(
        &self,
        source: &SourceSpec,
        params: &toml::Table,
    ) -> Result<Arc<dyn Adapter>, BuildError> {
        let params: GrpcParams = parse_params("grpc", params)?;
        Ok(Arc::new(GrpcAdapter::new(source, &params)?))
    }
}
