//! The gRPC server: `hedui.v1.VerificationService` over a [`Verifier`],
//! `hedui.v1.ConsentService` over its letters and `hedui.v1.AuditService`
//! over its audit log,
//! with server reflection so generic clients (grpcurl, Postman) can call it
//! without the proto files. Errors become statuses here, in one place.

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use hedui_adapters::server::parse_grpc_timeout;
use hedui_proto::v1::{
    GetReportRequest, GetReportResponse, Report, StreamVerifyRequest, StreamVerifyResponse,
    VerifyRequest, VerifyResponse, WatchReportRequest, WatchReportResponse,
    verification_service_server::{VerificationService, VerificationServiceServer},
};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{error, info};

use crate::{
    audit::{Entry, Kind},
    verify::{Caller, Verifier, VerifyError},
};

/// Largest request accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response sent, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// `VerificationService` over a shared [`Verifier`].
#[derive(Debug, Clone)]
pub struct VerificationApi {
    verifier: Arc<Verifier>,
}

impl VerificationApi {
    /// The service over `verifier`.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier }
    }
}

/// The one place where a verification error becomes a gRPC status.
/// The status of a verification error.
pub fn to_status(e: VerifyError) -> Status {
    match e {
        VerifyError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        VerifyError::StoreUnavailable(_) => {
            Status::unavailable("the report store is unavailable; nothing was returned")
        }
        VerifyError::AuditUnavailable(_) => Status::unavailable(
            "the audit log is unavailable; no source was asked or nothing was returned",
        ),
        VerifyError::PermissionDenied { message } => Status::permission_denied(message),
    }
}

/// Who calls: the [`Caller`] the security gate admitted (its certificate
/// identity and role, or in the plaintext mode its peer address). A
/// service called without the gate (in-process, in unit tests) sees its
/// peer address, or `anonymous`, with every role.
pub fn caller_of<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| {
            Caller::new(
                request
                    .remote_addr()
                    .map_or_else(|| "anonymous".to_owned(), |a| a.ip().to_string()),
            )
        })
}

