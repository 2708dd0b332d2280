//! `hedui bench-review`: a bulk review of a Dachuan-scale enrolment (about
//! 46 thousand households) against in-process simulated sources held to
//! realistic rate limits. Prints the wall time against the bound the
//! slowest source's rate sets (households ÷ its rate: each source is asked
//! once per household), and the cache hit ratio. `docs/benchmarks.md` has
//! the command and the figures.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use hedui_mock_agencies::{Population, TruthPolicy, sim::SimulatedParams};
use hedui_proto::v1::{Purpose, VerificationRequest};

use super::Watch;
use crate::{config::Config, verify::Caller};

/// What `hedui bench-review` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchReviewArgs {
    /// Households enrolled and reviewed.
    #[arg(long, default_value_t = 46_000)]
    pub households: usize,
    /// Households verified at once during the review.
    #[arg(long, default_value_t = 256)]
    pub concurrency: u32,
    /// A source's rate limit, calls per second, as SOURCE=RATE; repeated.
    /// Unset sources keep the defaults: the household register 1,000/s,
    /// the rural commercial bank 400/s (the slowest), every other source
    /// 800/s. Each may burst a tenth of a second's worth.
    #[arg(long = "rate", value_name = "SOURCE=RATE")]
    pub rates: Vec<String>,
    /// Keep the cache during the review (it is cold at the start either
    /// way: the review runs on a broker of its own).
    #[arg(long)]
    pub no_cache: bool,
}

fn rates(args: &BenchReviewArgs, ids: &[String]) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut rates: BTreeMap<String, u32> = ids
        .iter()
        .map(|id| {
            let rate = match id.as_str() {
                "public-security" => 1_000,
                "rural-commercial-bank" => 400,
                _ => 800,
            };
            (id.clone(), rate)
        })
        .collect();
    for spec in &args.rates {
        let (id, rate) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--rate {spec:?}: expected SOURCE=RATE"))?;
        let rate: u32 = rate.parse().ok().filter(|r| *r > 0).ok_or_else(|| {
            anyhow::anyhow!("--rate {spec:?}: the rate must be a whole number > 0")
        })?;
        let slot = rates.get_mut(id).ok_or_else(|| {
            anyhow::anyhow!(
                "--rate {spec:?}: no source {id:?}; sources: {}",
                ids.join(", ")
            )
        })?;
        *slot = rate;
    }
    Ok(rates)
}

fn config(dir: &std::path::Path, households: usize) -> Config {
    let mut config = Config::default();
    config.store.path = dir.join("reports.db");
    config.audit.path = Some(dir.join("audit.db"));
    config.changes.transport = Some("none".into());
    for (k, v) in [
        ("latency_p50_ms", 0),
        ("latency_p99_ms", 0),
        ("households", i64::try_from(households).unwrap_or(i64::MAX)),
    ] {
        config.simulation.insert(k.into(), toml::Value::Integer(v));
    }
    config
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// When the broker cannot be built or a household cannot be enrolled.
pub async fn run(args: &BenchReviewArgs) -> anyhow::Result<()> {
    if args.households == 0 {
        anyhow::bail!("--households: must be at least 1");
    }
    let dir = tempfile_dir()?;
    let caller = Caller::new("bench-platform");

    // 1. Enrolment, on a broker without limits (not measured).
    let mut plain = config(&dir, args.households);
    plain.cache.enabled = false;
    let built = crate::app::build(&plain).await?;
    let params: SimulatedParams =
        hedui_adapters::registry::parse_params("simulated", &plain.simulation)?;
    let population = Population::shared(
        &params
            .population_config()
            .map_err(|e| anyhow::anyhow!("simulation: {e}"))?,
    );
    let applicants: Vec<String> = population
        .truth(&TruthPolicy::dachuan_2018())
        .into_iter()
        .map(|t| t.applicant_id)
        .collect();
    let ids: Vec<String> = built
        .verifier
        .sources()
        .iter()
        .map(|s| s.spec.id.clone())
        .collect();
    let rates = rates(args, &ids)?;
    println!("enrolling {} households (not measured) …", applicants.len());
    let watch = Arc::new(Watch::new(built.verifier.clone()));
    let enrol_started = Instant::now();
    let mut enrolled = futures::stream::iter(applicants.iter().cloned())
        .map(|id| {
            let watch = watch.clone();
            let caller = caller.clone();
            async move {
                watch
                    .enrol(
                        &caller,
                        Some(VerificationRequest {
                            applicant_id: id,
                            consent_reference: "SQ-BENCH".into(),
                            purpose: Purpose::DibaoReview as i32,
                            operator_id: "bench".into(),
                            ..Default::default()
                        }),
                    )
                    .await
            }
        })
        .buffer_unordered(64);
    while let Some(r) = enrolled.next().await {
        r.map_err(|e| anyhow::anyhow!("enrolment: {e}"))?;
    }
    drop(enrolled);
    println!("enrolled in {:.1} s", enrol_started.elapsed().as_secs_f64());
    drop(watch);
    built.verifier.store().close().await;
    built.verifier.audit().close().await;
    drop(built);

    // 2. The review, on a broker held to the rates, with a cold cache.
    let mut limited = config(&dir, args.households);
    limited.cache.enabled = !args.no_cache;
    for (id, rate) in &rates {
        limited.limits.sources.insert(
            id.clone(),
            crate::guard::config::LimitsOverride {
                rate_per_s: Some(*rate),
                // A tenth of a second's worth may go at once: with a burst
                // of 1 every slot waits for a timer, and tokio's
                // millisecond timers would pace a 400/s source at 333/s.
                // The rate over any longer stretch is still the limit.
                burst: Some((*rate / 10).max(1)),
                max_concurrent: Some(0),
                ..Default::default()
            },
        );
    }
    let built = crate::app::build(&limited).await?;
    let watch = Arc::new(Watch::new(built.verifier.clone()));
    let (slowest, slowest_rate) = rates
        .iter()
        .min_by_key(|(_, r)| **r)
        .map(|(id, r)| (id.clone(), *r))
        .expect("sources");
    let n = applicants.len();
    let bound = Duration::from_secs_f64(n as f64 / f64::from(slowest_rate));
    println!(
        "reviewing {n} households, {} at once; slowest source {slowest} at {slowest_rate}/s sets the bound {:.1} s",
        args.concurrency,
        bound.as_secs_f64()
    );
    let started = Instant::now();
    let state = watch.review(&caller, args.concurrency, None).await?;
    let wall = started.elapsed();
    let ratio = wall.as_secs_f64() / bound.as_secs_f64();
    let hit = if state.source_answers == 0 {
        0.0
    } else {
        f64::from(state.cache_hits) / f64::from(state.source_answers)
    };
    println!();
    println!(
        "| households | done | failed | alerts | wall time | bound (slowest rate) | wall / bound | cache hits |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {:.1} s | {:.1} s ({slowest} {slowest_rate}/s) | {ratio:.3} | {:.1} % ({}/{}) |",
        state.total,
        state.done,
        state.failed,
        state.alerts,
        wall.as_secs_f64(),
        bound.as_secs_f64(),
        hit * 100.0,
        state.cache_hits,
        state.source_answers
    );
    built.verifier.store().close().await;
    built.verifier.audit().close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "hedui-bench-review-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
