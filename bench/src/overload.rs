//! Overload (issue 10): what the broker does at twice its peak, and
//! whether one saturated source slows households that do not need it.
//!
//! - **O1, overload**: a broker with the 28 simulated sources in process at
//!   zero latency and `server.max_in_flight` = the closed loop's
//!   concurrency. Its peak is measured in a closed loop; then twice that
//!   rate is offered in an open loop; then the peak is measured again, so
//!   that what changes over the run (the audit log and the report store
//!   grow) weighs on both sides. Goodput (whole reports per second)
//!   against the mean of the two peaks (and against the first alone), how
//!   fast the shed calls were refused
//!   (`UNAVAILABLE`/`RESOURCE_EXHAUSTED`), and the broker's resident memory
//!   at peak and under overload.
//! - **O2, a saturated source**: the simulated agencies as their own
//!   process with realistic latencies; the rural commercial bank made slow
//!   behind a bulkhead of 4 calls. Medical-assistance verifications (a
//!   purpose that never asks a bank) at a low open-loop rate: alone; beside
//!   a flood of Dibao verifications (which ask the bank) with the bank
//!   healthy; and beside the same flood with the bank slow (p50 2 s), so
//!   saturated at many times what it can take. The last two differ only in
//!   the bank: their difference is what a saturated source costs the
//!   households that do not need it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hedui_mock_agencies::control::proto::Latency;
use hedui_proto::v1::{
    Purpose, VerifyRequest, verification_service_client::VerificationServiceClient,
};
use serde::Serialize;
use tonic::transport::Channel;

use crate::{
    clients,
    load::{self, LoadResult, Outcome, Percentiles},
    procs::{self, Agencies},
    scenarios::Bench,
};

/// O1's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Overload {
    /// `server.max_in_flight` of the broker.
    pub(crate) max_in_flight: usize,
    /// Closed loop: whole reports per second, and their latency.
    pub(crate) peak_per_s: f64,
    pub(crate) peak_ms: Percentiles,
    /// Offered in the open loop, calls per second.
    pub(crate) offered_per_s: f64,
    /// Whole reports per second under overload, and their latency.
    pub(crate) goodput_per_s: f64,
    pub(crate) goodput_ms: Percentiles,
    /// The closed loop again, after the overload.
    pub(crate) peak_after_per_s: f64,
    /// Goodput ÷ the mean of the two peaks.
    pub(crate) goodput_ratio: f64,
    /// Goodput ÷ the first peak.
    pub(crate) goodput_ratio_first: f64,
    /// Calls shed (UNAVAILABLE or RESOURCE_EXHAUSTED), and how long the
    /// refusal took.
    pub(crate) shed: u64,
    pub(crate) shed_ms: Percentiles,
    /// Any other failure (a deadline, a source that did not answer).
    pub(crate) other_errors: u64,
    pub(crate) first_other_error: Option<String>,
    /// Highest resident memory of the broker in each phase, KiB.
    pub(crate) peak_rss_kib: u64,
    pub(crate) overload_rss_kib: u64,
    /// CPU milliseconds of the broker per whole report, at peak and under
    /// overload, and of the load generator.
    pub(crate) peak_server_cpu_ms: f64,
    pub(crate) overload_server_cpu_ms: f64,
    pub(crate) peak_client_cpu_ms: f64,
    pub(crate) overload_client_cpu_ms: f64,
    /// How the processes were placed on the cores.
    pub(crate) placement: String,
}

/// Pins every thread of `pid` to `cores` (`taskset -a -p -c`).
fn pin(pid: u32, cores: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset (util-linux) is needed to place the broker and the load generator")?;
    if !status.success() {
        bail!("taskset -a -p -c {cores} {pid} failed");
    }
    Ok(())
}

