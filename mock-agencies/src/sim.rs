//! Simulated sources: each of the 28 sources as an [`Adapter`] over a shared
//! [`Population`], with log-normal latency and injectable faults that can be
//! changed while it runs, and counters of what it was asked.
//!
//! The transport `simulated` ([`SimulatedFactory`]) builds them from the
//! broker's configuration:
//! ```toml
//! [sources.transport]
//! type = "simulated"
//! seed = 2018              # optional, default 2018
//! households = 3000        # optional, default 3000
//! today = "2026-11-23"     # optional, default today in China time
//! latency_p50_ms = 40      # optional, default the source's own profile
//! latency_p99_ms = 200     # optional
//! error_rate = 0.0         # optional share of lookups that fail
//! timeout_rate = 0.0       # optional share of lookups that hang
//! outage = false           # optional: every lookup is UNAVAILABLE
//! hang = false             # optional: every lookup hangs
//! hang_persons = []        # optional: lookups about these persons hang
//! malformed_rate = 0.0     # optional share of answers that break the contract
//! oversized_rate = 0.0     # optional share of answers too large to accept
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chrono::NaiveDate;
use hedui_adapters::{
    Adapter, AdapterError, LookupContext,
    catalog::{Catalog, SourceSpec},
    registry::{AdapterFactory, BuildError, parse_params},
};
use hedui_proto::v1::{
    CheckResponse, Dwelling, Fact, FactKind, LookupRequest, LookupResponse, PersonAnswer, Vehicle,
    fact::Value,
};
use serde::Deserialize;

use crate::population::{DEFAULT_HOUSEHOLDS, DEFAULT_SEED, Population, PopulationConfig};

/// Largest number of households the `simulated` transport accepts.
pub const MAX_HOUSEHOLDS: usize = 2_000_000;

// === LatencyConfig ===

/// The answer time of a simulated source: log-normal with median `p50_ms`
/// and 99th percentile `p99_ms`. A zero median means no delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencyConfig {
    /// Median answer time in milliseconds.
    pub p50_ms: u64,
    /// 99th percentile in milliseconds (not below `p50_ms`).
    pub p99_ms: u64,
}

/// The standard normal quantile of 0.99.
const Z99: f64 = 2.326_347_874;

impl LatencyConfig {
    /// No delay at all.
    pub const ZERO: LatencyConfig = LatencyConfig {
        p50_ms: 0,
        p99_ms: 0,
    };

    /// A latency with this median and 99th percentile.
    pub fn new(p50_ms: u64, p99_ms: u64) -> Self {
        LatencyConfig { p50_ms, p99_ms }
    }

    /// The demo's profile of a source: the household register answers in
    /// a few milliseconds, most departments in tens, the bank in about a
    /// tenth of a second with a long tail.
    pub fn realistic(source_id: &str) -> Self {
        let (p50, p99) = match source_id {
            "public-security" => (5, 30),
            "civil-affairs" | "disabled-federation" => (10, 60),
            "financial-bureau"
            | "education"
            | "benefit-center"
            | "trade-unions"
            | "health-commission"
            | "womens-federation"
            | "justice"
            | "youth-league"
            | "red-cross"
            | "party-work-committee" => (15, 80),
            "employment" | "commerce" | "forestry" | "agriculture" => (20, 100),
            "provident-fund" | "medical-insurance" => (25, 120),
            "transport" | "social-insurance" | "market-supervision" => (30, 150),
            "local-tax" => (35, 180),
            "traffic-police" => (40, 250),
            "housing-management" => (45, 250),
            "state-tax" => (50, 250),
            "finance-office" => (60, 300),
            "rural-commercial-bank" => (80, 400),
            _ => (30, 150),
        };
        LatencyConfig::new(p50, p99)
    }

    /// Whether the latency adds no delay.
    pub fn is_zero(&self) -> bool {
        self.p50_ms == 0
    }

    /// Checks that the 99th percentile is not below the median.
    ///
    /// # Errors
    /// A message naming `p99_ms`.
    pub fn validate(&self) -> Result<(), String> {
        if self.p99_ms < self.p50_ms {
            return Err(format!(
                "p99_ms: {} is below p50_ms {}",
                self.p99_ms, self.p50_ms
            ));
        }
        Ok(())
    }

    /// The delay for two uniform draws in `[0, 1)` (Box–Muller), capped at
    /// ten times the 99th percentile.
    pub fn sample(&self, u1: f64, u2: f64) -> Duration {
        if self.is_zero() {
            return Duration::ZERO;
        }
        let p50 = self.p50_ms as f64;
        let p99 = (self.p99_ms.max(self.p50_ms)) as f64;
        let sigma = (p99 / p50).ln() / Z99;
        let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let ms = (p50.ln() + sigma * z).exp().min(p99 * 10.0);
        Duration::from_secs_f64(ms / 1_000.0)
    }
}

/// Which latency every source gets unless configured otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatencyProfile {
    /// No delay anywhere (tests).
    Zero,
    /// Each source's [`LatencyConfig::realistic`] (demos).
    #[default]
    Realistic,
}

impl LatencyProfile {
    /// The latency of `source_id` under this profile.
    pub fn latency(self, source_id: &str) -> LatencyConfig {
        match self {
            LatencyProfile::Zero => LatencyConfig::ZERO,
            LatencyProfile::Realistic => LatencyConfig::realistic(source_id),
        }
    }
}

impl FromStr for LatencyProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zero" => Ok(LatencyProfile::Zero),
            "realistic" => Ok(LatencyProfile::Realistic),
            other => Err(format!(
                "unknown latency profile {other:?}; expected zero or realistic"
            )),
        }
    }
}

// === FaultConfig ===

