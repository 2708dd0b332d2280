//! `hedui.v1.WatchService` over [`Watch`].

use std::{collections::HashSet, pin::Pin, sync::Arc};

use futures::Stream;
use hedui_proto::v1::{
    AcknowledgeAlertRequest, AcknowledgeAlertResponse, EnrolRequest, EnrolResponse, ReviewRequest,
    ReviewResponse, StreamAlertsRequest, StreamAlertsResponse, UnenrolRequest, UnenrolResponse,
    watch_service_server::WatchService,
};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Watch, WatchError};
use crate::server::{caller_of, check_id, to_status};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct WatchApi {
    watch: Arc<Watch>,
}

impl WatchApi {
    /// The service over `watch`.
    pub fn new(watch: Arc<Watch>) -> Self {
        Self { watch }
    }
}

fn status(e: WatchError) -> Status {
    match e {
        WatchError::Verify(v) => to_status(v),
        WatchError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        WatchError::NotFound(m) => Status::not_found(m),
        WatchError::Internal(m) => {
            tracing::error!(error = %m, "watch failed");
            Status::internal("internal error")
        }
        WatchError::Store(err) => {
            tracing::error!(error = %err, "watch store failed");
            Status::unavailable("the watch store is unavailable")
        }
    }
}

#[tonic::async_trait]
impl WatchService for WatchApi {
    async fn enrol(
        &self,
        request: Request<EnrolRequest>,
    ) -> Result<Response<EnrolResponse>, Status> {
        let caller = caller_of(&request);
        let (enrolment_id, baseline) = self
            .watch
            .enrol(&caller, request.into_inner().request)
            .await
            .map_err(status)?;
        Ok(Response::new(EnrolResponse {
            enrolment_id,
            baseline: Some(baseline),
        }))
    }

    async fn unenrol(
        &self,
        request: Request<UnenrolRequest>,
    ) -> Result<Response<UnenrolResponse>, Status> {
        let caller = caller_of(&request);
        let id = request.into_inner().enrolment_id;
        check_id("enrolment_id", &id)?;
        self.watch.unenrol(&caller, &id).await.map_err(status)?;
        Ok(Response::new(UnenrolResponse {}))
    }

    type StreamAlertsStream =
        Pin<Box<dyn Stream<Item = Result<StreamAlertsResponse, Status>> + Send>>;

    async fn stream_alerts(
        &self,
        request: Request<StreamAlertsRequest>,
    ) -> Result<Response<Self::StreamAlertsStream>, Status> {
        let caller = caller_of(&request);
        // Subscribed before the store is read: an alert raised in between
        // is in one or the other (and sent once).
        let mut live = self.watch.subscribe();
        let open = self
            .watch
            .open_alerts(&caller.identity)
            .await
            .map_err(status)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut sent: HashSet<String> = HashSet::new();
            for alert in open {
                sent.insert(alert.alert_id.clone());
                if tx
                    .send(Ok(StreamAlertsResponse { alert: Some(alert) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                let raised = tokio::select! {
                    r = live.recv() => r,
                    () = tx.closed() => return,
                };
                match raised {
                    Ok(r)
                        if r.client == caller.identity && sent.insert(r.alert.alert_id.clone()) =>
                    {
                        if tx
                            .send(Ok(StreamAlertsResponse {
                                alert: Some(r.alert),
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        // Nothing is lost: the alerts are in the store.
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "{n} alerts were raised faster than this stream read them; open StreamAlerts again to get every unacknowledged alert"
                            ))))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ReviewStream = Pin<Box<dyn Stream<Item = Result<ReviewResponse, Status>> + Send>>;

    async fn review(
        &self,
        request: Request<ReviewRequest>,
    ) -> Result<Response<Self::ReviewStream>, Status> {
        let caller = caller_of(&request);
        let concurrency = request.into_inner().concurrency;
        if concurrency > super::review::MAX_CONCURRENCY {
            return Err(Status::invalid_argument(format!(
                "concurrency: {concurrency} is more than {}",
                super::review::MAX_CONCURRENCY
            )));
        }
        let (progress_tx, mut progress_rx) = mpsc::channel::<ReviewResponse>(64);
        let (tx, rx) = mpsc::channel(64);
        let watch = self.watch.clone();
        // The review goes on when the caller goes away: it is stored, and
        // the next Review resumes it if it was cut.
        tokio::spawn(async move {
            let forward = {
                let tx = tx.clone();
                async move {
                    while let Some(p) = progress_rx.recv().await {
                        if tx.send(Ok(p)).await.is_err() {
                            break;
                        }
                    }
                }
            };
            let run = watch.review(&caller, concurrency, Some(progress_tx));
            let (result, ()) = tokio::join!(run, forward);
            if let Err(e) = result {
                let _ = tx.send(Err(status(e))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn acknowledge_alert(
        &self,
        request: Request<AcknowledgeAlertRequest>,
    ) -> Result<Response<AcknowledgeAlertResponse>, Status> {
        let caller = caller_of(&request);
        let id = request.into_inner().alert_id;
        check_id("alert_id", &id)?;
        self.watch.acknowledge(&caller, &id).await.map_err(status)?;
        Ok(Response::new(AcknowledgeAlertResponse {}))
    }
}
