//! What stands between the broker and each department: a cache of
//! answers, and the protections a small department system needs from a
//! broker that could otherwise flood it.
//!
//! A lookup goes, in order, through:
//! 1. **the cache** ([`AnswerCache`], moka): an answer for the same source,
//!    persons and fact kinds, young enough for the caller's `max_age`, is
//!    served without a call; concurrent identical lookups share one call;
//!    answers live per source and fact kind (`[cache]`), "no record"
//!    answers shorter; a change event for a person drops every answer
//!    about them; the whole cache is bounded in bytes;
//! 2. **the circuit breaker** ([`breaker`]): after consecutive failures the
//!    source is not asked for a while, then one probe goes through;
//! 3. **the rate limit** (governor): a call waits for a slot only if one
//!    comes before the deadline, else the source is reported
//!    `RATE_LIMITED` at once;
//! 4. **the bulkhead**: at most `max_concurrent` calls in flight;
//! 5. **retries** of retryable failures (unavailable, rate limited by the
//!    source), within the retry budget ([`budget`]: at most 20 % extra
//!    calls by default) and the deadline;
//! 6. the adapter, which gets the remaining deadline (`LookupContext`) and
//!    passes it on (`grpc-timeout`, statement timeouts); the answer is
//!    checked against the contract before it is cached or used.

pub mod breaker;
pub mod budget;
pub mod config;
pub mod health;

use std::{
    collections::HashMap,
    fmt,
    num::NonZeroU32,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hedui_adapters::{
    Adapter, AdapterError, LookupContext, answer::check_answer, catalog::SourceSpec,
};
use hedui_proto::v1::{CheckResponse, LookupRequest, LookupResponse, PersonAnswer, SourceStatus};
use moka::{Expiry, sync::Cache};
use tokio::{sync::Semaphore, time::Instant};

use self::{
    breaker::{Admission, Breaker, BreakerState},
    budget::RetryBudget,
    config::GuardSettings,
};
use crate::telemetry::status_label;

/// What identifies an answer: the source, the persons and the fact kinds
/// asked for (sorted, so the order of asking does not matter).
///
/// One buffer, each part prefixed by its length plus one (a zero ends the
/// persons): a lookup builds its key with one allocation, and moka hashes
/// and compares one slice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Box<[u8]>);

impl CacheKey {
    /// The key of a lookup.
    pub fn of(request: &LookupRequest) -> Self {
        let mut persons: Vec<&str> = request.person_ids.iter().map(String::as_str).collect();
        persons.sort_unstable();
        let mut kinds = request.fact_kinds.clone();
        kinds.sort_unstable();
        let len = 8
            + request.source_id.len()
            + persons.iter().map(|p| 4 + p.len()).sum::<usize>()
            + 4 * kinds.len();
        let mut key = Vec::with_capacity(len);
        let mut part = |bytes: &[u8]| {
            // Ids are far shorter than 4 GiB: the request size limit.
            let n = u32::try_from(bytes.len() + 1).unwrap_or(u32::MAX);
            key.extend_from_slice(&n.to_le_bytes());
            key.extend_from_slice(bytes);
        };
        part(request.source_id.as_bytes());
        for p in persons {
            part(p.as_bytes());
        }
        key.extend_from_slice(&0u32.to_le_bytes());
        for k in kinds {
            key.extend_from_slice(&k.to_le_bytes());
        }
        Self(key.into_boxed_slice())
    }

    /// The parts before the kinds: the source id, then the persons.
    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.0[..];
        std::iter::from_fn(move || {
            let (n, tail) = rest.split_first_chunk::<4>()?;
            let n = (u32::from_le_bytes(*n) as usize).checked_sub(1)?;
            let (part, tail) = tail.split_at(n.min(tail.len()));
            rest = tail;
            Some(part)
        })
    }

    /// Whether the lookup was about `person_id`.
    fn is_about(&self, person_id: &str) -> bool {
        self.parts().skip(1).any(|p| p == person_id.as_bytes())
    }
}

