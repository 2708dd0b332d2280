//! S5's soak (issue 9): whether the broker's memory stops growing under
//! sustained load.
//!
//! S2's set-up (the simulated agencies as their own process over gRPC,
//! cache off) with S3's realistic latencies, so that many verifications
//! wait on their sources at once; a closed loop holds `--soak-in-flight`
//! verifications in flight for `--soak-seconds` (default ten minutes). The
//! broker's resident memory is sampled every `--soak-sample-seconds`. The
//! figure is the growth of the last third of the run over the middle third
//! (the median sample of each, since single samples jump by a tenth with
//! transient allocations and fall back): after the first third has filled
//! the caches and pools, a leak shows as steady growth, a plateau as none.
//! The highest sample of each third is printed too.

use std::{sync::Arc, time::Duration};

use anyhow::bail;
use serde::Serialize;

use crate::{
    clients, load,
    load::Percentiles,
    procs::{self, Agencies},
    scenarios::Bench,
};

/// The soak's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Soak {
    /// Verifications held in flight.
    pub(crate) in_flight: usize,
    /// How long the load ran, seconds.
    pub(crate) seconds: f64,
    /// Whole verifications, failures, and their rate.
    pub(crate) verifications: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) per_s: f64,
    pub(crate) latency_ms: Percentiles,
    /// The broker's idle resident memory before the load, KiB.
    pub(crate) idle_rss_kib: u64,
    /// `(seconds since the start, KiB)`, every sample.
    pub(crate) samples: Vec<(f64, u64)>,
    /// Median sample of each third of the run, KiB.
    pub(crate) thirds_median_kib: [u64; 3],
    /// Highest sample of each third of the run, KiB.
    pub(crate) thirds_max_kib: [u64; 3],
    /// Last third's median sample over the middle third's, minus one.
    pub(crate) growth: f64,
}

pub(crate) async fn soak(bench: &mut Bench, agencies: &Agencies) -> anyhow::Result<Soak> {
    let in_flight = bench.args.soak_in_flight;
    let seconds = bench.args.soak_seconds;
    if in_flight == 0 || seconds <= 0.0 {
        bail!("--soak-in-flight and --soak-seconds must be above 0");
    }
    let config = bench.broker_config(&format!(
        "[verification]\ndefault_deadline_ms = 10000\n\n[cache]\nenabled = false\n\n{}",
        agencies.sources_toml
    ));
    let broker = procs::start_broker(&bench.bins, bench.dir.path(), "soak", &config).await?;
    let channels = clients::channels(&broker.listening_url()?, bench.args.connections).await?;
    let call = bench.verifier(channels, Arc::clone(&bench.applicants));
    let sources: Vec<String> = agencies.endpoints.keys().cloned().collect();
    clients::set_all(
        &agencies.control,
        &sources,
        clients::realistic_latency,
        |_| None,
    )
    .await?;
    let idle_rss_kib = procs::rss_bytes(broker.pid)? / 1024;
    println!(
        "soak: {in_flight} verifications in flight for {seconds} s, realistic latencies, \
         resident memory every {} s ...",
        bench.args.soak_sample_seconds
    );
    let sampler = procs::RssSampler::start(
        broker.pid,
        Duration::from_secs_f64(bench.args.soak_sample_seconds.max(0.1)),
    );
    let mut result = load::closed_loop(
        in_flight,
        Duration::from_secs_f64(seconds),
        bench.next,
        call,
    )
    .await;
    let samples = sampler.finish().await;
    bench.next += (result.ok + result.errors) as usize;
    clients::reset_all(&agencies.control, &sources).await?;
    broker.stop().await;
    if samples.len() < 3 {
        bail!("soak: fewer than 3 memory samples; run longer or sample more often");
    }
    let third = |i: usize| {
        let (from, to) = (seconds * i as f64 / 3.0, seconds * (i + 1) as f64 / 3.0);
        let mut kib: Vec<u64> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, k)| *k)
            .collect();
        kib.sort_unstable();
        let median = kib.get(kib.len() / 2).copied().unwrap_or(0);
        (median, kib.last().copied().unwrap_or(0))
    };
    let thirds = [third(0), third(1), third(2)];
    let thirds_median_kib = thirds.map(|t| t.0);
    let thirds_max_kib = thirds.map(|t| t.1);
    let growth = thirds_median_kib[2] as f64 / thirds_median_kib[1].max(1) as f64 - 1.0;
    Ok(Soak {
        in_flight,
        seconds,
        verifications: result.ok,
        errors: result.errors,
        first_error: result.first_error.clone(),
        per_s: result.rate(),
        latency_ms: Percentiles::of(&mut result.latencies_us),
        idle_rss_kib,
        samples,
        thirds_median_kib,
        thirds_max_kib,
        growth,
    })
}
