//! The `[cache]` and `[limits]` sections: how long answers are reused and
//! how hard each department may be asked.
//!
//! ```toml
//! [cache]
//! enabled = true
//! max_bytes = 268435456        # memory bound of the cached answers
//! ttl_s = 600                  # an answer with facts is reused this long
//! no_record_ttl_s = 60         # a "no record" answer, this long
//! [cache.kind_ttl_s]           # per fact kind (the shortest kind of an
//! FINANCIAL_ACCOUNT = 300      # answer decides its time to live)
//! [cache.sources.second-bank]  # per source
//! ttl_s = 3600
//!
//! [limits.default]             # every source, unless its own say otherwise
//! rate_per_s = 100             # calls per second; absent: no rate limit (0 is refused)
//! burst = 0                    # calls at once above the rate; 0 = rate_per_s
//! max_concurrent = 64          # calls in flight; 0 = no cap
//! breaker_failures = 5         # consecutive failed lookups that open the breaker; 0 = never
//! breaker_open_ms = 30000      # how long it stays open before one probe
//! max_retries = 1              # retries of a retryable failure per lookup
//! retry_budget = 0.2           # retries at most this share of first calls
//! retry_backoff_ms = 50
//! late_deadline_ms = 0         # wait beyond the request's deadline; 0 = never
//! [limits.sources.rural-bank]
//! rate_per_s = 5
//! max_concurrent = 4
//! late_deadline_ms = 14400000  # answers in batches: the report completes within 4 h
//! ```

use std::{collections::BTreeMap, time::Duration};

use hedui_proto::v1::FactKind;
use serde::Deserialize;

/// The `[cache]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether answers are reused at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Bound of the cached answers' size (their protobuf encoding), bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Time to live of an answer with facts, seconds.
    #[serde(default = "default_ttl_s")]
    pub ttl_s: u64,
    /// Time to live of a "no record" answer, seconds.
    #[serde(default = "default_no_record_ttl_s")]
    pub no_record_ttl_s: u64,
    /// Time to live per fact kind (`VEHICLE = 3600`), seconds.
    #[serde(default)]
    pub kind_ttl_s: BTreeMap<String, u64>,
    /// Per source overrides, by source id.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceCacheConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: default_max_bytes(),
            ttl_s: default_ttl_s(),
            no_record_ttl_s: default_no_record_ttl_s(),
            kind_ttl_s: BTreeMap::new(),
            sources: BTreeMap::new(),
        }
    }
}

/// A source's own cache settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCacheConfig {
    /// Whether this source's answers are reused.
    pub enabled: Option<bool>,
    /// Time to live of an answer with facts, seconds.
    pub ttl_s: Option<u64>,
    /// Time to live of a "no record" answer, seconds.
    pub no_record_ttl_s: Option<u64>,
}

fn yes() -> bool {
    true
}
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_ttl_s() -> u64 {
    600
}
fn default_no_record_ttl_s() -> u64 {
    60
}

/// Limits of one source, all set. `[limits]` gives every source's; its
/// `sources` table overrides them per source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Calls per second; 0 (the value when the key is absent) means no
    /// rate limit. Written as 0 it is refused: it would let no call
    /// through.
    #[serde(default, deserialize_with = "positive_rate")]
    pub rate_per_s: u32,
    /// Calls allowed at once above the rate; 0 = `rate_per_s`. The rate
    /// holds over any longer stretch whatever the burst; with a burst of
    /// 1, each call waits for a millisecond timer, which paces fast
    /// sources below their rate (400/s becomes about 333/s).
    #[serde(default)]
    pub burst: u32,
    /// Calls in flight at once; 0 = no cap.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// Consecutive failed lookups that open the breaker; 0 = never opens.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before it lets one probe through,
    /// milliseconds.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// Retries of a retryable failure (unavailable, rate limited) per
    /// lookup.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Retries are at most this share of first calls (0 to 1).
    #[serde(default = "default_retry_budget")]
    pub retry_budget: f64,
    /// Wait before a retry, milliseconds.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// How long after a verification starts the broker keeps waiting for
    /// this source when the request's deadline passes first: the report
    /// returns with the source `PENDING` and is completed when it answers.
    /// 0 = no waiting beyond the request's deadline (`TIMEOUT`).
    /// Milliseconds, at most 7 days.
    #[serde(default)]
    pub late_deadline_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate_per_s: 0,
            burst: 0,
            max_concurrent: default_max_concurrent(),
            breaker_failures: default_breaker_failures(),
            breaker_open_ms: default_breaker_open_ms(),
            max_retries: default_max_retries(),
            retry_budget: default_retry_budget(),
            retry_backoff_ms: default_retry_backoff_ms(),
            late_deadline_ms: 0,
        }
    }
}

