//! A circuit breaker per source: after `failures` consecutive failed
//! lookups the source is not asked for `open_for`; then one probe goes
//! through (half open). Its success closes the breaker, its failure opens
//! it again for another `open_for`. While open or probing, lookups are
//! refused at once, without a call.
//!
//! Written here rather than taken from a crate: the state machine is a
//! few lines, and the broker needs its state for health reporting and its
//! refusals as report statuses, which the general-purpose crates hide.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

/// The breaker's state, as health reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the instant given.
    Open {
        /// When one probe will be let through.
        until: Instant,
    },
    /// One probe is out; other calls are refused.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive: u32,
}

/// A circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

/// Permission to call, given by [`Breaker::admit`]; report how the call
/// went with [`Breaker::success`] or [`Breaker::failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed (or disabled).
    Call,
    /// This call is the half-open probe.
    Probe,
}

impl Breaker {
    /// A breaker opening after `failures` consecutive failures (0: never)
    /// for `open_for`.
    pub fn new(failures: u32, open_for: Duration) -> Self {
        Self {
            failures,
            open_for,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive: 0,
            }),
        }
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        self.inner.lock().expect("breaker lock").state
    }

    /// Whether a call may go out now.
    ///
    /// # Errors
    /// The time left until the next probe (zero while a probe is out).
    pub fn admit(&self) -> Result<Admission, Duration> {
        if self.failures == 0 {
            return Ok(Admission::Call);
        }
        let mut inner = self.inner.lock().expect("breaker lock");
        match inner.state {
            BreakerState::Closed => Ok(Admission::Call),
            BreakerState::HalfOpen => Err(Duration::ZERO),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    inner.state = BreakerState::HalfOpen;
                    Ok(Admission::Probe)
                } else {
                    Err(until - now)
                }
            }
        }
    }

    /// The call admitted as `admission` succeeded.
    pub fn success(&self, admission: Admission) {
        if self.failures == 0 {
            return;
        }
        let mut inner = self.inner.lock().expect("breaker lock");
        inner.consecutive = 0;
        if admission == Admission::Probe || inner.state != BreakerState::HalfOpen {
            inner.state = BreakerState::Closed;
        }
    }

    /// The call admitted as `admission` failed.
    pub fn failure(&self, admission: Admission) {
        if self.failures == 0 {
            return;
        }
        let mut inner = self.inner.lock().expect("breaker lock");
        inner.consecutive = inner.consecutive.saturating_add(1);
        let reopen = admission == Admission::Probe
            || (inner.state == BreakerState::Closed && inner.consecutive >= self.failures);
        if reopen {
            inner.state = BreakerState::Open {
                until: Instant::now() + self.open_for,
            };
        }
    }

    /// A call admitted as `admission` ended without telling anything about
    /// the source (it was given up before an answer); a probe's slot is
    /// given back.
    pub fn abandon(&self, admission: Admission) {
        if admission == Admission::Probe {
            let mut inner = self.inner.lock().expect("breaker lock");
            if inner.state == BreakerState::HalfOpen {
                inner.state = BreakerState::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_lets_one_probe_through() {
        let b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            let a = b.admit().unwrap();
            b.failure(a);
        }
        // A success in between resets the count.
        b.success(b.admit().unwrap());
        for _ in 0..3 {
            let a = b.admit().unwrap();
            b.failure(a);
        }
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        let left = b.admit().unwrap_err();
        assert_eq!(left, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.admit().unwrap();
        assert_eq!(probe, Admission::Probe);
        // While the probe is out, nothing else goes.
        assert_eq!(b.admit().unwrap_err(), Duration::ZERO);
        b.failure(probe);
        assert!(b.admit().is_err(), "the failed probe opens it again");
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.admit().unwrap();
        b.success(probe);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit().unwrap(), Admission::Call);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_call_probe() {
        let b = Breaker::new(1, Duration::from_secs(5));
        b.failure(b.admit().unwrap());
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.admit().unwrap();
        b.abandon(probe);
        assert_eq!(b.admit().unwrap(), Admission::Probe);
    }

    #[test]
    fn zero_failures_means_never_open() {
        let b = Breaker::new(0, Duration::from_secs(5));
        for _ in 0..100 {
            b.failure(b.admit().unwrap());
        }
        assert_eq!(b.admit().unwrap(), Admission::Call);
    }
}
