//! The load generator shared by every scenario: closed loop (a fixed number
//! of workers, each sends its next request when the last one is answered)
//! or open loop (requests started at a fixed rate whatever the answers),
//! for a bounded time; latencies as microseconds, percentiles by nearest
//! rank over every sample.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

/// What one request gave: `Ok(Some(inner))` with durations measured on the
/// other side (its sources), `Ok(None)` without them.
pub(crate) type Outcome = anyhow::Result<Option<Inner>>;

/// The sources' latencies behind one verification (or direct fan-out), as
/// measured by whoever called them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inner {
    /// The slowest single source.
    pub(crate) slowest: Duration,
    /// The sources' critical path: the household lookup, which comes
    /// first, plus the slowest of the sources asked after it; when the
    /// request declares the members, the slower of the two (the others
    /// are asked while the household is).
    pub(crate) path: Duration,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (microseconds); sorts them.
    pub(crate) fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1] as f64 / 1000.0
        };
        Self {
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: samples[samples.len() - 1] as f64 / 1000.0,
            mean_ms: samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0,
        }
    }
}

/// The result of one measured run.
#[derive(Debug, Default)]
pub(crate) struct LoadResult {
    /// Requests answered successfully.
    pub(crate) ok: u64,
    /// Requests that failed.
    pub(crate) errors: u64,
    /// The first failure, for the table.
    pub(crate) first_error: Option<String>,
    /// Open loop: requests not started because too many were in flight.
    pub(crate) dropped: u64,
    /// From the first request to the last answer.
    pub(crate) elapsed: Duration,
    /// Latency of each successful request, microseconds.
    pub(crate) latencies_us: Vec<u64>,
    /// The duration each successful request reported from the other side
    /// (when it reported one), microseconds.
    pub(crate) inner_us: Vec<u64>,
    /// For each request that reported a duration: its latency minus that
    /// duration, microseconds.
    pub(crate) overhead_us: Vec<u64>,
    /// The sources' critical path each successful request reported (when
    /// it reported one), microseconds.
    pub(crate) path_us: Vec<u64>,
    /// For each request that reported a critical path: its latency minus
    /// that path, microseconds.
    pub(crate) path_overhead_us: Vec<u64>,
}

impl LoadResult {
    /// Successful requests per second.
    pub(crate) fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.ok as f64 / s } else { 0.0 }
    }

    fn record(&mut self, started: Instant, outcome: Outcome) {
        match outcome {
            Ok(inner) => {
                self.ok += 1;
                let total = started.elapsed().as_micros() as u64;
                self.latencies_us.push(total);
                if let Some(d) = inner {
                    let slowest = d.slowest.as_micros() as u64;
                    self.inner_us.push(slowest);
                    self.overhead_us.push(total.saturating_sub(slowest));
                    let path = d.path.as_micros() as u64;
                    self.path_us.push(path);
                    self.path_overhead_us.push(total.saturating_sub(path));
                }
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }

    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.dropped += other.dropped;
        self.latencies_us.extend(other.latencies_us);
        self.inner_us.extend(other.inner_us);
        self.overhead_us.extend(other.overhead_us);
        self.path_us.extend(other.path_us);
        self.path_overhead_us.extend(other.path_overhead_us);
    }
}

/// Runs `concurrency` workers for `duration`, each calling `call(i)` with
/// the next request number `i` (counted from `first`) until the time is up.
/// Bounded: a worker starts no request after the end; requests carry their
/// own deadline.
pub(crate) async fn closed_loop<F, Fut>(
    concurrency: usize,
    duration: Duration,
    first: usize,
    call: F,
) -> LoadResult
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(first));
    let started = Instant::now();
    let end = started + duration;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (call, next) = (call.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut result = LoadResult::default();
                while Instant::now() < end {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    let outcome = call(i).await;
                    result.record(t, outcome);
                }
                result
            })
        })
        .collect();
    let mut total = LoadResult::default();
    for w in workers {
        match w.await {
            Ok(r) => total.merge(r),
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// Starts `call(i)` `rate` times a second for `duration` (open loop), never
/// more than `max_in_flight` at once (a request that would exceed it is
/// counted as dropped, not queued), then waits for the last answers.
pub(crate) async fn open_loop<F, Fut>(
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    first: usize,
    call: F,
) -> LoadResult
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let total = Arc::new(Mutex::new(LoadResult::default()));
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let started = Instant::now();
    let n = (duration.as_secs_f64() * rate).ceil().max(1.0) as usize;
    let mut tasks = tokio::task::JoinSet::new();
    let mut dropped = 0;
    for k in 0..n {
        // The k-th request is due at k periods after the start; sleeping
        // to that instant (not by one period each time) keeps the rate
        // whatever the timer's granularity.
        let due = started + period * u32::try_from(k).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let (call, total) = (call.clone(), Arc::clone(&total));
        tasks.spawn(async move {
            let t = Instant::now();
            let outcome = call(first + k).await;
            total.lock().expect("load result").record(t, outcome);
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut result = std::mem::take(&mut *total.lock().expect("load result"));
    result.dropped = dropped;
    result.elapsed = started.elapsed();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(p.p50_ms, 50.0);
        assert_eq!(p.p95_ms, 95.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        assert_eq!(p.mean_ms, 50.5);
        assert_eq!(Percentiles::of(&mut []).p99_ms, 0.0);
    }

    #[tokio::test]
    async fn closed_loop_counts_answers_and_failures() {
        let r = closed_loop(4, Duration::from_millis(50), 0, |i| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if i % 2 == 0 {
                Ok(Some(Inner {
                    slowest: Duration::from_micros(10),
                    path: Duration::from_micros(12),
                }))
            } else {
                Err(anyhow::anyhow!("odd"))
            }
        })
        .await;
        assert!(r.ok > 0 && r.errors > 0);
        assert_eq!(r.latencies_us.len() as u64, r.ok);
        assert_eq!(r.inner_us.len() as u64, r.ok);
        assert_eq!(r.path_us.len() as u64, r.ok);
        assert!(r.path_us.iter().all(|&p| p == 12));
        assert_eq!(r.first_error.as_deref(), Some("odd"));
    }

    #[tokio::test]
    async fn open_loop_starts_requests_at_the_rate() {
        let r = open_loop(200.0, Duration::from_millis(100), 100, 0, |_| async {
            Ok(None)
        })
        .await;
        assert_eq!(r.ok, 20);
        assert_eq!(r.dropped, 0);
    }
}