impl Limits {
    /// No limit at all: no rate, no cap, no breaker, no retries.
    pub fn none() -> Self {
        Self {
            rate_per_s: 0,
            burst: 0,
            max_concurrent: 0,
            breaker_failures: 0,
            breaker_open_ms: default_breaker_open_ms(),
            max_retries: 0,
            retry_budget: 0.0,
            retry_backoff_ms: 0,
            late_deadline_ms: 0,
        }
    }

    /// How long the breaker stays open.
    pub fn breaker_open(&self) -> Duration {
        Duration::from_millis(self.breaker_open_ms)
    }
}

/// Longest a source may be waited for: 7 days.
pub const MAX_LATE_DEADLINE_MS: u64 = 7 * 24 * 3600 * 1000;

fn default_max_concurrent() -> u32 {
    64
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    30_000
}
fn default_max_retries() -> u32 {
    1
}
fn default_retry_budget() -> f64 {
    0.2
}
fn default_retry_backoff_ms() -> u64 {
    50
}

const ZERO_RATE: &str =
    "a rate of 0 would let no call through; leave rate_per_s out for no rate limit";

fn positive_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match <u32 as serde::Deserialize>::deserialize(d)? {
        0 => Err(serde::de::Error::custom(ZERO_RATE)),
        rate => Ok(rate),
    }
}

fn positive_rate_override<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    positive_rate(d).map(Some)
}

/// A source's own limits: any key of [`Limits`], the rest from
/// `[limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    /// See [`Limits::rate_per_s`].
    #[serde(default, deserialize_with = "positive_rate_override")]
    pub rate_per_s: Option<u32>,
    /// See [`Limits::burst`].
    pub burst: Option<u32>,
    /// See [`Limits::max_concurrent`].
    pub max_concurrent: Option<u32>,
    /// See [`Limits::breaker_failures`].
    pub breaker_failures: Option<u32>,
    /// See [`Limits::breaker_open_ms`].
    pub breaker_open_ms: Option<u64>,
    /// See [`Limits::max_retries`].
    pub max_retries: Option<u32>,
    /// See [`Limits::retry_budget`].
    pub retry_budget: Option<f64>,
    /// See [`Limits::retry_backoff_ms`].
    pub retry_backoff_ms: Option<u64>,
    /// See [`Limits::late_deadline_ms`].
    pub late_deadline_ms: Option<u64>,
}

/// The `[limits]` section: every source's limits and per-source
/// overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Every source's limits (`[limits.default]`).
    #[serde(default)]
    pub default: Limits,
    /// Per source overrides, by source id.
    #[serde(default)]
    pub sources: BTreeMap<String, LimitsOverride>,
}

/// Everything a source's guard needs to know, resolved for one source.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardSettings {
    /// Limits.
    pub limits: Limits,
    /// Whether its answers are reused.
    pub cache: bool,
    /// Time to live of an answer with facts, per fact kind it reports.
    pub ttl: BTreeMap<FactKind, Duration>,
    /// Time to live of an answer with facts, for kinds not in `ttl`.
    pub default_ttl: Duration,
    /// Time to live of a "no record" answer.
    pub no_record_ttl: Duration,
    /// The transport that reaches the source (`grpc`, `simulated`, ...),
    /// for its spans.
    pub transport: String,
}