/// The faults a simulated source injects. Rates are probabilities from 0 to
/// 1, drawn for every lookup.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultConfig {
    /// Share of lookups that fail with an internal error.
    pub error_rate: f64,
    /// Share of lookups that hang until the caller's deadline.
    pub timeout_rate: f64,
    /// Every lookup fails as unavailable, and the health check says so.
    pub outage: bool,
    /// Every lookup hangs until the caller's deadline.
    pub hang: bool,
    /// Lookups asking about any of these persons hang.
    pub hang_persons: BTreeSet<String>,
    /// Share of answers that violate the adapter contract.
    pub malformed_rate: f64,
    /// Share of answers that are well formed but too large to accept: tens
    /// of thousands of facts about one person, or more bytes than the
    /// broker takes from a source (`hedui_adapters::grpc::MAX_ANSWER_BYTES`).
    pub oversized_rate: f64,
}

impl FaultConfig {
    /// No fault.
    pub fn none() -> Self {
        FaultConfig::default()
    }

    /// Whether no fault is configured.
    pub fn is_none(&self) -> bool {
        *self == FaultConfig::default()
    }

    /// Checks that every rate is between 0 and 1.
    ///
    /// # Errors
    /// A message naming the first wrong field, e.g.
    /// `error_rate: must be between 0 and 1, got 1.5`.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("malformed_rate", self.malformed_rate),
            ("oversized_rate", self.oversized_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name}: must be between 0 and 1, got {v}"));
            }
        }
        Ok(())
    }

    /// Adds one fault written as on the command line: `hang`, `outage`,
    /// `error:RATE`, `timeout:RATE`, `malformed:RATE` or `oversized:RATE`.
    ///
    /// # Errors
    /// A message saying what is wrong with `spec`.
    pub fn apply_spec(&mut self, spec: &str) -> Result<(), String> {
        let (name, rate) = match spec.split_once(':') {
            Some((n, r)) => (n, Some(r)),
            None => (spec, None),
        };
        let parse_rate = |r: Option<&str>| -> Result<f64, String> {
            let r = r.ok_or_else(|| format!("{name} needs a rate, e.g. {name}:0.2"))?;
            let v: f64 = r
                .parse()
                .map_err(|_| format!("rate {r:?} is not a number"))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("rate {v} must be between 0 and 1"));
            }
            Ok(v)
        };
        match (name, rate) {
            ("hang", None) => self.hang = true,
            ("outage", None) => self.outage = true,
            ("hang" | "outage", Some(_)) => return Err(format!("{name} takes no rate")),
            ("error", r) => self.error_rate = parse_rate(r)?,
            ("timeout", r) => self.timeout_rate = parse_rate(r)?,
            ("malformed", r) => self.malformed_rate = parse_rate(r)?,
            ("oversized", r) => self.oversized_rate = parse_rate(r)?,
            (other, _) => {
                return Err(format!(
                    "unknown fault {other:?}; expected hang, outage, error:RATE, timeout:RATE, malformed:RATE or oversized:RATE"
                ));
            }
        }
        Ok(())
    }
}

// === SourceControl ===

/// The counters of a simulated source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceStats {
    /// The source's id.
    pub source_id: String,
    /// Lookups received, whatever their outcome.
    pub lookups: u64,
    /// Persons asked about in them (each person once per lookup).
    pub persons: u64,
    /// Lookups that ended in an injected fault or ran out of time.
    pub failures: u64,
}

#[derive(Debug, Clone)]
struct Behaviour {
    latency: LatencyConfig,
    faults: FaultConfig,
}

/// The live handle of one simulated source: its latency and faults, which
/// can be changed while it serves, and its counters.
pub struct SourceControl {
    source_id: String,
    behaviour: RwLock<Behaviour>,
    lookups: AtomicU64,
    persons: AtomicU64,
    failures: AtomicU64,
    /// Position in the source's own stream of random draws.
    draws: AtomicU64,
    /// Seed of that stream, from the source id.
    seed: u64,
    /// Bumped whenever the faults change, so that hanging lookups look
    /// again (a hang lifted lets them answer: the department answers late).
    changes: tokio::sync::watch::Sender<u64>,
    /// What changed at the source while it runs.
    overlay: crate::changes::Overlay,
}

impl fmt::Debug for SourceControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceControl")
            .field("source_id", &self.source_id)
            .field("latency", &self.latency())
            .field("faults", &self.faults())
            .field("stats", &self.stats())
            .finish()
    }
}

