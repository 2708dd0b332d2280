//! The scenarios, in the order they run: baseline A, baseline B, S1 (and
//! h2load on its broker), S2, S3 (on S2's broker), S4, S5.

use std::{
    collections::BTreeSet,
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chrono::NaiveDate;
use hedui_adapters::catalog::HOUSEHOLD_SOURCE;
use hedui_mock_agencies::{
    Population, PopulationConfig,
    control::proto::{Faults, GetStatsRequest, ResetStatsRequest},
};
use hedui_proto::v1::{
    RegistrationStatus, StreamVerifyRequest, VerifyRequest,
    verification_service_client::VerificationServiceClient,
};
use prost::Message as _;
use tonic::transport::Channel;

use crate::{
    clients::{self, DirectClients, REQUEST_DEADLINE},
    load::{self, LoadResult, Outcome, Percentiles},
    output::{H2load, LatencyComparison, Memory, MemoryLevel, Meta, Ratio, Results, Row},
    procs::{self, Agencies, Binaries, PopulationArgs, Proc},
};

/// What to run and how long.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// Measured seconds per scenario (after a short warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// Requests in flight at once in the closed-loop scenarios.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// HTTP/2 connections of the load generator to the server under test.
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// Households of the simulated population (both processes generate it).
    #[arg(long, default_value_t = 3000)]
    pub(crate) households: usize,
    /// Seed of the simulated population.
    #[arg(long, default_value_t = 2018)]
    pub(crate) seed: u64,
    /// The population's today, YYYY-MM-DD (default: today in China time).
    #[arg(long)]
    pub(crate) today: Option<String>,
    /// Requests declare no members. By default each request declares the
    /// household's active members, as a platform's application does, and
    /// the broker asks the other sources while household registration is
    /// asked.
    #[arg(long)]
    pub(crate) undeclared: bool,
    /// S4: households verified once to warm the cache, then repeated.
    #[arg(long, default_value_t = 100)]
    pub(crate) warm_households: usize,
    /// S5: numbers of verifications held in flight, comma-separated.
    #[arg(long, default_value = "1,1000,10000", value_delimiter = ',')]
    pub(crate) memory_levels: Vec<usize>,
    /// S5: which sources hang: `fan-out` (every source but public-security,
    /// so a verification has resolved its household and waits on 27 source
    /// calls) or `all` (a verification waits on the household source).
    #[arg(long, default_value = "fan-out", value_parser = ["fan-out", "all"])]
    pub(crate) memory_hang: String,
    /// S3's offered rate, verifications per second (default: half of S2's).
    #[arg(long)]
    pub(crate) s3_rate: Option<f64>,
    /// S5's soak: verifications held in flight (`--only soak`).
    #[arg(long, default_value_t = 256)]
    pub(crate) soak_in_flight: usize,
    /// S5's soak: how long, seconds.
    #[arg(long, default_value_t = 600.0)]
    pub(crate) soak_seconds: f64,
    /// S5's soak: seconds between samples of the broker's memory.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) soak_sample_seconds: f64,
    /// Scenarios to run, comma-separated, of a, b, s1, s2, s3, s4, s5,
    /// h2load, overload (O1), isolation (O2), soak (default all but soak,
    /// which takes ten minutes). S3 needs S2's rate unless --s3-rate is given.
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
    /// Directory of the `hedui` and `mock-agencies` binaries (default:
    /// beside this executable, or `$CARGO_TARGET_DIR/release`).
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
    /// Writes the figures as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

/// Run when `--only` is not given: all but the ten-minute soak.
const DEFAULT: [&str; 10] = [
    "a",
    "b",
    "s1",
    "h2load",
    "s2",
    "s3",
    "s4",
    "s5",
    "overload",
    "isolation",
];

/// Run only when asked for with `--only`: the soak takes ten minutes.
const OPT_IN: [&str; 1] = ["soak"];

/// `[limits.default] max_concurrent` of the S2 and S3 broker (see `s2_s3`).
const S3_MAX_CONCURRENT: u32 = 512;

/// The fewest verifications in flight at which S5's figure is held to its
/// target (see `ratios`).
const S5_TARGET_FROM: usize = 100;

fn ms_per_op(cpu_s: f64, ops: u64) -> Option<f64> {
    (ops > 0).then(|| cpu_s * 1000.0 / ops as f64)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The state of one run.
#[derive(Debug)]
pub(crate) struct Bench {
    pub(crate) args: RunArgs,
    pub(crate) bins: Binaries,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) pop: PopulationArgs,
    pub(crate) applicants: Arc<Vec<clients::Applicant>>,
    /// Number of the next request, so every request of the run has its own.
    pub(crate) next: usize,
    rows: Vec<Row>,
    ratios: Vec<Ratio>,
}

impl Bench {
    pub(crate) fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.args.seconds)
    }

    pub(crate) fn warm_up(&self) -> Duration {
        Duration::from_secs_f64((self.args.seconds / 5.0).clamp(0.2, 2.0))
    }

    /// A closed loop of `--concurrency` calls for `duration`, numbering its
    /// requests on from the last one sent.
    pub(crate) async fn closed_loop<F, Fut>(&mut self, duration: Duration, call: F) -> LoadResult
    where
        F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let result = load::closed_loop(self.args.concurrency, duration, self.next, call).await;
        self.next += (result.ok + result.errors) as usize;
        result
    }

    fn rate_of(&self, id: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.id == id).map(|r| r.ops_per_s)
    }

    fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }

    /// Warms up, then runs `call` in a closed loop for the scenario's time,
    /// with the CPU of `server` and `agencies` read around the measured
    /// part; adds the row.
    async fn closed<F, Fut>(
        &mut self,
        id: &str,
        name: &str,
        op: &str,
        server: Option<&Proc>,
        agencies: Option<&Proc>,
        call: F,
    ) -> anyhow::Result<()>
    where
        F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        println!("{id}: {name}: warming up, then {} s ...", self.args.seconds);
        let warm = self.closed_loop(self.warm_up(), call.clone()).await;
        if warm.ok == 0 {
            bail!(
                "{id}: no request succeeded during the warm-up: {}",
                warm.first_error.unwrap_or_default()
            );
        }
        let cpu = Cpu::read(server, agencies)?;
        let result = self.closed_loop(self.duration(), call).await;
        let used = cpu.since(server, agencies)?;
        let load = format!(
            "closed loop, {} in flight, {} connections",
            self.args.concurrency, self.args.connections
        );
        self.push_row(id, name, op, &load, result, &used);
        Ok(())
    }

    fn push_row(
        &mut self,
        id: &str,
        name: &str,
        op: &str,
        load: &str,
        mut result: LoadResult,
        used: &CpuUsed,
    ) {
        let row = Row {
            id: id.into(),
            name: name.into(),
            op: op.into(),
            load: load.into(),
            seconds: result.elapsed.as_secs_f64(),
            ok: result.ok,
            errors: result.errors,
            dropped: result.dropped,
            first_error: result.first_error.take(),
            ops_per_s: result.rate(),
            latency_ms: Percentiles::of(&mut result.latencies_us),
            server_cpu_ms_per_op: used.server.and_then(|s| ms_per_op(s, result.ok)),
            agencies_cpu_ms_per_op: used.agencies.and_then(|s| ms_per_op(s, result.ok)),
            client_cpu_ms_per_op: ms_per_op(used.client, result.ok),
        };
        println!(
            "{id}: {:.1} {op}/s, p99 {:.2} ms, {} errors",
            row.ops_per_s, row.latency_ms.p99_ms, row.errors
        );
        self.rows.push(row);
    }

    /// A closure verifying the `i`-th applicant through `channels`.
    pub(crate) fn verifier(
        &self,
        channels: Vec<Channel>,
        applicants: Arc<Vec<clients::Applicant>>,
    ) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>>
    + Clone
    + Send
    + Sync
    + 'static {
        let channels = Arc::new(channels);
        move |i| {
            let channel = channels[i % channels.len()].clone();
            let applicants = Arc::clone(&applicants);
            Box::pin(async move {
                clients::verify_once(channel, &applicants[i % applicants.len()], i).await
            })
        }
    }

    /// The configuration of a broker: its listener, store, deadlines and
    /// `body` (cache, limits, sources).
    pub(crate) fn broker_config(&self, body: &str) -> String {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = \"reports.db\"\n\n{body}\n")
    }
}

