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
//! # optional, per source (see [`crate::auth`]); tls needs an https:// endpoint
//! tls = { ca = "/etc/hedui/dept-ca.pem", cert = "/etc/hedui/client.pem", key = "/etc/hedui/client-key.pem" }
//! auth = { bearer_token_file = "/run/secrets/hedui-dept-token" }
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
    auth::{BearerParams, Credentials, TlsParams},
    catalog::SourceSpec,
    h2client::H2Client,
    registry::{AdapterFactory, BuildError, parse_params},
};

/// The method a source's answers come from.
pub(crate) const LOOKUP_PATH: &str = "/hedui.v1.AdapterService/Lookup";

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
    /// Client TLS (and mutual TLS) toward the source; needs `https://`.
    #[serde(default)]
    pub tls: Option<TlsParams>,
    /// Where the bearer token sent with every call comes from.
    #[serde(default)]
    pub auth: Option<BearerParams>,
}

impl GrpcParams {
    /// Parameters for a plain endpoint with the defaults.
    pub fn plain(endpoint: impl Into<String>) -> Self {
        GrpcParams {
            endpoint: endpoint.into(),
            connect_timeout_ms: default_connect_timeout_ms(),
            max_answer_bytes: MAX_ANSWER_BYTES,
            tls: None,
            auth: None,
        }
    }
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
    /// For `Check`, through tonic's channel (a connection of its own).
    client: AdapterServiceClient<Channel>,
    /// For `Lookup`, the call every verification makes: HTTP/2 directly
    /// ([`crate::h2client`]).
    lookups: H2Client,
    /// Largest answer accepted, in bytes.
    max_answer_bytes: usize,
    /// `Bearer <token>`, sent with every call; marked sensitive, and its
    /// `Debug` does not print it.
    authorization: Option<Authorization>,
    /// How the source is reached, said in transport errors (see
    /// [`over_of`]).
    over: &'static str,
}

/// The `authorization` metadata of a source: `Debug` never prints it.
#[derive(Clone)]
pub(crate) struct Authorization(pub(crate) tonic::metadata::AsciiMetadataValue);

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer Secret(…)")
    }
}

impl Authorization {
    /// Adds the header to a call.
    pub(crate) fn apply<T>(opt: Option<&Self>, req: &mut tonic::Request<T>) {
        if let Some(a) = opt {
            req.metadata_mut().insert("authorization", a.0.clone());
        }
    }
}

/// How a source is reached, for transport errors: over TLS a refused
/// client certificate may surface as a reset or a broken pipe rather than
/// as the server's alert (TLS 1.3 checks it after the client's handshake
/// is done), so the error says that the connection was TLS and whether a
/// client certificate was offered.
pub(crate) fn over_of(tls: Option<&crate::auth::LoadedTls>) -> &'static str {
    match tls {
        None => "",
        Some(t) if t.identity_pem.is_some() => " over TLS",
        Some(_) => " over TLS (no client certificate configured)",
    }
}

/// How a source is reached, its credentials read: see [`secured_endpoint`].
pub(crate) struct Secured {
    /// tonic's endpoint, TLS configured.
    pub(crate) endpoint: Endpoint,
    /// The bearer token's metadata.
    pub(crate) authorization: Option<Authorization>,
    /// How the source is reached, for transport errors ([`over_of`]).
    pub(crate) over: &'static str,
    /// The client TLS, read.
    pub(crate) tls: Option<crate::auth::LoadedTls>,
}

/// The endpoint of a source with its credentials: reads the `tls` and
/// `auth` files once; also says how the source is reached ([`over_of`]).
pub(crate) fn secured_endpoint(
    endpoint: &str,
    connect_timeout_ms: u64,
    tls: Option<&TlsParams>,
    auth: Option<&BearerParams>,
) -> Result<Secured, String> {
    let creds = Credentials::load("endpoint", endpoint, tls, auth)?;
    let mut ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("endpoint {endpoint:?} is not a valid URL: {e}"))?
        .connect_timeout(Duration::from_millis(connect_timeout_ms))
        .tcp_nodelay(true);
    if let Some(t) = &creds.tls {
        ep = ep
            .tls_config(TlsParams::tonic_config(t))
            .map_err(|e| format!("tls: {}", crate::auth::describe_chain(&e)))?;
    }
    Ok(Secured {
        endpoint: ep,
        authorization: creds.grpc_authorization().map(Authorization),
        over: over_of(creds.tls.as_ref()),
        tls: creds.tls,
    })
}