/// How the listener is secured: mTLS with certificate identities, or the
/// plaintext development mode; either way every call passes the gate.
#[derive(Clone)]
pub struct Listener {
    gate: Arc<crate::security::Gate>,
    tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("gate", &self.gate)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listener {
    /// The listener `config` describes: mTLS when `[tls]` is set; the
    /// plaintext mode only when `plaintext` is given and `[tls]` is not.
    ///
    /// # Errors
    /// A message naming the key or flag: no `[tls]` without `plaintext`,
    /// both, or a certificate, key or CRL that cannot be used.
    pub fn from_config(
        config: &crate::config::Config,
        audit: crate::audit::AuditLog,
        plaintext: bool,
    ) -> Result<Self, String> {
        let tls = match (&config.tls, plaintext) {
            (None, false) => {
                return Err(format!(
                    "tls: the broker serves only over mTLS; configure [tls] (`hedui certs dev` mints development certificates), or pass {PLAINTEXT_FLAG} to serve without it on one machine"
                ));
            }
            (Some(_), true) => {
                return Err(format!(
                    "{PLAINTEXT_FLAG}: [tls] is configured; leave out one of them"
                ));
            }
            (None, true) => None,
            (Some(tls), false) => {
                let server = crate::security::tls::server_config(tls)?;
                Some((
                    tokio_rustls::TlsAcceptor::from(server),
                    Duration::from_millis(tls.handshake_timeout_ms),
                ))
            }
        };
        let gate = crate::security::Gate::new(audit, tls.is_some(), &config.clients, config.quotas)
            .with_max_in_flight(config.server.max_in_flight);
        Ok(Self {
            gate: Arc::new(gate),
            tls,
        })
    }

    /// The gate every call passes (to reconfigure on a reload).
    pub fn gate(&self) -> Arc<crate::security::Gate> {
        self.gate.clone()
    }

    /// Whether clients must present certificates.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// The flag that serves without TLS, named so nobody passes it by chance.
pub const PLAINTEXT_FLAG: &str = "--insecure-plaintext-development-only";

fn call_timeout<T>(request: &Request<T>) -> Option<Duration> {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<StreamVerifyResponse, Status>> + Send>>;

#[tonic::async_trait]
impl VerificationService for VerificationApi {
    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        let timeout = call_timeout(&request);
        let caller = caller_of(&request);
        let inner = request.into_inner().request;
        let valid = match self.verifier.validate(inner.clone(), timeout) {
            Ok(v) => v,
            Err(e) => {
                return Err(to_status(
                    self.verifier.deny(&caller, inner.as_ref(), e).await,
                ));
            }
        };
        let (report, encoded) = self
            .verifier
            .run_encoded(valid, &caller, None)
            .await
            .map_err(to_status)?;
        Ok(Response::new(VerifyResponse::encoded(report, encoded)))
    }

    type StreamVerifyStream = EventStream;

    async fn stream_verify(
        &self,
        request: Request<StreamVerifyRequest>,
    ) -> Result<Response<Self::StreamVerifyStream>, Status> {
        let timeout = call_timeout(&request);
        let caller = caller_of(&request);
        let inner = request.into_inner().request;
        let valid = match self.verifier.validate(inner.clone(), timeout) {
            Ok(v) => v,
            Err(e) => {
                return Err(to_status(
                    self.verifier.deny(&caller, inner.as_ref(), e).await,
                ));
            }
        };
        let n = self.verifier.sources().len();
        // Room for every event of one verification: sending never waits.
        // The events are boxed: a channel allocates its slots in blocks of
        // 32, and 32 events inline (a report is one) came to 21 KiB per
        // channel per stream held open (docs/benchmarks.md, S5).
        let (events_tx, events_rx) = mpsc::channel::<Box<StreamVerifyResponse>>(n + 3);
        let verifier = self.verifier.clone();
        // Runs to its end even if the caller goes away.
        let run = tokio::spawn(async move { verifier.run(valid, &caller, Some(events_tx)).await });
        // Every event, then the error if the verification failed: the
        // events end when the verification drops its sender.
        let events = ReceiverStream::new(events_rx).map(|event| Ok(*event));
        let failure = futures::stream::once(run).filter_map(|done| async move {
            match done {
                Ok(Err(e)) => Some(Err(to_status(e))),
                _ => None,
            }
        });
        Ok(Response::new(Box::pin(events.chain(failure))))
    }

    async fn get_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<GetReportResponse>, Status> {
        let caller = caller_of(&request);
        let id = request.into_inner().report_id;
        check_id("report_id", &id)?;
        let report = owned_report(&self.verifier, &caller, &id).await?;
        record_read(&self.verifier, &caller, &report).await?;
        Ok(Response::new(GetReportResponse {
            report: Some(report),
        }))
    }

    type WatchReportStream =
        Pin<Box<dyn Stream<Item = Result<WatchReportResponse, Status>> + Send>>;

    async fn watch_report(
        &self,
        request: Request<WatchReportRequest>,
    ) -> Result<Response<Self::WatchReportStream>, Status> {
        let caller = caller_of(&request);
        let id = request.into_inner().report_id;
        check_id("report_id", &id)?;
        // Subscribed before the store is read: a completion in between is
        // either in what the store returns or in the subscription.
        let watch = self.verifier.watch(&id);
        let report = owned_report(&self.verifier, &caller, &id).await?;
        record_read(&self.verifier, &caller, &report).await?;
        let (tx, rx) = mpsc::channel(2);
        let pending = report.pending;
        let _ = tx
            .send(Ok(WatchReportResponse {
                report: Some(report),
            }))
            .await;
        if let (true, Some(mut watch)) = (pending, watch) {
            let verifier = self.verifier.clone();
            tokio::spawn(async move {
                // Ends with the stream when the caller goes away first.
                let completed = tokio::select! {
                    changed = watch.changed() => changed.ok().map(|()| watch.borrow_and_update().clone()),
                    () = tx.closed() => None,
                };
                let Some(report) = completed else { return };
                let sent = match record_read(&verifier, &caller, &report).await {
                    Ok(()) => Ok(WatchReportResponse {
                        report: Some(report),
                    }),
                    Err(status) => Err(status),
                };
                let _ = tx.send(sent).await;
            });
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Checks an id the broker gave out (a report, an enrolment, an alert):
/// a UUID, or `INVALID_ARGUMENT` naming `field`.
pub(crate) fn check_id(field: &str, id: &str) -> Result<(), Status> {
    uuid::Uuid::parse_str(id).map(|_| ()).map_err(|_| {
        Status::invalid_argument(format!(
            "{field}: must be an id as returned by the broker (a UUID)"
        ))
    })
}

/// The stored report `id` if `caller` may read it. Another client's
/// report is `NOT_FOUND`, word for word as a report that does not exist
/// (its existence is not disclosed), and the attempt is recorded.
async fn owned_report(verifier: &Verifier, caller: &Caller, id: &str) -> Result<Report, Status> {
    let not_found = || Status::not_found(format!("report_id: no report {id}"));
    match verifier.store().get_owned(id).await {
        Ok(Some((report, owner))) if caller.may_read(&owner) => Ok(report),
        Ok(Some(_)) => {
            crate::security::deny(
                verifier.audit(),
                caller,
                "not_owner",
                &format!("report {id} belongs to another client; answered not found"),
            )
            .await;
            Err(not_found())
        }
        Ok(None) => Err(not_found()),
        Err(e) => {
            error!(error = %e, "report store read failed");
            Err(Status::unavailable("the report store is unavailable"))
        }
    }
}

/// Records that `caller` reads `report` (again): a disclosure, recorded
/// before the report leaves.
async fn record_read(verifier: &Verifier, caller: &Caller, report: &Report) -> Result<(), Status> {
    let audit = verifier.audit();
    let request = report.request.clone().unwrap_or_default();
    let mut entry = Entry::new(Kind::ReportRead);
    entry.request_id = report.report_id.clone();
    entry.client = caller.identity.clone();
    entry.operator = request.operator_id.clone();
    entry.purpose = crate::verify::purpose_name(request.purpose);
    entry.consent_reference = request.consent_reference.clone();
    entry.subjects = report
        .members
        .iter()
        .map(|m| audit.subject_key().subject(&m.person_id))
        .chain(std::iter::once(
            audit.subject_key().subject(&request.applicant_id),
        ))
        .collect();
    entry.report_digest = audit.digest(&prost::Message::encode_to_vec(report));
    entry.detail = format!("revision {}", report.revision);
    audit.record(entry).await.map_err(|e| {
        error!(error = %e, "report read not recorded; not returned");
        to_status(VerifyError::AuditUnavailable(e))
    })?;
    Ok(())
}

/// Serves the broker's gRPC API on `listener` until `shutdown` completes,
/// then finishes the requests in flight.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    verifier: Arc<Verifier>,
    watch: Arc<crate::watch::Watch>,
    listener: TcpListener,
    security: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hedui_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let verifier_audit = verifier.audit().clone();
    let audit = hedui_proto::v1::audit_service_server::AuditServiceServer::new(
        crate::audit::service::AuditApi::new(verifier.audit().clone()),
    )
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let consent = hedui_proto::v1::consent_service_server::ConsentServiceServer::new(
        crate::consent::service::ConsentApi::new(verifier.consents().clone()),
    )
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let source_health =
        hedui_proto::v1::source_health_service_server::SourceHealthServiceServer::new(
            crate::health::SourceHealthApi::new(verifier.clone()),
        )
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let (health_reporter, grpc_health) = tonic_health::server::health_reporter();
    // Stops when `serve` returns, however it returns.
    let _health_task = crate::health::spawn_track_audit(verifier.clone(), health_reporter).await;
    let api = VerificationServiceServer::new(VerificationApi::new(verifier))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let watch = hedui_proto::v1::watch_service_server::WatchServiceServer::new(
        crate::watch::service::WatchApi::new(watch),
    )
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(MAX_RESPONSE_BYTES);
    info!(addr = ?addr, tls = security.is_tls(), "serving hedui.v1.VerificationService, WatchService, ConsentService, AuditService and SourceHealthService, and grpc.health.v1.Health, over gRPC, gRPC-Web and HTTP/JSON");
    let audit_log = verifier_audit;
    // One set of services behind two faces: gRPC (and gRPC-Web, translated
    // in front) and the HTTP/JSON resources, which call the same services.
    let grpc = tonic::service::Routes::new(api)
        .add_service(watch)
        .add_service(consent)
        .add_service(audit)
        .add_service(source_health)
        .add_service(grpc_health)
        .add_service(reflection);
    let app = grpc
        .clone()
        .into_axum_router()
        .merge(crate::http::router(grpc))
        .merge(crate::console::router())
        .fallback(crate::http::fallback);
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(crate::http::WebLayer)
        .layer(crate::security::GateLayer(security.gate.clone()))
        .add_routes(tonic::service::Routes::from(app));
    match security.tls {
        Some((acceptor, timeout)) => {
            let incoming = crate::security::tls::incoming(listener, acceptor, audit_log, timeout);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
        None => {
            // Small answers go out at once (no Nagle delay waiting for the
            // peer's delayed ACK), as on the TLS path.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
    }
    Ok(())
}
