//! The conformance kit: one suite that tells an adapter author whether an
//! adapter (of any transport, in any language behind it) does what the
//! broker relies on, and if not, what failed and why, in plain words.
//!
//! [`run`] checks, against known test persons ([`Fixtures`]):
//! - **health**: the source says it is serving, and which kinds it serves;
//! - **known persons**: exactly the facts the test data holds about them;
//! - **unknown person**: no facts (`NO_RECORD`) for a person it does not
//!   know, not an error and not somebody else's facts;
//! - **batch of 50**: fifty persons in one lookup, each answered once;
//! - **deadline**: an adapter gives up when the broker's deadline passes;
//! - **typed errors**: an id that is not a resident ID number is refused or
//!   answered with no record; injected failures come back as the error the
//!   broker expects (`UNAVAILABLE`, `INTERNAL`, `TIMEOUT`);
//! - **answers usable**: every answer of the run passed the broker's own
//!   check ([`check_answer`]): no person not asked about, no person twice,
//!   no negative money, no unknown enum value, no kind not served. An
//!   adapter that panics is reported, not crashed on.
//!
//! `hedui adapter check <source-id>` runs it against a configured source,
//! with the simulated population as the test data.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use hedui_proto::v1::{Fact, FactKind, LookupRequest, LookupResponse, Purpose};
use tokio::time::Instant;

use crate::{Adapter, AdapterError, LookupContext, answer::check_answer, catalog::SourceSpec};

/// Persons asked about in the batch check.
pub const BATCH: usize = 50;

/// How long after its deadline an adapter may take to return before it is
/// reported as not honouring deadlines (generous: a loaded test machine is
/// slow, an adapter that ignores deadlines is slower still).
pub const GRACE: Duration = Duration::from_secs(1);

/// How long after its deadline the kit waits for an adapter at all.
const GIVE_UP: Duration = Duration::from_secs(5);

/// The test data: what the source holds about whom.
#[derive(Debug, Clone, Default)]
pub struct Fixtures {
    /// Persons the source holds records of, with the facts it must answer
    /// (compared by record id and value; the as-of time must be present).
    pub known: Vec<(String, Vec<Fact>)>,
    /// Valid resident ID numbers the source holds no record of.
    pub unknown: Vec<String>,
}

/// A failure the kit can ask the source to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The source is down: expected `UNAVAILABLE`.
    Unavailable,
    /// The source fails inside: expected `INTERNAL` (an error, `ERROR`).
    Internal,
    /// The source hangs: expected a timeout at the deadline.
    Hang,
}

/// Makes the source under test fail on purpose (a test system's switch,
/// the simulated agencies' control service).
#[async_trait]
pub trait FaultInjector: Send + Sync {
    /// Starts simulating `fault`.
    ///
    /// # Errors
    /// A message when the fault cannot be injected.
    async fn inject(&self, fault: Fault) -> Result<(), String>;

    /// Stops simulating any fault.
    ///
    /// # Errors
    /// A message when the faults cannot be cleared.
    async fn clear(&self) -> Result<(), String>;
}

/// How a check came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It holds; what was seen.
    Passed(String),
    /// It does not hold; what was seen and what should have been.
    Failed(String),
    /// It could not be checked; why.
    Skipped(String),
}

/// One check of the suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Short name, e.g. `"unknown person"`.
    pub name: &'static str,
    /// How it came out.
    pub outcome: Outcome,
}

/// Everything the kit found about one adapter.
#[derive(Debug, Clone)]
pub struct ConformanceReport {
    /// The source checked.
    pub source_id: String,
    /// Its name.
    pub source_name: String,
    /// Each check, in the order run.
    pub results: Vec<CheckResult>,
}