impl GrpcAdapter {
    /// An adapter for `source` at `params.endpoint`; connects lazily.
    ///
    /// # Errors
    /// [`BuildError::Params`] when the endpoint is not a valid URL.
    pub fn new(source: &SourceSpec, params: &GrpcParams) -> Result<Self, BuildError> {
        let params_error = |message| BuildError::Params {
            kind: "grpc".into(),
            message,
        };
        let secured = secured_endpoint(
            &params.endpoint,
            params.connect_timeout_ms,
            params.tls.as_ref(),
            params.auth.as_ref(),
        )
        .map_err(params_error)?;
        if params.max_answer_bytes == 0 || params.max_answer_bytes > MAX_ANSWER_BYTES {
            return Err(params_error(format!(
                "max_answer_bytes: must be between 1 and {MAX_ANSWER_BYTES}"
            )));
        }
        let lookups = H2Client::new(
            &params.endpoint,
            Duration::from_millis(params.connect_timeout_ms),
            secured.tls.as_ref(),
        )
        .map_err(params_error)?;
        let client = AdapterServiceClient::new(secured.endpoint.connect_lazy())
            .max_decoding_message_size(params.max_answer_bytes);
        Ok(Self {
            source_id: source.id.clone(),
            fact_kinds: source.fact_kinds.clone(),
            client,
            lookups,
            max_answer_bytes: params.max_answer_bytes,
            authorization: secured.authorization,
            over: secured.over,
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
        request: &LookupRequest,
    ) -> Result<LookupResponse, AdapterError> {
        let remaining = ctx.remaining();
        if remaining.is_zero() {
            return Err(AdapterError::Timeout);
        }
        // In a block of its own: a local lives in the future until its
        // scope ends, moved out or not, and this one would be held while
        // the answer is waited for.
        let metadata = {
            let mut req = tonic::Request::new(());
            // tonic does not carry a deadline across calls: the time left
            // is sent as `grpc-timeout` so the department stops working
            // when the broker stops waiting.
            req.set_timeout(remaining);
            ctx.trace(&mut req);
            Authorization::apply(self.authorization.as_ref(), &mut req);
            req.into_parts().0
        };
        let frame = crate::unary::frame(request).map_err(|s| classify(&s, self.over))?;
        let call = self.lookups.call::<LookupResponse>(
            LOOKUP_PATH,
            metadata,
            frame,
            self.max_answer_bytes,
        );
        let response = match tokio::time::timeout_at(ctx.deadline, call).await {
            Err(_) => return Err(AdapterError::Timeout),
            Ok(Err(status)) => return Err(classify(&status, self.over)),
            Ok(Ok(r)) => r,
        };
        check_answer(request, &response, &self.fact_kinds)?;
        Ok(response)
    }

    async fn check(&self) -> Result<CheckResponse, AdapterError> {
        let mut req = tonic::Request::new(CheckRequest {
            source_id: self.source_id.clone(),
        });
        req.set_timeout(Duration::from_secs(5));
        Authorization::apply(self.authorization.as_ref(), &mut req);
        self.client
            .clone()
            .check(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| classify(&s, self.over))
    }
}

/// Reads a status from the remote source; transport failures (connection
/// refused, reset) come back from tonic as `UNAVAILABLE` or `UNKNOWN` with a
/// source error, and are unavailability, not an error of the department.
fn classify(status: &tonic::Status, over: &str) -> AdapterError {
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
    let transport_failure = status.source().is_some_and(|e| {
        e.downcast_ref::<tonic::transport::Error>().is_some()
            || e.downcast_ref::<crate::h2client::Unreachable>().is_some()
    });
    if transport_failure {
        return AdapterError::Unavailable(format!(
            "cannot reach the source{over}: {}",
            transport_cause(status)
        ));
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

/// The words of a transport failure: its message and its causes, where a
/// TLS handshake's failure (an unknown CA, a certificate refused) is said.
pub(crate) fn transport_cause(status: &tonic::Status) -> String {
    use std::error::Error;
    match status.source() {
        Some(e) => {
            let chain = crate::auth::describe_chain(e);
            if chain.contains(status.message()) {
                chain
            } else {
                format!("{}: {chain}", status.message())
            }
        }
        None => status.message().to_owned(),
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use hedui_proto::v1::PersonAnswer;
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;
    use crate::{
        auth::Secret,
        catalog::Catalog,
        registry::Registry,
        server::{AdapterServer, ServerAuth},
    };

    fn spec() -> SourceSpec {
        Catalog::dachuan().get("employment").unwrap().clone()
    }

    fn build(text: &str) -> Result<Arc<dyn Adapter>, String> {
        let t: crate::registry::TransportConfig = toml::from_str(text).unwrap();
        Registry::with_builtin()
            .build(&spec(), &t)
            .map_err(|e| e.to_string())
    }

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hedui-grpc-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn credentials_are_checked_when_built_and_name_the_parameter() {
        for kind in ["grpc", "peer"] {
            let extra = if kind == "peer" {
                "sources = ['employment']\n"
            } else {
                ""
            };
            let e = |rest: &str| build(&format!("type = '{kind}'\n{extra}{rest}")).unwrap_err();
            let m = e("endpoint = 'http://127.0.0.1:9'\nauth = { bearer_token = 'inl1ne-s3cret' }");
            assert!(
                m.starts_with(&format!("transport \"{kind}\": auth.bearer_token: ")),
                "{m}"
            );
            assert!(m.contains("files or the environment"), "{m}");
            assert!(!m.contains("inl1ne-s3cret"), "{m}");
            let m = e("endpoint = 'https://127.0.0.1:9'");
            assert!(m.contains("tls: required for the https:// endpoint"), "{m}");
            let m = e("endpoint = 'http://127.0.0.1:9'\ntls = { ca = '/ca.pem' }");
            assert!(
                m.contains("endpoint: \"http://127.0.0.1:9\" must start with https://"),
                "{m}"
            );
            let m = e("endpoint = 'https://127.0.0.1:9'\ntls = { ca = '/no/such/ca.pem' }");
            assert!(
                m.ends_with("tls.ca: cannot read /no/such/ca.pem: no such file"),
                "{m}"
            );
            let m =
                e("endpoint = 'http://127.0.0.1:9'\nauth = { bearer_token_file = '/no/such/t' }");
            assert!(
                m.ends_with("auth.bearer_token_file: cannot read /no/such/t: no such file"),
                "{m}"
            );
            let m = e(
                "endpoint = 'http://127.0.0.1:9'\nauth = { bearer_token_env = 'HEDUI_TEST_SURELY_UNSET_TOKEN' }",
            );
            assert!(m.contains("auth.bearer_token_env: environment variable HEDUI_TEST_SURELY_UNSET_TOKEN is not set"), "{m}");
            let m = e("endpoint = 'http://127.0.0.1:9'\nauth = { bearer_token_fil = '/x' }");
            assert!(m.contains("bearer_token_fil"), "{m}");
        }
    }

    #[tokio::test]
    async fn the_token_is_not_in_debug_output() {
        let dir = scratch("debug");
        let path = dir.join("token");
        std::fs::write(&path, "d3bug-s3cret").unwrap();
        for kind in ["grpc", "peer"] {
            let extra = if kind == "peer" {
                "sources = ['employment']\n"
            } else {
                ""
            };
            let a = build(&format!(
                "type = '{kind}'\n{extra}endpoint = 'http://127.0.0.1:9'\nauth = {{ bearer_token_file = {path:?} }}"
            ))
            .unwrap();
            let text = format!("{a:?}");
            assert!(!text.contains("d3bug-s3cret"), "{text}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Answers every person with no record.
    #[derive(Debug)]
    pub(crate) struct Nobody;

    #[async_trait]
    impl Adapter for Nobody {
        fn source_id(&self) -> &str {
            "employment"
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
                        facts: Vec::new(),
                    })
                    .collect(),
                as_of: Some(prost_types::Timestamp::default()),
            })
        }

        async fn check(&self) -> Result<CheckResponse, AdapterError> {
            Ok(CheckResponse {
                serving: true,
                fact_kinds: Vec::new(),
                detail: String::new(),
            })
        }
    }

    #[tokio::test]
    async fn the_token_is_sent_and_a_wrong_one_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let auth = ServerAuth::none().with_token(Secret::new("r1ght-token"));
        let service =
            auth.wrap(AdapterServer::new([Arc::new(Nobody) as Arc<dyn Adapter>]).into_service());
        tokio::spawn(
            auth.server()
                .unwrap()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let dir = scratch("call");
        let ask = |token: Option<&str>| {
            let auth = token.map(|t| {
                let p = dir.join(format!("token-{t}"));
                std::fs::write(&p, t).unwrap();
                format!("auth = {{ bearer_token_file = {p:?} }}")
            });
            build(&format!(
                "type = 'grpc'\nendpoint = 'http://{addr}'\n{}",
                auth.unwrap_or_default()
            ))
            .unwrap()
        };
        let req = LookupRequest {
            source_id: "employment".into(),
            person_ids: vec!["110105194912310021".into()],
            ..Default::default()
        };
        let ctx = LookupContext::with_timeout(Duration::from_secs(5));
        let ok = ask(Some("r1ght-token")).lookup(&ctx, &req).await.unwrap();
        assert_eq!(ok.answers.len(), 1);
        for token in [Some("wr0ng-token"), None] {
            let e = ask(token).lookup(&ctx, &req).await.unwrap_err();
            let m = e.to_string();
            assert!(matches!(e, AdapterError::Rejected(_)), "{m}");
            assert!(m.contains("authentication"), "{m}");
            assert!(!m.contains("r1ght") && !m.contains("wr0ng"), "{m}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A source call waits in this adapter's future, boxed by
    /// `async_trait`: 27 of them per verification in flight
    /// (docs/benchmarks.md, S5). It borrows the request rather than owning
    /// a copy, and the h2 call inside it holds the answer to come, not
    /// what sending took. 232 bytes (rustc 1.95; jemalloc's 256 class);
    /// 720 while the call held its sending, 1,072 with the request owned.
    #[tokio::test]
    async fn a_waiting_lookup_is_small() {
        let a = GrpcAdapter::new(&spec(), &GrpcParams::plain("http://127.0.0.1:9")).unwrap();
        let (ctx, req) = (
            LookupContext::with_timeout(Duration::from_secs(1)),
            LookupRequest::default(),
        );
        let call = a.lookup(&ctx, &req);
        let size = std::mem::size_of_val(&*call);
        println!("the gRPC adapter's lookup future: {size} bytes");
        assert!(size <= 256, "{size} bytes");
    }
}
