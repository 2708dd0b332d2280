//! How a source has answered lately: the recent record a
//! [`SourceGuard`](super::SourceGuard) keeps of its calls and refusals, and
//! the state (up, degraded, breaker open, rate limited) derived from it.
//!
//! # The window
//! The record keeps the last [`CALLS_KEPT`] calls to the source and the
//! last [`REFUSALS_KEPT`] lookups the broker refused itself, each with when
//! it happened; figures are over those of the last [`WINDOW`] (five
//! minutes). So a busy source is judged by its last few hundred calls, a
//! quiet one by its last five minutes. A call is one adapter call: a retry
//! is a second call, an answer from the cache is none. Recording takes a
//! mutex for a few pointer writes, never across an await.
//!
//! Nothing about a person is kept: a failure is kept as its status name
//! (`timeout`, `unavailable`, `error`), never the adapter's error text,
//! which may quote the request.
//!
//! # The state
//! [`derive_state`] decides, in this order:
//! 1. `BREAKER_OPEN` when the circuit breaker is open, or half-open
//!    ("probing": one call is out to see whether the source is back);
//! 2. `RATE_LIMITED` when at least [`MIN_CALLS`] lookups in the window were
//!    held back by the broker's own limits for the source (its rate limit,
//!    or all its concurrent calls busy) and they are at least
//!    [`DEGRADED_ERROR_RATE`] of the lookups that wanted a call;
//! 3. `DEGRADED` when more than [`DEGRADED_ERROR_RATE`] of at least
//!    [`MIN_CALLS`] calls failed, or the 95th percentile of the calls'
//!    latency is above the source's late threshold (when it has one);
//! 4. `UNKNOWN` when there was no call in the window;
//! 5. `UP` otherwise.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use super::breaker::BreakerState;

/// How far back the figures reach.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Calls kept (the newest).
pub const CALLS_KEPT: usize = 256;
/// Refusals kept (the newest).
pub const REFUSALS_KEPT: usize = 256;
/// Fewest calls (or refusals) a rate is judged on.
pub const MIN_CALLS: u64 = 5;
/// Share of failed calls above which a source is degraded (and of
/// held-back lookups at which it is rate limited).
pub const DEGRADED_ERROR_RATE: f64 = 0.2;

/// How one call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The source answered (with facts, no record, or a rejection of the
    /// request: it is up either way).
    Answered,
    /// The call failed; the status name says how (`timeout`,
    /// `unavailable`, `error`, `rate_limited` by the source itself).
    Failed(&'static str),
}

/// Why the broker did not call the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its own rate limit or concurrency limit had no slot in time.
    RateLimited,
    /// The circuit breaker was open.
    CircuitOpen,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    at: Instant,
    latency: Duration,
    failed: bool,
}

#[derive(Debug, Default)]
struct Record {
    calls: VecDeque<Call>,
    refusals: VecDeque<(Instant, Refusal)>,
    last_success: Option<SystemTime>,
    last_error: Option<(SystemTime, &'static str)>,
}

/// The recent record of one source.
#[derive(Debug, Default)]
pub struct HealthWindow {
    record: Mutex<Record>,
}

/// The figures of a [`HealthWindow`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Calls in the window.
    pub calls: u64,
    /// Failed calls in the window.
    pub errors: u64,
    /// Lookups held back by the broker's own limits in the window.
    pub rate_limited: u64,
    /// Lookups refused by the open breaker in the window.
    pub circuit_open: u64,
    /// Median latency of the calls in the window.
    pub p50: Option<Duration>,
    /// 95th percentile latency of the calls in the window.
    pub p95: Option<Duration>,
    /// When the source last answered.
    pub last_success: Option<SystemTime>,
    /// When a call last failed, and its status name.
    pub last_error: Option<(SystemTime, &'static str)>,
}

impl Snapshot {
    /// `errors / calls`; 0 without calls.
    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }
}

// === impl HealthWindow ===

impl HealthWindow {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        // A panic while holding it leaves counters only: still usable.
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a call that ended at `at` (the caller has just read the
    /// clock: hundreds of calls a verification need not read it again),
    /// took `latency` and went as `outcome`.
    pub fn record_call_ended(&self, at: Instant, latency: Duration, outcome: CallOutcome) {
        self.record_call_at(at, SystemTime::now(), latency, outcome);
    }

    fn record_call_at(
        &self,
        at: Instant,
        wall: SystemTime,
        latency: Duration,
        outcome: CallOutcome,
    ) {
        let mut r = self.lock();
        if r.calls.len() == CALLS_KEPT {
            r.calls.pop_front();
        }
        r.calls.push_back(Call {
            at,
            latency,
            failed: matches!(outcome, CallOutcome::Failed(_)),
        });
        match outcome {
            CallOutcome::Answered => r.last_success = Some(wall),
            CallOutcome::Failed(status) => r.last_error = Some((wall, status)),
        }
    }

    /// Records a lookup the broker refused itself.
    pub fn record_refusal(&self, refusal: Refusal) {
        self.record_refusal_at(Instant::now(), refusal);
    }

    fn record_refusal_at(&self, at: Instant, refusal: Refusal) {
        let mut r = self.lock();
        if r.refusals.len() == REFUSALS_KEPT {
            r.refusals.pop_front();
        }
        r.refusals.push_back((at, refusal));
    }

    /// The figures now.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(Instant::now())
    }