/// SplitMix64: a small, good mixing function for the per-source draws.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl SourceControl {
    /// A handle with this latency, no faults and zero counters.
    pub fn new(source_id: &str, latency: LatencyConfig) -> Self {
        SourceControl {
            source_id: source_id.to_owned(),
            behaviour: RwLock::new(Behaviour {
                latency,
                faults: FaultConfig::none(),
            }),
            lookups: AtomicU64::new(0),
            persons: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            draws: AtomicU64::new(0),
            seed: fnv1a(source_id),
            changes: tokio::sync::watch::Sender::new(0),
            overlay: crate::changes::Overlay::default(),
        }
    }

    /// The source's id.
    pub fn source_id(&self) -> &str {
        &self.source_id
    }

    /// The counters now.
    pub fn stats(&self) -> SourceStats {
        SourceStats {
            source_id: self.source_id.clone(),
            lookups: self.lookups.load(Ordering::Relaxed),
            persons: self.persons.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Sets the counters back to zero.
    pub fn reset_stats(&self) {
        self.lookups.store(0, Ordering::Relaxed);
        self.persons.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }

    fn behaviour(&self) -> Behaviour {
        self.behaviour
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The faults in force.
    pub fn faults(&self) -> FaultConfig {
        self.behaviour().faults
    }

    /// The latency in force.
    pub fn latency(&self) -> LatencyConfig {
        self.behaviour().latency
    }

    /// Replaces the faults; lookups already under way keep the old ones,
    /// except that a lookup hanging answers once its hang is lifted.
    ///
    /// # Errors
    /// A message naming a rate outside 0 to 1; nothing is changed then.
    pub fn set_faults(&self, faults: FaultConfig) -> Result<(), String> {
        faults.validate()?;
        self.behaviour
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .faults = faults;
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Replaces the latency.
    ///
    /// # Errors
    /// A message naming `p99_ms` when it is below the median.
    pub fn set_latency(&self, latency: LatencyConfig) -> Result<(), String> {
        latency.validate()?;
        self.behaviour
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .latency = latency;
        Ok(())
    }

    /// The next uniform draw in `[0, 1)` of the source's stream.
    fn draw(&self) -> f64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        (splitmix64(self.seed ^ splitmix64(n)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

// === SimulatedAgencies ===

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No simulated source has this id.
    #[error("source_id: {id:?} is not simulated here; simulated: {known}")]
    UnknownSource {
        /// The id asked for.
        id: String,
        /// The ids simulated, comma separated.
        known: String,
    },
    /// A field is out of range; the message names it.
    #[error("{0}")]
    Invalid(String),
}

/// The simulated sources of a process, by id, in the order they were
/// built: the handle through which tests, the demo and the control service
/// read counters and inject faults.
#[derive(Debug, Clone)]
pub struct SimulatedAgencies {
    sources: Arc<RwLock<Vec<Arc<SourceControl>>>>,
    events: tokio::sync::broadcast::Sender<hedui_proto::v1::ChangeEvent>,
}

impl Default for SimulatedAgencies {
    fn default() -> Self {
        Self {
            sources: Arc::default(),
            events: tokio::sync::broadcast::Sender::new(1024),
        }
    }
}

impl SimulatedAgencies {
    /// An empty registry.
    pub fn new() -> Self {
        SimulatedAgencies::default()
    }

    /// The change events of these sources, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<hedui_proto::v1::ChangeEvent> {
        self.events.subscribe()
    }

    /// Makes a change happen to `person_id` at the source that records
    /// `kind`, and publishes its event to [`SimulatedAgencies::subscribe`]rs.
    ///
    /// # Errors
    /// [`ControlError::Invalid`] naming `person_id` or `kind`;
    /// [`ControlError::UnknownSource`] when the source is not simulated
    /// here.
    pub fn simulate_change(
        &self,
        person_id: &str,
        kind: hedui_proto::v1::ChangeKind,
    ) -> Result<hedui_proto::v1::ChangeEvent, ControlError> {
        let today = crate::population::china_today();
        hedui_proto::resident_id::validate(
            person_id,
            (
                chrono::Datelike::year(&today),
                chrono::Datelike::month(&today),
                chrono::Datelike::day(&today),
            ),
        )
        .map_err(|e| ControlError::Invalid(format!("person_id: {e}")))?;
        let source_id = crate::changes::source_of(kind)
            .ok_or_else(|| ControlError::Invalid("kind: is required".into()))?;
        let control = self
            .get(source_id)
            .ok_or_else(|| ControlError::UnknownSource {
                id: source_id.to_owned(),
                known: self.source_ids().join(", "),
            })?;
        let event = crate::changes::happen(&control.overlay, person_id, kind)
            .ok_or_else(|| ControlError::Invalid("kind: is required".into()))?;
        tracing::info!(source = %source_id, kind = ?kind, record = %event.record_id, "change simulated");
        // Nobody listening is not an error: the change still happened.
        let _ = self.events.send(event.clone());
        Ok(event)
    }

    /// Adds a source's handle, replacing one with the same id.
    pub fn register(&self, control: Arc<SourceControl>) {
        let mut sources = self.sources.write().unwrap_or_else(|e| e.into_inner());
        match sources
            .iter()
            .position(|c| c.source_id() == control.source_id())
        {
            Some(i) => sources[i] = control,
            None => sources.push(control),
        }
    }

    /// The handle of a source.
    pub fn get(&self, source_id: &str) -> Option<Arc<SourceControl>> {
        self.sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|c| c.source_id() == source_id)
            .cloned()
    }

    fn get_or_err(&self, source_id: &str) -> Result<Arc<SourceControl>, ControlError> {
        self.get(source_id)
            .ok_or_else(|| ControlError::UnknownSource {
                id: source_id.to_owned(),
                known: self.source_ids().join(", "),
            })
    }

    /// The ids of the sources, in the order they were built.
    pub fn source_ids(&self) -> Vec<String> {
        self.sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| c.source_id().to_owned())
            .collect()
    }

    /// The counters of every source.
    pub fn stats(&self) -> Vec<SourceStats> {
        self.sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| c.stats())
            .collect()
    }

    /// The counters of one source.
    ///
    /// # Errors
    /// [`ControlError::UnknownSource`].
    pub fn stats_of(&self, source_id: &str) -> Result<SourceStats, ControlError> {
        Ok(self.get_or_err(source_id)?.stats())
    }

    /// Sets every source's counters back to zero.
    pub fn reset_stats(&self) {
        for c in self
            .sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            c.reset_stats();
        }
    }

    /// Replaces the faults of one source.
    ///
    /// # Errors
    /// [`ControlError::UnknownSource`], or [`ControlError::Invalid`] naming
    /// a rate outside 0 to 1.
    pub fn set_faults(&self, source_id: &str, faults: FaultConfig) -> Result<(), ControlError> {
        self.get_or_err(source_id)?
            .set_faults(faults)
            .map_err(ControlError::Invalid)
    }

    /// Replaces the latency of one source.
    ///
    /// # Errors
    /// [`ControlError::UnknownSource`], or [`ControlError::Invalid`] when
    /// the 99th percentile is below the median.
    pub fn set_latency(&self, source_id: &str, latency: LatencyConfig) -> Result<(), ControlError> {
        self.get_or_err(source_id)?
            .set_latency(latency)
            .map_err(ControlError::Invalid)
    }

    /// Removes every fault of every source.
    pub fn clear_faults(&self) {
        for c in self
            .sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            c.set_faults(FaultConfig::none())
                .expect("no fault is always valid");
        }
    }
}