impl ConformanceReport {
    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        !self
            .results
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_)))
    }

    /// The outcome of the check named `name`.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.results
            .iter()
            .find(|r| r.name == name)
            .map(|r| &r.outcome)
    }

    /// The names of the checks that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
            .map(|r| r.name)
            .collect()
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "conformance of source {:?} ({})",
            self.source_id, self.source_name
        )?;
        let (mut p, mut x, mut s) = (0, 0, 0);
        for r in &self.results {
            let (tag, text) = match &r.outcome {
                Outcome::Passed(t) => {
                    p += 1;
                    ("pass", t)
                }
                Outcome::Failed(t) => {
                    x += 1;
                    ("FAIL", t)
                }
                Outcome::Skipped(t) => {
                    s += 1;
                    ("skip", t)
                }
            };
            let mut lines = text.lines();
            writeln!(
                f,
                "  {tag}  {:<15} {}",
                r.name,
                lines.next().unwrap_or_default()
            )?;
            for l in lines {
                writeln!(f, "        {:<15} {l}", "")?;
            }
        }
        writeln!(
            f,
            "{} checks: {p} passed, {x} failed, {s} skipped",
            self.results.len()
        )
    }
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The deadline of ordinary lookups.
    pub deadline: Duration,
    /// The short deadline of the deadline check.
    pub short_deadline: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            deadline: Duration::from_secs(10),
            short_deadline: Duration::from_millis(300),
        }
    }
}

/// What one lookup did.
enum Call {
    Answered(LookupResponse, Duration),
    Failed(AdapterError, Duration),
    Panicked(String),
    Hung,
}

async fn call(adapter: &Arc<dyn Adapter>, ctx: LookupContext, req: LookupRequest) -> Call {
    let a = adapter.clone();
    let started = Instant::now();
    let give_up = ctx.deadline + GIVE_UP;
    let task = tokio::spawn(async move { a.lookup(&ctx, &req).await });
    let abort = task.abort_handle();
    match tokio::time::timeout_at(give_up, task).await {
        Err(_) => {
            abort.abort();
            Call::Hung
        }
        Ok(Err(join)) => {
            let msg = match join.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into()),
                Err(e) => e.to_string(),
            };
            Call::Panicked(msg)
        }
        Ok(Ok(Ok(r))) => Call::Answered(r, started.elapsed()),
        Ok(Ok(Err(e))) => Call::Failed(e, started.elapsed()),
    }
}

/// A resident ID number nobody has: born in 1900 in Beijing's Chaoyang
/// district, sequence `n`, with its check character.
pub fn fictional_id(n: u32) -> String {
    let first17 = format!(
        "1101051900{:02}{:02}{:03}",
        n / 28 % 12 + 1,
        n % 28 + 1,
        n / 336 % 1000
    );
    let check = hedui_proto::resident_id::check_character(&first17);
    format!("{first17}{check}")
}

struct Suite<'a> {
    adapter: Arc<dyn Adapter>,
    spec: &'a SourceSpec,
    options: &'a Options,
    results: Vec<CheckResult>,
    /// Problems with answers seen anywhere in the run.
    unusable: Vec<String>,
    lookups: usize,
    next_request: usize,
}

fn kind_name(k: FactKind) -> &'static str {
    k.as_str_name().trim_start_matches("FACT_KIND_")
}

fn short(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        text
    } else {
        let t: String = text.chars().take(max).collect();
        format!("{t}…")
    }
}

fn describe_error(e: &AdapterError) -> String {
    let kind = match e {
        AdapterError::Timeout => "TIMEOUT",
        AdapterError::Unavailable(_) | AdapterError::RateLimited { .. } => "UNAVAILABLE",
        AdapterError::Rejected(_) | AdapterError::Malformed(_) | AdapterError::Internal(_) => {
            "ERROR"
        }
    };
    format!("{e} (the broker would report {kind})")
}

