//! Health: `hedui.v1.SourceHealthService`, how each source has answered
//! lately (from the record its [guard](crate::guard::health) keeps), the
//! standard `grpc.health.v1.Health` of the broker itself, and the
//! `hedui sources` command.
//!
//! The broker's own health is `SERVING` for every service while its audit
//! log is ready (nothing can be answered without it), `NOT_SERVING`
//! otherwise; [`track_audit`] checks every few seconds.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use hedui_proto::v1::{
    self as pb, ListSourceHealthRequest, ListSourceHealthResponse, SourceHealth, SourceState,
    WatchSourceHealthRequest, WatchSourceHealthResponse,
    source_health_service_client::SourceHealthServiceClient,
    source_health_service_server::SourceHealthService,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    guard::{
        breaker::BreakerState,
        health::{State, derive_state},
    },
    verify::Verifier,
};

/// The messages and client of the standard gRPC health protocol
/// (`grpc.health.v1`), for callers of the broker.
pub use tonic_health::pb as grpc_health_v1;

/// Default interval of `WatchSourceHealth`.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(10);
/// How often `WatchSourceHealth` looks for a change of state.
const CHANGE_POLL: Duration = Duration::from_secs(1);
/// How often the audit log's readiness is checked for `grpc.health.v1`.
const AUDIT_POLL: Duration = Duration::from_secs(5);

/// `SourceHealthService` over the sources of a shared [`Verifier`].
#[derive(Debug, Clone)]
pub struct SourceHealthApi {
    verifier: Arc<Verifier>,
}

impl SourceHealthApi {
    /// The service over `verifier`'s sources.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier }
    }

    /// Every source's health now, in the catalog's order.
    pub fn list(&self) -> Vec<SourceHealth> {
        source_health(&self.verifier)
    }
}

/// Every source of `verifier`: its health now, in the catalog's order.
pub fn source_health(verifier: &Verifier) -> Vec<SourceHealth> {
    verifier
        .sources()
        .iter()
        .map(|source| {
            let guard = &source.guard;
            let snapshot = guard.health().snapshot();
            let breaker = guard.breaker_state();
            let late = guard.late_deadline();
            let (state, reason) = derive_state(&snapshot, breaker, Some(late));
            let duration = |d: Duration| prost_types::Duration::try_from(d).ok();
            SourceHealth {
                source_id: source.spec.id.clone(),
                source_name: source.spec.name.clone(),
                state: state_of(state) as i32,
                calls: snapshot.calls,
                errors: snapshot.errors,
                error_rate: snapshot.error_rate(),
                rate_limited: snapshot.rate_limited,
                circuit_open: snapshot.circuit_open,
                p50_latency: snapshot.p50.and_then(duration),
                p95_latency: snapshot.p95.and_then(duration),
                last_success: snapshot.last_success.map(prost_types::Timestamp::from),
                last_error: snapshot
                    .last_error
                    .map(|(at, _)| prost_types::Timestamp::from(at)),
                last_error_status: snapshot
                    .last_error
                    .map(|(_, status)| status.to_owned())
                    .unwrap_or_default(),
                breaker: match breaker {
                    BreakerState::Closed => pb::BreakerState::Closed,
                    BreakerState::Open { .. } => pb::BreakerState::Open,
                    BreakerState::HalfOpen => pb::BreakerState::HalfOpen,
                } as i32,
                rate_per_s: guard.rate_per_s(),
                late_threshold: duration(late),
                reason,
            }
        })
        .collect()
}

fn state_of(state: State) -> SourceState {
    match state {
        State::Unknown => SourceState::Unknown,
        State::Up => SourceState::Up,
        State::Degraded => SourceState::Degraded,
        State::BreakerOpen => SourceState::BreakerOpen,
        State::RateLimited => SourceState::RateLimited,
    }
}