// === SimulatedSource ===

/// One source answering from the population, with the latency and faults
/// of its [`SourceControl`].
#[derive(Debug, Clone)]
pub struct SimulatedSource {
    source_id: String,
    fact_kinds: Vec<FactKind>,
    population: Arc<Population>,
    control: Arc<SourceControl>,
}

impl SimulatedSource {
    /// The simulated `spec` over `population`, with this latency and no
    /// faults. A source the simulation does not know (not one of the 28,
    /// nor the second rural bank) knows nobody: it answers every person
    /// with no facts.
    pub fn new(spec: &SourceSpec, population: Arc<Population>, latency: LatencyConfig) -> Self {
        let control = Arc::new(SourceControl::new(&spec.id, latency));
        SimulatedSource::with_control(spec, population, control)
    }

    /// The simulated `spec` driven by an existing handle.
    pub fn with_control(
        spec: &SourceSpec,
        population: Arc<Population>,
        control: Arc<SourceControl>,
    ) -> Self {
        SimulatedSource {
            source_id: spec.id.clone(),
            fact_kinds: spec.fact_kinds.clone(),
            population,
            control,
        }
    }

    /// The handle to its latency, faults and counters.
    pub fn control(&self) -> &Arc<SourceControl> {
        &self.control
    }

    /// The population it answers from.
    pub fn population(&self) -> &Arc<Population> {
        &self.population
    }

    /// The correct answer to `request`, as of now, without latency or
    /// faults: each person asked about once, in the order asked, with the
    /// facts of the kinds asked for (every kind when none is named).
    pub fn answer(&self, request: &LookupRequest) -> LookupResponse {
        let as_of = prost_types::Timestamp::from(std::time::SystemTime::now());
        let wanted: Vec<FactKind> = request.fact_kinds().collect();
        let answers = hedui_adapters::answer::AskedPersons::new(&request.person_ids)
            .first_mentions()
            .map(|id| PersonAnswer {
                person_id: id.clone(),
                facts: {
                    let mut facts = self.population.facts_for(&self.source_id, id, as_of);
                    self.control.overlay.apply(id, &mut facts);
                    facts
                }
                .into_iter()
                .filter(|f| {
                    wanted.is_empty()
                        || f.value.as_ref().is_some_and(|v| wanted.contains(&v.kind()))
                })
                .collect(),
            })
            .collect();
        LookupResponse {
            answers,
            as_of: Some(as_of),
        }
    }

    /// Breaks the contract in one of four ways, chosen by `u`.
    fn corrupt(&self, response: &mut LookupResponse, u: f64) {
        let as_of = response.as_of;
        let way = (u * 4.0) as u32;
        match (way, response.answers.is_empty()) {
            (_, true) => response.answers.push(PersonAnswer {
                person_id: "not-asked".into(),
                facts: Vec::new(),
            }),
            (0, false) => {
                response.answers.pop();
            }
            (1, false) => {
                let dup = response.answers[0].clone();
                response.answers.push(dup);
            }
            (2, false) => response.answers[0].facts.push(Fact {
                record_id: "broken".into(),
                as_of,
                value: None,
            }),
            _ => {
                // A fact of a kind the source does not serve.
                let value = if self.fact_kinds.contains(&FactKind::Vehicle) {
                    Value::Dwelling(Dwelling::default())
                } else {
                    Value::Vehicle(Vehicle::default())
                };
                response.answers[0].facts.push(Fact {
                    record_id: "stray".into(),
                    as_of,
                    value: Some(value),
                });
            }
        }
    }
}

/// Facts about one person in an oversized answer of many facts: far more
/// than the broker accepts (`hedui_adapters::answer::MAX_FACTS_PER_PERSON`).
pub const OVERSIZED_FACTS: usize = 20_000;

impl SimulatedSource {
    /// A well-formed fact to pad an answer with: a copy of one in it, or an
    /// empty value of a kind the source serves (and `request` asks for).
    fn padding_fact(&self, request: &LookupRequest, response: &LookupResponse) -> Fact {
        if let Some(f) = response.answers.iter().flat_map(|a| &a.facts).next() {
            return f.clone();
        }
        let wanted: Vec<FactKind> = request.fact_kinds().collect();
        let kind = self
            .fact_kinds
            .iter()
            .copied()
            .find(|k| wanted.is_empty() || wanted.contains(k))
            .unwrap_or(FactKind::Vehicle);
        Fact {
            record_id: "pad".into(),
            as_of: response.as_of,
            value: Some(empty_value(kind)),
        }
    }