impl Suite<'_> {
    fn record(&mut self, name: &'static str, outcome: Outcome) {
        self.results.push(CheckResult { name, outcome });
    }

    fn request(&mut self, ids: Vec<String>) -> LookupRequest {
        self.next_request += 1;
        LookupRequest {
            request_id: format!("conformance-{}", self.next_request),
            source_id: self.spec.id.clone(),
            person_ids: ids,
            fact_kinds: self.spec.fact_kinds.iter().map(|k| *k as i32).collect(),
            purpose: Purpose::DibaoApplication as i32,
            consent_reference: "CONFORMANCE-TEST".into(),
        }
    }

    /// Asks, and checks the answer as the broker would: `Ok` only for a
    /// usable answer.
    async fn ask(&mut self, ids: Vec<String>, timeout: Duration) -> Result<LookupResponse, String> {
        let req = self.request(ids);
        self.lookups += 1;
        match call(
            &self.adapter,
            LookupContext::with_timeout(timeout),
            req.clone(),
        )
        .await
        {
            Call::Answered(resp, _) => match check_answer(&req, &resp, &self.spec.fact_kinds) {
                Ok(()) => Ok(resp),
                Err(e) => {
                    let msg = format!("the answer is unusable, so the broker reports ERROR: {e}");
                    self.unusable.push(msg.clone());
                    Err(msg)
                }
            },
            Call::Failed(e, _) => Err(describe_error(&e)),
            Call::Panicked(p) => {
                let msg = format!("the adapter panicked: {p}");
                self.unusable.push(msg.clone());
                Err(msg)
            }
            Call::Hung => Err(format!(
                "no answer {} s after the {} ms deadline: the adapter ignores deadlines",
                GIVE_UP.as_secs(),
                timeout.as_millis()
            )),
        }
    }

    async fn health(&mut self) {
        let outcome = match tokio::time::timeout(Duration::from_secs(15), self.adapter.check())
            .await
        {
            Err(_) => Outcome::Failed("the health check did not answer in 15 s".into()),
            Ok(Err(e)) => {
                Outcome::Failed(format!("the health check failed: {}", describe_error(&e)))
            }
            Ok(Ok(c)) if !c.serving => Outcome::Failed(format!(
                "the source says it is not serving{}",
                if c.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.detail)
                }
            )),
            Ok(Ok(c)) => {
                let declared: BTreeSet<i32> = c.fact_kinds.iter().copied().collect();
                let expected: BTreeSet<i32> =
                    self.spec.fact_kinds.iter().map(|k| *k as i32).collect();
                let names = |s: &BTreeSet<i32>| {
                    s.iter()
                        .map(|k| {
                            FactKind::try_from(*k)
                                .map_or_else(|_| format!("kind {k}"), |k| kind_name(k).to_owned())
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if declared.is_empty() || declared == expected {
                    Outcome::Passed(format!("serving; reports {}", names(&expected)))
                } else {
                    Outcome::Failed(format!(
                        "the source says it serves {}, but the broker's catalog says {}; \
                         they must agree",
                        names(&declared),
                        names(&expected)
                    ))
                }
            }
        };
        self.record("health", outcome);
    }

    /// Compares what a person was answered with what the test data holds;
    /// `None` when equal.
    fn diff(person: &str, want: &[Fact], got: &[Fact]) -> Option<String> {
        let index = |fs: &[Fact]| -> BTreeMap<String, Fact> {
            fs.iter()
                .map(|f| (f.record_id.clone(), f.clone()))
                .collect()
        };
        let (w, g) = (index(want), index(got));
        let kind = |f: &Fact| {
            f.value
                .as_ref()
                .map_or("(no value)", |v| kind_name(v.kind()))
        };
        let mut out = Vec::new();
        for (id, f) in &w {
            match g.get(id) {
                None => out.push(format!(
                    "person {person}: record {id} ({}) is missing from the answer",
                    kind(f)
                )),
                Some(x) if x.value != f.value => out.push(short(
                    format!(
                        "person {person}: record {id} differs: expected {:?}, answered {:?}",
                        f.value, x.value
                    ),
                    400,
                )),
                Some(_) => {}
            }
        }
        for (id, f) in &g {
            if !w.contains_key(id) {
                out.push(format!(
                    "person {person}: record {id} ({}) is answered, but the test data has no such record",
                    kind(f)
                ));
            }
        }
        if got.len() != g.len() {
            out.push(format!("person {person}: a record id is answered twice"));
        }
        (!out.is_empty()).then(|| out.join("\n"))
    }

    async fn known(&mut self, fixtures: &Fixtures) {
        let known: Vec<(String, Vec<Fact>)> = fixtures.known.iter().take(20).cloned().collect();
        if known.is_empty() {
            self.record(
                "known persons",
                Outcome::Skipped("no test person the source knows; give fixtures".into()),
            );
            return;
        }
        let ids = known.iter().map(|(p, _)| p.clone()).collect();
        let outcome = match self.ask(ids, self.options.deadline).await {
            Err(e) => Outcome::Failed(e),
            Ok(resp) => {
                let mut problems = Vec::new();
                let mut facts = 0;
                for (p, want) in &known {
                    let got = resp
                        .answers
                        .iter()
                        .find(|a| &a.person_id == p)
                        .map(|a| a.facts.as_slice())
                        .unwrap_or_default();
                    facts += got.len();
                    if let Some(d) = Self::diff(p, want, got) {
                        problems.push(d);
                    }
                }
                if problems.is_empty() {
                    Outcome::Passed(format!(
                        "{} persons, {facts} facts, as the test data holds them",
                        known.len()
                    ))
                } else {
                    problems.truncate(5);
                    Outcome::Failed(problems.join("\n"))
                }
            }
        };
        self.record("known persons", outcome);
    }

    async fn unknown(&mut self, fixtures: &Fixtures) {
        let mut ids: Vec<String> = fixtures.unknown.iter().take(4).cloned().collect();
        ids.push(fictional_id(1));
        let outcome = match self.ask(ids.clone(), self.options.deadline).await {
            Err(e) => Outcome::Failed(format!(
                "{e}\na person the source holds no record of must be answered with no facts \
                 (NO_RECORD), not an error"
            )),
            Ok(resp) => {
                let with: Vec<String> = resp
                    .answers
                    .iter()
                    .filter(|a| !a.facts.is_empty())
                    .map(|a| {
                        format!(
                            "{} ({} facts, e.g. {})",
                            a.person_id,
                            a.facts.len(),
                            a.facts[0].record_id
                        )
                    })
                    .collect();
                if with.is_empty() {
                    Outcome::Passed(format!("{} persons answered with no record", ids.len()))
                } else {
                    Outcome::Failed(format!(
                        "facts about persons the test data holds no record of: {}\nthe source \
                         must not answer with somebody else's records",
                        with.join(", ")
                    ))
                }
            }
        };
        self.record("unknown person", outcome);
    }

    async fn batch(&mut self, fixtures: &Fixtures) {
        let mut ids: Vec<String> = Vec::with_capacity(BATCH);
        let mut seen = BTreeSet::new();
        for id in fixtures
            .known
            .iter()
            .map(|(p, _)| p.clone())
            .chain(fixtures.unknown.iter().cloned())
            .chain((100..).map(fictional_id))
        {
            if ids.len() == BATCH {
                break;
            }
            if seen.insert(id.clone()) {
                ids.push(id);
            }
        }
        let want: BTreeMap<&str, &Vec<Fact>> = fixtures
            .known
            .iter()
            .map(|(p, f)| (p.as_str(), f))
            .collect();
        let outcome = match self.ask(ids.clone(), self.options.deadline).await {
            Err(e) => Outcome::Failed(e),
            Ok(resp) => {
                let mut problems = Vec::new();
                for a in &resp.answers {
                    let expected = want
                        .get(a.person_id.as_str())
                        .map_or(&[][..], |v| v.as_slice());
                    if let Some(d) = Self::diff(&a.person_id, expected, &a.facts) {
                        problems.push(d);
                    }
                }
                if problems.is_empty() {
                    Outcome::Passed(format!(
                        "{BATCH} persons in one lookup, each answered once, {} with records",
                        resp.answers.iter().filter(|a| !a.facts.is_empty()).count()
                    ))
                } else {
                    problems.truncate(5);
                    Outcome::Failed(problems.join("\n"))
                }
            }
        };
        self.record("batch of 50", outcome);
    }

    async fn deadline(&mut self, fixtures: &Fixtures, faults: Option<&dyn FaultInjector>) {
        let person = fixtures
            .known
            .first()
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| fictional_id(2));
        let short_deadline = self.options.short_deadline;
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        // A deadline already passed: give up at once.
        let req = self.request(vec![person.clone()]);
        self.lookups += 1;
        let ctx = LookupContext::until(Instant::now());
        match call(&self.adapter, ctx, req).await {
            Call::Hung => problems
                .push("with its deadline already passed, the adapter did not return".to_owned()),
            Call::Panicked(p) => problems.push(format!("the adapter panicked: {p}")),
            Call::Answered(_, t) | Call::Failed(_, t) if t > GRACE => problems.push(format!(
                "with its deadline already passed, the adapter took {} ms to return",
                t.as_millis()
            )),
            Call::Answered(..) | Call::Failed(..) => {}
        }
        // A hanging source: the adapter returns TIMEOUT at the deadline.
        let hang = match faults {
            Some(f) => match f.inject(Fault::Hang).await {
                Ok(()) => true,
                Err(e) => {
                    notes.push(format!("hang not injected: {e}"));
                    false
                }
            },
            None => false,
        };
        let req = self.request(vec![person]);
        self.lookups += 1;
        let r = call(
            &self.adapter,
            LookupContext::with_timeout(short_deadline),
            req,
        )
        .await;
        if let Some(f) = faults.filter(|_| hang)
            && let Err(e) = f.clear().await
        {
            problems.push(format!("faults could not be cleared: {e}"));
        }
        let ms = short_deadline.as_millis();
        match r {
            Call::Hung => problems.push(format!(
                "no answer {} s after a {ms} ms deadline: the adapter must give up when the \
                 deadline passes",
                GIVE_UP.as_secs()
            )),
            Call::Panicked(p) => problems.push(format!("the adapter panicked: {p}")),
            Call::Answered(_, t) | Call::Failed(_, t) if t > short_deadline + GRACE => {
                problems.push(format!(
                    "a lookup with a {ms} ms deadline took {} ms: the adapter must give up \
                     when the deadline passes",
                    t.as_millis()
                ));
            }
            Call::Failed(AdapterError::Timeout, _) => {}
            Call::Failed(e, _) if hang => problems.push(format!(
                "a hanging source should come back as TIMEOUT at the deadline, not: {}",
                describe_error(&e)
            )),
            Call::Answered(..) if hang => problems.push(
                "the source was made to hang, yet an answer came back: the fault was not applied"
                    .into(),
            ),
            Call::Answered(..) | Call::Failed(..) => {}
        }
        let outcome = if !problems.is_empty() {
            Outcome::Failed(problems.join("\n"))
        } else if hang {
            Outcome::Passed(format!(
                "gives up at once when the deadline has passed, and at a {ms} ms deadline on a \
                 hanging source"
            ))
        } else {
            let mut t = format!(
                "gives up at once when the deadline has passed, and within a {ms} ms deadline \
                 (no hang could be injected to prove more)"
            );
            for n in notes {
                t.push_str(&format!("\n{n}"));
            }
            Outcome::Passed(t)
        };
        self.record("deadline", outcome);
    }

    async fn typed_errors(&mut self, faults: Option<&dyn FaultInjector>) {
        let mut problems = Vec::new();
        let mut seen = Vec::new();
        // Ids that are not resident ID numbers, the second an injection.
        for bad in ["not-a-resident-id", "' OR 1=1 --"] {
            let req = self.request(vec![bad.to_owned()]);
            self.lookups += 1;
            match call(
                &self.adapter,
                LookupContext::with_timeout(self.options.deadline),
                req.clone(),
            )
            .await
            {
                Call::Answered(resp, _) => {
                    if let Err(e) = check_answer(&req, &resp, &self.spec.fact_kinds) {
                        let m = format!("the answer is unusable, so the broker reports ERROR: {e}");
                        self.unusable.push(m.clone());
                        problems.push(m);
                    } else if resp.answers.iter().any(|a| !a.facts.is_empty()) {
                        problems.push(format!(
                            "asked about {bad:?}, which is not a resident ID number, the source \
                             answered facts: parameters must be bound, never spliced"
                        ));
                    } else {
                        seen.push(format!("{bad:?}: no record"));
                    }
                }
                Call::Failed(AdapterError::Rejected(_), _) => {
                    seen.push(format!("{bad:?}: refused"));
                }
                Call::Failed(e, _) => problems.push(format!(
                    "asked about {bad:?}: {}; an id the source cannot read should be refused \
                     (INVALID_ARGUMENT) or answered with no record",
                    describe_error(&e)
                )),
                Call::Panicked(p) => {
                    let m = format!("the adapter panicked: {p}");
                    self.unusable.push(m.clone());
                    problems.push(m);
                }
                Call::Hung => problems.push(format!("asked about {bad:?}: no answer")),
            }
        }
        let person = fictional_id(3);
        match faults {
            None => seen.push("no fault injection for this source: outages not checked".into()),
            Some(f) => {
                for (fault, want, expected) in [
                    (
                        Fault::Unavailable,
                        "UNAVAILABLE",
                        (|e: &AdapterError| matches!(e, AdapterError::Unavailable(_)))
                            as fn(&AdapterError) -> bool,
                    ),
                    (Fault::Internal, "an internal error (ERROR)", |e| {
                        matches!(e, AdapterError::Internal(_))
                    }),
                ] {
                    if let Err(e) = f.inject(fault).await {
                        problems.push(format!("cannot inject {fault:?}: {e}"));
                        continue;
                    }
                    let req = self.request(vec![person.clone()]);
                    self.lookups += 1;
                    let ctx = LookupContext::with_timeout(self.options.deadline);
                    let r = call(&self.adapter, ctx, req).await;
                    if let Err(e) = f.clear().await {
                        problems.push(format!("faults could not be cleared: {e}"));
                    }
                    match r {
                        Call::Failed(e, _) if expected(&e) => {
                            seen.push(format!("{fault:?} came back as {want}"));
                        }
                        Call::Failed(e, _) => problems.push(format!(
                            "a simulated {fault:?} came back as {}; expected {want}",
                            describe_error(&e)
                        )),
                        Call::Answered(..) => problems.push(format!(
                            "a simulated {fault:?} came back as an answer; expected {want}"
                        )),
                        Call::Panicked(p) => {
                            let m = format!("the adapter panicked: {p}");
                            self.unusable.push(m.clone());
                            problems.push(m);
                        }
                        Call::Hung => problems.push(format!(
                            "a simulated {fault:?} came back not at all; expected {want}"
                        )),
                    }
                }
            }
        }
        let outcome = if problems.is_empty() {
            Outcome::Passed(seen.join("; "))
        } else {
            Outcome::Failed(problems.join("\n"))
        };
        self.record("typed errors", outcome);
    }

    fn usable(&mut self) {
        let outcome = if self.unusable.is_empty() {
            Outcome::Passed(format!(
                "{} lookups: every answer passed the broker's checks (persons, kinds, values)",
                self.lookups
            ))
        } else {
            let mut u = self.unusable.clone();
            u.dedup();
            u.truncate(5);
            Outcome::Failed(u.join("\n"))
        };
        self.record("answers usable", outcome);
    }
}

/// Runs the suite against `adapter`, which answers for `spec`, with the
/// test data `fixtures` and, when the source can be made to fail on
/// purpose, `faults`.
pub async fn run(
    adapter: Arc<dyn Adapter>,
    spec: &SourceSpec,
    fixtures: &Fixtures,
    faults: Option<&dyn FaultInjector>,
    options: &Options,
) -> ConformanceReport {
    let mut s = Suite {
        adapter,
        spec,
        options,
        results: Vec::new(),
        unusable: Vec::new(),
        lookups: 0,
        next_request: 0,
    };
    if let Some(f) = faults
        && let Err(e) = f.clear().await
    {
        s.record(
            "faults",
            Outcome::Failed(format!("faults could not be cleared: {e}")),
        );
    }
    s.health().await;
    s.known(fixtures).await;
    s.unknown(fixtures).await;
    s.batch(fixtures).await;
    s.deadline(fixtures, faults).await;
    s.typed_errors(faults).await;
    s.usable();
    ConformanceReport {
        source_id: spec.id.clone(),
        source_name: spec.name.clone(),
        results: s.results,
    }
}

#[cfg(test)]
mod tests;