/// A cached answer.
#[derive(Debug)]
pub struct Cached {
    /// The answers, shared with every lookup they serve (not copied).
    answers: Arc<Vec<PersonAnswer>>,
    /// The answer's own `as_of`.
    stated_as_of: Option<prost_types::Timestamp>,
    /// When the answer's data was current: its `as_of`, else when it was
    /// received.
    as_of: SystemTime,
    ttl: Duration,
}

/// Each answer lives for the time its source and kinds allow.
struct ByAnswer;

impl Expiry<CacheKey, Arc<Cached>> for ByAnswer {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Cached>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The answers of every source, bounded in bytes.
#[derive(Clone)]
pub struct AnswerCache {
    cache: Cache<CacheKey, Arc<Cached>>,
    /// The lookups asking their source now, by key: a lookup missing an
    /// answer that is being asked for waits for that call rather than
    /// making another. (moka's entry API does the same, but its future,
    /// held by every call in flight, is 1.4 KiB: docs/benchmarks.md, S5.)
    asking: Arc<Mutex<HashMap<CacheKey, Asked>>>,
}

/// What a call being made will come to: `None` until it answers.
type Asked = tokio::sync::watch::Receiver<Option<Result<Arc<Cached>, GuardError>>>;

/// The lookup making the call for a key: when it is dropped unfinished
/// (its caller gave up), the lookups waiting on it are woken to ask again.
struct Asking<'a> {
    cache: &'a AnswerCache,
    key: &'a CacheKey,
    answer: tokio::sync::watch::Sender<Option<Result<Arc<Cached>, GuardError>>>,
}

impl Asking<'_> {
    /// Hands the answer to the lookups waiting on it.
    fn finish(self, answer: &Result<Arc<Cached>, GuardError>) {
        self.answer.send_replace(Some(answer.clone()));
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        // The key's entry is this lookup's: no other lookup asks for the
        // key while it is there.
        self.cache
            .asking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.key);
    }
}

/// A lookup's turn at a missing answer.
enum Turn<'a> {
    /// Nobody is asking: this lookup asks.
    Ask(Asking<'a>),
    /// Another lookup is asking: this one waits for its answer.
    Wait(Asked),
}

impl fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerCache")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl AnswerCache {
    /// A cache holding at most `max_bytes` of answers (their protobuf
    /// encoding and their keys).
    pub fn new(max_bytes: u64) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &CacheKey, v: &Arc<Cached>| {
                    let key = k.0.len();
                    let answers = prost::encoding::message::encoded_len_repeated(1, &v.answers);
                    u32::try_from(key + answers + 64).unwrap_or(u32::MAX)
                })
                .expire_after(ByAnswer)
                .support_invalidation_closures()
                .build(),
            asking: Arc::default(),
        }
    }

    /// Whether the lookup missing `key` asks, or waits for the one that
    /// does.
    fn turn<'a>(&'a self, key: &'a CacheKey) -> Turn<'a> {
        let mut asking = self.asking.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(asked) = asking.get(key) {
            return Turn::Wait(asked.clone());
        }
        let (answer, asked) = tokio::sync::watch::channel(None);
        asking.insert(key.clone(), asked);
        Turn::Ask(Asking {
            cache: self,
            key,
            answer,
        })
    }

    /// Drops every answer about `person_id` (a change event arrived).
    pub fn invalidate_person(&self, person_id: &str) {
        let person = person_id.to_owned();
        // Only fails when closures are not supported, which `new` turns on.
        let _ = self
            .cache
            .invalidate_entries_if(move |k, _| k.is_about(&person));
    }

    /// Answers held (approximately, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Bytes held (approximately).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Applies pending maintenance (for tests and figures).
    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }
}

