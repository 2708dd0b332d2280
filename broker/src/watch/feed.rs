//! Where change events come from: the `[changes]` section.
//!
//! ```toml
//! [changes]
//! transport = "nats"                 # "simulated" (default when sources are
//!                                    # simulated in process), "nats" or "none"
//! url = "nats://127.0.0.1:4222"
//! stream = "HEDUI_CHANGES"           # JetStream stream, created when missing
//! subject = "hedui.changes"          # events on <subject>.<source_id>
//! durable = "hedui"                  # the broker's durable consumer
//! ```
//!
//! Over NATS an event is acknowledged only once it is handled (alerts
//! stored); one that fails is redelivered after a pause, and one that is
//! not a `ChangeEvent` is dropped with an error in the log.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::StreamExt;
use hedui_proto::v1::ChangeEvent;
use prost::Message;
use serde::Deserialize;
use tracing::{error, info, warn};

use super::Watch;

/// The `[changes]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesConfig {
    /// `simulated`, `nats` or `none`; unset: `simulated` when sources are
    /// simulated in process, else `none`.
    pub transport: Option<String>,
    /// NATS server URL.
    #[serde(default = "default_url")]
    pub url: String,
    /// JetStream stream name.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Subject prefix: events arrive on `<subject>.<source_id>`.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Name of the broker's durable consumer (brokers sharing a store share
    /// it; each event is handled by one of them).
    #[serde(default = "default_durable")]
    pub durable: String,
}

impl Default for ChangesConfig {
    fn default() -> Self {
        Self {
            transport: None,
            url: default_url(),
            stream: default_stream(),
            subject: default_subject(),
            durable: default_durable(),
        }
    }
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_stream() -> String {
    "HEDUI_CHANGES".into()
}
fn default_subject() -> String {
    "hedui.changes".into()
}
fn default_durable() -> String {
    "hedui".into()
}

impl ChangesConfig {
    /// Checks the section.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        match self.transport.as_deref() {
            None | Some("simulated" | "nats" | "none") => {}
            Some(other) => {
                return Err(format!(
                    "changes.transport: {other:?} is not one of simulated, nats, none"
                ));
            }
        }
        let token = |key: &str, v: &str, dots: bool| -> Result<(), String> {
            let ok = !v.is_empty()
                && v.chars().all(|c| {
                    c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.')
                })
                && !v.starts_with('.')
                && !v.ends_with('.');
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "changes.{key}: {v:?} must be letters, digits, '-', '_'{}",
                    if dots { " and inner '.'" } else { "" }
                ))
            }
        };
        token("stream", &self.stream, false)?;
        token("subject", &self.subject, true)?;
        token("durable", &self.durable, false)?;
        if !self.url.starts_with("nats://") && !self.url.starts_with("tls://") {
            return Err(format!(
                "changes.url: {:?} must start with nats:// or tls://",
                self.url
            ));
        }
        Ok(())
    }
}

/// Consumes change events from NATS JetStream until the connection ends
/// for good.
///
/// # Errors
/// When the server cannot be reached or the stream or consumer cannot be
/// set up (at start).
pub async fn run_nats(
    watch: Arc<Watch>,
    config: &ChangesConfig,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = async_nats::connect(&config.url)
        .await
        .map_err(|e| anyhow::anyhow!("changes.url {}: {e}", config.url))?;
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject)],
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("changes.stream {}: {e}", config.stream))?;
    let consumer = stream
        .get_or_create_consumer(
            &config.durable,
            pull::Config {
                durable_name: Some(config.durable.clone()),
                filter_subject: format!("{}.>", config.subject),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(120),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("changes.durable {}: {e}", config.durable))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("changes: cannot consume: {e}"))?;
    info!(stream = %config.stream, durable = %config.durable, "consuming change events from NATS JetStream");
    Ok(tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "change event stream error");
                    continue;
                }
            };
            let event = match ChangeEvent::decode(message.payload.as_ref()) {
                Ok(e) => e,
                Err(e) => {
                    error!(subject = %message.subject, error = %e, "not a ChangeEvent; dropped");
                    let _ = message.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            match watch.on_event(&event).await {
                Ok(_) => {
                    if let Err(e) = message.ack().await {
                        warn!(event = %event.event_id, error = %e, "handled but not acknowledged; it will come again and be skipped");
                    }
                }
                Err(e) => {
                    warn!(event = %event.event_id, error = %e, "change event not handled; redelivered later");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await;
                }
            }
        }
        warn!("the change event stream ended");
    }))
}
