//! `hedui-bench`: the verification benchmark suite (issue 9). One command
//! starts what it needs on loopback (the release binaries `hedui` and
//! `mock-agencies`, and its own echo server), runs each scenario for a
//! bounded time, prints a table and writes the same figures as JSON. Every
//! comparison is a ratio against a baseline measured in the same run:
//!
//! - A: the RPC limit, a trivial tonic unary call (`AdapterService/Check`
//!   answered with a canned response);
//! - B: direct fan-out, what a platform does without hedui: resolve the
//!   household at `public-security`, then ask the 27 other simulated
//!   sources at once over gRPC;
//! - S1: verifications through `hedui serve` with the 28 simulated sources
//!   in process at zero latency, audit on, cache off;
//! - S2: the same with the simulated agencies as their own process;
//! - S3: S2 with realistic latencies at half S2's rate (open loop): hedui
//!   against the slowest source of each report;
//! - S4: S2 with the cache on and a small set of households, warmed;
//! - S5: resident memory of hedui with 1, 1,000 and 10,000 verifications in
//!   flight (streams held open, sources hanging);
//! - h2load driving S1's `Verify` with a pre-encoded request;
//! - O1 and O2 (issue 10): goodput at twice the peak with shedding, and a
//!   saturated source against households that do not need it
//!   (`overload.rs`).
//!
//! `docs/benchmarks.md` has the commands and one run's figures.

/// jemalloc, as in the broker (`broker/src/main.rs`), for the load
/// generator and the echo server (baseline A) alike: both share the two
/// cores with the server under test, and with glibc's malloc the generator
/// spent about a tenth of its CPU in `malloc_consolidate`, `unlink_chunk`
/// and their kin.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod clients;
mod echo;
mod load;
mod output;
mod overload;
mod procs;
mod scenarios;
mod soak;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The verification benchmark suite of hedui: the broker against baselines
/// measured in the same run, on loopback.
#[derive(Debug, Parser)]
#[command(name = "hedui-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: scenarios::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Baseline A's server: serves `AdapterService` with canned answers on
    /// an ephemeral loopback port until standard input closes.
    #[command(hide = true)]
    EchoServer,
}

/// Where the JSON goes, checked before anything runs.
fn check_json_path(path: Option<&PathBuf>) -> anyhow::Result<()> {
    if let Some(p) = path {
        let parent = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| std::path::Path::new("."));
        anyhow::ensure!(
            parent.is_dir(),
            "--json: directory {} does not exist",
            parent.display()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::EchoServer) => echo::serve().await,
        None => match check_json_path(cli.run.json.as_ref()) {
            Ok(()) => scenarios::run(&cli.run).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