/// Why a guarded lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The breaker is open: the source was not asked.
    #[error("not asked: circuit breaker open after consecutive failures; next probe in {} ms", retry_in.as_millis())]
    CircuitOpen {
        /// Time to the next probe (zero while a probe is out).
        retry_in: Duration,
    },
    /// The broker's own limits for the source left no slot before the
    /// deadline: the source was not asked.
    #[error("not asked: {0}")]
    HeldBack(String),
    /// The source (or its transport) failed.
    #[error(transparent)]
    Source(#[from] AdapterError),
}

impl GuardError {
    /// The report status of this failure.
    pub fn status(&self) -> SourceStatus {
        match self {
            GuardError::CircuitOpen { .. } => SourceStatus::CircuitOpen,
            GuardError::HeldBack(_) => SourceStatus::RateLimited,
            GuardError::Source(e) => crate::verify::status_of(e),
        }
    }

    fn into_adapter_error(self) -> AdapterError {
        match self {
            GuardError::CircuitOpen { retry_in } => AdapterError::Unavailable(format!(
                "circuit breaker open; next probe in {} ms",
                retry_in.as_millis()
            )),
            GuardError::HeldBack(_) => AdapterError::RateLimited { retry_after: None },
            GuardError::Source(e) => e,
        }
    }
}

/// A guarded answer.
#[derive(Debug, Clone)]
pub struct Served {
    /// The answers, checked against the contract; shared with the cache,
    /// not copied out of it.
    pub answers: Arc<Vec<PersonAnswer>>,
    /// When the source's data was current, as it said.
    pub as_of: Option<prost_types::Timestamp>,
    /// Whether it was served without a call of this lookup's own (from the
    /// cache, or shared with a concurrent identical lookup).
    pub cache_hit: bool,
}

/// One source behind its cache and protections.
pub struct SourceGuard {
    spec: SourceSpec,
    adapter: Arc<dyn Adapter>,
    settings: GuardSettings,
    cache: Option<AnswerCache>,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Callers waiting for a rate-limit slot take turns through this.
    rate_queue: tokio::sync::Mutex<()>,
    /// How many callers wait for a rate-limit slot.
    rate_waiters: AtomicUsize,
    bulkhead: Option<Semaphore>,
    breaker: Breaker,
    budget: RetryBudget,
    /// How the source has answered lately, for `SourceHealthService`.
    health: health::HealthWindow,
    /// The metrics' `source` attribute, made once (its value is shared).
    source_attr: opentelemetry::KeyValue,
    /// The source's lookup counts (`hedui.source.requests`, cache hits and
    /// misses).
    counts: Arc<crate::telemetry::SourceCounts>,
    /// The breaker state last written to the `hedui.breaker.state` gauge
    /// (-1: none yet). A gauge keeps its last value, so it is written when
    /// the state it shows changes, not on every lookup. Unchanged is seen
    /// without a lock; a change is read again and written under
    /// `breaker_write`, so the last written is the latest.
    breaker_shown: std::sync::atomic::AtomicI64,
    breaker_write: std::sync::Mutex<()>,
}

impl fmt::Debug for SourceGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceGuard")
            .field("source", &self.spec.id)
            .field("settings", &self.settings)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// Counts a caller out of the rate-limit queue when it leaves it.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How one call went.
enum Attempt {
    /// The source was not asked (held back by the broker's own limits).
    NotAsked(GuardError),
    /// The source was asked and failed.
    Failed(AdapterError),
}

