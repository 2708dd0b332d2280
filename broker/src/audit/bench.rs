//! `hedui bench-audit`: durable audit records per second, SQLite and
//! PostgreSQL, one writer against 64 concurrent ones (group commit), and
//! the broker's own verification rate on the same machine in the same run,
//! so the figures compare as ratios. `docs/benchmarks.md` has the command
//! and the figures.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use hedui_mock_agencies::{Population, TruthPolicy, sim::SimulatedParams};
use hedui_proto::v1::{Purpose, VerificationRequest};

use super::{
    AuditLog,
    crypto::Suite,
    testkit::{TestStore, postgres_url, sample_entry},
};
use crate::{config::Config, verify::Caller};

/// What `hedui bench-audit` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Records written by the 64 concurrent writers, per backend.
    #[arg(long, default_value_t = 50_000)]
    pub records: usize,
    /// Records written by the single writer (each waits for its commit).
    #[arg(long, default_value_t = 1_000)]
    pub single_records: usize,
    /// Concurrent writers of the group-commit run.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// The algorithm suite.
    #[arg(long, default_value = "sha256-ed25519")]
    pub suite: String,
    /// Skip PostgreSQL (at `HEDUI_TEST_POSTGRES_URL` or the local server).
    #[arg(long)]
    pub no_postgres: bool,
    /// Verifications for the broker's own rate (0 skips it).
    #[arg(long, default_value_t = 2_000)]
    pub verifications: usize,
}

/// Writes `n` records with `writers` concurrent writers, each awaiting its
/// commit; returns the records per second.
async fn measure(log: &AuditLog, n: usize, writers: usize) -> anyhow::Result<f64> {
    let key = log.subject_key().clone();
    // Entries are built before the clock starts: the audit is measured,
    // not the sample generator.
    let per = n.div_ceil(writers);
    let batches: Vec<Vec<_>> = (0..writers)
        .map(|w| {
            (w * per..((w + 1) * per).min(n))
                .map(|i| sample_entry(i, &key))
                .collect()
        })
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|entries| {
            let log = log.clone();
            tokio::spawn(async move {
                for e in entries {
                    log.record(e).await?;
                }
                Ok::<_, super::AuditError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Runs the benchmark and prints its table.
///
/// # Errors
/// When a store cannot be opened or a record not written.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let suite = Suite::from_name(&args.suite)
        .with_context(|| format!("--suite: {:?} is not sha256-ed25519 or sm3-sm2", args.suite))?;
    let dir = std::env::temp_dir().join(format!("hedui-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "hedui bench-audit: durable audit records per second ({} cores, suite {suite})",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!(
        "{:<10} {:>8} {:>8} {:>12}",
        "backend", "writers", "records", "records/s"
    );
    let mut stores = vec![TestStore::sqlite(&dir, "bench", suite)];
    if !args.no_postgres {
        stores.push(TestStore::postgres(suite));
    }
    let mut best = Vec::new();
    for store in &stores {
        let log = store.open().await.with_context(|| match store.kind() {
            "postgres" => format!("postgres at {} (or pass --no-postgres)", postgres_url()),
            k => k.to_owned(),
        })?;
        for (writers, n) in [(1, args.single_records), (args.writers, args.records)] {
            let rate = measure(&log, n, writers).await?;
            println!("{:<10} {writers:>8} {n:>8} {rate:>12.0}", store.kind());
            if writers > 1 {
                best.push((store.kind(), rate));
            }
        }
        log.close().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if args.verifications > 0 {
        let rate = verification_rate(args.verifications, args.writers).await?;
        println!(
            "broker verifications/s (28 in-process simulated sources at zero latency, {} concurrent, SQLite audit): {rate:.0}",
            args.writers
        );
        for (kind, audit_rate) in best {
            println!(
                "{kind}: audit capacity / verification rate = {:.1} records per verification",
                audit_rate / rate
            );
        }
    }
    Ok(())
}

/// The broker's verification rate with sources that answer at once: the
/// most verifications one broker on this machine could ask the audit log
/// to record.
async fn verification_rate(n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let dir = std::env::temp_dir().join(format!("hedui-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let mut config = Config::default();
    config.store.path = dir.join("reports.db");
    config.audit.path = Some(dir.join("audit.db"));
    for (k, v) in [
        ("latency_p50_ms", 0),
        ("latency_p99_ms", 0),
        ("households", 2000),
    ] {
        config.simulation.insert(k.into(), toml::Value::Integer(v));
    }
    let built = crate::app::build(&config).await?;
    let params: SimulatedParams =
        hedui_adapters::registry::parse_params("simulated", &config.simulation)?;
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
    let verifier = Arc::clone(&built.verifier);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let verifier = Arc::clone(&verifier);
            let next = Arc::clone(&next);
            let applicants = applicants.clone();
            tokio::spawn(async move {
                let caller = Caller::new("bench");
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let request = VerificationRequest {
                        applicant_id: applicants[i % applicants.len()].clone(),
                        consent_reference: format!("SQ-BENCH-{i}"),
                        purpose: Purpose::DibaoReview as i32,
                        operator_id: "bench".into(),
                        deadline: prost_types::Duration::try_from(Duration::from_secs(10)).ok(),
                        ..Default::default()
                    };
                    let valid = verifier
                        .validate(Some(request), None)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    verifier
                        .run(valid, &caller, None)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    built.verifier.store().close().await;
    built.verifier.audit().close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rate)
}
