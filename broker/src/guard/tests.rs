//! The guard against counting adapters: calls are counted, not timed.

use std::sync::atomic::{AtomicUsize, Ordering};

use hedui_adapters::catalog::Catalog;
use hedui_proto::v1::{
    CivilDate, Fact, PersonAnswer, Purpose, Vehicle, VehicleClass, VehicleStatus, fact::Value,
};

use super::{config::Limits, *};

const A: &str = "11010519491231002X";
const B: &str = "110105194912310029";

/// What the counting source does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// One vehicle per person.
    Facts,
    /// Knows nobody.
    NoRecord,
    /// Unavailable, every time.
    Down,
    /// Never answers.
    Hang,
}

#[derive(Debug)]
struct Counting {
    behaviour: std::sync::Mutex<Behaviour>,
    calls: AtomicUsize,
    /// How long a call takes.
    delay: Duration,
}

impl Counting {
    fn new(behaviour: Behaviour, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            behaviour: std::sync::Mutex::new(behaviour),
            calls: AtomicUsize::new(0),
            delay,
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }
}

#[async_trait]
impl Adapter for Counting {
    fn source_id(&self) -> &str {
        "traffic-police"
    }

    async fn lookup(
        &self,
        _ctx: &LookupContext,
        request: &LookupRequest,
    ) -> Result<LookupResponse, AdapterError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let behaviour = *self.behaviour.lock().unwrap();
        let now = Some(crate::time::timestamp(SystemTime::now()));
        let facts = match behaviour {
            Behaviour::Down => return Err(AdapterError::Unavailable("down".into())),
            Behaviour::Hang => std::future::pending().await,
            Behaviour::NoRecord => 0,
            Behaviour::Facts => 1,
        };
        Ok(LookupResponse {
            answers: request
                .person_ids
                .iter()
                .map(|p| PersonAnswer {
                    person_id: p.clone(),
                    facts: (0..facts)
                        .map(|_| Fact {
                            record_id: format!("V-{p}"),
                            as_of: now,
                            value: Some(Value::Vehicle(Vehicle {
                                plate: "川S12345".into(),
                                vehicle_class: VehicleClass::Car as i32,
                                registration_date: Some(CivilDate {
                                    year: 2020,
                                    month: 5,
                                    day: 1,
                                }),
                                purchase_price_fen: 8_000_000,
                                status: VehicleStatus::Registered as i32,
                            })),
                        })
                        .collect(),
                })
                .collect(),
            as_of: now,
        })
    }

    async fn check(&self) -> Result<CheckResponse, AdapterError> {
        Ok(CheckResponse::default())
    }
}

fn spec() -> SourceSpec {
    Catalog::dachuan().get("traffic-police").unwrap().clone()
}

fn settings(limits: Limits) -> GuardSettings {
    GuardSettings {
        limits,
        cache: true,
        ttl: Default::default(),
        default_ttl: Duration::from_secs(600),
        no_record_ttl: Duration::from_secs(600),
        transport: "test".into(),
    }
}

fn guard(source: &Arc<Counting>, settings: GuardSettings, cache: bool) -> Arc<SourceGuard> {
    Arc::new(SourceGuard::new(
        spec(),
        source.clone(),
        settings,
        cache.then(|| AnswerCache::new(64 * 1024 * 1024)),
    ))
}

fn request(persons: &[&str]) -> LookupRequest {
    LookupRequest {
        request_id: "r".into(),
        source_id: "traffic-police".into(),
        person_ids: persons.iter().map(|p| (*p).to_owned()).collect(),
        fact_kinds: vec![hedui_proto::v1::FactKind::Vehicle as i32],
        purpose: Purpose::DibaoApplication as i32,
        consent_reference: "c".into(),
    }
}

fn ctx(ms: u64) -> LookupContext {
    LookupContext::with_timeout(Duration::from_millis(ms))
}

#[tokio::test]
async fn a_hundred_concurrent_identical_lookups_make_one_call() {
    let source = Counting::new(Behaviour::Facts, Duration::from_millis(50));
    let g = guard(&source, settings(Limits::default()), true);
    let all = futures::future::join_all((0..100).map(|i| {
        let g = g.clone();
        // The persons in either order: the same lookup.
        let persons: &[&str] = if i % 2 == 0 { &[A, B] } else { &[B, A] };
        async move { g.lookup(ctx(5000), &request(persons), None).await }
    }))
    .await;
    assert_eq!(source.calls(), 1);
    let hits = all.iter().filter(|r| r.as_ref().unwrap().cache_hit).count();
    assert_eq!(hits, 99, "one lookup made the call, the others shared it");
    // And later ones are served from the cache.
    let again = g.lookup(ctx(5000), &request(&[A, B]), None).await.unwrap();
    assert!(again.cache_hit);
    assert_eq!(again.answers.len(), 2);
    assert_eq!(source.calls(), 1);
}