    /// Makes a well-formed answer too large to accept, in one of three
    /// ways chosen by `u`: [`OVERSIZED_FACTS`] facts about the first person;
    /// one fact whose record id alone is larger than an answer may be; or
    /// fewer facts than the per-person limit, each with a 20 KiB record id,
    /// together larger than an answer may be. A request about nobody gets
    /// nothing added (there is nobody to pad).
    fn inflate(&self, request: &LookupRequest, response: &mut LookupResponse, u: f64) {
        use hedui_adapters::{answer::MAX_FACTS_PER_PERSON, grpc::MAX_ANSWER_BYTES};
        let template = self.padding_fact(request, response);
        let Some(first) = response.answers.first_mut() else {
            return;
        };
        let pad = |i: usize, len: usize| {
            let mut f = template.clone();
            let id = format!("pad-{i:06}-");
            let fill = "x".repeat(len.saturating_sub(id.len()));
            f.record_id = id + &fill;
            f
        };
        match (u * 3.0) as u32 {
            0 => {
                // Empty values of the same kind: tens of thousands of copies
                // of a whole fact would take the simulated department longer
                // to send than the broker waits.
                let mut small = template.clone();
                small.value = small.value.as_ref().map(|v| empty_value(v.kind()));
                first.facts.extend((0..OVERSIZED_FACTS).map(|i| Fact {
                    record_id: format!("pad-{i:06}"),
                    ..small.clone()
                }));
            }
            1 => first.facts.push(pad(0, MAX_ANSWER_BYTES + (1 << 20))),
            _ => {
                const ID_BYTES: usize = 20 * 1024;
                let n = (MAX_ANSWER_BYTES / ID_BYTES + 64).min(MAX_FACTS_PER_PERSON);
                first.facts.extend((0..n).map(|i| pad(i, ID_BYTES)));
            }
        }
    }
}

/// An empty value of `kind` (every field at its default, which the
/// contract accepts): the oneof case of `hedui.v1.Fact` numbered after the
/// kind (`kind + 9`), decoded from its encoding.
fn empty_value(kind: FactKind) -> Value {
    use prost::{
        Message,
        encoding::{WireType, encode_key, encode_varint},
    };
    let mut buf = Vec::new();
    encode_key(kind as u32 + 9, WireType::LengthDelimited, &mut buf);
    encode_varint(0, &mut buf);
    Fact::decode(buf.as_slice())
        .ok()
        .and_then(|f| f.value)
        .filter(|v| v.kind() == kind)
        .unwrap_or(Value::Vehicle(Vehicle::default()))
}

#[async_trait]
impl Adapter for SimulatedSource {
    fn source_id(&self) -> &str {
        &self.source_id
    }

    async fn lookup(
        &self,
        ctx: &LookupContext,
        request: &LookupRequest,
    ) -> Result<LookupResponse, AdapterError> {
        let c = &self.control;
        let persons = hedui_adapters::answer::AskedPersons::new(&request.person_ids);
        c.lookups.fetch_add(1, Ordering::Relaxed);
        c.persons
            .fetch_add(persons.distinct() as u64, Ordering::Relaxed);
        let Behaviour { latency, faults } = c.behaviour();
        // Always the same number of draws per lookup, so that a source's
        // stream of faults does not depend on which ones fired.
        let (d_timeout, d_error, d_l1, d_l2, d_malformed, d_how, d_oversized) = (
            c.draw(),
            c.draw(),
            c.draw(),
            c.draw(),
            c.draw(),
            c.draw(),
            c.draw(),
        );
        if faults.outage {
            c.failed();
            tracing::debug!(source = %self.source_id, "simulated outage");
            return Err(AdapterError::Unavailable("simulated outage".into()));
        }
        let hangs = |faults: &FaultConfig| {
            faults.hang
                || d_timeout < faults.timeout_rate
                || persons
                    .first_mentions()
                    .any(|p| faults.hang_persons.contains(p.as_str()))
        };
        if hangs(&faults) {
            tracing::debug!(source = %self.source_id, "simulated hang");
            // The department does not answer while the hang lasts; the
            // adapter in front of it gives up when the broker's deadline
            // passes, as every adapter must (the conformance kit checks
            // it). Lifted before that, the department answers late.
            // Counted as failed from the start (the caller may give up and
            // drop this lookup before the deadline fires here), also when
            // the hang is lifted and the answer comes late.
            c.failed();
            let mut changes = c.changes.subscribe();
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(ctx.deadline) => {
                        return Err(AdapterError::Timeout);
                    }
                    changed = changes.changed() => {
                        if changed.is_err() {
                            // No more changes can come: hang to the end.
                            tokio::time::sleep_until(ctx.deadline).await;
                            return Err(AdapterError::Timeout);
                        }
                        if !hangs(&c.faults()) {
                            // Still counted: the hang was injected.
                            tracing::debug!(source = %self.source_id, "hang lifted; answering late");
                            break;
                        }
                    }
                }
            }
        }
        let delay = latency.sample(d_l1, d_l2);
        if !delay.is_zero() {
            let until = tokio::time::Instant::now() + delay;
            if until > ctx.deadline {
                tokio::time::sleep_until(ctx.deadline).await;
                c.failed();
                return Err(AdapterError::Timeout);
            }
            tokio::time::sleep_until(until).await;
        }
        if d_error < faults.error_rate {
            c.failed();
            return Err(AdapterError::Internal("simulated error".into()));
        }
        let mut response = self.answer(request);
        if d_malformed < faults.malformed_rate {
            c.failed();
            self.corrupt(&mut response, d_how);
        }
        if d_oversized < faults.oversized_rate {
            c.failed();
            tracing::debug!(source = %self.source_id, "simulated oversized answer");
            self.inflate(request, &mut response, d_how);
        }
        Ok(response)
    }

    async fn check(&self) -> Result<CheckResponse, AdapterError> {
        let faults = self.control.faults();
        Ok(CheckResponse {
            serving: !faults.outage,
            fact_kinds: self.fact_kinds.iter().map(|k| *k as i32).collect(),
            detail: if faults.outage {
                "simulated outage".into()
            } else {
                String::new()
            },
        })
    }
}

/// One simulated source per entry of `catalog` over `population`, each with
/// the latency of `profile`, registered in `agencies`.
pub fn simulate_catalog(
    population: &Arc<Population>,
    catalog: &Catalog,
    profile: LatencyProfile,
    agencies: &SimulatedAgencies,
) -> Vec<Arc<SimulatedSource>> {
    catalog
        .iter()
        .map(|spec| {
            let source = SimulatedSource::new(spec, population.clone(), profile.latency(&spec.id));
            agencies.register(source.control().clone());
            Arc::new(source)
        })
        .collect()
}