    fn snapshot_at(&self, now: Instant) -> Snapshot {
        let recent = |at: Instant| now.saturating_duration_since(at) <= WINDOW;
        let r = self.lock();
        let mut latencies = Vec::with_capacity(r.calls.len());
        let mut errors = 0;
        for c in r.calls.iter().filter(|c| recent(c.at)) {
            latencies.push(c.latency);
            errors += u64::from(c.failed);
        }
        let (mut rate_limited, mut circuit_open) = (0, 0);
        for (_, refusal) in r.refusals.iter().filter(|(at, _)| recent(*at)) {
            match refusal {
                Refusal::RateLimited => rate_limited += 1,
                Refusal::CircuitOpen => circuit_open += 1,
            }
        }
        let (last_success, last_error) = (r.last_success, r.last_error);
        drop(r);
        latencies.sort_unstable();
        Snapshot {
            calls: latencies.len() as u64,
            errors,
            rate_limited,
            circuit_open,
            p50: percentile(&latencies, 50),
            p95: percentile(&latencies, 95),
            last_success,
            last_error,
        }
    }
}

/// The `p`th percentile (nearest rank) of sorted `values`.
fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// What a source's recent record amounts to (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No call in the window.
    Unknown,
    /// Answering, in time.
    Up,
    /// Failing too often, or late.
    Degraded,
    /// The breaker is open or probing.
    BreakerOpen,
    /// Held back by the broker's own limits.
    RateLimited,
}