/// A lookup waiting for another's answer waits no longer than its own
/// deadline: the one asking may have a later one. (The guard bounds every
/// wait itself; nothing around it adds a timer.)
#[tokio::test]
async fn a_lookup_waiting_for_another_s_answer_gives_up_at_its_own_deadline() {
    let source = Counting::new(Behaviour::Facts, Duration::from_millis(600));
    let g = guard(&source, settings(Limits::default()), true);
    let asking = {
        let g = g.clone();
        tokio::spawn(async move { g.lookup(ctx(5000), &request(&[A]), None).await })
    };
    for _ in 0..200 {
        if source.calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(source.calls(), 1);
    let waited = g.lookup(ctx(50), &request(&[A]), None).await;
    assert!(
        matches!(waited, Err(GuardError::Source(AdapterError::Timeout))),
        "{waited:?}"
    );
    // The one asking is answered, and the source was asked once.
    let served = asking.await.unwrap().expect("the first lookup is answered");
    assert!(!served.cache_hit);
    assert_eq!(source.calls(), 1);
}

#[tokio::test]
async fn a_waiting_lookup_asks_itself_when_the_one_asking_gives_up() {
    let source = Counting::new(Behaviour::Facts, Duration::from_millis(100));
    let g = guard(&source, settings(Limits::default()), true);
    let (first, second) = (request(&[A]), request(&[A]));
    let asking = {
        let g = g.clone();
        tokio::spawn(async move { g.lookup(ctx(5000), &first, None).await })
    };
    // The second lookup finds the first asking, and waits for it (bounded:
    // 2 s).
    let waiting = {
        let g = g.clone();
        tokio::spawn(async move { g.lookup(ctx(5000), &second, None).await })
    };
    for _ in 0..200 {
        if source.calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(source.calls(), 1);
    // The caller of the first goes away before the answer.
    asking.abort();
    let served = waiting
        .await
        .unwrap()
        .expect("the waiting lookup is answered");
    assert!(!served.cache_hit, "it made the call itself");
    assert_eq!(source.calls(), 2);
    assert!(g.cache.as_ref().unwrap().asking.lock().unwrap().is_empty());
}

#[tokio::test]
async fn max_age_no_record_ttl_and_change_events_send_lookups_back_to_the_source() {
    let source = Counting::new(Behaviour::Facts, Duration::ZERO);
    let mut s = settings(Limits::default());
    s.no_record_ttl = Duration::ZERO;
    let cache = AnswerCache::new(64 * 1024 * 1024);
    let g = SourceGuard::new(spec(), source.clone(), s, Some(cache.clone()));
    g.lookup(ctx(1000), &request(&[A]), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Young enough for a caller accepting a minute; not for 10 ms.
    assert!(
        g.lookup(ctx(1000), &request(&[A]), Some(Duration::from_secs(60)))
            .await
            .unwrap()
            .cache_hit
    );
    assert_eq!(source.calls(), 1);
    let fresh = g
        .lookup(ctx(1000), &request(&[A]), Some(Duration::from_millis(10)))
        .await
        .unwrap();
    assert!(!fresh.cache_hit);
    assert_eq!(source.calls(), 2);
    // A change event about A drops the answer.
    cache.invalidate_person(A);
    cache.sync();
    assert!(
        !g.lookup(ctx(1000), &request(&[A]), None)
            .await
            .unwrap()
            .cache_hit
    );
    assert_eq!(source.calls(), 3);
    // "No record" lives for no_record_ttl (zero here).
    source.set(Behaviour::NoRecord);
    for _ in 0..3 {
        let r = g.lookup(ctx(1000), &request(&[B]), None).await.unwrap();
        assert!(!r.cache_hit);
        assert!(r.answers[0].facts.is_empty());
    }
    assert_eq!(source.calls(), 6);
}

#[tokio::test]
async fn failures_are_not_cached_and_errors_are_shared() {
    let source = Counting::new(Behaviour::Down, Duration::from_millis(20));
    let mut limits = Limits::none();
    limits.breaker_failures = 0;
    let g = guard(&source, settings(limits), true);
    let all = futures::future::join_all((0..10).map(|_| {
        let g = g.clone();
        async move { g.lookup(ctx(1000), &request(&[A]), None).await }
    }))
    .await;
    assert_eq!(source.calls(), 1, "concurrent lookups share the failure");
    for r in all {
        assert_eq!(r.unwrap_err().status(), SourceStatus::Unavailable);
    }
    source.set(Behaviour::Facts);
    assert!(g.lookup(ctx(1000), &request(&[A]), None).await.is_ok());
    assert_eq!(source.calls(), 2, "the failure was not cached");
}

#[tokio::test]
async fn a_failing_source_sees_at_most_a_fifth_more_calls() {
    let source = Counting::new(Behaviour::Down, Duration::ZERO);
    let limits = Limits {
        breaker_failures: 0,
        max_retries: 3,
        retry_backoff_ms: 0,
        ..Limits::default()
    };
    let g = guard(&source, settings(limits), false);
    for i in 0..500 {
        let persons = [if i % 2 == 0 { A } else { B }];
        let e = g.lookup(ctx(1000), &request(&persons), None).await;
        assert_eq!(e.unwrap_err().status(), SourceStatus::Unavailable);
    }
    let calls = source.calls();
    assert!(calls > 500, "retries were made: {calls}");
    assert!(calls <= 600, "{calls} calls for 500 lookups");
}

#[tokio::test]
async fn an_open_breaker_lets_one_probe_through_per_interval() {
    let source = Counting::new(Behaviour::Down, Duration::ZERO);
    let mut limits = Limits::none();
    limits.breaker_failures = 3;
    limits.breaker_open_ms = 300;
    let g = guard(&source, settings(limits), false);
    for _ in 0..3 {
        let e = g.lookup(ctx(1000), &request(&[A]), None).await.unwrap_err();
        assert_eq!(e.status(), SourceStatus::Unavailable);
    }
    assert_eq!(source.calls(), 3);
    // Open: refused at once, no call.
    for _ in 0..50 {
        let e = g.lookup(ctx(1000), &request(&[A]), None).await.unwrap_err();
        assert_eq!(e.status(), SourceStatus::CircuitOpen, "{e}");
    }
    assert_eq!(source.calls(), 3);
    // After the interval: concurrent lookups, one probe.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let all = futures::future::join_all((0..20).map(|_| {
        let g = g.clone();
        async move { g.lookup(ctx(1000), &request(&[A]), None).await }
    }))
    .await;
    assert_eq!(source.calls(), 4, "one probe");
    assert_eq!(
        all.iter()
            .filter(|r| r.as_ref().unwrap_err().status() == SourceStatus::CircuitOpen)
            .count(),
        19
    );
    // The source recovers; the next probe closes the breaker.
    source.set(Behaviour::Facts);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(g.lookup(ctx(1000), &request(&[A]), None).await.is_ok());
    assert!(g.lookup(ctx(1000), &request(&[B]), None).await.is_ok());
    assert_eq!(g.breaker_state(), BreakerState::Closed);
    assert_eq!(source.calls(), 6);
}