// === SimulatedFactory ===

/// Parameters of the `simulated` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedParams {
    /// Seed of the population.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Number of households of the population.
    #[serde(default = "default_households")]
    pub households: usize,
    /// The population's today, `YYYY-MM-DD`; default today in China time.
    #[serde(default)]
    pub today: Option<String>,
    /// Median latency in milliseconds; default the source's profile.
    #[serde(default)]
    pub latency_p50_ms: Option<u64>,
    /// 99th percentile latency in milliseconds; default the source's
    /// profile (and never below the median).
    #[serde(default)]
    pub latency_p99_ms: Option<u64>,
    /// Share of lookups that fail with an internal error.
    #[serde(default)]
    pub error_rate: f64,
    /// Share of lookups that hang until the deadline.
    #[serde(default)]
    pub timeout_rate: f64,
    /// Every lookup is unavailable.
    #[serde(default)]
    pub outage: bool,
    /// Every lookup hangs until the deadline.
    #[serde(default)]
    pub hang: bool,
    /// Lookups about these persons hang.
    #[serde(default)]
    pub hang_persons: Vec<String>,
    /// Share of answers that break the adapter contract.
    #[serde(default)]
    pub malformed_rate: f64,
    /// Share of answers too large to accept.
    #[serde(default)]
    pub oversized_rate: f64,
}

fn default_seed() -> u64 {
    DEFAULT_SEED
}

fn default_households() -> usize {
    DEFAULT_HOUSEHOLDS
}

impl SimulatedParams {
    /// The population these parameters name.
    ///
    /// # Errors
    /// A message naming `households` or `today`.
    pub fn population_config(&self) -> Result<PopulationConfig, String> {
        if self.households == 0 || self.households > MAX_HOUSEHOLDS {
            return Err(format!(
                "households: must be between 1 and {MAX_HOUSEHOLDS}, got {}",
                self.households
            ));
        }
        let today = match &self.today {
            None => crate::population::china_today(),
            Some(t) => NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .map_err(|_| format!("today: {t:?} is not a date written YYYY-MM-DD"))?,
        };
        Ok(PopulationConfig {
            seed: self.seed,
            households: self.households,
            today,
        })
    }

    /// The latency for `source_id`, starting from `profile`.
    ///
    /// # Errors
    /// A message naming `latency_p99_ms` when it is below the median.
    pub fn latency(
        &self,
        source_id: &str,
        profile: LatencyProfile,
    ) -> Result<LatencyConfig, String> {
        let base = profile.latency(source_id);
        let p50 = self.latency_p50_ms.unwrap_or(base.p50_ms);
        let p99 = match self.latency_p99_ms {
            Some(p99) if p99 < p50 => {
                return Err(format!(
                    "latency_p99_ms: {p99} is below latency_p50_ms {p50}"
                ));
            }
            Some(p99) => p99,
            None => base.p99_ms.max(p50),
        };
        Ok(LatencyConfig::new(p50, p99))
    }

    /// The faults these parameters name.
    ///
    /// # Errors
    /// A message naming a rate outside 0 to 1.
    pub fn faults(&self) -> Result<FaultConfig, String> {
        let faults = FaultConfig {
            error_rate: self.error_rate,
            timeout_rate: self.timeout_rate,
            outage: self.outage,
            hang: self.hang,
            hang_persons: self.hang_persons.iter().cloned().collect(),
            malformed_rate: self.malformed_rate,
            oversized_rate: self.oversized_rate,
        };
        faults.validate()?;
        Ok(faults)
    }
}

/// The factory of the `simulated` transport: builds [`SimulatedSource`]s
/// over a population shared by every source of the process with the same
/// seed, size and day, and keeps their handles in a [`SimulatedAgencies`].
#[derive(Debug, Clone, Default)]
pub struct SimulatedFactory {
    agencies: SimulatedAgencies,
    profile: LatencyProfile,
}

impl SimulatedFactory {
    /// A factory whose sources get the realistic latency profile unless
    /// their parameters say otherwise.
    pub fn new() -> Self {
        SimulatedFactory::default()
    }

    /// A factory whose sources get `profile` unless their parameters say
    /// otherwise.
    pub fn with_profile(profile: LatencyProfile) -> Self {
        SimulatedFactory {
            agencies: SimulatedAgencies::new(),
            profile,
        }
    }

    /// The handles of every source this factory built (shared: sources
    /// built later appear in it too).
    pub fn agencies(&self) -> SimulatedAgencies {
        self.agencies.clone()
    }
}

impl AdapterFactory for SimulatedFactory {
    fn transport(&self) -> &'static str {
        "simulated"
    }

    fn build(
        &self,
        source: &SourceSpec,
        params: &toml::Table,
    ) -> Result<Arc<dyn Adapter>, BuildError> {
        let params: SimulatedParams = parse_params("simulated", params)?;
        let invalid = |message: String| BuildError::Params {
            kind: "simulated".into(),
            message,
        };
        let config = params.population_config().map_err(invalid)?;
        let latency = params.latency(&source.id, self.profile).map_err(invalid)?;
        let faults = params.faults().map_err(invalid)?;
        let population = Population::shared(&config);
        let source = SimulatedSource::new(source, population, latency);
        source.control().set_faults(faults).map_err(invalid)?;
        self.agencies.register(source.control().clone());
        Ok(Arc::new(source))
    }
}

