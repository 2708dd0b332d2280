//! Federation: another hedui broker as one source, as a district broker
//! asks a city's, a province's or another region's.
//!
//! A broker that federates serves `hedui.v1.AdapterService` itself
//! ([`PeerServer`]), answering each lookup from one of its own sources
//! (`LookupRequest.source_id`). A broker that asks it uses the `peer`
//! transport ([`PeerAdapter`]): one source of its configuration stands for
//! one or more sources of the peer.
//!
//! ```toml
//! [[sources]]
//! id = "forestry"                       # or a new id with name and fact_kinds
//! [sources.transport]
//! type = "peer"
//! endpoint = "http://10.8.0.2:50052"    # the peer's federation listener
//! sources = ["forestry"]                # the peer's sources this one stands for
//! connect_timeout_ms = 1000             # optional
//! # optional (see [`crate::auth`]); tls needs an https:// endpoint
//! tls = { ca = "/etc/hedui/city-ca.pem", cert = "/etc/hedui/client.pem", key = "/etc/hedui/client-key.pem" }
//! auth = { bearer_token_env = "HEDUI_TOKEN_CITY" }
//! ```
//!
//! **Provenance.** The peer writes every record id it passes on as
//! `<peer broker id>/<its source id>/<the source's record id>`, e.g.
//! `dazhou/forestry/FR-00000012`: the report names the peer source (`source_id`)
//! and, in the record id, which broker and which source behind it. Through
//! several brokers the prefixes nest, nearest broker first.
//!
//! **Loops.** Every federated lookup carries the brokers it has passed, in
//! order, in the `hedui-via` metadata entry. A broker that finds its own id
//! there refuses the lookup with `FAILED_PRECONDITION` and a message naming
//! the loop, e.g. `federation loop: dachuan → dazhou → dachuan`; a path
//! longer than [`MAX_HOPS`] is refused the same way. Each broker's id is
//! set with `hedui serve --broker-id`; brokers that federate need distinct
//! ids.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use futures::future::join_all;
use hedui_proto::v1::{
    CheckRequest, CheckResponse, FactKind, LookupRequest, LookupResponse, PersonAnswer,
    adapter_service_client::AdapterServiceClient,
    adapter_service_server::{AdapterService, AdapterServiceServer},
};
use serde::Deserialize;
use tokio::sync::OnceCell;
use tonic::{Request, Response, Status, metadata::MetadataValue, transport::Channel};

use crate::{
    Adapter, AdapterError, LookupContext,
    answer::check_answer,
    auth::{BearerParams, TlsParams},
    catalog::SourceSpec,
    grpc::{Authorization, MAX_ANSWER_BYTES, secured_endpoint},
    registry::{AdapterFactory, BuildError, parse_params},
    server::{DEFAULT_LOOKUP_TIMEOUT, MAX_PERSONS_PER_LOOKUP, parse_grpc_timeout},
};

/// The metadata entry listing the brokers a lookup has passed, oldest
/// first, comma separated.
pub const VIA_HEADER: &str = "hedui-via";

/// Most brokers a lookup may pass.
pub const MAX_HOPS: usize = 8;

/// The broker id used when none is configured.
pub const DEFAULT_BROKER_ID: &str = "hedui";

tokio::task_local! {
    /// The brokers the lookup being served has passed, this one last.
    static PATH: Vec<String>;
}

/// Checks a broker id: lower-case letters, digits, `-` and `_`, 1 to 64.
///
/// # Errors
/// A message naming the id.
pub fn check_broker_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "broker id {id:?}: use 1 to 64 lower-case letters, digits, '-' and '_'"
        ))
    }
}

fn loop_message(path: &[String], me: &str) -> String {
    let mut p: Vec<&str> = path.iter().map(String::as_str).collect();
    p.push(me);
    format!("federation loop: {}", p.join(" → "))
}

// === the transport ===

/// Parameters of the `peer` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerParams {
    /// URL of the peer broker's federation listener.
    pub endpoint: String,
    /// The peer's sources this source stands for.
    pub sources: Vec<String>,
    /// How long to wait for a connection, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Client TLS (and mutual TLS) toward the peer; needs `https://`.
    #[serde(default)]
    pub tls: Option<TlsParams>,
    /// Where the bearer token sent with every call comes from.
    #[serde(default)]
    pub auth: Option<BearerParams>,
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}

