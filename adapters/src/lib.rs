//! The hedui adapter SDK.
//!
//! A *source* is a department or a bank that knows part of what a household
//! earns and owns. The broker talks to every source through an [`Adapter`]:
//! a batch of person ids in, typed facts (`hedui.v1.Fact`) or a typed
//! [`AdapterError`] out, plus a health check.
//!
//! # Layout
//! - [`catalog`]: the sources as data: id, name, fact kinds (the 28 of
//!   Dachuan are embedded; configuration may add more).
//! - [`registry`]: builds adapters from configuration through one
//!   [`registry::AdapterFactory`] per transport, registered explicitly.
//! - [`grpc`]: the remote gRPC transport (the department serves
//!   `hedui.v1.AdapterService`).
//! - [`http`]: the HTTP/JSON transport (the department's REST endpoint,
//!   with request template, field mapping and signing in configuration).
//! - [`sql`]: the SQL transport (a read-only view in PostgreSQL,
//!   MariaDB/MySQL or SQLite, the query and the mapping in configuration).
//! - [`peer`]: the peer-broker transport and the server a broker offers
//!   its peers (federation, with provenance and loop refusal).
//! - [`mapping`]: the declarative mapping from a source's records to facts
//!   that the HTTP/JSON and SQL transports share.
//! - [`conformance`]: the conformance kit, the suite every adapter should
//!   pass (`hedui adapter check`).
//! - [`server`]: serves any [`Adapter`] as `hedui.v1.AdapterService`, for a
//!   department that writes its adapter in Rust and for the simulated
//!   agencies.
//! - [`auth`]: authentication toward sources: client TLS (mutual or not)
//!   and bearer tokens, per source, with secrets from files or the
//!   environment only.
//! - [`answer`]: checks an answer against its request before the broker
//!   trusts it.
//! - [`values`]: checks the values of a fact (money, areas, enums, dates).

pub mod answer;
pub mod auth;
pub mod catalog;
pub mod conformance;
pub mod error;
pub mod grpc;
mod h2client;
#[cfg(feature = "http")]
pub mod http;
pub mod mapping;
#[cfg(feature = "peer")]
pub mod peer;
pub mod registry;
pub mod server;
#[cfg(feature = "sql")]
pub mod sql;
mod unary;
pub mod values;

use std::fmt;

use async_trait::async_trait;
use hedui_proto::v1::{CheckResponse, LookupRequest, LookupResponse};
use tokio::time::Instant;

pub use error::AdapterError;

/// What the broker knows about a lookup besides its request: the instant by
/// which the answer must be in. Transports pass the time left on to the
/// source (a gRPC deadline, an HTTP timeout, a statement timeout).
#[derive(Debug, Clone)]
pub struct LookupContext {
    /// The instant after which the broker no longer waits.
    pub deadline: Instant,
    /// The W3C `traceparent` of the broker's span for this call, when the
    /// broker traces: remote transports send it on (gRPC metadata, an HTTP
    /// header) so the department's spans join the verification's trace.
    pub traceparent: Option<String>,
}

/// The header (and gRPC metadata key) carrying [`LookupContext::traceparent`].
pub const TRACEPARENT: &str = "traceparent";

impl LookupContext {
    /// A context whose deadline is `timeout` from now.
    pub fn with_timeout(timeout: std::time::Duration) -> Self {
        Self::until(Instant::now() + timeout)
    }

    /// A context whose deadline is `deadline`, not traced.
    pub fn until(deadline: Instant) -> Self {
        Self {
            deadline,
            traceparent: None,
        }
    }

    /// Adds the trace context to an outgoing gRPC request.
    pub fn trace<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(v) = self
            .traceparent
            .as_deref()
            .and_then(|tp| tonic::metadata::MetadataValue::try_from(tp).ok())
        {
            request.metadata_mut().insert(TRACEPARENT, v);
        }
    }

    /// Time left to the deadline (zero once it has passed).
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// A source, as the broker sees it.
///
/// Implementations must be cheap to call concurrently: the broker shares
/// one adapter between every verification in flight.
#[async_trait]
pub trait Adapter: Send + Sync + fmt::Debug {
    /// The id of the source this adapter answers for (see [`catalog`]).
    fn source_id(&self) -> &str;

    /// Answers one lookup for a batch of persons.
    ///
    /// The request is borrowed: the broker keeps it while the call waits
    /// and asks again with the same one on a retry, so no attempt copies
    /// it (27 calls wait per verification in flight; docs/benchmarks.md,
    /// S5).
    ///
    /// # Errors
    /// An [`AdapterError`] saying why the source gave no usable answer; a
    /// person the source does not know is not an error but an answer with
    /// no facts.
    async fn lookup(
        &self,
        ctx: &LookupContext,
        request: &LookupRequest,
    ) -> Result<LookupResponse, AdapterError>;

    /// Tells whether the source can answer now.
    ///
    /// # Errors
    /// An [`AdapterError`] when the source cannot be asked at all.
    async fn check(&self) -> Result<CheckResponse, AdapterError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_context_rides_outgoing_calls() {
        let mut ctx = LookupContext::with_timeout(std::time::Duration::from_secs(1));
        let mut req = tonic::Request::new(());
        ctx.trace(&mut req);
        assert!(req.metadata().get(TRACEPARENT).is_none());
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        ctx.traceparent = Some(tp.into());
        ctx.trace(&mut req);
        assert_eq!(req.metadata().get(TRACEPARENT).unwrap(), tp);
    }
}