/// Counts of each fact kind in an answer, for logs and tests.
pub fn kinds_in(response: &LookupResponse) -> BTreeMap<FactKind, usize> {
    let mut m = BTreeMap::new();
    for a in &response.answers {
        for f in &a.facts {
            if let Some(v) = &f.value {
                *m.entry(v.kind()).or_default() += 1;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use hedui_adapters::answer::check_answer;

    use super::*;

    fn population() -> Arc<Population> {
        Population::shared(&PopulationConfig {
            seed: 11,
            households: 300,
            today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
        })
    }

    fn source(id: &str) -> SimulatedSource {
        let spec = Catalog::dachuan().get(id).unwrap().clone();
        SimulatedSource::new(&spec, population(), LatencyConfig::ZERO)
    }

    fn request(ids: &[&str]) -> LookupRequest {
        LookupRequest {
            request_id: "t".into(),
            source_id: String::new(),
            person_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ctx(ms: u64) -> LookupContext {
        LookupContext::with_timeout(Duration::from_millis(ms))
    }

    #[tokio::test]
    async fn answers_every_person_once_with_the_kinds_asked() {
        let src = source("civil-affairs");
        let pop = population();
        let hh = pop
            .households()
            .find(|h| h.active_members().count() >= 3)
            .unwrap();
        let ids = hh.active_member_ids();
        let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        ids.push("110105194912310021"); // unknown: answered with no facts
        let req = request(&ids);
        let resp = src.lookup(&ctx(1_000), &req).await.unwrap();
        check_answer(&req, &resp, kinds_of("civil-affairs")).unwrap();
        assert_eq!(resp.answers.len(), ids.len());
        assert!(resp.answers.last().unwrap().facts.is_empty());
        let mut only = req.clone();
        only.fact_kinds = vec![FactKind::Marriage as i32];
        let resp = src.lookup(&ctx(1_000), &only).await.unwrap();
        check_answer(&only, &resp, &[]).unwrap();
        assert!(kinds_in(&resp).keys().all(|k| *k == FactKind::Marriage));
        let stats = src.control().stats();
        assert_eq!(
            (stats.lookups, stats.persons, stats.failures),
            (2, 2 * ids.len() as u64, 0)
        );
        src.control().reset_stats();
        assert_eq!(src.control().stats().lookups, 0);
    }

    fn kinds_of(id: &str) -> &'static [FactKind] {
        crate::agency::Agency::from_id(id).unwrap().fact_kinds()
    }

    #[tokio::test]
    async fn outage_and_errors_are_typed() {
        let src = source("rural-commercial-bank");
        let applicant = population()
            .household_at(0)
            .unwrap()
            .applicant()
            .id()
            .to_owned();
        src.control()
            .set_faults(FaultConfig {
                outage: true,
                ..FaultConfig::none()
            })
            .unwrap();
        let err = src
            .lookup(&ctx(500), &request(&[&applicant]))
            .await
            .unwrap_err();
        assert!(matches!(err, AdapterError::Unavailable(_)), "{err}");
        assert!(!src.check().await.unwrap().serving);
        src.control()
            .set_faults(FaultConfig {
                error_rate: 1.0,
                ..FaultConfig::none()
            })
            .unwrap();
        let err = src
            .lookup(&ctx(500), &request(&[&applicant]))
            .await
            .unwrap_err();
        assert!(matches!(err, AdapterError::Internal(_)), "{err}");
        assert_eq!(src.control().stats().failures, 2);
        let bad = FaultConfig {
            timeout_rate: 1.5,
            ..FaultConfig::none()
        };
        assert_eq!(
            src.control().set_faults(bad).unwrap_err(),
            "timeout_rate: must be between 0 and 1, got 1.5"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hangs_until_the_deadline() {
        let src = source("traffic-police");
        let pop = population();
        let hh = pop.household_at(1).unwrap();
        let target = hh.applicant().id().to_owned();
        src.control()
            .set_faults(FaultConfig {
                hang_persons: [target.clone()].into(),
                ..FaultConfig::none()
            })
            .unwrap();
        let started = tokio::time::Instant::now();
        let r = src.lookup(&ctx(1_000), &request(&[&target])).await;
        assert_eq!(r.unwrap_err(), AdapterError::Timeout);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(src.control().stats().failures, 1);
        // Others are answered.
        let other = pop.household_at(2).unwrap().applicant().id().to_owned();
        src.lookup(&ctx(1_000), &request(&[&other])).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn latency_follows_the_profile_and_respects_the_deadline() {
        let src = source("rural-commercial-bank");
        src.control()
            .set_latency(LatencyConfig::new(80, 400))
            .unwrap();
        let id = population()
            .household_at(0)
            .unwrap()
            .applicant()
            .id()
            .to_owned();
        let mut took = Vec::new();
        for _ in 0..200 {
            let t = tokio::time::Instant::now();
            src.lookup(&ctx(60_000), &request(&[&id])).await.unwrap();
            took.push(t.elapsed().as_millis() as u64);
        }
        took.sort_unstable();
        let median = took[100];
        assert!((55..=115).contains(&median), "median {median} ms");
        assert!(took[199] <= 4_000);
        // A deadline shorter than the answer time is a timeout at the
        // deadline.
        src.control()
            .set_latency(LatencyConfig::new(5_000, 5_000))
            .unwrap();
        let t = tokio::time::Instant::now();
        let err = src.lookup(&ctx(100), &request(&[&id])).await.unwrap_err();
        assert_eq!(err, AdapterError::Timeout);
        assert_eq!(t.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn malformed_answers_are_caught_by_the_contract_check() {
        let src = source("employment");
        src.control()
            .set_faults(FaultConfig {
                malformed_rate: 1.0,
                ..FaultConfig::none()
            })
            .unwrap();
        let pop = population();
        let ids: Vec<String> = pop.household_at(3).unwrap().active_member_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        for _ in 0..20 {
            let req = request(&ids);
            let resp = src.lookup(&ctx(1_000), &req).await.unwrap();
            assert!(check_answer(&req, &resp, kinds_of("employment")).is_err());
        }
    }

    #[tokio::test]
    async fn oversized_answers_are_well_formed_but_too_large() {
        use hedui_adapters::{answer::MAX_FACTS_PER_PERSON, grpc::MAX_ANSWER_BYTES};
        use prost::Message;
        let src = source("traffic-police");
        let pop = population();
        let ids: Vec<String> = pop.household_at(3).unwrap().active_member_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let req = request(&ids);
        let kinds = kinds_of("traffic-police");
        // Each of the three ways, whether the person has facts or not.
        for u in [0.1, 0.5, 0.9] {
            for asked in [req.clone(), request(&["110105194912310021"])] {
                let mut resp = src.answer(&asked);
                src.inflate(&asked, &mut resp, u);
                let too_many = resp.answers[0].facts.len() > MAX_FACTS_PER_PERSON;
                let too_big = resp.encoded_len() > MAX_ANSWER_BYTES;
                assert!(too_many != too_big, "u {u}: one way at a time");
                // Nothing else is wrong with it: within the limits again,
                // the contract check passes.
                let mut trimmed = resp.clone();
                for f in &mut trimmed.answers[0].facts {
                    f.record_id.truncate(32);
                }
                trimmed.answers[0].facts.truncate(MAX_FACTS_PER_PERSON);
                check_answer(&asked, &trimmed, kinds).unwrap();
                let err = check_answer(&asked, &resp, kinds).unwrap_err();
                assert!(matches!(err, AdapterError::Malformed(_)), "{err}");
            }
        }
        src.control()
            .set_faults(FaultConfig {
                oversized_rate: 1.0,
                ..FaultConfig::none()
            })
            .unwrap();
        for _ in 0..6 {
            let resp = src.lookup(&ctx(5_000), &req).await.unwrap();
            assert!(check_answer(&req, &resp, kinds).is_err());
        }
        assert_eq!(src.control().stats().failures, 6);
        let mut f = FaultConfig::none();
        f.apply_spec("oversized:0.5").unwrap();
        assert_eq!(f.oversized_rate, 0.5);
        let bad = FaultConfig {
            oversized_rate: -0.1,
            ..FaultConfig::none()
        };
        assert!(bad.validate().unwrap_err().starts_with("oversized_rate"));
    }

    #[test]
    fn empty_values_are_of_their_kind() {
        for k in 1..=40 {
            let Ok(kind) = FactKind::try_from(k) else {
                continue;
            };
            assert_eq!(empty_value(kind).kind(), kind, "{kind:?}");
        }
    }

    #[test]
    fn fault_specs_parse() {
        let mut f = FaultConfig::none();
        f.apply_spec("hang").unwrap();
        f.apply_spec("error:0.25").unwrap();
        f.apply_spec("malformed:1").unwrap();
        assert!(f.hang && f.error_rate == 0.25 && f.malformed_rate == 1.0);
        assert!(
            f.apply_spec("timeout")
                .unwrap_err()
                .contains("needs a rate")
        );
        assert!(
            f.apply_spec("error:2")
                .unwrap_err()
                .contains("between 0 and 1")
        );
        assert!(f.apply_spec("fire").unwrap_err().contains("unknown fault"));
        assert!(f.apply_spec("outage:0.5").unwrap_err().contains("no rate"));
    }

    #[test]
    fn factory_builds_shared_sources_and_names_bad_params() {
        let factory = SimulatedFactory::with_profile(LatencyProfile::Zero);
        let catalog = Catalog::dachuan();
        let params: toml::Table =
            toml::from_str("households = 120\nseed = 5\ntoday = '2026-11-23'\nlatency_p50_ms = 7")
                .unwrap();
        for spec in catalog.iter() {
            factory.build(spec, &params).unwrap();
        }
        let agencies = factory.agencies();
        assert_eq!(agencies.source_ids().len(), 28);
        let bank = agencies.get("rural-commercial-bank").unwrap();
        assert_eq!(bank.latency(), LatencyConfig::new(7, 7));
        agencies
            .set_faults(
                "rural-commercial-bank",
                FaultConfig {
                    outage: true,
                    ..FaultConfig::none()
                },
            )
            .unwrap();
        assert!(bank.faults().outage);
        let err = agencies
            .set_faults("bank-of-atlantis", FaultConfig::none())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("source_id: \"bank-of-atlantis\"")
        );
        agencies.clear_faults();
        assert!(bank.faults().is_none());

        let spec = catalog.get("employment").unwrap();
        let build_err = |text: &str| {
            let t: toml::Table = toml::from_str(text).unwrap();
            match factory.build(spec, &t) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{text} accepted"),
            }
        };
        assert!(build_err("colour = 'red'").contains("colour"));
        assert!(build_err("households = 0").contains("households"));
        assert!(build_err("today = '23/11/2026'").contains("today"));
        assert!(build_err("error_rate = 3.0").contains("error_rate"));
        assert!(build_err("latency_p50_ms = 50\nlatency_p99_ms = 10").contains("latency_p99_ms"));
    }

    #[test]
    fn lognormal_quantiles() {
        let l = LatencyConfig::new(80, 400);
        let median = l.sample(0.5, 0.25).as_secs_f64() * 1_000.0;
        assert!((median - 80.0).abs() < 0.01, "{median}");
        // u1 = 1 - e^(-Z99²/2) and cos = 1 give the 99th percentile.
        let u1 = 1.0 - (-Z99 * Z99 / 2.0).exp();
        let p99 = l.sample(u1, 0.0).as_secs_f64() * 1_000.0;
        assert!((p99 - 400.0).abs() < 0.5, "{p99}");
        assert_eq!(LatencyConfig::ZERO.sample(0.9, 0.1), Duration::ZERO);
        assert!(LatencyConfig::new(10, 5).validate().is_err());
    }
}