/// CPU seconds of the processes at the start of a measurement.
#[derive(Debug)]
struct Cpu {
    server: Option<f64>,
    agencies: Option<f64>,
    client: f64,
}

/// CPU seconds used during a measurement.
#[derive(Debug)]
struct CpuUsed {
    server: Option<f64>,
    agencies: Option<f64>,
    client: f64,
}

impl Cpu {
    fn read(server: Option<&Proc>, agencies: Option<&Proc>) -> anyhow::Result<Self> {
        Ok(Self {
            server: server.map(Proc::cpu_seconds).transpose()?,
            agencies: agencies.map(Proc::cpu_seconds).transpose()?,
            client: procs::cpu_seconds(std::process::id())?,
        })
    }

    fn since(&self, server: Option<&Proc>, agencies: Option<&Proc>) -> anyhow::Result<CpuUsed> {
        let now = Self::read(server, agencies)?;
        let diff = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        Ok(CpuUsed {
            server: diff(self.server, now.server),
            agencies: diff(self.agencies, now.agencies),
            client: now.client - self.client,
        })
    }
}

/// Runs the selected scenarios, prints the table, writes the JSON.
pub(crate) async fn run(args: &RunArgs) -> anyhow::Result<()> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds: must be above 0 and at most 3600");
    }
    if args.concurrency == 0 || args.connections == 0 {
        bail!("--concurrency and --connections: must be at least 1");
    }
    let selected: BTreeSet<String> = if args.only.is_empty() {
        DEFAULT.iter().map(|s| (*s).to_owned()).collect()
    } else {
        let mut s = BTreeSet::new();
        for o in &args.only {
            let o = o.trim().to_ascii_lowercase();
            if !DEFAULT.contains(&o.as_str()) && !OPT_IN.contains(&o.as_str()) {
                bail!(
                    "--only: unknown scenario {o:?}; expected some of {}, {}",
                    DEFAULT.join(", "),
                    OPT_IN.join(", ")
                );
            }
            s.insert(o);
        }
        s
    };
    let bins = Binaries::new(args.bin_dir.as_deref())?;
    let needs_hedui = selected.iter().any(|s| s != "a");
    let needs_agencies = selected
        .iter()
        .any(|s| !matches!(s.as_str(), "a" | "s1" | "h2load"));
    let hedui = if needs_hedui {
        Some(bins.find("hedui")?)
    } else {
        None
    };
    let agencies = if needs_agencies {
        Some(bins.find("mock-agencies")?)
    } else {
        None
    };
    let today = match &args.today {
        Some(t) => NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .with_context(|| format!("--today: {t:?} is not a date YYYY-MM-DD"))?,
        None => hedui_mock_agencies::population::china_today(),
    };
    let config = PopulationConfig {
        seed: args.seed,
        households: args.households,
        today,
    };
    let population = tokio::task::spawn_blocking(move || Population::generate(&config)).await?;
    let declare = !args.undeclared;
    let applicants: Vec<clients::Applicant> = population
        .households()
        .map(|h| clients::Applicant {
            id: h.applicant().id().to_owned(),
            declared: if declare {
                h.members()
                    .filter(|p| p.status() == RegistrationStatus::Active)
                    .map(|p| p.id().to_owned())
                    .collect()
            } else {
                Vec::new()
            },
        })
        .collect();
    drop(population);
    if applicants.is_empty() {
        bail!("--households: the population is empty");
    }
    let meta = Meta {
        started_utc: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        load_average_before: load_average(),
        seconds_per_scenario: args.seconds,
        concurrency: args.concurrency,
        connections: args.connections,
        seed: args.seed,
        households: args.households,
        today: today.format("%Y-%m-%d").to_string(),
        declared_members: declare,
    };
    let shown = |p: Option<PathBuf>| p.map_or_else(|| "-".into(), |p| p.display().to_string());
    println!(
        "hedui-bench: scenarios {}; hedui {}; mock-agencies {}",
        selected.iter().cloned().collect::<Vec<_>>().join(", "),
        shown(hedui),
        shown(agencies)
    );
    let mut bench = Bench {
        args: args.clone(),
        bins,
        dir: tempfile::Builder::new().prefix("hedui-bench-").tempdir()?,
        pop: PopulationArgs {
            seed: args.seed,
            households: args.households,
            today: meta.today.clone(),
        },
        applicants: Arc::new(applicants),
        next: 0,
        rows: Vec::new(),
        ratios: Vec::new(),
    };
    let on = |s: &str| selected.contains(s);

    if on("a") {
        baseline_a(&mut bench, "A", "baseline A").await?;
    }
    let needs_agencies_now = ["b", "s2", "s3", "s4", "s5", "isolation", "soak"]
        .iter()
        .any(|s| on(s));
    let agencies = if needs_agencies_now {
        Some(Agencies::start(&bench.bins, &bench.pop, bench.dir.path()).await?)
    } else {
        None
    };
    if let (true, Some(agencies)) = (on("b"), &agencies) {
        baseline_b(&mut bench, agencies, "B", "baseline B").await?;
    }
    let mut h2load = None;
    if on("s1") || on("h2load") {
        h2load = s1(&mut bench, on("s1"), on("h2load"), on("a")).await?;
    }
    let (mut s3, mut s5) = (None, None);
    let (mut o1, mut o2, mut soak) = (None, None, None);
    if on("overload") {
        o1 = Some(crate::overload::overload(&mut bench).await?);
    }
    if let Some(agencies) = agencies {
        if on("isolation") {
            o2 = Some(crate::overload::isolation(&mut bench, &agencies).await?);
        }
        if on("s2") || on("s3") {
            s3 = s2_s3(&mut bench, &agencies, on("s2"), on("s3"), on("b")).await?;
        }
        if on("s4") {
            s4(&mut bench, &agencies).await?;
            // B again, beside S4: S4 / B compares two rates taken under
            // the same conditions, however the machine drifted since B.
            if on("b") {
                baseline_b(&mut bench, &agencies, "B4", "B after S4").await?;
            }
        }
        if on("s5") {
            s5 = Some(s5_memory(&mut bench, &agencies).await?);
        }
        if on("soak") {
            soak = Some(crate::soak::soak(&mut bench, &agencies).await?);
        }
        agencies.proc.stop().await;
    }

    ratios(&mut bench, s3.as_ref(), s5.as_ref(), h2load.as_ref());
    if let Some(o) = &o1 {
        bench.ratios.push(Ratio::at_least(
            "O1 goodput at 2x peak / peak (before and after)",
            o.goodput_ratio,
            0.9,
        ));
        bench.ratios.push(Ratio::info(
            "O1 goodput at 2x peak / the peak before it",
            o.goodput_ratio_first,
        ));
    }
    if let Some(o) = &o2 {
        bench.ratios.push(Ratio::at_most(
            "O2 medical p99, bank saturated / bank healthy",
            o.saturated_ms.p99_ms / o.healthy_ms.p99_ms.max(0.001),
            1.1,
        ));
    }
    if let Some(s) = &soak {
        bench.ratios.push(Ratio::at_most(
            "S5 soak: memory growth, last third / middle third - 1 (medians)",
            s.growth,
            0.05,
        ));
    }
    let order = ["A", "B", "S1", "A1", "S2", "B2", "S3", "S4", "B4"];
    bench
        .rows
        .sort_by_key(|r| order.iter().position(|o| *o == r.id).unwrap_or(order.len()));
    let results = Results {
        meta,
        scenarios: bench.rows,
        s3,
        s5,
        h2load,
        overload: o1,
        isolation: o2,
        soak,
        ratios: bench.ratios,
    };
    println!("{}", results.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("--json: cannot write {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

/// Baseline A as row `id`, its title starting with `label`.
async fn baseline_a(bench: &mut Bench, id: &str, label: &str) -> anyhow::Result<()> {
    let echo = procs::start_echo(&bench.bins, bench.dir.path()).await?;
    let channels =
        Arc::new(clients::channels(&echo.listening_url()?, bench.args.connections).await?);
    let call = move |i: usize| {
        let channel = channels[i % channels.len()].clone();
        async move { clients::echo_once(channel, i).await }
    };
    bench
        .closed(
            id,
            &format!("{label}: echo RPC (AdapterService/Check)"),
            "requests",
            Some(&echo),
            None,
            call,
        )
        .await?;
    echo.stop().await;
    Ok(())
}

/// Baseline B as row `id`, its title starting with `label`.
async fn baseline_b(
    bench: &mut Bench,
    agencies: &Agencies,
    id: &str,
    label: &str,
) -> anyhow::Result<()> {
    let direct = Arc::new(DirectClients::connect(&agencies.endpoints).await?);
    let width = direct.fan_out_width();
    let applicants = Arc::clone(&bench.applicants);
    let call = move |i: usize| {
        let (direct, applicants) = (Arc::clone(&direct), Arc::clone(&applicants));
        async move { clients::direct_fan_out(direct, &applicants[i % applicants.len()].id, i).await }
    };
    bench
        .closed(
            id,
            &format!("{label}: direct fan-out, 1 + {width} sources"),
            "fan-outs",
            None,
            Some(&agencies.proc),
            call,
        )
        .await?;
    if let Some(row) = bench.rows.last_mut() {
        row.load = format!(
            "closed loop, {} in flight, 1 connection per source",
            bench.args.concurrency
        );
    }
    Ok(())
}

/// S1, then (with `then_a`) baseline A again beside it, and h2load on the
/// same broker.
async fn s1(
    bench: &mut Bench,
    run_s1: bool,
    run_h2load: bool,
    then_a: bool,
) -> anyhow::Result<Option<H2load>> {
    let config = bench.broker_config(&format!(
        "[verification]\ndefault_deadline_ms = 10000\n\n[cache]\nenabled = false\n\n\
         [simulation]\nseed = {}\nhouseholds = {}\ntoday = \"{}\"\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n",
        bench.pop.seed, bench.pop.households, bench.pop.today
    ));
    let broker = procs::start_broker(&bench.bins, bench.dir.path(), "s1", &config).await?;
    let url = broker.listening_url()?;
    let channels = clients::channels(&url, bench.args.connections).await?;
    if run_s1 {
        let call = bench.verifier(channels.clone(), Arc::clone(&bench.applicants));
        bench
            .closed(
                "S1",
                "S1 broker-only: 28 in-process sources",
                "verifications",
                Some(&broker),
                None,
                call,
            )
            .await?;
        // A again, beside S1: the ratio compares two rates taken under the
        // same conditions, however the machine drifted since A. The broker
        // waits idle meanwhile.
        if then_a {
            baseline_a(bench, "A1", "A after S1").await?;
        }
    }
    let h2 = if run_h2load {
        Some(run_h2load_on(bench, &broker, channels[0].clone()).await?)
    } else {
        None
    };
    broker.stop().await;
    Ok(h2)
}

/// S2, then (with `then_b`) baseline B again beside it, and S3 on the same
/// broker with realistic latencies.
async fn s2_s3(
    bench: &mut Bench,
    agencies: &Agencies,
    run_s2: bool,
    run_s3: bool,
    then_b: bool,
) -> anyhow::Result<Option<LatencyComparison>> {
    // The bulkhead sized for S3's load. Calls in flight at a source are its
    // rate times its mean latency (Little's law): at S3's rate, half of
    // S2's 1,000-2,200/s on these machines, and the bank's mean of about
    // 102 ms (p50 80, p99 400, log-normal) that is 50-110 calls, more in a
    // burst. The default of 64 would cap the bank at about 630 calls/s and
    // turn S3 into a measure of the bulkhead's queue, which the broker
    // counts into the source's own latency. S2's closed loop never has
    // more than its 64 verifications at one source, so this changes
    // nothing there.
    let config = bench.broker_config(&format!(
        "[verification]\ndefault_deadline_ms = 10000\n\n[cache]\nenabled = false\n\n\
         [limits.default]\nmax_concurrent = {S3_MAX_CONCURRENT}\n\n{}",
        agencies.sources_toml
    ));
    let broker = procs::start_broker(&bench.bins, bench.dir.path(), "s2", &config).await?;
    let channels = clients::channels(&broker.listening_url()?, bench.args.connections).await?;
    let call = bench.verifier(channels, Arc::clone(&bench.applicants));
    if run_s2 || bench.args.s3_rate.is_none() {
        bench
            .closed(
                "S2",
                "S2 remote sources: 28 over gRPC, zero latency",
                "verifications",
                Some(&broker),
                Some(&agencies.proc),
                call.clone(),
            )
            .await?;
        // B again, beside S2 (as A beside S1); the broker waits idle.
        if then_b && run_s2 {
            baseline_b(bench, agencies, "B2", "B after S2").await?;
        }
    }
    let mut comparison = None;
    if run_s3 {
        let rate = match bench.args.s3_rate {
            Some(r) => r,
            None => bench.rate_of("S2").context("S3 needs S2's rate")? / 2.0,
        };
        if rate <= 0.0 {
            bail!("S3: the offered rate is 0 (S2 answered nothing?)");
        }
        let sources: Vec<String> = agencies.endpoints.keys().cloned().collect();
        clients::set_all(
            &agencies.control,
            &sources,
            clients::realistic_latency,
            |_| None,
        )
        .await?;
        println!(
            "S3: realistic latencies at {rate:.1} verifications/s (open loop), {} s ...",
            bench.args.seconds
        );
        let cpu = Cpu::read(Some(&broker), Some(&agencies.proc))?;
        let mut result = load::open_loop(rate, bench.duration(), 10_000, bench.next, call).await;
        let used = cpu.since(Some(&broker), Some(&agencies.proc))?;
        bench.next += (result.ok + result.errors) as usize;
        // Back to zero latency for what follows.
        clients::reset_all(&agencies.control, &sources).await?;
        let mut slowest = std::mem::take(&mut result.inner_us);
        let mut overhead = std::mem::take(&mut result.overhead_us);
        let mut path = std::mem::take(&mut result.path_us);
        let mut path_overhead = std::mem::take(&mut result.path_overhead_us);
        comparison = Some(LatencyComparison {
            critical_path_ms: Percentiles::of(&mut path),
            path_overhead_ms: Percentiles::of(&mut path_overhead),
            rate_per_s: rate,
            hedui_ms: Percentiles::of(&mut result.latencies_us.clone()),
            slowest_source_ms: Percentiles::of(&mut slowest),
            overhead_ms: Percentiles::of(&mut overhead),
        });
        bench.push_row(
            "S3",
            "S3 realistic latencies, half S2's rate",
            "verifications",
            &format!("open loop at {rate:.1}/s"),
            result,
            &used,
        );
    }
    broker.stop().await;
    Ok(comparison)
}

async fn s4(bench: &mut Bench, agencies: &Agencies) -> anyhow::Result<()> {
    let config = bench.broker_config(&format!(
        "[verification]\ndefault_deadline_ms = 10000\n\n[cache]\nenabled = true\nttl_s = 600\nno_record_ttl_s = 600\n\n{}",
        agencies.sources_toml
    ));
    let broker = procs::start_broker(&bench.bins, bench.dir.path(), "s4", &config).await?;
    let channels = clients::channels(&broker.listening_url()?, bench.args.connections).await?;
    let n = bench.args.warm_households.clamp(1, bench.applicants.len());
    let warm: Arc<Vec<clients::Applicant>> = Arc::new(bench.applicants[..n].to_vec());
    // Each household once, to fill the cache.
    for (i, applicant) in warm.iter().enumerate() {
        clients::verify_once(
            channels[i % channels.len()].clone(),
            applicant,
            bench.next + i,
        )
        .await
        .with_context(|| format!("S4: warming with {applicant}"))?;
    }
    bench.next += n;
    let call = bench.verifier(channels, warm);
    bench
        .closed(
            "S4",
            &format!("S4 warm cache: {n} households repeated"),
            "verifications",
            Some(&broker),
            Some(&agencies.proc),
            call,
        )
        .await?;
    broker.stop().await;
    Ok(())
}

/// Lookups a source of the agencies has received since their counters were
/// reset.
async fn lookups_at(control_url: &str, source_id: &str) -> anyhow::Result<u64> {
    let mut c = clients::control(control_url).await?;
    let stats = c
        .get_stats(GetStatsRequest {
            source_id: source_id.to_owned(),
        })
        .await?
        .into_inner();
    Ok(stats.sources.iter().map(|s| s.lookups).sum())
}

/// S5: verifications held in flight by sources that hang; hedui's resident
/// memory at each level.
async fn s5_memory(bench: &mut Bench, agencies: &Agencies) -> anyhow::Result<Memory> {
    let mut levels: Vec<usize> = bench
        .args
        .memory_levels
        .iter()
        .copied()
        .filter(|&l| l > 0)
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let Some(&top) = levels.last() else {
        bail!("--memory-levels: give at least one level above 0");
    };
    let hang_all = bench.args.memory_hang == "all";
    let hold = Duration::from_secs(600);
    // No shedding below the top level (server.max_in_flight is 2,048 by
    // default): S5 measures memory, not admission.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_in_flight = {}\n\n[store]\npath = \"reports.db\"\n\n\
         [verification]\ndefault_deadline_ms = {ms}\nmax_deadline_ms = {ms}\n\n[cache]\nenabled = false\n\n\
         [limits.default]\nmax_concurrent = 0\nbreaker_failures = 0\nmax_retries = 0\n\n{}\n",
        top + top / 10 + 16,
        agencies.sources_toml,
        ms = hold.as_millis()
    );
    let mut broker = procs::start_broker(&bench.bins, bench.dir.path(), "s5", &config).await?;
    let url = broker.listening_url()?;
    // At most 500 streams per HTTP/2 connection.
    let channels = Arc::new(clients::channels(&url, top.div_ceil(500).max(1)).await?);
    println!("S5: warming up the broker ...");
    let call = bench.verifier(channels.to_vec(), Arc::clone(&bench.applicants));
    let warm = bench.closed_loop(bench.warm_up(), call).await;
    if warm.ok == 0 {
        bail!(
            "S5: no verification succeeded while warming up: {}",
            warm.first_error.unwrap_or_default()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = broker.rss_bytes()?;
    // The sources that hang until the deadline, and the one whose count of
    // lookups says how many verifications reached them.
    let sources: Vec<String> = agencies.endpoints.keys().cloned().collect();
    let witness = if hang_all {
        HOUSEHOLD_SOURCE.to_owned()
    } else {
        sources
            .iter()
            .find(|s| *s != HOUSEHOLD_SOURCE)
            .context("the agencies serve no source besides the household one")?
            .clone()
    };
    clients::set_all(&agencies.control, &sources, clients::zero_latency, |id| {
        (hang_all || id != HOUSEHOLD_SOURCE).then(|| Faults {
            hang: true,
            ..Default::default()
        })
    })
    .await?;
    clients::control(&agencies.control)
        .await?
        .reset_stats(ResetStatsRequest::default())
        .await?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<anyhow::Result<()>>();
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    let mut streams = tokio::task::JoinSet::new();
    let (mut opened, mut ready, mut failed) = (0usize, 0usize, 0usize);
    let mut out = Vec::new();
    let mut first_error = None;
    for &level in &levels {
        println!("S5: {level} verifications in flight ...");
        while opened < level {
            let i = bench.next;
            bench.next += 1;
            let channel = channels[opened % channels.len()].clone();
            let applicant = bench.applicants[i % bench.applicants.len()].clone();
            let (tx, opening) = (ready_tx.clone(), Arc::clone(&opening));
            streams.spawn(async move {
                let Ok(permit) = opening.acquire_owned().await else {
                    return;
                };
                let mut client = VerificationServiceClient::new(channel)
                    .max_decoding_message_size(16 * 1024 * 1024);
                let request = StreamVerifyRequest {
                    request: Some(clients::verification_request(&applicant, i, hold)),
                };
                let mut stream = match client.stream_verify(request).await {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                // With the household source answering, the first event
                // says the household is resolved and the fan-out starts.
                if !hang_all {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            let _ = tx.send(Err(anyhow::anyhow!("the stream ended at once")));
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    }
                }
                let _ = tx.send(Ok(()));
                drop(permit);
                // Held open until the benchmark drops it.
                while let Ok(Some(_)) = stream.message().await {}
            });
            opened += 1;
        }
        // Every stream open, and the hanging sources asked as many times.
        let until = Instant::now() + Duration::from_secs(180);
        let mut reached = 0u64;
        while Instant::now() < until {
            while let Ok(r) = ready_rx.try_recv() {
                match r {
                    Ok(()) => ready += 1,
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            reached = lookups_at(&agencies.control, &witness).await?;
            if ready + failed >= opened && reached >= (ready as u64) {
                break;
            }
            broker.check_alive()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let in_flight = ready.min(usize::try_from(reached).unwrap_or(usize::MAX));
        broker.check_alive()?;
        // Let the last ones settle, then read the memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = broker.rss_bytes()?;
        let agencies_rss = agencies.proc.rss_bytes()?;
        let level_out = MemoryLevel {
            target: level,
            in_flight,
            hedui_rss_kib: rss / 1024,
            kib_per_in_flight: if in_flight > 0 {
                (rss.saturating_sub(idle)) as f64 / 1024.0 / in_flight as f64
            } else {
                0.0
            },
            agencies_rss_kib: agencies_rss / 1024,
        };
        println!(
            "S5: {in_flight} in flight: hedui RSS {} KiB, {:.1} KiB per in-flight verification",
            level_out.hedui_rss_kib, level_out.kib_per_in_flight
        );
        out.push(level_out);
        if in_flight < level {
            println!(
                "S5: only {in_flight} of {level} verifications got in flight ({})",
                first_error.as_deref().unwrap_or("timed out after 180 s")
            );
            break;
        }
    }
    streams.abort_all();
    while streams.join_next().await.is_some() {}
    broker.stop().await;
    // The agencies are stopped by the caller; lift the hangs anyway.
    let _ = clients::reset_all(&agencies.control, &sources).await;
    let waits = if hang_all {
        "every source hangs, so each verification waits on public-security (household not yet resolved)".to_owned()
    } else {
        "public-security answers and the 27 other sources hang, so each verification waits on 27 source calls".to_owned()
    };
    Ok(Memory {
        idle_rss_kib: idle / 1024,
        levels: out,
        note: format!(
            "StreamVerify held open over {} connections; {waits} (deadline {} s); in flight = \
             streams open and counted by the agencies at {witness}; idle = after a {:.1} s warm-up \
             of ordinary verifications{}",
            channels.len(),
            hold.as_secs(),
            bench.warm_up().as_secs_f64(),
            first_error
                .map(|e| format!("; first failure: {e}"))
                .unwrap_or_default()
        ),
    })
}

/// Whether `h2load` is installed, and where.
fn find_h2load() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("h2load"))
        .find(|p| p.is_file())
}

/// h2load driving the broker's `Verify` with one pre-encoded request (the
/// cache is off, so each asks every source again).
async fn run_h2load_on(bench: &Bench, broker: &Proc, channel: Channel) -> anyhow::Result<H2load> {
    let own_per_s = bench.rate_of("S1");
    let mut h2 = H2load {
        scenario: "S1".into(),
        skipped: None,
        command: String::new(),
        req_per_s: 0.0,
        succeeded: 0,
        failed: 0,
        bytes_per_response: 0.0,
        own_report_bytes: None,
        own_per_s,
    };
    let Some(h2load) = find_h2load() else {
        h2.skipped = Some(
            "h2load is not installed (Debian package nghttp2-client; run scripts/bench-tools)"
                .into(),
        );
        println!("h2load: SKIPPED: {}", h2.skipped.as_deref().unwrap_or(""));
        return Ok(h2);
    };
    let applicant = &bench.applicants[0];
    let request = VerifyRequest {
        request: Some(clients::verification_request(
            applicant,
            0,
            REQUEST_DEADLINE,
        )),
    };
    // The same request through our client first: it must succeed, and its
    // answer's size tells whether h2load's answers were reports.
    let mut client =
        VerificationServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let report = client
        .verify(request.clone())
        .await
        .context("h2load: the pre-encoded request fails through our own client")?
        .into_inner();
    h2.own_report_bytes = Some(report.encoded_len() + 5);
    let body = request.encode_to_vec();
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(0u8);
    framed.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
    framed.extend_from_slice(&body);
    let file = bench.dir.path().join("verify-request.bin");
    std::fs::write(&file, &framed)?;
    let url = format!(
        "{}/hedui.v1.VerificationService/Verify",
        broker.listening_url()?
    );
    let connections = bench.args.connections;
    let streams = bench.args.concurrency.div_ceil(connections);
    let seconds = bench.args.seconds.ceil().max(1.0) as u64;
    // No --warm-up-time: h2load's traffic totals would include the warm-up
    // (skewing the bytes per response); the broker is warm from S1 and the
    // call above, and connecting is a negligible part of the run.
    let args: Vec<String> = vec![
        "-D".into(),
        seconds.to_string(),
        "-c".into(),
        connections.to_string(),
        "-m".into(),
        streams.to_string(),
        "-t".into(),
        "1".into(),
        "-d".into(),
        file.display().to_string(),
        "-H".into(),
        "content-type: application/grpc".into(),
        "-H".into(),
        "te: trailers".into(),
        url,
    ];
    h2.command = format!("{} {}", h2load.display(), shell_words(&args));
    println!("h2load: {}", h2.command);
    let output = tokio::time::timeout(
        Duration::from_secs(seconds + 60),
        tokio::process::Command::new(&h2load)
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("h2load did not finish in time")??;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "h2load failed ({}):\n{text}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_h2load(&text, &mut h2)
        .with_context(|| format!("cannot read h2load's output:\n{text}"))?;
    println!(
        "h2load: {:.1} req/s, {} succeeded, {} failed",
        h2.req_per_s, h2.succeeded, h2.failed
    );
    Ok(h2)
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads h2load's summary: `finished in 10.00s, 1234.5 req/s, ...`,
/// `requests: N total, N started, N done, N succeeded, N failed, ...`,
/// `traffic: ... total, ... headers (...), X (N) data`.
fn parse_h2load(text: &str, h2: &mut H2load) -> anyhow::Result<()> {
    let finished = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .context("no `finished in` line")?;
    h2.req_per_s = finished
        .split(',')
        .find(|p| p.trim_end().ends_with("req/s"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no req/s")?;
    let requests = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .context("no `requests:` line")?;
    let count = |what: &str| -> Option<u64> {
        requests
            .trim_start_matches("requests:")
            .split(',')
            .find(|p| p.trim().ends_with(what))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    h2.succeeded = count("succeeded").context("no succeeded count")?;
    h2.failed = count("failed").context("no failed count")?;
    if let Some(traffic) = text.lines().find(|l| l.starts_with("traffic:")) {
        let data = traffic
            .rsplit_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .and_then(|(n, rest)| rest.trim().starts_with("data").then_some(n))
            .and_then(|n| n.parse::<u64>().ok());
        if let (Some(bytes), true) = (data, h2.succeeded > 0) {
            h2.bytes_per_response = bytes as f64 / h2.succeeded as f64;
        }
    }
    Ok(())
}

/// A baseline as a scenario's target takes it: measured again right after
/// the scenario (row `again`) when it was, else the first measurement
/// (row `first`), which is then also given for a ratio without target.
struct Baseline {
    rate: Option<f64>,
    p99: Option<f64>,
    again: bool,
    first: Option<f64>,
}

impl Baseline {
    fn of(bench: &Bench, first: &str, again: &str) -> Self {
        let p99 = |id: &str| bench.row(id).map(|r| r.latency_ms.p99_ms);
        match bench.rate_of(again) {
            Some(rate) => Self {
                rate: Some(rate),
                p99: p99(again),
                again: true,
                first: bench.rate_of(first),
            },
            None => Self {
                rate: bench.rate_of(first),
                p99: p99(first),
                again: false,
                first: None,
            },
        }
    }
}

/// The comparisons of the issue, each against a baseline of this run.
fn ratios(
    bench: &mut Bench,
    s3: Option<&LatencyComparison>,
    s5: Option<&Memory>,
    h2: Option<&H2load>,
) {
    let b = bench.rate_of("B");
    let s1 = bench.rate_of("S1");
    let s2 = bench.rate_of("S2");
    let s2_p99 = bench.row("S2").map(|r| r.latency_ms.p99_ms);
    let s4 = bench.rate_of("S4");
    let mut r = Vec::new();
    let a = Baseline::of(bench, "A", "A1");
    let a_says = if a.again { "A after S1" } else { "baseline A" };
    if let (Some(s1), Some(a)) = (s1, a.rate) {
        r.push(Ratio::at_least(
            format!("S1 / {a_says} (verifications vs echo calls)"),
            s1 / a,
            0.10,
        ));
    }
    if let (Some(s1), Some(a)) = (s1, a.first) {
        r.push(Ratio::info("S1 / A at the start of the run", s1 / a));
    }
    if let (Some(s2), Some(a)) = (s2, a.rate) {
        r.push(Ratio::at_least(
            format!("S2 / ({a_says} / 29)"),
            s2 / (a / 29.0),
            0.5,
        ));
    }
    let b2 = Baseline::of(bench, "B", "B2");
    let b_says = if b2.again { "B after S2" } else { "baseline B" };
    if let (Some(s2), Some(b)) = (s2, b2.rate) {
        r.push(Ratio::at_least(
            format!("S2 / {b_says} (throughput)"),
            s2 / b,
            0.8,
        ));
    }
    if let (Some(s2), Some(b)) = (s2, b2.first) {
        r.push(Ratio::info(
            "S2 / B at the start of the run (throughput)",
            s2 / b,
        ));
    }
    if let (Some(s2), Some(b)) = (s2_p99, b2.p99) {
        r.push(Ratio::at_most(
            format!("S2 p99 − {b_says} p99 (ms)"),
            s2 - b,
            1.0,
        ));
        if b > 0.0 {
            r.push(Ratio::info(format!("S2 p99 / {b_says} p99"), s2 / b));
        }
    }
    if let (Some(s1), Some(b)) = (s1, b) {
        r.push(Ratio::info("S1 / baseline B (throughput)", s1 / b));
    }
    if let Some(s3) = s3 {
        r.push(Ratio::at_most(
            "S3 hedui p99 − slowest-source p99 (ms)",
            s3.hedui_ms.p99_ms - s3.slowest_source_ms.p99_ms,
            1.0,
        ));
        if s3.slowest_source_ms.p99_ms > 0.0 {
            r.push(Ratio::info(
                "S3 hedui p99 / slowest-source p99",
                s3.hedui_ms.p99_ms / s3.slowest_source_ms.p99_ms,
            ));
        }
        r.push(Ratio::info(
            "S3 hedui p99 − critical-path p99 (ms)",
            s3.hedui_ms.p99_ms - s3.critical_path_ms.p99_ms,
        ));
        r.push(Ratio::info(
            "S3 hedui − critical path, p99 per verification (ms)",
            s3.path_overhead_ms.p99_ms,
        ));
    }
    let b4 = Baseline::of(bench, "B", "B4");
    if let (Some(s4), Some(b)) = (s4, b4.rate) {
        let name = if b4.again {
            "S4 / baseline B measured right after S4 (throughput)"
        } else {
            "S4 / baseline B (throughput)"
        };
        r.push(Ratio::at_least(name, s4 / b, 3.0));
    }
    if let (Some(s4), Some(b)) = (s4, b4.first) {
        r.push(Ratio::info(
            "S4 / baseline B at the start of the run (throughput)",
            s4 / b,
        ));
    }
    if let (Some(s4), Some(s2)) = (s4, s2) {
        r.push(Ratio::info("S4 / S2 (warm cache vs cache off)", s4 / s2));
    }
    if let Some(s5) = s5 {
        for l in &s5.levels {
            let name = format!("S5 KiB per in-flight verification at {}", l.in_flight);
            // The process's resident memory moves by hundreds of KiB on its
            // own (the allocator returning and taking pages): 172 KiB and 8
            // KiB for one verification in two whole runs of one binary. The
            // target is judged where the verifications' memory stands above
            // that, from S5_TARGET_FROM in flight.
            r.push(if l.in_flight >= S5_TARGET_FROM {
                Ratio::at_most(name, l.kib_per_in_flight, 64.0)
            } else {
                Ratio::info(name, l.kib_per_in_flight)
            });
        }
    }
    if let Some(h) = h2.filter(|h| h.skipped.is_none())
        && let Some(own) = h.own_per_s.filter(|o| *o > 0.0)
    {
        r.push(Ratio::info(
            format!("h2load / our generator ({})", h.scenario),
            h.req_per_s / own,
        ));
    }
    bench.ratios = r;
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn reads_h2load_summary() {
        let text = "\
starting benchmark...
finished in 10.00s, 1176.60 req/s, 16.13MB/s
requests: 11766 total, 11830 started, 11766 done, 11760 succeeded, 6 failed, 0 errored, 0 timeout
status codes: 11766 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 161.30MB (169133034) total, 120.31KB (123196) headers (space savings 96.45%), 160.99MB (168803634) data
";
        let mut h = H2load {
            scenario: "S1".into(),
            skipped: None,
            command: String::new(),
            req_per_s: 0.0,
            succeeded: 0,
            failed: 0,
            bytes_per_response: 0.0,
            own_report_bytes: None,
            own_per_s: None,
        };
        parse_h2load(text, &mut h).unwrap();
        assert_eq!(h.req_per_s, 1176.60);
        assert_eq!(h.succeeded, 11760);
        assert_eq!(h.failed, 6);
        assert!((h.bytes_per_response - 168_803_634.0 / 11_760.0).abs() < 1e-6);
    }

    #[test]
    fn a_missing_directory_is_named() {
        let bins = Binaries::new(Some(Path::new("/nonexistent/bench"))).unwrap();
        let e = bins.find("hedui").unwrap_err();
        assert!(e.to_string().contains("cargo build --release"), "{e}");
    }
}