/// An adapter that asks another broker.
#[derive(Clone)]
pub struct PeerAdapter {
    source_id: String,
    fact_kinds: Vec<FactKind>,
    broker_id: String,
    endpoint: String,
    remote: Vec<String>,
    /// For `Check` (tonic's generated client).
    client: AdapterServiceClient<Channel>,
    /// The same connection, for `Lookup` ([`crate::unary`]).
    channel: Channel,
    /// `Bearer <token>` sent with every call (never printed).
    authorization: Option<Authorization>,
    /// How the peer is reached, said in transport errors.
    over: &'static str,
    /// What each remote source serves, asked once.
    kinds: Arc<OnceCell<HashMap<String, Vec<FactKind>>>>,
}

impl fmt::Debug for PeerAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerAdapter")
            .field("source_id", &self.source_id)
            .field("broker_id", &self.broker_id)
            .field("endpoint", &self.endpoint)
            .field("remote", &self.remote)
            .field("authorization", &self.authorization)
            .finish_non_exhaustive()
    }
}

/// Reads a status from the peer; a loop or a refusal keeps its words.
fn classify(remote: &str, status: &Status, over: &str) -> AdapterError {
    use std::error::Error;
    let mut cause = status.source();
    while let Some(e) = cause {
        if e.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            return AdapterError::Timeout;
        }
        cause = e.source();
    }
    if status
        .source()
        .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some())
    {
        return AdapterError::Unavailable(format!(
            "cannot reach the peer broker{over}: {}",
            crate::grpc::transport_cause(status)
        ));
    }
    match AdapterError::from_status(status) {
        AdapterError::Rejected(m) => AdapterError::Rejected(format!("peer source {remote:?}: {m}")),
        AdapterError::Internal(m) => AdapterError::Internal(format!("peer source {remote:?}: {m}")),
        AdapterError::Unavailable(m) => {
            AdapterError::Unavailable(format!("peer source {remote:?}: {m}"))
        }
        other => other,
    }
}

