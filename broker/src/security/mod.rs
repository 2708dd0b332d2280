//! Who may do what: the roles a client certificate maps to, and the one
//! place where a caller without the role a call needs is refused (and the
//! refusal recorded).
//!
//! A client's identity comes only from its certificate ([`tls`]); the
//! configuration maps it to one role and, for a platform, the purposes it
//! may use ([`config`]). Every call passes the [`Gate`] (as a tower layer
//! on the gRPC server) before any service sees it: unknown identities and
//! calls outside the caller's role are refused and recorded, quotas are
//! taken ([`quota`]), and the [`Caller`] is handed to the service in the
//! request's extensions. Without TLS (`--insecure-plaintext-development-only`)
//! every caller is its peer address with every role: for development on
//! one machine, never for real data.

pub mod certs;
pub mod config;
pub mod quota;
pub mod tls;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tonic::{
    Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tracing::warn;

use self::{
    config::{ClientConfig, QuotaConfig},
    quota::{Exhausted, Quota},
};
use crate::{
    audit::{AuditLog, Entry, Kind},
    verify::Caller,
};

/// What a client is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A social assistance platform: verifies households, reads its own
    /// reports, registers consent, enrols households.
    Platform,
    /// An auditor: reads the access log, not reports.
    Auditor,
    /// An administrator: manages configuration and consent, not cases.
    Admin,
}

impl Role {
    /// The role as configuration and the audit log write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Platform => "platform",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The roles of a caller: one for a certificate identity, all three for
/// the plaintext development mode and the broker's own work.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roles(BTreeSet<Role>);

impl Roles {
    /// Every role.
    pub fn all() -> Self {
        Self([Role::Platform, Role::Auditor, Role::Admin].into())
    }

    /// Exactly `role`.
    pub fn one(role: Role) -> Self {
        Self([role].into())
    }

    /// Whether `role` is among them.
    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    /// The roles, comma-separated, as the audit log writes them.
    pub fn names(&self) -> String {
        self.0
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Refuses `caller` unless it has `role`: `PERMISSION_DENIED` naming the
/// call and the role it needs, recorded in the audit log first (when the
/// record cannot be written the answer is `UNAVAILABLE`; nothing else
/// happens either way).
///
/// # Errors
/// The status to return.
pub async fn require(
    audit: &AuditLog,
    caller: &Caller,
    role: Role,
    call: &str,
) -> Result<(), Status> {
    if caller.roles.has(role) {
        return Ok(());
    }
    let message = format!(
        "{call} needs the role {role}; client {} has {}",
        caller.identity,
        caller.roles.names()
    );
    deny(audit, caller, "permission_denied", &message).await;
    Err(Status::permission_denied(message))
}

/// Records a refusal of `caller` (kind `denied`, `outcome`, `detail`). A
/// refusal that cannot be recorded is logged; the request is refused all
/// the same.
pub async fn deny(audit: &AuditLog, caller: &Caller, outcome: &str, detail: &str) {
    let mut entry = Entry::new(Kind::Denied);
    entry.request_id = uuid::Uuid::new_v4().to_string();
    entry.client = caller.identity.clone();
    entry.outcome = outcome.into();
    entry.detail = detail.chars().take(300).collect();
    if let Err(e) = audit.record(entry).await {
        warn!(error = %e, outcome, "refusal not recorded");
    }
}

/// The roles that may call `path` (`/package.Service/Method`); empty means
/// any authenticated caller (reflection, health).
pub fn roles_for(path: &str) -> &'static [Role] {
    let service = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    match (service, path.rsplit('/').next().unwrap_or_default()) {
        ("hedui.v1.VerificationService" | "hedui.v1.WatchService", _) => &[Role::Platform],
        // The "who looked at my data" page of a platform's self-service
        // front.
        ("hedui.v1.AuditService", "GetSubjectAccessHistory") => &[Role::Platform, Role::Auditor],
        ("hedui.v1.AuditService", _) => &[Role::Auditor],
        ("hedui.v1.ConsentService", _) => &[Role::Platform, Role::Admin],
        ("hedui.v1.SourceHealthService", _) => &[Role::Platform, Role::Auditor, Role::Admin],
        _ => &[],
    }
}

/// Calls that run verifications, and so take a slot of the caller's
/// `max_concurrent`.
fn takes_slot(path: &str) -> bool {
    matches!(
        path,
        "/hedui.v1.VerificationService/Verify"
            | "/hedui.v1.VerificationService/StreamVerify"
            | "/hedui.v1.WatchService/Enrol"
            | "/hedui.v1.WatchService/Review"
    )
}

/// Most distinct peer addresses given their own quota in the plaintext
/// mode; beyond, new addresses share one.
const MAX_PEER_QUOTAS: usize = 4096;

struct Client {
    role: Role,
    purposes: Option<BTreeSet<i32>>,
    quota: Arc<Quota>,
}

/// Who may call: the identities of `[clients]` with their roles and
/// quotas, or (plaintext) every peer with every role.
pub struct Gate {
    audit: AuditLog,
    tls: bool,
    /// The broker's own limit on verifications in flight, over all
    /// clients (`server.max_in_flight`): beyond it calls are shed at once.
    in_flight: Option<(Arc<tokio::sync::Semaphore>, usize)>,
    /// Replaced as a whole on a configuration reload.
    clients: std::sync::RwLock<Arc<Clients>>,
}

/// The clients and quotas of one configuration.
struct Clients {
    known: BTreeMap<String, Client>,
    default_quota: QuotaConfig,
    peers: Mutex<HashMap<IpAddr, Arc<Quota>>>,
    overflow: Arc<Quota>,
}

impl Clients {
    fn new(clients: &BTreeMap<String, ClientConfig>, default_quota: QuotaConfig) -> Self {
        let known = clients
            .iter()
            .map(|(id, c)| {
                let purposes = c.purposes.as_ref().map(|ps| {
                    ps.iter()
                        .filter_map(|p| config::purpose_number(p))
                        .collect()
                });
                let client = Client {
                    role: c.role,
                    purposes,
                    quota: Arc::new(Quota::new(c.quota(&default_quota))),
                };
                (id.clone(), client)
            })
            .collect();
        Self {
            known,
            default_quota,
            peers: Mutex::new(HashMap::new()),
            overflow: Arc::new(Quota::new(default_quota)),
        }
    }