impl GuardSettings {
    /// No cache, no limits: every lookup goes to the source.
    pub fn unguarded() -> Self {
        Self {
            limits: Limits::none(),
            cache: false,
            ttl: BTreeMap::new(),
            default_ttl: Duration::ZERO,
            no_record_ttl: Duration::ZERO,
            transport: String::new(),
        }
    }

    /// The time to live of an answer holding facts of `kinds`: the
    /// shortest of theirs; "no record" when there are none.
    pub fn ttl_of(&self, kinds: impl IntoIterator<Item = FactKind>) -> Duration {
        kinds
            .into_iter()
            .map(|k| self.ttl.get(&k).copied().unwrap_or(self.default_ttl))
            .min()
            .unwrap_or(self.no_record_ttl)
    }
}

fn kind_of(name: &str) -> Option<FactKind> {
    FactKind::from_str_name(&format!("FACT_KIND_{name}"))
        .or_else(|| FactKind::from_str_name(name))
        .filter(|k| *k != FactKind::Unspecified)
}

/// Checks both sections against the configured source ids.
///
/// # Errors
/// A message naming the key and what is allowed.
pub fn validate(
    cache: &CacheConfig,
    limits: &LimitsConfig,
    source_ids: &[String],
) -> Result<(), String> {
    let known = |section: &str, id: &str| -> Result<(), String> {
        if source_ids.iter().any(|s| s == id) {
            Ok(())
        } else {
            Err(format!(
                "{section}.sources.{id}: not a configured source; configured: {}",
                source_ids.join(", ")
            ))
        }
    };
    if cache.enabled && cache.max_bytes < 1024 * 1024 {
        return Err(format!(
            "cache.max_bytes: {} is below 1 MiB (1048576); set cache.enabled = false to turn the cache off",
            cache.max_bytes
        ));
    }
    for name in cache.kind_ttl_s.keys() {
        if kind_of(name).is_none() {
            return Err(format!(
                "cache.kind_ttl_s.{name}: not a fact kind (e.g. VEHICLE, FINANCIAL_ACCOUNT)"
            ));
        }
    }
    for id in cache.sources.keys() {
        known("cache", id)?;
    }
    check_limits("limits.default", &limits.default)?;
    for (id, o) in &limits.sources {
        known("limits", id)?;
        check_limits(&format!("limits.sources.{id}"), &merge(&limits.default, o))?;
    }
    Ok(())
}

fn check_limits(at: &str, l: &Limits) -> Result<(), String> {
    if !(0.0..=1.0).contains(&l.retry_budget) || l.retry_budget.is_nan() {
        return Err(format!(
            "{at}.retry_budget: {} is not a share between 0 and 1",
            l.retry_budget
        ));
    }
    if l.breaker_failures > 0 && l.breaker_open_ms == 0 {
        return Err(format!(
            "{at}.breaker_open_ms: must be > 0 while breaker_failures is set"
        ));
    }
    if l.late_deadline_ms > MAX_LATE_DEADLINE_MS {
        return Err(format!(
            "{at}.late_deadline_ms: {} is more than 7 days ({MAX_LATE_DEADLINE_MS})",
            l.late_deadline_ms
        ));
    }
    if l.burst > 0 && l.rate_per_s == 0 {
        return Err(format!("{at}.burst: needs rate_per_s > 0"));
    }
    Ok(())
}

fn merge(all: &Limits, o: &LimitsOverride) -> Limits {
    Limits {
        rate_per_s: o.rate_per_s.unwrap_or(all.rate_per_s),
        burst: o.burst.unwrap_or(all.burst),
        max_concurrent: o.max_concurrent.unwrap_or(all.max_concurrent),
        breaker_failures: o.breaker_failures.unwrap_or(all.breaker_failures),
        breaker_open_ms: o.breaker_open_ms.unwrap_or(all.breaker_open_ms),
        max_retries: o.max_retries.unwrap_or(all.max_retries),
        retry_budget: o.retry_budget.unwrap_or(all.retry_budget),
        retry_backoff_ms: o.retry_backoff_ms.unwrap_or(all.retry_backoff_ms),
        late_deadline_ms: o.late_deadline_ms.unwrap_or(all.late_deadline_ms),
    }
}

