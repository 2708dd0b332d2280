//! The retry budget of a source: every first call deposits `ratio` of a
//! token, every retry takes one whole token, so retries never exceed
//! `ratio` times the first calls (Finagle's retry budget, without the
//! time window: the bound holds over any stretch of time).

use std::sync::atomic::{AtomicU64, Ordering};

/// Thousandths of a token.
const UNIT: u64 = 1000;
/// At most this many retries saved up: a long healthy stretch does not
/// buy a burst of retries when the source goes down.
const CAP_TOKENS: u64 = 10;

/// A retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    per_call: u64,
    balance: AtomicU64,
}

impl RetryBudget {
    /// Retries at most `ratio` (0 to 1) of first calls.
    pub fn new(ratio: f64) -> Self {
        Self {
            per_call: (ratio.clamp(0.0, 1.0) * UNIT as f64).round() as u64,
            balance: AtomicU64::new(0),
        }
    }

    /// A first call was made.
    pub fn deposit(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + self.per_call).min(CAP_TOKENS * UNIT))
            });
    }

    /// Takes a token for a retry; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(UNIT))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_never_exceed_the_ratio_of_first_calls() {
        let b = RetryBudget::new(0.2);
        let mut retries = 0;
        for calls in 1..=1000u32 {
            b.deposit();
            // Every call would like three retries.
            for _ in 0..3 {
                if b.withdraw() {
                    retries += 1;
                }
            }
            assert!(f64::from(retries) <= 0.2 * f64::from(calls) + 1e-9);
        }
        assert_eq!(retries, 200);
        let none = RetryBudget::new(0.0);
        none.deposit();
        assert!(!none.withdraw());
    }
}