impl PeerAdapter {
    /// An adapter for `source` asking the peer at `params.endpoint`, sent
    /// as from broker `broker_id`; connects lazily.
    ///
    /// # Errors
    /// A message naming the wrong parameter.
    pub fn new(source: &SourceSpec, params: &PeerParams, broker_id: &str) -> Result<Self, String> {
        if params.sources.is_empty() {
            return Err("sources: name at least one of the peer's sources".into());
        }
        for s in &params.sources {
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!("sources: {s:?} is not a source id"));
            }
        }
        let secured = secured_endpoint(
            &params.endpoint,
            params.connect_timeout_ms,
            params.tls.as_ref(),
            params.auth.as_ref(),
        )?;
        let (authorization, over) = (secured.authorization, secured.over);
        let channel = secured.endpoint.connect_lazy();
        let client =
            AdapterServiceClient::new(channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES);
        Ok(PeerAdapter {
            source_id: source.id.clone(),
            fact_kinds: source.fact_kinds.clone(),
            broker_id: broker_id.to_owned(),
            endpoint: params.endpoint.clone(),
            remote: params.sources.clone(),
            client,
            channel,
            authorization,
            over,
            kinds: Arc::new(OnceCell::new()),
        })
    }

    /// The brokers a call of this adapter has passed, this one last, as
    /// sent in [`VIA_HEADER`].
    fn outgoing_via(&self) -> Result<MetadataValue<tonic::metadata::Ascii>, AdapterError> {
        let mut path = PATH.try_with(Clone::clone).unwrap_or_default();
        if path.last() != Some(&self.broker_id) {
            path.push(self.broker_id.clone());
        }
        if path.len() > MAX_HOPS {
            return Err(AdapterError::Rejected(format!(
                "federation path too long: {}",
                path.join(" → ")
            )));
        }
        MetadataValue::try_from(path.join(","))
            .map_err(|_| AdapterError::Internal("broker ids cannot be sent".into()))
    }

    /// The kinds each remote source serves, from its health check; every
    /// kind of this source must be served by one of them, or the peer's
    /// silence would read as "no record".
    async fn remote_kinds(
        &self,
        ctx: &LookupContext,
    ) -> Result<&HashMap<String, Vec<FactKind>>, AdapterError> {
        self.kinds
            .get_or_try_init(|| async {
                let mut out = HashMap::new();
                for r in &self.remote {
                    let mut req = Request::new(CheckRequest { source_id: r.clone() });
                    req.set_timeout(ctx.remaining());
                    req.metadata_mut().insert(VIA_HEADER, self.outgoing_via()?);
                    Authorization::apply(self.authorization.as_ref(), &mut req);
                    let resp = tokio::time::timeout_at(ctx.deadline, self.client.clone().check(req))
                        .await
                        .map_err(|_| AdapterError::Timeout)?
                        .map_err(|s| classify(r, &s, self.over))?
                        .into_inner();
                    let kinds: Vec<FactKind> = resp
                        .fact_kinds
                        .iter()
                        .filter_map(|k| FactKind::try_from(*k).ok())
                        .collect();
                    out.insert(r.clone(), kinds);
                }
                for k in &self.fact_kinds {
                    if !out.values().any(|v| v.contains(k)) {
                        return Err(AdapterError::Internal(format!(
                            "none of the peer's sources {} reports {}; the configuration of {:?} is wrong",
                            self.remote.join(", "),
                            k.as_str_name().trim_start_matches("FACT_KIND_"),
                            self.source_id
                        )));
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn ask_one(
        &self,
        remote: &str,
        kinds: &[FactKind],
        request: &LookupRequest,
        via: &MetadataValue<tonic::metadata::Ascii>,
        ctx: &LookupContext,
    ) -> Result<LookupResponse, AdapterError> {
        let wanted: Vec<FactKind> = request.fact_kinds().filter(|k| kinds.contains(k)).collect();
        let inner = LookupRequest {
            source_id: remote.to_owned(),
            fact_kinds: wanted.iter().map(|k| *k as i32).collect(),
            ..request.clone()
        };
        let mut req = Request::new(());
        req.set_timeout(ctx.remaining());
        req.metadata_mut().insert(VIA_HEADER, via.clone());
        ctx.trace(&mut req);
        Authorization::apply(self.authorization.as_ref(), &mut req);
        let call = crate::unary::call::<_, LookupResponse>(
            self.channel.clone(),
            crate::grpc::LOOKUP_PATH,
            req.into_parts().0,
            &inner,
            MAX_ANSWER_BYTES,
        );
        let resp = match tokio::time::timeout_at(ctx.deadline, call).await {
            Err(_) => return Err(AdapterError::Timeout),
            Ok(Err(s)) => return Err(classify(remote, &s, self.over)),
            Ok(Ok(r)) => r,
        };
        check_answer(&inner, &resp, kinds)
            .map_err(|e| AdapterError::Malformed(format!("peer source {remote:?}: {e}")))?;
        Ok(resp)
    }
}

#[async_trait]
impl Adapter for PeerAdapter {
    fn source_id(&self) -> &str {
        &self.source_id
    }

    async fn lookup(
        &self,
        ctx: &LookupContext,
        request: &LookupRequest,
    ) -> Result<LookupResponse, AdapterError> {
        if ctx.remaining().is_zero() {
            return Err(AdapterError::Timeout);
        }
        let via = self.outgoing_via()?;
        let kinds = self.remote_kinds(ctx).await?;
        let calls = self.remote.iter().map(|r| {
            let k = kinds.get(r).cloned().unwrap_or_default();
            let request = &request;
            let via = &via;
            async move {
                if !request.fact_kinds().any(|w| k.contains(&w)) && !request.fact_kinds.is_empty() {
                    return Ok(None);
                }
                self.ask_one(r, &k, request, via, ctx).await.map(Some)
            }
        });
        let mut merged: BTreeMap<String, PersonAnswer> = request
            .person_ids
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    PersonAnswer {
                        person_id: p.clone(),
                        facts: Vec::new(),
                    },
                )
            })
            .collect();
        let mut as_of: Option<prost_types::Timestamp> = None;
        // Every peer source must answer: a part missing is not "no record".
        for r in join_all(calls).await {
            let Some(resp) = r? else { continue };
            if let Some(t) = resp.as_of {
                as_of = Some(match as_of {
                    Some(o) if (o.seconds, o.nanos) <= (t.seconds, t.nanos) => o,
                    _ => t,
                });
            }
            for a in resp.answers {
                if let Some(m) = merged.get_mut(&a.person_id) {
                    m.facts.extend(a.facts);
                }
            }
        }
        let response = LookupResponse {
            answers: request
                .person_ids
                .iter()
                .filter_map(|p| merged.remove(p))
                .collect(),
            as_of,
        };
        check_answer(request, &response, &self.fact_kinds)?;
        Ok(response)
    }

    async fn check(&self) -> Result<CheckResponse, AdapterError> {
        let mut detail = Vec::new();
        let mut serving = true;
        let via = self.outgoing_via()?;
        for r in &self.remote {
            let mut req = Request::new(CheckRequest {
                source_id: r.clone(),
            });
            req.set_timeout(Duration::from_secs(5));
            req.metadata_mut().insert(VIA_HEADER, via.clone());
            Authorization::apply(self.authorization.as_ref(), &mut req);
            let resp = self
                .client
                .clone()
                .check(req)
                .await
                .map_err(|s| classify(r, &s, self.over))?
                .into_inner();
            if !resp.serving {
                serving = false;
                detail.push(format!("{r}: {}", resp.detail));
            }
        }
        Ok(CheckResponse {
            serving,
            fact_kinds: self.fact_kinds.iter().map(|k| *k as i32).collect(),
            detail: detail.join("; "),
        })
    }
}

/// The factory of the `peer` transport, for a broker with id `broker_id`.
#[derive(Debug, Clone)]
pub struct PeerFactory {
    broker_id: String,
}

impl PeerFactory {
    /// A factory whose adapters say they come from broker `broker_id`.
    pub fn new(broker_id: &str) -> Self {
        PeerFactory {
            broker_id: broker_id.to_owned(),
        }
    }
}

impl Default for PeerFactory {
    fn default() -> Self {
        PeerFactory::new(DEFAULT_BROKER_ID)
    }
}

impl AdapterFactory for PeerFactory {
    fn transport(&self) -> &'static str {
        "peer"
    }

    fn build(
        &self,
        source: &SourceSpec,
        params: &toml::Table,
    ) -> Result<Arc<dyn Adapter>, BuildError> {
        let params: PeerParams = parse_params("peer", params)?;
        let adapter = PeerAdapter::new(source, &params, &self.broker_id).map_err(|message| {
            BuildError::Params {
                kind: "peer".into(),
                message,
            }
        })?;
        Ok(Arc::new(adapter))
    }
}