impl SourceGuard {
    /// `adapter` of source `spec` behind the protections of `settings`,
    /// with its answers in `cache` (when given and the settings allow).
    pub fn new(
        spec: SourceSpec,
        adapter: Arc<dyn Adapter>,
        settings: GuardSettings,
        cache: Option<AnswerCache>,
    ) -> Self {
        let l = &settings.limits;
        let limiter = NonZeroU32::new(l.rate_per_s).map(|rate| {
            let burst = NonZeroU32::new(l.burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        let bulkhead = (l.max_concurrent > 0).then(|| Semaphore::new(l.max_concurrent as usize));
        let breaker = Breaker::new(l.breaker_failures, l.breaker_open());
        let budget = RetryBudget::new(l.retry_budget);
        let source_attr = crate::telemetry::source(&spec.id);
        let counts = crate::telemetry::source_counts(&spec.id);
        Self {
            cache: cache.filter(|_| settings.cache),
            spec,
            adapter,
            limiter,
            rate_queue: tokio::sync::Mutex::new(()),
            rate_waiters: AtomicUsize::new(0),
            bulkhead,
            breaker,
            budget,
            settings,
            health: health::HealthWindow::new(),
            source_attr,
            counts,
            breaker_shown: std::sync::atomic::AtomicI64::new(-1),
            breaker_write: std::sync::Mutex::new(()),
        }
    }

    /// The source.
    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// The adapter behind the guard.
    pub fn adapter(&self) -> &Arc<dyn Adapter> {
        &self.adapter
    }

    /// The cache this source's answers are kept in, if it uses one.
    pub fn cache(&self) -> Option<&AnswerCache> {
        self.cache.as_ref()
    }

    /// How long after a verification starts the broker waits for this
    /// source (zero: not beyond the request's deadline).
    pub fn late_deadline(&self) -> Duration {
        Duration::from_millis(self.settings.limits.late_deadline_ms)
    }

    /// How the source has answered lately.
    pub fn health(&self) -> &health::HealthWindow {
        &self.health
    }

    /// The broker's rate limit for the source, calls per second (0: none).
    pub fn rate_per_s(&self) -> u32 {
        self.settings.limits.rate_per_s
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Answers `request` from the cache when an answer young enough for
    /// `max_age` is there, else by asking the source under the guard's
    /// protections; gives up at `ctx.deadline`: every wait on the way (the
    /// rate limit, the bulkhead, a retry's backoff, another lookup's
    /// answer, the adapter's) ends by then.
    ///
    /// A lookup future is held by every source call a verification waits
    /// on (27 per verification), so it is kept small: the arguments are
    /// taken by an `async move` block, not an `async fn`, whose arguments
    /// are held twice (as arguments and as the locals they are moved into),
    /// and the guarded call is boxed (docs/benchmarks.md, S5).
    ///
    /// # Errors
    /// [`GuardError`] saying why there is no answer.
    pub fn lookup<'a>(
        &'a self,
        mut ctx: LookupContext,
        request: &'a LookupRequest,
        max_age: Option<Duration>,
    ) -> impl Future<Output = Result<Served, GuardError>> + Send + 'a {
        use tracing::Instrument;
        async move {
            // Calls made to the adapter for this lookup (retries included;
            // 0 for a cache hit or a refusal).
            let attempts = AtomicUsize::new(0);
            // Pinned where it is made, and the span read back from it: the
            // lookup holds one span, not two.
            let mut guarded = std::pin::pin!({
                // One span per source asked; its fields name the source and
                // the outcome, never a person.
                let span = tracing::info_span!(
                    "source",
                    source = %self.spec.id,
                    transport = %self.settings.transport,
                    status = tracing::field::Empty,
                    cache_hit = tracing::field::Empty,
                    attempts = tracing::field::Empty,
                );
                // The department's spans join the trace through this span.
                ctx.traceparent = crate::telemetry::traceparent(&span);
                self.lookup_guarded(&ctx, request, max_age, &attempts)
                    .instrument(span)
            });
            let result = guarded.as_mut().await;
            let (status, cache_hit) = match &result {
                Ok(served) => (
                    if served.answers.iter().any(|a| !a.facts.is_empty()) {
                        SourceStatus::Ok
                    } else {
                        SourceStatus::NoRecord
                    },
                    served.cache_hit,
                ),
                Err(e) => (e.status(), false),
            };
            let span = guarded.span();
            span.record("status", status_label(status));
            span.record("cache_hit", cache_hit);
            span.record("attempts", attempts.load(Ordering::Relaxed));
            self.count(status, cache_hit);
            result
        }
    }

    /// The metrics of a lookup that ended with `status`.
    fn count(&self, status: SourceStatus, cache_hit: bool) {
        self.counts.request(status, cache_hit);
        let m = crate::telemetry::metrics();
        let breaker_code = || match self.breaker.state() {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } => 2,
        };
        if self.breaker_shown.load(Ordering::Acquire) != breaker_code() {
            let _writing = self
                .breaker_write
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let breaker = breaker_code();
            if self.breaker_shown.load(Ordering::Acquire) != breaker {
                m.breaker_state
                    .record(breaker, std::slice::from_ref(&self.source_attr));
                self.breaker_shown.store(breaker, Ordering::Release);
            }
        }
    }

    /// The lookup, through the cache when there is one. Both ways are
    /// boxed: a future is as large as its largest state, and every source
    /// asked holds this one while it waits; inline, the call (retries, rate
    /// limit, bulkhead, the adapter's call) or the cache's way (the call,
    /// or waiting for another lookup's) would set the size of every lookup,
    /// whichever way it goes (docs/benchmarks.md, S5).
    fn lookup_guarded<'a>(
        &'a self,
        ctx: &'a LookupContext,
        request: &'a LookupRequest,
        max_age: Option<Duration>,
        attempts: &'a AtomicUsize,
    ) -> impl Future<Output = Result<Served, GuardError>> + Send + 'a {
        use futures::{FutureExt, future::Either};
        match &self.cache {
            None => Either::Left(Box::pin(self.call(ctx, request, attempts)).map(|r| {
                r.map(|response| Served {
                    answers: Arc::new(response.answers),
                    as_of: response.as_of,
                    cache_hit: false,
                })
            })),
            Some(cache) => Either::Right(Box::pin(
                self.lookup_cached(cache, ctx, request, max_age, attempts),
            )),
        }
    }

    /// [`Self::lookup_guarded`] through the cache.
    async fn lookup_cached(
        &self,
        cache: &AnswerCache,
        ctx: &LookupContext,
        request: &LookupRequest,
        max_age: Option<Duration>,
        attempts: &AtomicUsize,
    ) -> Result<Served, GuardError> {
        let key = CacheKey::of(request);
        if let Some(hit) = cache.cache.get(&key) {
            if young_enough(&hit, max_age) {
                self.counts.cache(true);
                return Ok(Served {
                    answers: Arc::clone(&hit.answers),
                    as_of: hit.stated_as_of,
                    cache_hit: true,
                });
            }
            // Too old for this caller: ask again, and keep the newer one.
            cache.cache.invalidate(&key);
        }
        let (answer, cache_hit) = loop {
            match cache.turn(&key) {
                Turn::Ask(asking) => {
                    let answer = self
                        .call(ctx, request, attempts)
                        .await
                        .map(|response| self.cached(response));
                    if let Ok(cached) = &answer {
                        cache.cache.insert(key.clone(), Arc::clone(cached));
                    }
                    asking.finish(&answer);
                    break (answer?, false);
                }
                Turn::Wait(mut asked) => {
                    // The lookup asking may wait longer than this caller
                    // can.
                    let waited =
                        tokio::time::timeout_at(ctx.deadline, asked.wait_for(Option::is_some))
                            .await;
                    let Ok(waited) = waited else {
                        return Err(GuardError::Source(AdapterError::Timeout));
                    };
                    // The lookup asking gave up unanswered (its caller
                    // went away): take a turn again.
                    let Ok(answer) = waited else {
                        continue;
                    };
                    let answer = answer.clone().expect("waited for an answer");
                    break (answer?, true);
                }
            }
        };
        self.counts.cache(cache_hit);
        Ok(Served {
            answers: Arc::clone(&answer.answers),
            as_of: answer.stated_as_of,
            cache_hit,
        })
    }

    /// A source's answer as the cache keeps it, for as long as its kinds
    /// allow.
    fn cached(&self, response: LookupResponse) -> Arc<Cached> {
        let kinds = response
            .answers
            .iter()
            .flat_map(|a| a.facts.iter())
            .filter_map(|f| f.value.as_ref().map(|v| v.kind()));
        let ttl = self.settings.ttl_of(kinds);
        let as_of = response
            .as_of
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(SystemTime::now);
        Arc::new(Cached {
            answers: Arc::new(response.answers),
            stated_as_of: response.as_of,
            as_of,
            ttl,
        })
    }

    /// Asks the source: breaker, then per attempt rate limit, bulkhead and
    /// the call; retries what may be retried within budget and deadline.
    /// (An `async move` block, as [`Self::lookup`], and so is
    /// [`Self::attempt`]: the call is the box a waiting source call holds.)
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice"
    )]
    fn call<'a>(
        &'a self,
        ctx: &'a LookupContext,
        request: &'a LookupRequest,
        attempts: &'a AtomicUsize,
    ) -> impl Future<Output = Result<LookupResponse, GuardError>> + Send + 'a {
        async move {
            let admission = self.breaker.admit().map_err(|retry_in| {
                self.health.record_refusal(health::Refusal::CircuitOpen);
                GuardError::CircuitOpen { retry_in }
            })?;
            self.budget.deposit();
            let limits = &self.settings.limits;
            let mut retries = 0;
            loop {
                let backoff = match self.attempt(ctx, request, attempts).await {
                    Ok(response) => {
                        self.breaker.success(admission);
                        return Ok(response);
                    }
                    Err(Attempt::NotAsked(e)) => {
                        if matches!(e, GuardError::HeldBack(_)) {
                            self.health.record_refusal(health::Refusal::RateLimited);
                        }
                        self.breaker.abandon(admission);
                        return Err(e);
                    }
                    Err(Attempt::Failed(e)) => {
                        let backoff = match &e {
                            AdapterError::RateLimited {
                                retry_after: Some(d),
                            } => *d,
                            _ => Duration::from_millis(limits.retry_backoff_ms),
                        };
                        let retry = e.is_retryable()
                            && admission == Admission::Call
                            && retries < limits.max_retries
                            && ctx.remaining() > backoff
                            && self.budget.withdraw();
                        if !retry {
                            match e {
                                // The source answered: it is up.
                                AdapterError::Rejected(_) => self.breaker.success(admission),
                                _ => self.breaker.failure(admission),
                            }
                            return Err(GuardError::Source(e));
                        }
                        retries += 1;
                        tracing::debug!(source = %self.spec.id, error = %e, retries, "retrying");
                        backoff
                    }
                };
                // Boxed, and waited for with nothing of the failed attempt
                // held: retries are rare, and their timer inline would be
                // in every waiting call.
                Box::pin(tokio::time::sleep(backoff)).await;
            }
        }
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice"
    )]
    fn attempt<'a>(
        &'a self,
        ctx: &'a LookupContext,
        request: &'a LookupRequest,
        attempts: &'a AtomicUsize,
    ) -> impl Future<Output = Result<LookupResponse, Attempt>> + Send + 'a {
        async move {
            if let Some(limiter) = &self.limiter
                && limiter.check().is_err()
            {
                let rate = self.settings.limits.rate_per_s;
                let held = || {
                    Attempt::NotAsked(GuardError::HeldBack(format!(
                        "the broker's rate limit for this source ({rate}/s) had no slot before the deadline"
                    )))
                };
                // Waiters take their turn one at a time (a FIFO lock in front
                // of the limiter): a slot wakes one of them, not all, and a
                // caller whose turn cannot come before its deadline is told at
                // once.
                let ahead = self.rate_waiters.fetch_add(1, Ordering::AcqRel);
                let _waiting = Waiting(&self.rate_waiters);
                let turn = Duration::from_secs_f64((ahead + 1) as f64 / f64::from(rate.max(1)));
                if turn >= ctx.remaining() {
                    return Err(held());
                }
                let waiting_since = Instant::now();
                // Boxed, as the bulkhead's wait below: inline, these waits
                // (a timer, the queue's lock, the limiter's own timer) would
                // set the size of every call, which waits on neither most of
                // the time (docs/benchmarks.md, S5).
                let waited = Box::pin(tokio::time::timeout_at(ctx.deadline, async {
                    let _turn = self.rate_queue.lock().await;
                    limiter.until_ready().await;
                }))
                .await;
                crate::telemetry::metrics().rate_limit_wait.record(
                    waiting_since.elapsed().as_secs_f64(),
                    std::slice::from_ref(&self.source_attr),
                );
                waited.map_err(|_| held())?;
            }
            let busy = || {
                Attempt::NotAsked(GuardError::HeldBack(format!(
                    "all {} concurrent calls allowed to this source were busy until the deadline",
                    self.settings.limits.max_concurrent
                )))
            };
            let mut waited = false;
            let _permit = match &self.bulkhead {
                None => None,
                Some(s) => Some(match s.try_acquire() {
                    Ok(p) => p,
                    Err(_) => {
                        waited = true;
                        Box::pin(tokio::time::timeout_at(ctx.deadline, s.acquire()))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .ok_or_else(busy)?
                    }
                }),
            };
            // One clock read for the deadline and the call's start (a
            // verification makes hundreds of these calls).
            let asked = Instant::now();
            if asked >= ctx.deadline {
                return Err(if waited {
                    busy()
                } else {
                    Attempt::NotAsked(GuardError::Source(AdapterError::Timeout))
                });
            }
            attempts.fetch_add(1, Ordering::Relaxed);
            let answer = match tokio::time::timeout_at(
                ctx.deadline,
                self.adapter.lookup(ctx, request),
            )
            .await
            {
                Err(_) => Err(AdapterError::Timeout),
                Ok(r) => r,
            };
            let took = asked.elapsed();
            crate::telemetry::metrics().source_duration.record(
                took.as_secs_f64(),
                &[
                    self.source_attr.clone(),
                    opentelemetry::KeyValue::new(
                        "status",
                        match &answer {
                            Ok(_) => "answered",
                            Err(e) => status_label(crate::verify::status_of(e)),
                        },
                    ),
                ],
            );
            let answer = answer.and_then(|resp| {
                check_answer(request, &resp, &self.spec.fact_kinds).map(|()| resp)
            });
            self.health.record_call_ended(
                asked.into_std() + took,
                took,
                match &answer {
                    Ok(_) | Err(AdapterError::Rejected(_)) => health::CallOutcome::Answered,
                    Err(e) => {
                        health::CallOutcome::Failed(status_label(crate::verify::status_of(e)))
                    }
                },
            );
            answer.map_err(Attempt::Failed)
        }
    }
}

/// Whether a cached answer is young enough for a caller accepting answers
/// up to `max_age` old.
fn young_enough(hit: &Cached, max_age: Option<Duration>) -> bool {
    max_age.is_none_or(|max| {
        SystemTime::now()
            .duration_since(hit.as_of)
            .map_or(true, |age| age <= max)
    })
}

/// Peer brokers (federation) are served through the same guard: the
/// department sees one broker, with one set of limits.
#[async_trait]
impl Adapter for SourceGuard {
    fn source_id(&self) -> &str {
        &self.spec.id
    }

    async fn lookup(
        &self,
        ctx: &LookupContext,
        request: &LookupRequest,
    ) -> Result<LookupResponse, AdapterError> {
        SourceGuard::lookup(self, ctx.clone(), request, None)
            .await
            .map(|s| LookupResponse {
                answers: Arc::unwrap_or_clone(s.answers),
                as_of: s.as_of,
            })
            .map_err(GuardError::into_adapter_error)
    }

    async fn check(&self) -> Result<CheckResponse, AdapterError> {
        self.adapter.check().await
    }
}

#[cfg(test)]
mod tests;
