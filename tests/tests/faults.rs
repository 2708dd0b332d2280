//! Fault injection, source by source and in random combinations: the
//! simulated agencies go slow, hang, fail, flap, return answers that break
//! the contract or are too large to accept, or cannot be reached at all. For every report the failing
//! sources are named with the right status, every indicator that needs one
//! of them is INCONCLUSIVE and every other one equals the ground truth, the
//! verdict follows, the other sources' answers are untouched, and the
//! response comes within the deadline plus a small margin.
//!
//! The indicators' input fact kinds are written out here from
//! docs/policy.md, independently of the broker's code.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use hedui_mock_agencies::{
    Agency,
    control::proto::{
        Faults, Latency, SetFaultsRequest,
        agency_control_service_client::AgencyControlServiceClient,
    },
    population::{Population, PopulationConfig},
    truth::{GroundTruth, INDICATOR_IDS, TruthPolicy},
};
use hedui_proto::v1::{
    FactKind, Outcome, Purpose, Report, SourceStatus, VerificationRequest, VerifyRequest,
    verification_service_client::VerificationServiceClient,
};
use hedui_tests::{Agencies, Broker, BrokerProcess, SEED, china_today};
use tonic::transport::Channel;

const HOUSEHOLDS: usize = 200;
const DEADLINE: Duration = Duration::from_millis(700);
/// The deadline of the oversized-answer tests: building and refusing
/// answers of megabytes in debug builds on a loaded 2-core machine can
/// take longer than [`DEADLINE`], and those tests are about the refusal,
/// not the time.
const OVERSIZED_DEADLINE: Duration = Duration::from_secs(3);

/// Each fault must show in the report it was injected for: no cached answer
/// from an earlier round, no breaker opened by an earlier round, no retry
/// (the guard is tested on its own in tests/tests/realtime.rs).
const RAW: &str =
    "[cache]\nenabled = false\n\n[limits.default]\nbreaker_failures = 0\nmax_retries = 0\n";

/// What a response may take beyond its deadline on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Answers after the deadline.
    Slow,
    /// Never answers.
    Hang,
    /// Says it is unavailable.
    Outage,
    /// Fails with an internal error.
    Error,
    /// Answers in breach of the adapter contract.
    Malformed,
    /// Answers well formed but too large: tens of thousands of facts about
    /// one person, or more bytes than the broker takes from a source.
    Oversized,
}

const FAULTS: [Fault; 5] = [
    Fault::Slow,
    Fault::Hang,
    Fault::Outage,
    Fault::Error,
    Fault::Malformed,
];

impl Fault {
    fn status(self) -> SourceStatus {
        match self {
            Fault::Slow | Fault::Hang => SourceStatus::Timeout,
            Fault::Outage => SourceStatus::Unavailable,
            Fault::Error | Fault::Malformed | Fault::Oversized => SourceStatus::Error,
        }
    }

    fn request(self, source_id: &str) -> SetFaultsRequest {
        let mut faults = Faults::default();
        let mut latency = Latency::default();
        match self {
            Fault::Slow => {
                latency.p50_ms = 5_000;
                latency.p99_ms = 6_000;
            }
            Fault::Hang => faults.hang = true,
            Fault::Outage => faults.outage = true,
            Fault::Error => faults.error_rate = 1.0,
            Fault::Malformed => faults.malformed_rate = 1.0,
            Fault::Oversized => faults.oversized_rate = 1.0,
        }
        SetFaultsRequest {
            source_id: source_id.to_owned(),
            faults: Some(faults),
            latency: Some(latency),
        }
    }
}

