//! Publishing the simulated departments' change events on NATS JetStream,
//! as a production department's change feed would: each event is a
//! protobuf-encoded `hedui.v1.ChangeEvent` on subject `<prefix>.<source_id>`
//! of a stream that keeps them until the broker has them.

use async_nats::jetstream::{self, stream};
use prost::Message;
use tokio::sync::broadcast::error::RecvError;

use crate::sim::SimulatedAgencies;

/// Where to publish.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// JetStream stream name, created when missing.
    pub stream: String,
    /// Subject prefix; events go to `<prefix>.<source_id>`.
    pub prefix: String,
}

/// Connects, makes sure the stream exists, and publishes every change of
/// `agencies` from now on, in a task of its own.
///
/// # Errors
/// When the server cannot be reached or the stream cannot be created.
pub async fn publish_changes(
    agencies: &SimulatedAgencies,
    target: &NatsTarget,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = async_nats::connect(&target.url)
        .await
        .map_err(|e| anyhow::anyhow!("--nats {}: {e}", target.url))?;
    let js = jetstream::new(client);
    js.get_or_create_stream(stream::Config {
        name: target.stream.clone(),
        subjects: vec![format!("{}.>", target.prefix)],
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("--nats-stream {}: {e}", target.stream))?;
    let mut events = agencies.subscribe();
    let prefix = target.prefix.clone();
    Ok(tokio::spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "change events lost before publishing");
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            let subject = format!("{prefix}.{}", event.source_id);
            let published = match js
                .publish(subject.clone(), event.encode_to_vec().into())
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match published {
                Ok(()) => tracing::info!(%subject, event = %event.event_id, "change published"),
                Err(e) => tracing::error!(%subject, error = %e, "change not published"),
            }
        }
    }))
}