/// The cores `pid` may run on, as `taskset -p -c` lists them (`0,1`,
/// `0-3`).
fn affinity(pid: u32) -> anyhow::Result<String> {
    let out = std::process::Command::new("taskset")
        .args(["-p", "-c", &pid.to_string()])
        .output()
        .context("taskset (util-linux) is needed to place the broker and the load generator")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "pid 42's current affinity list: 0,1"
    match text.rsplit_once(": ") {
        Some((_, list)) if out.status.success() && !list.trim().is_empty() => {
            Ok(list.trim().to_owned())
        }
        _ => bail!("taskset -p -c {pid}: unexpected output {text:?}"),
    }
}

fn cpu_ms_per(pid: u32, since: f64, ops: u64) -> f64 {
    let now = procs::cpu_seconds(pid).unwrap_or(since);
    if ops == 0 {
        0.0
    } else {
        (now - since) * 1000.0 / ops as f64
    }
}

/// O2's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Isolation {
    /// Medical-assistance verifications per second, every phase.
    pub(crate) rate_per_s: f64,
    /// Dibao verifications per second offered in the flood phases.
    pub(crate) flood_per_s: f64,
    /// The bank's slots (`max_concurrent`) and latencies.
    pub(crate) bank: String,
    /// Medical verifications alone.
    pub(crate) alone_ms: Percentiles,
    pub(crate) alone_errors: u64,
    /// Beside the flood, the bank healthy.
    pub(crate) healthy_ms: Percentiles,
    pub(crate) healthy_errors: u64,
    /// Beside the flood, the bank saturated.
    pub(crate) saturated_ms: Percentiles,
    pub(crate) saturated_errors: u64,
    pub(crate) first_error: Option<String>,
    /// Saturated p99 − healthy p99, milliseconds.
    pub(crate) p99_difference_ms: f64,
    /// The flood's reports with and without the bank's answer, per phase.
    pub(crate) healthy_flood: (u64, u64),
    pub(crate) saturated_flood: (u64, u64),
}

/// How often O1 samples the broker's resident memory for its peak.
const RSS_EVERY: Duration = Duration::from_millis(50);

/// Whether a failure is the broker shedding the call.
fn is_shed(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>().is_some_and(|s| {
        matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
        )
    })
}