/// Input fact kinds of R1–R9 per docs/policy.md (household registration,
/// an input of every rule, added by [`depends_on`]).
fn input_kinds(indicator: &str) -> &'static [FactKind] {
    use FactKind as K;
    match indicator {
        "R1" => &[
            K::Employment,
            K::PublicPayroll,
            K::IncomeTax,
            K::IndividualBusiness,
            K::Dwelling,
            K::FinancialAccount,
            K::SocialInsurance,
            K::LandContract,
            K::ForestRight,
        ],
        "R2" => &[K::FinancialAccount],
        "R3" => &[K::Vehicle, K::OperatingLicence],
        "R4" => &[K::Dwelling],
        "R5" => &[K::MarketEntity, K::IndividualBusiness],
        "R6" => &[K::PublicPayroll],
        "R7" => &[K::RelatedParty],
        "R8" => &[],
        "R9" => &[K::AccountOutflow],
        other => panic!("unknown indicator {other}"),
    }
}

fn depends_on(indicator: &str, source_id: &str) -> bool {
    let kinds = Agency::from_id(source_id)
        .unwrap_or_else(|| panic!("unknown source {source_id}"))
        .fact_kinds();
    kinds
        .iter()
        .any(|k| *k == FactKind::HouseholdRegistration || input_kinds(indicator).contains(k))
}

/// The verdict rule of docs/policy.md.
fn verdict(outcomes: &[Outcome]) -> Outcome {
    for o in [Outcome::Fail, Outcome::Inconclusive, Outcome::Review] {
        if outcomes.contains(&o) {
            return o;
        }
    }
    Outcome::Pass
}

fn request(applicant_id: &str, deadline: Duration) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant_id.to_owned(),
        consent_reference: "SQ-FAULTS".into(),
        purpose: Purpose::DibaoApplication as i32,
        operator_id: "fault-injector".into(),
        deadline: deadline.try_into().ok(),
        max_age: None,
        declared_member_ids: Vec::new(),
    }
}

/// Checks one report against the truth, given the sources that fail.
fn check(report: &Report, truth: &GroundTruth, failing: &BTreeMap<String, SourceStatus>) {
    let hh = &truth.household_number;
    let household_failed = failing.contains_key("public-security");
    // A household source that takes the whole deadline leaves no time to
    // ask the others: they are NOT_QUERIED, whatever their own state.
    let household_timed_out = failing.get("public-security") == Some(&SourceStatus::Timeout);
    for s in &report.sources {
        if household_timed_out && s.source_id != "public-security" {
            assert_eq!(
                s.status(),
                SourceStatus::NotQueried,
                "household {hh}: {} after the household took the deadline",
                s.source_id
            );
            continue;
        }
        match failing.get(&s.source_id) {
            Some(expected) => assert_eq!(
                s.status, *expected as i32,
                "household {hh}: {} should be {expected:?}: {}",
                s.source_id, s.detail
            ),
            None => {
                assert!(
                    s.status == SourceStatus::Ok as i32
                        || s.status == SourceStatus::NoRecord as i32,
                    "household {hh}: healthy {} is {:?}: {}",
                    s.source_id,
                    s.status(),
                    s.detail
                );
                if !household_failed && s.source_id != "public-security" {
                    let expected = truth
                        .facts_by_source
                        .get(&s.source_id)
                        .copied()
                        .unwrap_or(0);
                    assert_eq!(
                        s.fact_count, expected,
                        "household {hh}: healthy {} lost facts",
                        s.source_id
                    );
                }
            }
        }
    }
    let mut expected_outcomes = Vec::new();
    for (id, truth_outcome) in INDICATOR_IDS.iter().zip(&truth.indicators) {
        let missing: Vec<&String> = failing.keys().filter(|s| depends_on(id, s)).collect();
        let expected = if missing.is_empty() {
            *truth_outcome
        } else {
            Outcome::Inconclusive
        };
        let got = report
            .indicators
            .iter()
            .find(|i| i.id == *id)
            .expect("indicator");
        assert_eq!(
            got.outcome(),
            expected,
            "household {hh} {id} with {failing:?} failing: {}",
            got.reason
        );
        for m in missing {
            assert!(got.missing_sources.contains(m), "{id} should name {m}");
        }
        expected_outcomes.push(expected);
    }
    assert_eq!(
        report.verdict(),
        verdict(&expected_outcomes),
        "household {hh}"
    );
    let income = report.income.as_ref().expect("income");
    let income_missing = failing.keys().any(|s| depends_on("R1", s));
    assert_eq!(income.complete, !income_missing, "household {hh} income");
    if !income_missing {
        assert_eq!(income.per_capita_monthly_fen, truth.per_capita_income_fen);
    }
}