#[tokio::test]
async fn the_rate_limit_holds_back_what_it_cannot_serve_before_the_deadline() {
    let source = Counting::new(Behaviour::Facts, Duration::ZERO);
    let mut limits = Limits::none();
    limits.rate_per_s = 2;
    limits.burst = 1;
    let g = guard(&source, settings(limits), false);
    let started = Instant::now();
    let all = futures::future::join_all((0..5).map(|_| {
        let g = g.clone();
        async move { g.lookup(ctx(100), &request(&[A]), None).await }
    }))
    .await;
    assert_eq!(source.calls(), 1, "one slot per 500 ms");
    let held: Vec<_> = all.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(held.len(), 4);
    for e in held {
        assert_eq!(e.status(), SourceStatus::RateLimited);
        assert!(e.to_string().contains("rate limit"), "{e}");
    }
    // Refused at once, not after waiting out the deadline.
    assert!(started.elapsed() < Duration::from_millis(100));
    // A caller with time to wait gets the next slot.
    let r = g.lookup(ctx(2000), &request(&[A]), None).await;
    assert!(r.is_ok());
    assert_eq!(source.calls(), 2);
}

#[tokio::test]
async fn the_bulkhead_caps_calls_in_flight() {
    let source = Counting::new(Behaviour::Hang, Duration::ZERO);
    let mut limits = Limits::none();
    limits.max_concurrent = 2;
    let g = guard(&source, settings(limits), false);
    let all = futures::future::join_all((0..5).map(|_| {
        let g = g.clone();
        async move { g.lookup(ctx(200), &request(&[A]), None).await }
    }))
    .await;
    let statuses: Vec<_> = all
        .iter()
        .map(|r| r.as_ref().unwrap_err().status())
        .collect();
    assert_eq!(source.calls(), 2, "{all:?}");
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == SourceStatus::Timeout)
            .count(),
        2
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == SourceStatus::RateLimited)
            .count(),
        3
    );
}