pub(crate) async fn overload(bench: &mut Bench) -> anyhow::Result<Overload> {
    let max_in_flight = bench.args.concurrency;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_in_flight = {max_in_flight}\n\n[store]\npath = \"reports.db\"\n\n\
         [verification]\ndefault_deadline_ms = 10000\n\n[cache]\nenabled = false\n\n\
         [simulation]\nseed = {}\nhouseholds = {}\ntoday = \"{}\"\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n",
        bench.pop.seed, bench.pop.households, bench.pop.today
    );
    // The broker on one core, the load generator on the other: in a real
    // deployment the callers are other machines, and here the extra work
    // of offering twice the peak would otherwise be taken from the broker.
    // The broker is confined from its start, so its runtime has one worker
    // thread for its one core (moved there later, it would keep two, and
    // switch between them on the one core).
    let me = std::process::id();
    let two = std::thread::available_parallelism().map_or(1, usize::from) >= 2;
    // The cores to give the load generator back afterwards, read before it
    // is pinned. (Until 2026-12-06 evening they were counted afterwards,
    // with `available_parallelism`, which follows the affinity: the
    // generator, and every broker it started after O1, stayed on core 0
    // for the rest of the run.)
    let cores = affinity(me)?;
    let broker = procs::start_broker_on(
        &bench.bins,
        bench.dir.path(),
        "o1",
        &config,
        two.then_some("0"),
    )
    .await?;
    let placement = if two {
        pin(me, "1")?;
        "hedui started on core 0, the load generator on core 1 (taskset)".to_owned()
    } else {
        "one core, shared".to_owned()
    };
    let channels = clients::channels(&broker.listening_url()?, bench.args.connections).await?;
    let call = bench.verifier(channels.clone(), Arc::clone(&bench.applicants));

    println!(
        "O1: peak, closed loop with {} in flight, {} s ...",
        bench.args.concurrency, bench.args.seconds
    );
    bench.closed_loop(bench.warm_up(), call.clone()).await;
    let rss = procs::RssSampler::start(broker.pid, RSS_EVERY);
    let (server0, client0) = (procs::cpu_seconds(broker.pid)?, procs::cpu_seconds(me)?);
    let mut peak = bench.closed_loop(bench.duration(), call.clone()).await;
    let peak_server_cpu_ms = cpu_ms_per(broker.pid, server0, peak.ok);
    let peak_client_cpu_ms = cpu_ms_per(me, client0, peak.ok);
    let peak_rss_kib = rss.finish_peak().await;
    let peak_per_s = peak.rate();
    if peak.ok == 0 {
        bail!(
            "O1: nothing succeeded at peak: {}",
            peak.first_error.unwrap_or_default()
        );
    }

    let offered = 2.0 * peak_per_s;
    println!(
        "O1: {offered:.1} calls/s offered (twice the peak), open loop, {} s ...",
        bench.args.seconds
    );
    let shed = Arc::new(AtomicU64::new(0));
    let shed_us = Arc::new(Mutex::new(Vec::new()));
    let call_again = call.clone();
    let classify = {
        let (shed, shed_us) = (Arc::clone(&shed), Arc::clone(&shed_us));
        move |i: usize| {
            let call = call.clone();
            let (shed, shed_us) = (Arc::clone(&shed), Arc::clone(&shed_us));
            async move {
                let started = Instant::now();
                let outcome: Outcome = call(i).await;
                if let Err(e) = &outcome
                    && is_shed(e)
                {
                    shed.fetch_add(1, Ordering::Relaxed);
                    shed_us
                        .lock()
                        .expect("shed latencies")
                        .push(started.elapsed().as_micros() as u64);
                }
                outcome
            }
        }
    };
    let rss = procs::RssSampler::start(broker.pid, RSS_EVERY);
    let (server0, client0) = (procs::cpu_seconds(broker.pid)?, procs::cpu_seconds(me)?);
    let mut over: LoadResult =
        load::open_loop(offered, bench.duration(), 100_000, bench.next, classify).await;
    let overload_server_cpu_ms = cpu_ms_per(broker.pid, server0, over.ok);
    let overload_client_cpu_ms = cpu_ms_per(me, client0, over.ok);
    let overload_rss_kib = rss.finish_peak().await;
    bench.next += (over.ok + over.errors) as usize;
    println!(
        "O1: peak again, closed loop with {} in flight, {} s ...",
        bench.args.concurrency, bench.args.seconds
    );
    let after = bench.closed_loop(bench.duration(), call_again).await;
    broker.stop().await;
    if placement.starts_with("hedui") {
        pin(me, &cores)?;
        let now = affinity(me)?;
        if now != cores {
            bail!("O1: the load generator is on cores {now} after O1, on {cores} before it");
        }
    }

    let shed = shed.load(Ordering::Relaxed);
    let mut shed_us = std::mem::take(&mut *shed_us.lock().expect("shed latencies"));
    let other_errors = over.errors - shed;
    let goodput_per_s = over.rate();
    let peak_after_per_s = after.rate();
    Ok(Overload {
        max_in_flight,
        peak_per_s,
        peak_ms: Percentiles::of(&mut peak.latencies_us),
        offered_per_s: offered,
        goodput_per_s,
        goodput_ms: Percentiles::of(&mut over.latencies_us),
        peak_after_per_s,
        goodput_ratio: goodput_per_s / f64::midpoint(peak_per_s, peak_after_per_s),
        goodput_ratio_first: goodput_per_s / peak_per_s,
        shed,
        shed_ms: Percentiles::of(&mut shed_us),
        other_errors,
        first_other_error: (other_errors > 0)
            .then(|| over.first_error.clone())
            .flatten(),
        peak_rss_kib,
        overload_rss_kib,
        peak_server_cpu_ms,
        overload_server_cpu_ms,
        peak_client_cpu_ms,
        overload_client_cpu_ms,
        placement,
    })
}