// === the server ===

/// A lookup a [`PeerServer`] served (or failed to), for its log.
#[derive(Debug)]
pub struct ServedLookup<'a> {
    /// The brokers the lookup passed, the asking one first, this one last.
    pub path: &'a [String],
    /// The address the lookup came from.
    pub remote: Option<std::net::SocketAddr>,
    /// The lookup as received.
    pub request: &'a LookupRequest,
    /// The answer returned (record ids already prefixed), or why none was.
    pub outcome: Result<&'a LookupResponse, &'a Status>,
    /// Time from receiving the lookup to the answer.
    pub latency: Duration,
}

/// Where a [`PeerServer`] records the lookups it serves: a broker's audit
/// log. A lookup is answered only after its record is durable; when the
/// log cannot take records the source is not asked and the peer gets
/// `UNAVAILABLE`.
#[async_trait]
pub trait LookupLog: Send + Sync + fmt::Debug {
    /// Whether the log can take a record now; asked before the source.
    ///
    /// # Errors
    /// Why it cannot (the lookup is refused with `UNAVAILABLE`).
    async fn ready(&self) -> Result<(), String>;

    /// Records a served lookup durably.
    ///
    /// # Errors
    /// Why it could not (the answer is withheld, `UNAVAILABLE`).
    async fn record(&self, lookup: ServedLookup<'_>) -> Result<(), String>;
}

/// A broker's sources by id, each with its adapter.
type Sources = BTreeMap<String, (SourceSpec, Arc<dyn Adapter>)>;

/// `hedui.v1.AdapterService` over a broker's own sources, for its peers.
#[derive(Clone)]
pub struct PeerServer {
    broker_id: String,
    sources: Arc<Sources>,
    log: Option<Arc<dyn LookupLog>>,
}

impl fmt::Debug for PeerServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerServer")
            .field("broker_id", &self.broker_id)
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PeerServer {
    /// The server of broker `broker_id` over its sources.
    pub fn new(
        broker_id: &str,
        sources: impl IntoIterator<Item = (SourceSpec, Arc<dyn Adapter>)>,
    ) -> Self {
        PeerServer {
            broker_id: broker_id.to_owned(),
            sources: Arc::new(
                sources
                    .into_iter()
                    .map(|(s, a)| (s.id.clone(), (s, a)))
                    .collect(),
            ),
            log: None,
        }
    }

    /// Records every lookup in `log` before answering it.
    #[must_use]
    pub fn with_log(mut self, log: Arc<dyn LookupLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// The tonic service, with message limits set.
    pub fn into_service(self) -> AdapterServiceServer<Self> {
        AdapterServiceServer::new(self)
            .max_encoding_message_size(MAX_ANSWER_BYTES)
            .max_decoding_message_size(1024 * 1024)
    }

    fn pick(&self, source_id: &str) -> Result<&(SourceSpec, Arc<dyn Adapter>), Status> {
        self.sources.get(source_id).ok_or_else(|| {
            Status::invalid_argument(format!(
                "source_id: {source_id:?} is not a source of broker {:?}; its sources: {}",
                self.broker_id,
                self.sources.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The path of a request through this broker: the brokers it has
    /// passed, then this one; refused when this broker is already on it.
    fn path_of<T>(&self, request: &Request<T>) -> Result<Vec<String>, Status> {
        let mut via = Self::via(request)?;
        if via.contains(&self.broker_id) {
            let m = loop_message(&via, &self.broker_id);
            tracing::warn!(broker = %self.broker_id, "{m}");
            return Err(Status::failed_precondition(m));
        }
        if via.len() >= MAX_HOPS {
            return Err(Status::failed_precondition(format!(
                "federation path too long: {} → {}",
                via.join(" → "),
                self.broker_id
            )));
        }
        via.push(self.broker_id.clone());
        Ok(via)
    }

    /// The brokers a request has passed, from [`VIA_HEADER`].
    fn via<T>(request: &Request<T>) -> Result<Vec<String>, Status> {
        let Some(v) = request.metadata().get(VIA_HEADER) else {
            return Ok(Vec::new());
        };
        let v = v
            .to_str()
            .map_err(|_| Status::invalid_argument(format!("{VIA_HEADER}: not text")))?;
        let ids: Vec<String> = v
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        for id in &ids {
            check_broker_id(id)
                .map_err(|e| Status::invalid_argument(format!("{VIA_HEADER}: {e}")))?;
        }
        Ok(ids)
    }
}

/// The status a peer returns for an adapter error; loops keep their words.
fn to_status(e: &AdapterError) -> Status {
    match e {
        AdapterError::Rejected(m)
            if m.contains("federation loop") || m.contains("federation path") =>
        {
            Status::failed_precondition(m.clone())
        }
        other => other.to_status(),
    }
}

#[tonic::async_trait]
impl AdapterService for PeerServer {
    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let path = self.path_of(&request)?;
        let remote = request.remote_addr();
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(DEFAULT_LOOKUP_TIMEOUT);
        let request = request.into_inner();
        let (spec, adapter) = self.pick(&request.source_id)?;
        if request.person_ids.is_empty() {
            return Err(Status::invalid_argument("person_ids: must not be empty"));
        }
        if request.person_ids.len() > MAX_PERSONS_PER_LOOKUP {
            return Err(Status::invalid_argument(format!(
                "person_ids: {} persons, at most {MAX_PERSONS_PER_LOOKUP}",
                request.person_ids.len()
            )));
        }
        let started = std::time::Instant::now();
        if let Some(log) = &self.log {
            log.ready().await.map_err(|e| {
                tracing::warn!(error = %e, "audit log unavailable; lookup refused");
                Status::unavailable(format!("audit log unavailable: {e}"))
            })?;
        }
        let ctx = LookupContext::with_timeout(timeout);
        let work = PATH.scope(path.clone(), adapter.lookup(&ctx, &request));
        let outcome = match tokio::time::timeout_at(ctx.deadline, work).await {
            Err(_) => Err(Status::deadline_exceeded("no answer before the deadline")),
            Ok(Err(e)) => Err(to_status(&e)),
            Ok(Ok(resp)) => check_answer(&request, &resp, &spec.fact_kinds)
                .map(|()| resp)
                .map_err(|e| to_status(&e)),
        };
        let outcome = outcome.map(|mut resp| {
            for a in &mut resp.answers {
                for f in &mut a.facts {
                    f.record_id = format!("{}/{}/{}", self.broker_id, spec.id, f.record_id);
                }
            }
            resp
        });
        if let Some(log) = &self.log {
            log.record(ServedLookup {
                path: &path,
                remote,
                request: &request,
                outcome: outcome.as_ref(),
                latency: started.elapsed(),
            })
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "served lookup not recorded; answer withheld");
                Status::unavailable(format!("audit log unavailable: {e}"))
            })?;
        }
        outcome.map(Response::new)
    }

    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let path = self.path_of(&request)?;
        let (spec, adapter) = self.pick(&request.get_ref().source_id)?;
        let mut resp = PATH
            .scope(path, adapter.check())
            .await
            .map_err(|e| to_status(&e))?;
        resp.fact_kinds = spec.fact_kinds.iter().map(|k| *k as i32).collect();
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests;