/// The interval a `WatchSourceHealth` request asks for.
///
/// # Errors
/// `INVALID_ARGUMENT` naming `interval` when it is not 1 to 60 whole
/// seconds.
pub fn watch_interval(request: &WatchSourceHealthRequest) -> Result<Duration, Status> {
    let Some(interval) = request.interval else {
        return Ok(DEFAULT_WATCH_INTERVAL);
    };
    let bad = || {
        Status::invalid_argument(format!(
            "interval: must be 1 to 60 whole seconds (or unset for {} s); got {}.{:09} s",
            DEFAULT_WATCH_INTERVAL.as_secs(),
            interval.seconds,
            interval.nanos
        ))
    };
    if interval.nanos != 0 || !(1..=60).contains(&interval.seconds) {
        return Err(bad());
    }
    Ok(Duration::from_secs(interval.seconds.unsigned_abs()))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchSourceHealthResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SourceHealthService for SourceHealthApi {
    async fn list_source_health(
        &self,
        _request: Request<ListSourceHealthRequest>,
    ) -> Result<Response<ListSourceHealthResponse>, Status> {
        Ok(Response::new(ListSourceHealthResponse {
            sources: self.list(),
        }))
    }

    type WatchSourceHealthStream = WatchStream;

    async fn watch_source_health(
        &self,
        request: Request<WatchSourceHealthRequest>,
    ) -> Result<Response<Self::WatchSourceHealthStream>, Status> {
        let interval = watch_interval(request.get_ref())?;
        let (tx, rx) = mpsc::channel(1);
        let verifier = self.verifier.clone();
        tokio::spawn(async move {
            let mut last_states: Option<Vec<i32>> = None;
            let mut last_sent = tokio::time::Instant::now();
            loop {
                let sources = source_health(&verifier);
                let states: Vec<i32> = sources.iter().map(|s| s.state).collect();
                let due = last_sent.elapsed() >= interval;
                if due || last_states.as_ref() != Some(&states) {
                    if tx
                        .send(Ok(WatchSourceHealthResponse { sources }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last_sent = tokio::time::Instant::now();
                    last_states = Some(states);
                }
                let next = CHANGE_POLL.min(interval.saturating_sub(last_sent.elapsed()));
                tokio::select! {
                    () = tokio::time::sleep(next) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The services whose standard health [`track_audit`] reports, besides
/// the whole server (`""`).
pub const SERVICES: [&str; 6] = [
    "hedui.v1.VerificationService",
    "hedui.v1.WatchService",
    "hedui.v1.ConsentService",
    "hedui.v1.AuditService",
    "hedui.v1.SourceHealthService",
    "grpc.reflection.v1.ServerReflection",
];

/// Keeps the standard health of the broker (`""` and [`SERVICES`]) at
/// `SERVING` while `verifier`'s audit log is ready and `NOT_SERVING`
/// while it is not, checking every few seconds; runs until the reporter's
/// server is gone (never, in practice: spawn it).
pub async fn track_audit(verifier: Arc<Verifier>, reporter: tonic_health::server::HealthReporter) {
    track_audit_from(verifier, reporter, None).await;
}

/// [`track_audit`], knowing it reported `last` already.
async fn track_audit_from(
    verifier: Arc<Verifier>,
    reporter: tonic_health::server::HealthReporter,
    mut last: Option<tonic_health::ServingStatus>,
) {
    loop {
        if last.is_some() {
            tokio::time::sleep(AUDIT_POLL).await;
        }
        last = Some(report_audit(&verifier, &reporter, last).await);
    }
}

/// Checks the audit log once and reports the broker's health when it
/// changed from `last`; gives what it found.
async fn report_audit(
    verifier: &Verifier,
    reporter: &tonic_health::server::HealthReporter,
    last: Option<tonic_health::ServingStatus>,
) -> tonic_health::ServingStatus {
    let status = match verifier.audit().ready().await {
        Ok(()) => tonic_health::ServingStatus::Serving,
        Err(e) => {
            if last != Some(tonic_health::ServingStatus::NotServing) {
                tracing::warn!(error = %e, "audit log not ready; health is NOT_SERVING");
            }
            tonic_health::ServingStatus::NotServing
        }
    };
    if last != Some(status) {
        for service in std::iter::once("").chain(SERVICES) {
            reporter.set_service_status(service, status).await;
        }
    }
    status
}

/// [`track_audit`] spawned; stopped when the handle is dropped.
#[derive(Debug)]
pub struct AuditTracker(tokio::task::JoinHandle<()>);

impl Drop for AuditTracker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reports the broker's health once, then spawns [`track_audit`]; it runs
/// until the handle is dropped. Awaited before the server starts, so a
/// health check never finds the services unregistered.
pub async fn spawn_track_audit(
    verifier: Arc<Verifier>,
    reporter: tonic_health::server::HealthReporter,
) -> AuditTracker {
    let first = report_audit(&verifier, &reporter, None).await;
    AuditTracker(tokio::spawn(track_audit_from(
        verifier,
        reporter,
        Some(first),
    )))
}

// === hedui sources ===

/// `hedui sources`: prints every source's health as a table, once or (with
/// `watch`) every time the broker sends it.
///
/// # Errors
/// When the broker cannot be reached or refuses the call.
pub async fn run_cli(connect: &crate::client::Connect, watch: bool) -> anyhow::Result<()> {
    let channel = connect.channel().await?;
    let mut client = SourceHealthServiceClient::new(channel);
    let status_error =
        |e: Status| anyhow::anyhow!("the broker refused: {:?}: {}", e.code(), e.message());
    if !watch {
        let list = client
            .list_source_health(ListSourceHealthRequest {})
            .await
            .map_err(status_error)?
            .into_inner();
        print!("{}", table(&list.sources));
        return Ok(());
    }
    let mut stream = client
        .watch_source_health(WatchSourceHealthRequest { interval: None })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(message) = stream.message().await.map_err(status_error)? {
        println!("{}", chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"));
        print!("{}", table(&message.sources));
        println!();
    }
    Ok(())
}

/// The sources' health as a text table: source, state, calls, error rate,
/// p50, p95, last error.
pub fn table(sources: &[SourceHealth]) -> String {
    let header = [
        "SOURCE",
        "STATE",
        "CALLS",
        "ERROR RATE",
        "P50",
        "P95",
        "LAST ERROR",
    ];
    let rows: Vec<[String; 7]> = sources
        .iter()
        .map(|s| {
            let ms = |d: &Option<prost_types::Duration>| {
                d.and_then(|d| Duration::try_from(d).ok())
                    .map_or_else(|| "-".to_owned(), latency)
            };
            let last_error = match &s.last_error {
                Some(at) => {
                    let at = chrono::DateTime::from_timestamp(at.seconds, 0)
                        .map(|t| t.format("%H:%M:%S").to_string())
                        .unwrap_or_default();
                    format!("{} at {at} UTC", s.last_error_status)
                }
                None => "-".to_owned(),
            };
            [
                s.source_id.clone(),
                state_name(s.state).to_owned(),
                s.calls.to_string(),
                format!("{:.0} %", s.error_rate * 100.0),
                ms(&s.p50_latency),
                ms(&s.p95_latency),
                last_error,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// A latency as the table shows it: `0.4 ms`, `12 ms`, `2.5 s`.
fn latency(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A state as the table shows it (`up`, `degraded`, `breaker_open`).
pub fn state_name(state: i32) -> &'static str {
    match SourceState::try_from(state).unwrap_or(SourceState::Unspecified) {
        SourceState::Unspecified => "unspecified",
        SourceState::Unknown => "unknown",
        SourceState::Up => "up",
        SourceState::Degraded => "degraded",
        SourceState::BreakerOpen => "breaker_open",
        SourceState::RateLimited => "rate_limited",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_read_well() {
        assert_eq!(latency(Duration::from_micros(420)), "0.4 ms");
        assert_eq!(latency(Duration::from_millis(12)), "12 ms");
        assert_eq!(latency(Duration::from_millis(2500)), "2500 ms");
        assert_eq!(latency(Duration::from_millis(12_340)), "12.3 s");
    }

    #[test]
    fn watch_interval_is_bounded() {
        let req = |seconds, nanos| WatchSourceHealthRequest {
            interval: Some(prost_types::Duration { seconds, nanos }),
        };
        assert_eq!(
            watch_interval(&WatchSourceHealthRequest { interval: None }).unwrap(),
            DEFAULT_WATCH_INTERVAL
        );
        assert_eq!(watch_interval(&req(1, 0)).unwrap(), Duration::from_secs(1));
        assert_eq!(
            watch_interval(&req(60, 0)).unwrap(),
            Duration::from_secs(60)
        );
        for (s, n) in [(0, 0), (61, 0), (-1, 0), (5, 1)] {
            let e = watch_interval(&req(s, n)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with("interval: "), "{}", e.message());
        }
    }

    #[test]
    fn the_table_has_a_row_per_source() {
        let sources = [
            SourceHealth {
                source_id: "traffic-police".into(),
                state: SourceState::Degraded as i32,
                calls: 10,
                errors: 6,
                error_rate: 0.6,
                p50_latency: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 12_000_000,
                }),
                last_error: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                }),
                last_error_status: "timeout".into(),
                ..SourceHealth::default()
            },
            SourceHealth {
                source_id: "tax".into(),
                state: SourceState::Up as i32,
                ..SourceHealth::default()
            },
        ];
        let t = table(&sources);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("SOURCE"), "{t}");
        assert!(lines[1].starts_with("traffic-police  degraded"), "{t}");
        assert!(lines[1].contains("60 %"), "{t}");
        assert!(lines[1].contains("12 ms"), "{t}");
        assert!(lines[1].ends_with("timeout at 00:00:00 UTC"), "{t}");
        assert!(lines[2].starts_with("tax             up"), "{t}");
    }
}