async fn verify_all(
    broker: &Broker,
    truths: &[&GroundTruth],
    failing: &BTreeMap<String, SourceStatus>,
) {
    verify_all_with(&broker.client().await.unwrap(), truths, failing, DEADLINE).await;
}

/// [`verify_all`] through `client`; the reports.
async fn verify_all_with(
    client: &VerificationServiceClient<Channel>,
    truths: &[&GroundTruth],
    failing: &BTreeMap<String, SourceStatus>,
    deadline: Duration,
) -> Vec<Report> {
    let results: Vec<(Duration, Report, &GroundTruth)> = stream::iter(truths.iter().copied())
        .map(|t| {
            let mut client = client.clone();
            async move {
                let started = Instant::now();
                let report = client
                    .verify(VerifyRequest {
                        request: Some(request(&t.applicant_id, deadline)),
                    })
                    .await
                    .expect("a failing source must not fail the verification")
                    .into_inner()
                    .report
                    .expect("report");
                (started.elapsed(), report, t)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut reports = Vec::with_capacity(results.len());
    for (elapsed, report, truth) in results {
        assert!(
            elapsed < deadline + MARGIN,
            "took {elapsed:?} with a deadline of {deadline:?} and {failing:?} failing"
        );
        check(&report, truth, failing);
        reports.push(report);
    }
    reports
}

/// The details of the named sources' results in `reports`.
fn details_of(reports: &[Report], sources: &[&str]) -> Vec<String> {
    reports
        .iter()
        .flat_map(|r| &r.sources)
        .filter(|s| sources.contains(&s.source_id.as_str()))
        .map(|s| s.detail.clone())
        .collect()
}

/// Checks that the oversized answers were refused for both reasons: too
/// many facts about one person, and too many bytes (`bytes` says how the
/// transport words it).
fn assert_both_limits(details: &[String], bytes: &str) {
    assert!(
        details.iter().any(|d| d.contains("facts about one person")),
        "no answer was refused for its number of facts: {details:?}"
    );
    assert!(
        details.iter().any(|d| d.contains(bytes)),
        "no answer was refused for its size ({bytes:?}): {details:?}"
    );
}

async fn set(control: &mut AgencyControlServiceClient<Channel>, req: SetFaultsRequest) {
    control.set_faults(req).await.expect("set faults");
}

async fn clear(control: &mut AgencyControlServiceClient<Channel>, source_id: &str) {
    set(
        control,
        SetFaultsRequest {
            source_id: source_id.to_owned(),
            faults: None,
            latency: Some(Latency::default()),
        },
    )
    .await;
}

/// A small deterministic generator for the random combinations.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_failing_every_way_is_named_and_contained() {
    let today = china_today();
    let agencies = Agencies::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let broker = Broker::start(&agencies, RAW).await.unwrap();
    let mut control = AgencyControlServiceClient::connect(agencies.control.clone())
        .await
        .unwrap();
    let pop = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: today.parse().unwrap(),
    });
    let truths = pop.truth(&TruthPolicy::default());
    let mut next_household = 0;
    let mut pick = |n: usize| -> Vec<&GroundTruth> {
        (0..n)
            .map(|_| {
                next_household = (next_household + 1) % truths.len();
                &truths[next_household]
            })
            .collect()
    };

    // Each source in turn, each with a different kind of fault (and every
    // kind of fault at least five times over the 28 sources).
    for (i, agency) in Agency::ALL.iter().enumerate() {
        let source = agency.id();
        let fault = FAULTS[i % FAULTS.len()];
        set(&mut control, fault.request(source)).await;
        let failing = BTreeMap::from([(source.to_owned(), fault.status())]);
        verify_all(&broker, &pick(2), &failing).await;
        clear(&mut control, source).await;
    }

    // Random combinations of two to five sources.
    let mut rng = XorShift(0x5EED_2018);
    for _ in 0..8 {
        let mut failing = BTreeMap::new();
        let n = 2 + rng.next(4);
        while failing.len() < n {
            let source = Agency::ALL[rng.next(Agency::ALL.len())].id();
            let fault = FAULTS[rng.next(FAULTS.len())];
            if failing.contains_key(source) {
                continue;
            }
            set(&mut control, fault.request(source)).await;
            failing.insert(source.to_owned(), fault.status());
        }
        verify_all(&broker, &pick(3), &failing).await;
        for source in failing.keys() {
            clear(&mut control, source).await;
        }
    }

    // A flapping source: half its lookups fail. Each report is checked
    // against what that source did for it.
    let flapping = "employment";
    set(
        &mut control,
        SetFaultsRequest {
            source_id: flapping.to_owned(),
            faults: Some(Faults {
                error_rate: 0.5,
                ..Default::default()
            }),
            latency: Some(Latency::default()),
        },
    )
    .await;
    let client = broker.client().await.unwrap();
    let mut seen = BTreeMap::new();
    for truth in pick(12) {
        let report = client
            .clone()
            .verify(VerifyRequest {
                request: Some(request(&truth.applicant_id, DEADLINE)),
            })
            .await
            .unwrap()
            .into_inner()
            .report
            .unwrap();
        let status = report
            .sources
            .iter()
            .find(|s| s.source_id == flapping)
            .unwrap()
            .status();
        *seen.entry(status as i32).or_insert(0) += 1;
        let failing = if status == SourceStatus::Error {
            BTreeMap::from([(flapping.to_owned(), SourceStatus::Error)])
        } else {
            BTreeMap::new()
        };
        check(&report, truth, &failing);
    }
    assert!(
        seen.contains_key(&(SourceStatus::Error as i32)),
        "a 50 % failure rate failed no lookup in 12: {seen:?}"
    );
    clear(&mut control, flapping).await;

    // And healthy again: nothing left over.
    verify_all(&broker, &pick(3), &BTreeMap::new()).await;
    broker.stop().await;
    agencies.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_refuses_connections_is_unavailable() {
    let today = china_today();
    let mut agencies = Agencies::start(20, &today, &[]).await.unwrap();
    // Point the bank at a loopback port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let bank = agencies
        .sources_toml
        .split("[[sources]]")
        .find(|s| s.contains("\"rural-commercial-bank\""))
        .expect("bank entry")
        .to_owned();
    let start = bank.find("endpoint = ").unwrap();
    let end = start + bank[start..].find('\n').unwrap();
    let rewired = format!(
        "{}endpoint = \"http://{closed}\"{}",
        &bank[..start],
        &bank[end..]
    );
    agencies.sources_toml = agencies.sources_toml.replace(&bank, &rewired);
    let broker = Broker::start(&agencies, RAW).await.unwrap();
    let pop = Population::generate(&PopulationConfig {
        seed: SEED,
        households: 20,
        today: today.parse().unwrap(),
    });
    let truths = pop.truth(&TruthPolicy::default());
    let failing = BTreeMap::from([(
        "rural-commercial-bank".to_owned(),
        SourceStatus::Unavailable,
    )]);
    let some: Vec<&GroundTruth> = truths.iter().take(5).collect();
    verify_all(&broker, &some, &failing).await;
    broker.stop().await;
    agencies.stop().await;
}

/// Sources made to answer too much in turn: the household source, the bank
/// (income, money, outflows), one source of each other indicator's input
/// and one the indicators do not read.
const OVERSIZED_IN_TURN: [&str; 8] = [
    "public-security",
    "rural-commercial-bank",
    "traffic-police",
    "housing-management",
    "market-supervision",
    "financial-bureau",
    "civil-affairs",
    "disabled-federation",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_are_the_sources_error_over_grpc() {
    let today = china_today();
    let agencies = Agencies::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let broker = Broker::start(&agencies, RAW).await.unwrap();
    let mut control = AgencyControlServiceClient::connect(agencies.control.clone())
        .await
        .unwrap();
    let pop = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: today.parse().unwrap(),
    });
    let truths = pop.truth(&TruthPolicy::default());
    let mut next_household = 7;
    let mut pick = |n: usize| -> Vec<&GroundTruth> {
        (0..n)
            .map(|_| {
                next_household = (next_household + 1) % truths.len();
                &truths[next_household]
            })
            .collect()
    };

    // Each in turn: three households each, so that every way of being too
    // large (many facts, one huge field, many large facts) comes up.
    let client = broker.client().await.unwrap();
    let mut details = Vec::new();
    for source in OVERSIZED_IN_TURN {
        set(&mut control, Fault::Oversized.request(source)).await;
        let failing = BTreeMap::from([(source.to_owned(), SourceStatus::Error)]);
        let reports = verify_all_with(&client, &pick(3), &failing, OVERSIZED_DEADLINE).await;
        details.extend(details_of(&reports, &[source]));
        clear(&mut control, source).await;
    }
    // The answers too large in bytes reached the broker (the simulated
    // departments send without a limit) and its decoder refused them.
    assert_both_limits(&details, "decoded message length too large");

    // Random combinations: one to three oversized sources among up to two
    // others failing in any other way.
    let mut rng = XorShift(0x0BE5_17ED);
    for _ in 0..4 {
        let mut failing = BTreeMap::new();
        let oversized = 1 + rng.next(3);
        let others = rng.next(3);
        while failing.len() < oversized + others {
            let source = Agency::ALL[rng.next(Agency::ALL.len())].id();
            if failing.contains_key(source) {
                continue;
            }
            let fault = if failing.len() < oversized {
                Fault::Oversized
            } else {
                FAULTS[rng.next(FAULTS.len())]
            };
            set(&mut control, fault.request(source)).await;
            failing.insert(source.to_owned(), fault.status());
        }
        let client = broker.client().await.unwrap();
        verify_all_with(&client, &pick(3), &failing, OVERSIZED_DEADLINE).await;
        for source in failing.keys() {
            clear(&mut control, source).await;
        }
    }

    // The broker is still whole: healthy again, nothing left over.
    verify_all(&broker, &pick(3), &BTreeMap::new()).await;
    broker.stop().await;
    agencies.stop().await;
}