#[tokio::test]
async fn the_cache_stays_within_its_bytes() {
    let source = Counting::new(Behaviour::Facts, Duration::ZERO);
    let cache = AnswerCache::new(20_000);
    let g = SourceGuard::new(
        spec(),
        source.clone(),
        settings(Limits::none()),
        Some(cache.clone()),
    );
    let ids = hedui_mock_agencies::population::Population::generate(
        &hedui_mock_agencies::population::PopulationConfig {
            seed: 1,
            households: 200,
            today: chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        },
    )
    .households()
    .map(|h| h.applicant().id().to_owned())
    .collect::<Vec<_>>();
    for id in &ids {
        g.lookup(ctx(1000), &request(&[id.as_str()]), None)
            .await
            .unwrap();
    }
    cache.sync();
    assert!(cache.weighted_size() <= 20_000, "{}", cache.weighted_size());
    assert!(cache.entry_count() > 10);
    assert!(cache.entry_count() < ids.len() as u64);
}

#[tokio::test]
async fn peers_are_served_through_the_same_guard() {
    let source = Counting::new(Behaviour::Facts, Duration::ZERO);
    let g = guard(&source, settings(Limits::default()), true);
    let adapter: Arc<dyn Adapter> = g.clone();
    adapter.lookup(&ctx(1000), &request(&[A])).await.unwrap();
    adapter.lookup(&ctx(1000), &request(&[A])).await.unwrap();
    assert_eq!(source.calls(), 1);
}

/// Every source call in flight holds a lookup future; the call and the
/// cache's states are boxed so that they do not set its size, and the
/// request is borrowed, not held twice.
/// With the cache inline it was 3,528 bytes in the test profile, 1,200 with
/// it boxed and the call inline, 248 as an `async fn` with a second span
/// and a copy of the context, 160 now (rustc 1.95).
#[test]
fn a_lookup_future_carries_neither_the_call_nor_the_cache_inline() {
    let source = Counting::new(Behaviour::Facts, Duration::ZERO);
    let g = guard(&source, settings(Limits::default()), true);
    let (c, r) = (ctx(1000), request(&[A]));
    let lookup = g.lookup(c, &r, None);
    let size = std::mem::size_of_val(&lookup);
    println!("the guard's lookup future: {size} bytes");
    assert!(size <= 192, "a lookup future is {size} bytes");
}

/// A source call waits in the guard's boxed call: the waits it seldom
/// makes (for the rate limit, for the bulkhead) are boxed apart, so the
/// call is about its attempt's timer and the adapter's boxed future: 256
/// bytes (rustc 1.95; a jemalloc size class), 304 with the retry's timer
/// inline, 368 when `call` and `attempt` were `async fn`s holding their
/// arguments twice, 592 with the waits inline.
#[test]
fn a_call_does_not_carry_its_rare_waits_inline() {
    let source = Counting::new(Behaviour::Facts, Duration::ZERO);
    let g = guard(&source, settings(Limits::default()), false);
    let (c, r, attempts) = (ctx(1000), request(&[A]), AtomicUsize::new(0));
    let call = g.call(&c, &r, &attempts);
    let size = std::mem::size_of_val(&call);
    println!("the guard's call future: {size} bytes");
    assert!(size <= 256, "a call future is {size} bytes");
}

#[test]
fn cache_keys_ignore_order_and_keep_parts_apart() {
    let key = |source: &str, persons: &[&str], kinds: &[i32]| {
        CacheKey::of(&LookupRequest {
            source_id: source.into(),
            person_ids: persons.iter().map(|p| (*p).to_owned()).collect(),
            fact_kinds: kinds.to_vec(),
            ..request(&[])
        })
    };
    assert_eq!(key("s", &[A, B], &[3, 1]), key("s", &[B, A], &[1, 3]));
    // Each part is where its length says: no two splits of the same
    // characters meet.
    assert_ne!(key("s", &["ab", "c"], &[1]), key("s", &["a", "bc"], &[1]));
    assert_ne!(key("sa", &["b"], &[1]), key("s", &["ab"], &[1]));
    assert_ne!(key("s", &[A], &[1]), key("s", &[A, ""], &[1]));
    assert_ne!(key("s", &[A], &[1]), key("s", &[A], &[1, 2]));
    assert_ne!(key("s", &[A], &[1]), key("t", &[A], &[1]));
    // The persons are found again, the source id and the kinds are not
    // persons.
    let k = key("s", &[B, "", A], &[1]);
    assert!(k.is_about(A) && k.is_about(B) && k.is_about(""));
    assert!(!k.is_about("s") && !k.is_about("1101051949"));
    assert!(!key("s", &[A], &[1]).is_about(""));
}