/// The state of a source with these figures and breaker, and why, in a
/// few words; `late` is its late threshold, if it has one.
pub fn derive_state(
    snapshot: &Snapshot,
    breaker: BreakerState,
    late: Option<Duration>,
) -> (State, String) {
    match breaker {
        BreakerState::Open { until } => {
            let wait = until.saturating_duration_since(tokio::time::Instant::now());
            return (
                State::BreakerOpen,
                format!(
                    "breaker open after consecutive failures; next probe in {} s",
                    wait.as_secs()
                ),
            );
        }
        BreakerState::HalfOpen => {
            return (
                State::BreakerOpen,
                "probing: one call is out to see whether the source is back".to_owned(),
            );
        }
        BreakerState::Closed => {}
    }
    let s = snapshot;
    let wanted = s.calls + s.rate_limited;
    if s.rate_limited >= MIN_CALLS && s.rate_limited as f64 >= DEGRADED_ERROR_RATE * wanted as f64 {
        return (
            State::RateLimited,
            format!(
                "{} of {wanted} lookups held back by the broker's limits for the source",
                s.rate_limited
            ),
        );
    }
    if s.calls >= MIN_CALLS && s.error_rate() > DEGRADED_ERROR_RATE {
        return (
            State::Degraded,
            format!("{} of {} calls failed", s.errors, s.calls),
        );
    }
    if let (Some(late), Some(p95)) = (late.filter(|l| !l.is_zero()), s.p95)
        && p95 > late
    {
        return (
            State::Degraded,
            format!(
                "p95 latency {} ms above the late threshold {} ms",
                p95.as_millis(),
                late.as_millis()
            ),
        );
    }
    if s.calls == 0 {
        return (State::Unknown, "no call in the last 5 minutes".to_owned());
    }
    (
        State::Up,
        format!("{} of {} calls failed", s.errors, s.calls),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn calls(w: &HealthWindow, at: Instant, n: usize, latency: Duration, outcome: CallOutcome) {
        for _ in 0..n {
            w.record_call_at(at, SystemTime::now(), latency, outcome);
        }
    }

    #[test]
    fn an_empty_window_is_unknown() {
        let s = HealthWindow::new().snapshot();
        assert_eq!(s.calls, 0);
        assert_eq!(s.p50, None);
        assert_eq!(s.error_rate(), 0.0);
        assert_eq!(
            derive_state(&s, BreakerState::Closed, None).0,
            State::Unknown
        );
    }

    #[test]
    fn counts_calls_errors_and_refusals() {
        let w = HealthWindow::new();
        let now = Instant::now();
        calls(&w, now, 8, 10 * MS, CallOutcome::Answered);
        calls(&w, now, 2, 10 * MS, CallOutcome::Failed("timeout"));
        w.record_refusal_at(now, Refusal::RateLimited);
        w.record_refusal_at(now, Refusal::CircuitOpen);
        w.record_refusal_at(now, Refusal::CircuitOpen);
        let s = w.snapshot_at(now);
        assert_eq!((s.calls, s.errors), (10, 2));
        assert_eq!((s.rate_limited, s.circuit_open), (1, 2));
        assert!((s.error_rate() - 0.2).abs() < 1e-9);
        assert_eq!(s.last_error.map(|(_, st)| st), Some("timeout"));
        assert!(s.last_success.is_some());
        // 20 % is not above the threshold.
        assert_eq!(derive_state(&s, BreakerState::Closed, None).0, State::Up);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let w = HealthWindow::new();
        let now = Instant::now();
        for ms in 1..=100 {
            w.record_call_at(now, SystemTime::now(), ms * MS, CallOutcome::Answered);
        }
        let s = w.snapshot_at(now);
        assert_eq!(s.p50, Some(50 * MS));
        assert_eq!(s.p95, Some(95 * MS));
        assert_eq!(percentile(&[7 * MS], 95), Some(7 * MS));
    }

    #[test]
    fn old_entries_leave_the_window() {
        let w = HealthWindow::new();
        let then = Instant::now();
        calls(&w, then, 10, MS, CallOutcome::Failed("error"));
        w.record_refusal_at(then, Refusal::RateLimited);
        let later = then + WINDOW + Duration::from_secs(1);
        calls(&w, later, 3, MS, CallOutcome::Answered);
        let s = w.snapshot_at(later);
        assert_eq!((s.calls, s.errors, s.rate_limited), (3, 0, 0));
        // The last error is remembered beyond the window.
        assert_eq!(s.last_error.map(|(_, st)| st), Some("error"));
        assert_eq!(derive_state(&s, BreakerState::Closed, None).0, State::Up);
    }

    #[test]
    fn only_the_newest_calls_are_kept() {
        let w = HealthWindow::new();
        let now = Instant::now();
        calls(&w, now, CALLS_KEPT, MS, CallOutcome::Failed("unavailable"));
        calls(&w, now, CALLS_KEPT, MS, CallOutcome::Answered);
        let s = w.snapshot_at(now);
        assert_eq!((s.calls, s.errors), (CALLS_KEPT as u64, 0));
    }

    #[test]
    fn failing_calls_degrade_from_five_on() {
        let w = HealthWindow::new();
        let now = Instant::now();
        calls(&w, now, 4, MS, CallOutcome::Failed("error"));
        let (state, _) = derive_state(&w.snapshot_at(now), BreakerState::Closed, None);
        assert_eq!(state, State::Up, "too few calls to judge");
        calls(&w, now, 1, MS, CallOutcome::Failed("error"));
        let (state, reason) = derive_state(&w.snapshot_at(now), BreakerState::Closed, None);
        assert_eq!(state, State::Degraded);
        assert_eq!(reason, "5 of 5 calls failed");
    }

    #[test]
    fn a_late_p95_degrades() {
        let w = HealthWindow::new();
        let now = Instant::now();
        calls(&w, now, 90, 10 * MS, CallOutcome::Answered);
        calls(&w, now, 10, 900 * MS, CallOutcome::Answered);
        let s = w.snapshot_at(now);
        assert_eq!(derive_state(&s, BreakerState::Closed, None).0, State::Up);
        assert_eq!(
            derive_state(&s, BreakerState::Closed, Some(Duration::ZERO)).0,
            State::Up
        );
        let (state, reason) = derive_state(&s, BreakerState::Closed, Some(500 * MS));
        assert_eq!(state, State::Degraded);
        assert!(reason.contains("p95"), "{reason}");
    }

    #[test]
    fn the_breaker_comes_first() {
        let w = HealthWindow::new();
        let now = Instant::now();
        calls(&w, now, 10, MS, CallOutcome::Answered);
        let s = w.snapshot_at(now);
        let open = BreakerState::Open {
            until: tokio::time::Instant::now() + Duration::from_secs(30),
        };
        assert_eq!(derive_state(&s, open, None).0, State::BreakerOpen);
        let (state, reason) = derive_state(&s, BreakerState::HalfOpen, None);
        assert_eq!(state, State::BreakerOpen);
        assert!(reason.starts_with("probing"), "{reason}");
    }

    #[test]
    fn held_back_lookups_mean_rate_limited() {
        let w = HealthWindow::new();
        let now = Instant::now();
        calls(&w, now, 20, MS, CallOutcome::Failed("error"));
        for _ in 0..4 {
            w.record_refusal_at(now, Refusal::RateLimited);
        }
        assert_eq!(
            derive_state(&w.snapshot_at(now), BreakerState::Closed, None).0,
            State::Degraded,
            "4 refusals are too few"
        );
        for _ in 0..4 {
            w.record_refusal_at(now, Refusal::RateLimited);
        }
        // 8 of 28 lookups held back: rate limited, before degraded.
        assert_eq!(
            derive_state(&w.snapshot_at(now), BreakerState::Closed, None).0,
            State::RateLimited
        );
        // Circuit-open refusals do not count as rate limited.
        let w = HealthWindow::new();
        for _ in 0..10 {
            w.record_refusal_at(now, Refusal::CircuitOpen);
        }
        assert_eq!(
            derive_state(&w.snapshot_at(now), BreakerState::Closed, None).0,
            State::Unknown
        );
    }
}
