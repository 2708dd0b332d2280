//! Serves [`Adapter`]s as `hedui.v1.AdapterService`: the way a department
//! that writes its adapter in Rust exposes it, and how the simulated agencies
//! run as their own process.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use hedui_proto::v1::{
    CheckRequest, CheckResponse, LookupRequest, LookupResponse,
    adapter_service_server::{AdapterService, AdapterServiceServer},
};
use tonic::{Request, Response, Status};

use crate::{Adapter, LookupContext, grpc::MAX_ANSWER_BYTES};

/// Longest a lookup may take when the caller sends no deadline.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest number of persons in one lookup.
pub const MAX_PERSONS_PER_LOOKUP: usize = 100;

/// `AdapterService` over a set of adapters, chosen by the request's
/// `source_id` (which may be left empty when there is one adapter).
#[derive(Debug, Clone)]
pub struct AdapterServer {
    adapters: Arc<BTreeMap<String, Arc<dyn Adapter>>>,
}

impl AdapterServer {
    /// A server for these adapters.
    pub fn new(adapters: impl IntoIterator<Item = Arc<dyn Adapter>>) -> Self {
        let adapters = adapters
            .into_iter()
            .map(|a| (a.source_id().to_owned(), a))
            .collect();
        Self {
            adapters: Arc::new(adapters),
        }
    }

    /// The tonic service, with message limits set.
    pub fn into_service(self) -> AdapterServiceServer<Self> {
        AdapterServiceServer::new(self)
            .max_encoding_message_size(MAX_ANSWER_BYTES)
            .max_decoding_message_size(1024 * 1024)
    }

    fn pick(&self, source_id: &str) -> Result<&Arc<dyn Adapter>, Status> {
        if source_id.is_empty() && self.adapters.len() == 1 {
            return Ok(self.adapters.values().next().expect("one adapter"));
        }
        self.adapters.get(source_id).ok_or_else(|| {
            Status::invalid_argument(format!(
                "source_id: {source_id:?} is not served here; served: {}",
                self.adapters.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// Reads the deadline a caller sent as `grpc-timeout` (tonic leaves it in
/// the metadata on the server side).
fn deadline_of<T>(request: &Request<T>) -> Duration {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_LOOKUP_TIMEOUT)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl AdapterService for AdapterServer {
    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let timeout = deadline_of(&request);
        let request = request.into_inner();
        let adapter = self.pick(&request.source_id)?;
        if request.person_ids.is_empty() {
            return Err(Status::invalid_argument("person_ids: must not be empty"));
        }
        if request.person_ids.len() > MAX_PERSONS_PER_LOOKUP {
            return Err(Status::invalid_argument(format!(
                "person_ids: {} persons, at most {MAX_PERSONS_PER_LOOKUP}",
                request.person_ids.len()
            )));
        }
        let ctx = LookupContext::with_timeout(timeout);
        match tokio::time::timeout_at(ctx.deadline, adapter.lookup(&ctx, request)).await {
            Err(_) => Err(Status::deadline_exceeded("no answer before the deadline")),
            Ok(Err(e)) => Err(e.to_status()),
            Ok(Ok(r)) => Ok(Response::new(r)),
        }
    }

    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let adapter = self.pick(&request.get_ref().source_id)?;
        adapter
            .check()
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