const BANK: &str = "rural-commercial-bank";
const BANK_SLOTS: u32 = 4;

/// One verification for `purpose`; `Ok` with whether the bank answered.
async fn verify_for(
    channel: Channel,
    applicant: clients::Applicant,
    i: usize,
    purpose: Purpose,
) -> anyhow::Result<bool> {
    let mut client = VerificationServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut request = clients::verification_request(&applicant, i, ISOLATION_DEADLINE);
    request.purpose = purpose as i32;
    let mut request = tonic::Request::new(VerifyRequest {
        request: Some(request),
    });
    request.set_timeout(ISOLATION_DEADLINE + Duration::from_secs(1));
    let report = client
        .verify(request)
        .await?
        .into_inner()
        .report
        .context("no report")?;
    use hedui_proto::v1::SourceStatus;
    let answered = |s: &hedui_proto::v1::SourceResult| {
        matches!(s.status(), SourceStatus::Ok | SourceStatus::NoRecord)
    };
    // A source the purpose does not need is NOT_QUERIED.
    if let Some(bad) = report
        .sources
        .iter()
        .find(|s| s.source_id != BANK && !answered(s) && s.status() != SourceStatus::NotQueried)
    {
        bail!(
            "{} did not answer: {:?} {}",
            bad.source_id,
            bad.status(),
            bad.detail
        );
    }
    Ok(report
        .sources
        .iter()
        .any(|s| s.source_id == BANK && answered(s)))
}

const ISOLATION_DEADLINE: Duration = Duration::from_secs(3);