/// The settings of source `id` (reporting `kinds`), from both sections.
pub fn settings_for(
    cache: &CacheConfig,
    limits: &LimitsConfig,
    id: &str,
    kinds: &[FactKind],
) -> GuardSettings {
    let own = cache.sources.get(id).cloned().unwrap_or_default();
    let default_ttl = Duration::from_secs(own.ttl_s.unwrap_or(cache.ttl_s));
    let ttl = kinds
        .iter()
        .filter_map(|k| {
            let name = k.as_str_name().trim_start_matches("FACT_KIND_");
            cache
                .kind_ttl_s
                .get(name)
                .map(|s| (*k, Duration::from_secs(*s).min(default_ttl)))
        })
        .collect();
    GuardSettings {
        transport: String::new(),
        limits: limits
            .sources
            .get(id)
            .map_or_else(|| limits.default.clone(), |o| merge(&limits.default, o)),
        cache: cache.enabled && own.enabled.unwrap_or(true),
        ttl,
        default_ttl,
        no_record_ttl: Duration::from_secs(own.no_record_ttl_s.unwrap_or(cache.no_record_ttl_s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(text: &str) -> T {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_source_overrides_what_it_names_and_inherits_the_rest() {
        let limits: LimitsConfig = parse(
            "[default]\nrate_per_s = 100\nmax_concurrent = 8\n[sources.rural-bank]\nrate_per_s = 5\n",
        );
        let cache: CacheConfig = parse(
            "ttl_s = 900\n[kind_ttl_s]\nFINANCIAL_ACCOUNT = 300\n[sources.rural-bank]\nno_record_ttl_s = 5\n",
        );
        let ids = vec!["rural-bank".to_owned(), "traffic-police".to_owned()];
        validate(&cache, &limits, &ids).unwrap();
        let s = settings_for(
            &cache,
            &limits,
            "rural-bank",
            &[FactKind::FinancialAccount, FactKind::AccountOutflow],
        );
        assert_eq!(s.limits.rate_per_s, 5);
        assert_eq!(s.limits.max_concurrent, 8);
        assert_eq!(s.no_record_ttl, Duration::from_secs(5));
        assert_eq!(
            s.ttl_of([FactKind::FinancialAccount, FactKind::AccountOutflow]),
            Duration::from_secs(300)
        );
        assert_eq!(
            s.ttl_of([FactKind::AccountOutflow]),
            Duration::from_secs(900)
        );
        assert_eq!(s.ttl_of([]), Duration::from_secs(5));
        let t = settings_for(&cache, &limits, "traffic-police", &[FactKind::Vehicle]);
        assert_eq!(t.limits.rate_per_s, 100);
        assert_eq!(t.no_record_ttl, Duration::from_secs(60));
    }

    #[test]
    fn wrong_settings_are_named() {
        let ids = vec!["traffic-police".to_owned()];
        let e = validate(
            &parse("[sources.nobody]\nttl_s = 1\n"),
            &LimitsConfig::default(),
            &ids,
        )
        .unwrap_err();
        assert!(
            e.starts_with("cache.sources.nobody: not a configured source"),
            "{e}"
        );
        let e = validate(
            &parse("[kind_ttl_s]\nCARS = 1\n"),
            &LimitsConfig::default(),
            &ids,
        )
        .unwrap_err();
        assert!(e.starts_with("cache.kind_ttl_s.CARS"), "{e}");
        let e = validate(
            &CacheConfig::default(),
            &parse("[sources.traffic-police]\nretry_budget = 1.5\n"),
            &ids,
        )
        .unwrap_err();
        assert!(
            e.starts_with("limits.sources.traffic-police.retry_budget"),
            "{e}"
        );
        let e = validate(
            &CacheConfig::default(),
            &parse("[default]\nburst = 3\n"),
            &ids,
        )
        .unwrap_err();
        assert!(e.starts_with("limits.default.burst"), "{e}");
        let e = toml::from_str::<LimitsConfig>("[default]\nrate = 3\n").unwrap_err();
        assert!(e.to_string().contains("rate"), "{e}");
    }
}