/// The `[[sources]]` of a broker whose 28 sources are simulated in its own
/// process (transport `simulated`), those in `oversized` answering too much.
fn simulated_sources(today: &str, oversized: &[&str]) -> String {
    let mut out = format!(
        "[simulation]\nseed = {SEED}\nhouseholds = {HOUSEHOLDS}\ntoday = \"{today}\"\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n\n"
    );
    for agency in Agency::ALL {
        let id = agency.id();
        out.push_str(&format!(
            "[[sources]]\nid = \"{id}\"\n[sources.transport]\ntype = \"simulated\"\n"
        ));
        if oversized.contains(&id) {
            out.push_str("oversized_rate = 1.0\n");
        }
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_are_the_sources_error_in_process() {
    let today = china_today();
    let pop = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: today.parse().unwrap(),
    });
    let truths = pop.truth(&TruthPolicy::default());
    let cases: [&[&str]; 3] = [
        &["employment"],
        &["public-security"],
        &["rural-commercial-bank", "traffic-police", "civil-affairs"],
    ];
    let mut details = Vec::new();
    for (i, oversized) in cases.iter().enumerate() {
        let broker = BrokerProcess::start(
            &format!("{}\n{RAW}", simulated_sources(&today, oversized)),
            &[],
        )
        .await
        .unwrap();
        let client = broker.client().await.unwrap();
        let failing: BTreeMap<String, SourceStatus> = oversized
            .iter()
            .map(|s| ((*s).to_owned(), SourceStatus::Error))
            .collect();
        let some: Vec<&GroundTruth> = truths.iter().skip(20 + 4 * i).take(4).collect();
        let reports = verify_all_with(&client, &some, &failing, OVERSIZED_DEADLINE).await;
        details.extend(details_of(&reports, oversized));
        broker.stop().await;
    }
    assert_both_limits(&details, "bytes, at most");
}