pub(crate) async fn isolation(bench: &mut Bench, agencies: &Agencies) -> anyhow::Result<Isolation> {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = \"reports.db\"\n\n\
         [verification]\ndefault_deadline_ms = 3000\n\n[cache]\nenabled = false\n\n\
         [limits.sources.{BANK}]\nmax_concurrent = {BANK_SLOTS}\n\n\
         [purposes.medical_assistance]\nsources = [\"public-security\", \"medical-insurance\", \"civil-affairs\", \"disabled-federation\"]\n\n{}",
        agencies.sources_toml
    );
    let broker = procs::start_broker(&bench.bins, bench.dir.path(), "o2", &config).await?;
    let channels = clients::channels(&broker.listening_url()?, bench.args.connections).await?;
    let sources: Vec<String> = agencies.endpoints.keys().cloned().collect();
    let set_bank = |bank: Latency| {
        let (control, sources) = (agencies.control.clone(), sources.clone());
        async move {
            clients::set_all(
                &control,
                &sources,
                |id| {
                    if id == BANK {
                        bank
                    } else {
                        clients::realistic_latency(id)
                    }
                },
                |_| None,
            )
            .await
        }
    };
    let healthy = clients::realistic_latency(BANK);
    let slow = Latency {
        p50_ms: 2000,
        p99_ms: 2500,
    };

    let rate = 20.0;
    // A healthy bank (p50 80 ms) behind 4 slots takes about 50 calls a
    // second; a slow one (p50 2 s) about 2. The flood offers 30.
    let flood = 30.0;
    let medical = {
        let channels = Arc::new(channels.clone());
        let applicants = Arc::clone(&bench.applicants);
        move |i: usize| {
            let channel = channels[i % channels.len()].clone();
            let applicant = applicants[i % applicants.len()].clone();
            async move {
                verify_for(channel, applicant, i, Purpose::MedicalAssistance)
                    .await
                    .map(|_| None)
            }
        }
    };
    let whole = Arc::new(AtomicU64::new(0));
    let bank_missing = Arc::new(AtomicU64::new(0));
    let dibao = {
        let channels = Arc::new(channels);
        let applicants = Arc::clone(&bench.applicants);
        let (whole, bank_missing) = (Arc::clone(&whole), Arc::clone(&bank_missing));
        move |i: usize| {
            let channel = channels[i % channels.len()].clone();
            let applicant = applicants[i % applicants.len()].clone();
            let (whole, bank_missing) = (Arc::clone(&whole), Arc::clone(&bank_missing));
            async move {
                match verify_for(channel, applicant, i, Purpose::DibaoApplication).await {
                    Ok(true) => whole.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => bank_missing.fetch_add(1, Ordering::Relaxed),
                    Err(e) => return Err(e),
                };
                Ok(None)
            }
        }
    };

    set_bank(healthy).await?;
    println!(
        "O2: medical assistance alone at {rate}/s, {} s ...",
        bench.args.seconds
    );
    let mut alone =
        load::open_loop(rate, bench.duration(), 10_000, bench.next, medical.clone()).await;
    bench.next += (alone.ok + alone.errors) as usize;

    // The same medical load beside a Dibao flood, with the bank healthy,
    // then saturated: the difference is what the saturated bank costs the
    // households that do not need it (the flood's own load on the shared
    // cores and departments is in both).
    let mut phases = Vec::new();
    for (name, bank) in [("healthy", healthy), ("saturated", slow)] {
        set_bank(bank).await?;
        whole.store(0, Ordering::Relaxed);
        bank_missing.store(0, Ordering::Relaxed);
        println!(
            "O2: the same while Dibao verifications flood at {flood}/s, the bank {name}, {} s ...",
            bench.args.seconds
        );
        let first = bench.next + 1_000_000;
        let flood_task = tokio::spawn(load::open_loop(
            flood,
            bench.duration() + Duration::from_secs(1),
            10_000,
            first,
            dibao.clone(),
        ));
        // The flood fills the bank's slots first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let result =
            load::open_loop(rate, bench.duration(), 10_000, bench.next, medical.clone()).await;
        bench.next += (result.ok + result.errors) as usize;
        let flood_result = flood_task.await?;
        bench.next = first + (flood_result.ok + flood_result.errors) as usize;
        phases.push((
            result,
            whole.load(Ordering::Relaxed),
            bank_missing.load(Ordering::Relaxed),
            flood_result.errors,
        ));
    }

    clients::reset_all(&agencies.control, &sources).await?;
    broker.stop().await;
    let (mut saturated, sat_whole, sat_missing, _) = phases.pop().context("saturated phase")?;
    let (mut with_healthy, healthy_whole, healthy_missing, _) =
        phases.pop().context("healthy phase")?;
    let alone_ms = Percentiles::of(&mut alone.latencies_us);
    let healthy_ms = Percentiles::of(&mut with_healthy.latencies_us);
    let saturated_ms = Percentiles::of(&mut saturated.latencies_us);
    Ok(Isolation {
        rate_per_s: rate,
        flood_per_s: flood,
        bank: format!(
            "max_concurrent {BANK_SLOTS}; healthy p50 {} p99 {} ms, saturated p50 {} p99 {} ms",
            healthy.p50_ms, healthy.p99_ms, slow.p50_ms, slow.p99_ms
        ),
        p99_difference_ms: saturated_ms.p99_ms - healthy_ms.p99_ms,
        alone_ms,
        alone_errors: alone.errors,
        healthy_ms,
        healthy_errors: with_healthy.errors,
        saturated_ms,
        saturated_errors: saturated.errors,
        first_error: alone
            .first_error
            .take()
            .or(with_healthy.first_error.take())
            .or(saturated.first_error.take()),
        healthy_flood: (healthy_whole, healthy_missing),
        saturated_flood: (sat_whole, sat_missing),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nextest runs each test in a process of its own: pinning this one
    /// moves no other test.
    #[test]
    fn the_cores_read_before_pinning_are_given_back() {
        let me = std::process::id();
        let cores = affinity(me).unwrap();
        let first = cores.split([',', '-']).next().unwrap().to_owned();
        pin(me, &first).unwrap();
        assert_eq!(affinity(me).unwrap(), first);
        pin(me, &cores).unwrap();
        assert_eq!(affinity(me).unwrap(), cores);
        assert!(affinity(u32::MAX).is_err(), "no such process");
    }
}
