//! The gRPC server: `hedui.v1.VerificationService` over a [`Verifier`],
//! with server reflection so generic clients (grpcurl, Postman) can call it
//! without the proto files. Errors become statuses here, in one place.

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use hedui_adapters::server::parse_grpc_timeout;
use hedui_proto::v1::{
    GetReportRequest, GetReportResponse, StreamVerifyRequest, StreamVerifyResponse, VerifyRequest,
    VerifyResponse,
    verification_service_server::{VerificationService, VerificationServiceServer},
};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};
use tracing::{error, info};

use crate::verify::{Verifier, VerifyError};

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
fn to_status(e: VerifyError) -> Status {
    match e {
        VerifyError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        VerifyError::StoreUnavailable(_) => {
            Status::unavailable("the report store is unavailable; nothing was returned")
        }
    }
}

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
        let valid = self
            .verifier
            .validate(request.into_inner().request, timeout)
            .map_err(to_status)?;
        let report = self.verifier.run(valid, None).await.map_err(to_status)?;
        Ok(Response::new(VerifyResponse {
            report: Some(report),
        }))
    }

    type StreamVerifyStream = EventStream;

    async fn stream_verify(
        &self,
        request: Request<StreamVerifyRequest>,
    ) -> Result<Response<Self::StreamVerifyStream>, Status> {
        let timeout = call_timeout(&request);
        let valid = self
            .verifier
            .validate(request.into_inner().request, timeout)
            .map_err(to_status)?;
        let n = self.verifier.sources().len();
        // Room for every event of one verification: sending never waits.
        let (events_tx, mut events_rx) = mpsc::channel(n + 3);
        let (out_tx, out_rx) = mpsc::channel(n + 3);
        let verifier = self.verifier.clone();
        tokio::spawn(async move {
            let forward = {
                let out_tx = out_tx.clone();
                async move {
                    while let Some(event) = events_rx.recv().await {
                        if out_tx.send(Ok(event)).await.is_err() {
                            break;
                        }
                    }
                }
            };
            let run = verifier.run(valid, Some(events_tx));
            let (result, ()) = tokio::join!(run, forward);
            if let Err(e) = result {
                let _ = out_tx.send(Err(to_status(e))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn get_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<GetReportResponse>, Status> {
        let id = request.into_inner().report_id;
        if uuid::Uuid::parse_str(&id).is_err() {
            return Err(Status::invalid_argument(
                "report_id: must be a report id as returned in Report.report_id (a UUID)",
            ));
        }
        match self.verifier.store().get(&id).await {
            Ok(Some(report)) => Ok(Response::new(GetReportResponse {
                report: Some(report),
            })),
            Ok(None) => Err(Status::not_found(format!("report_id: no report {id}"))),
            Err(e) => {
                error!(error = %e, "report store read failed");
                Err(Status::unavailable("the report store is unavailable"))
            }
        }
    }
}

/// Serves the broker's gRPC API on `listener` until `shutdown` completes,
/// then finishes the requests in flight.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    verifier: Arc<Verifier>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hedui_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let api = VerificationServiceServer::new(VerificationApi::new(verifier))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    info!(addr = ?addr, "serving hedui.v1.VerificationService");
    tonic::transport::Server::builder()
        .add_service(api)
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