    fn peer_quota(&self, ip: IpAddr) -> Arc<Quota> {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(q) = peers.get(&ip) {
            return q.clone();
        }
        if peers.len() >= MAX_PEER_QUOTAS {
            return self.overflow.clone();
        }
        let q = Arc::new(Quota::new(self.default_quota));
        peers.insert(ip, q.clone());
        q
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("tls", &self.tls)
            .field("clients", &self.clients().known.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate for certificate identities (`tls`) or for the plaintext
    /// development mode.
    pub fn new(
        audit: AuditLog,
        tls: bool,
        clients: &BTreeMap<String, ClientConfig>,
        default_quota: QuotaConfig,
    ) -> Self {
        Self {
            audit,
            tls,
            in_flight: None,
            clients: std::sync::RwLock::new(Arc::new(Clients::new(clients, default_quota))),
        }
    }

    /// Sheds verifications beyond `max` in flight over all clients
    /// (0: no limit).
    #[must_use]
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.in_flight = (max > 0).then(|| (Arc::new(tokio::sync::Semaphore::new(max)), max));
        self
    }

    fn clients(&self) -> Arc<Clients> {
        self.clients
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the clients, their roles and quotas (a configuration
    /// reload); quotas start afresh.
    pub fn reconfigure(
        &self,
        clients: &BTreeMap<String, ClientConfig>,
        default_quota: QuotaConfig,
    ) {
        *self
            .clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(Clients::new(clients, default_quota));
    }

    async fn refuse(&self, caller: &Caller, outcome: &str, status: Status) -> Status {
        deny(&self.audit, caller, outcome, status.message()).await;
        status
    }

    /// Admits a call to `path` over a connection described by
    /// `extensions`: the caller it comes from, with a slot taken when the
    /// call runs verifications.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` (an identity without a role here),
    /// `PERMISSION_DENIED` (a call outside the caller's role), both
    /// recorded; `RESOURCE_EXHAUSTED` (over the caller's quota, with a
    /// `retry-after-ms` hint).
    pub async fn admit(&self, path: &str, extensions: &http::Extensions) -> Result<Caller, Status> {
        let (mut caller, quota) = if self.tls {
            let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>();
            let peer = info
                .and_then(|i| i.get_ref().remote_addr())
                .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
            let cert = info
                .and_then(TlsConnectInfo::peer_certs)
                .and_then(|certs| certs.first().cloned());
            let Some(cert) = cert else {
                let status = Status::unauthenticated("no client certificate");
                return Err(self
                    .refuse(&Caller::new(peer), "unauthenticated", status)
                    .await);
            };
            let Some(identity) = tls::identity_of(&cert) else {
                let status =
                    Status::unauthenticated("the client certificate has no SAN URI or DNS name");
                return Err(self
                    .refuse(&Caller::new(peer), "unauthenticated", status)
                    .await);
            };
            let clients = self.clients();
            let Some(client) = clients.known.get(&identity) else {
                let status = Status::unauthenticated(format!(
                    "client certificate identity {identity:?} has no role at this broker"
                ));
                let mut who = Caller::new(identity);
                who.roles = Roles::default();
                return Err(self.refuse(&who, "unauthenticated", status).await);
            };
            let caller = Caller::with_role(identity, client.role, client.purposes.clone());
            (caller, client.quota.clone())
        } else {
            let ip = extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map(|a| a.ip());
            let clients = self.clients();
            match ip {
                Some(ip) => (Caller::new(ip.to_string()), clients.peer_quota(ip)),
                None => (Caller::new("anonymous"), clients.overflow.clone()),
            }
        };
        let needed = roles_for(path);
        if !needed.is_empty() && !needed.iter().any(|r| caller.roles.has(*r)) {
            let names: Vec<&str> = needed.iter().map(|r| r.as_str()).collect();
            let status = Status::permission_denied(format!(
                "{path} needs the role {}; client {} is {}",
                names.join(" or "),
                caller.identity,
                caller.roles.names()
            ));
            return Err(self.refuse(&caller, "permission_denied", status).await);
        }
        let exhausted = |e: Exhausted| {
            let (message, wait) = match e {
                Exhausted::Rate(wait) => (
                    format!(
                        "client {} is over its call rate; retry after {} ms",
                        caller.identity,
                        wait.as_millis().max(1)
                    ),
                    wait,
                ),
                Exhausted::Concurrency(n) => (
                    format!(
                        "client {} has {n} verifications in flight, its limit; retry when one ends",
                        caller.identity
                    ),
                    Duration::from_millis(100),
                ),
            };
            let mut status = Status::resource_exhausted(message);
            if let Ok(v) = wait.as_millis().max(1).to_string().parse() {
                status.metadata_mut().insert("retry-after-ms", v);
            }
            status
        };
        quota.call().map_err(exhausted)?;
        if takes_slot(path) {
            let mut permits = Vec::new();
            if let Some((slots, max)) = &self.in_flight {
                // Overload: shed at once what cannot start now, rather
                // than queue it past its deadline.
                let permit = slots.clone().try_acquire_owned().map_err(|_| {
                    let mut status = Status::unavailable(format!(
                        "the broker has {max} verifications in flight, its limit (server.max_in_flight); retry shortly"
                    ));
                    status
                        .metadata_mut()
                        .insert("retry-after-ms", tonic::metadata::MetadataValue::from(100u32));
                    status
                })?;
                permits.push(permit);
            }
            permits.extend(quota.slot().map_err(exhausted)?);
            caller.slot = quota::Slot::of(permits);
        }
        Ok(caller)
    }
}

/// Records `rpc.server.duration` of a call to `path` (until its response
/// headers: for a stream, until it opened). The status is the one in the
/// headers (a refusal, or any error before the first message), else OK.
fn record_rpc(path: &str, response: &http::Response<tonic::body::Body>, took: Duration) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default().to_owned();
    let method = parts.next().unwrap_or_default().to_owned();
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    crate::telemetry::metrics().rpc_duration.record(
        took.as_secs_f64() * 1000.0,
        &[
            opentelemetry::KeyValue::new("rpc.system", "grpc"),
            opentelemetry::KeyValue::new("rpc.service", service),
            opentelemetry::KeyValue::new("rpc.method", method),
            opentelemetry::KeyValue::new("rpc.grpc.status_code", code),
        ],
    );
}

/// The [`Gate`] as a tower layer for tonic's server.
#[derive(Debug, Clone)]
pub struct GateLayer(pub Arc<Gate>);

impl<S> tower_layer::Layer<S> for GateLayer {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            inner,
            gate: self.0.clone(),
        }
    }
}

/// A service behind the [`Gate`].
#[derive(Debug, Clone)]
pub struct GateService<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for GateService<S>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone that was made ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        Box::pin(async move {
            let started = std::time::Instant::now();
            // An HTTP/JSON request is admitted as the RPC it stands for:
            // the same roles, quotas and refusals.
            let grpc = crate::http::is_grpc(request.headers());
            let path = if grpc {
                request.uri().path().to_owned()
            } else {
                crate::http::route_of(request.method(), request.uri().path())
                    .map_or_else(|| request.uri().path().to_owned(), |r| r.rpc.to_owned())
            };
            let response = match gate.admit(&path, request.extensions()).await {
                Ok(caller) => {
                    use tracing::Instrument;
                    request.extensions_mut().insert(caller);
                    // A caller's trace context is adopted: its trace goes
                    // on through the broker to the departments.
                    let span = tracing::info_span!("rpc", method = %path);
                    crate::telemetry::adopt_caller_trace(&span, request.headers());
                    inner.call(request).instrument(span).await?
                }
                Err(status) if grpc => status.into_http(),
                Err(status) => crate::http::problem::response::<axum::body::Body>(&status)
                    .map(tonic::body::Body::new),
            };
            record_rpc(&path, &response, started.elapsed());
            Ok(response)
        })
    }
}
