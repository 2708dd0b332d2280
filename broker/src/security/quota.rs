//! Client quotas: a rate limit (governor) and a limit on verifications in
//! flight, per client, so one client over its quota is refused at once
//! (`RESOURCE_EXHAUSTED` with a retry-after hint) and the others do not
//! notice.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultDirectRateLimiter, Quota as Rate, RateLimiter, clock::Clock, clock::DefaultClock,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::QuotaConfig;

/// One client's quota.
#[derive(Debug)]
pub struct Quota {
    config: QuotaConfig,
    rate: Option<DefaultDirectRateLimiter>,
    slots: Option<Arc<Semaphore>>,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhausted {
    /// Over the rate; a call may succeed after this long.
    Rate(Duration),
    /// Every slot for verifications in flight is taken.
    Concurrency(u32),
}

/// The slots one verification in flight holds (its client's, the
/// broker's); released when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Slot(#[allow(dead_code)] Arc<Vec<OwnedSemaphorePermit>>);

impl Slot {
    /// One slot holding these permits, or `None` when there are none.
    pub fn of(permits: Vec<OwnedSemaphorePermit>) -> Option<Self> {
        (!permits.is_empty()).then(|| Self(Arc::new(permits)))
    }
}

impl PartialEq for Slot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Slot {}

impl Quota {
    /// The quota `config` describes.
    pub fn new(config: QuotaConfig) -> Self {
        let rate = (config.rate_per_s > 0.0).then(|| {
            let period = Duration::from_secs_f64(1.0 / config.rate_per_s);
            let burst = if config.burst == 0 {
                // A second's worth, at least one.
                config.rate_per_s.ceil().max(1.0).min(f64::from(u32::MAX)) as u32
            } else {
                config.burst
            };
            let quota = Rate::with_period(period)
                .expect("a positive rate has a positive period")
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
            RateLimiter::direct(quota)
        });
        let slots = (config.max_concurrent > 0)
            .then(|| Arc::new(Semaphore::new(config.max_concurrent as usize)));
        Self {
            config,
            rate,
            slots,
        }
    }

    /// Whether this quota limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.rate.is_none() && self.slots.is_none()
    }

    /// Takes one call from the rate.
    ///
    /// # Errors
    /// [`Exhausted::Rate`] with the wait before a call may succeed.
    pub fn call(&self) -> Result<(), Exhausted> {
        match &self.rate {
            None => Ok(()),
            Some(limiter) => limiter.check().map_err(|not_until| {
                Exhausted::Rate(not_until.wait_time_from(DefaultClock::default().now()))
            }),
        }
    }

    /// Takes a slot for a verification in flight (`None` when there is no
    /// such limit).
    ///
    /// # Errors
    /// [`Exhausted::Concurrency`] when every slot is taken.
    pub fn slot(&self) -> Result<Option<OwnedSemaphorePermit>, Exhausted> {
        match &self.slots {
            None => Ok(None),
            Some(slots) => slots
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| Exhausted::Concurrency(self.config.max_concurrent)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_slots_run_out_and_come_back() {
        let q = Quota::new(QuotaConfig {
            rate_per_s: 1.0,
            burst: 2,
            max_concurrent: 1,
        });
        assert!(q.call().is_ok());
        assert!(q.call().is_ok());
        match q.call() {
            Err(Exhausted::Rate(wait)) => assert!(wait <= Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        let held = q.slot().unwrap();
        assert!(held.is_some());
        assert!(matches!(q.slot(), Err(Exhausted::Concurrency(1))));
        drop(held);
        assert!(q.slot().unwrap().is_some());
        assert!(Quota::new(QuotaConfig::default()).is_unlimited());
    }
}
