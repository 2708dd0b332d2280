//! `mock-agencies`: the simulated departments and bank of Dachuan District as
//! their own process.
//!
//! - `mock-agencies serve`: every source on its own gRPC port (loopback,
//!   ephemeral), plus the control service; prints one JSON line with the
//!   endpoints when ready and serves until SIGTERM, SIGINT or the end of
//!   standard input.
//! - `mock-agencies truth`: writes the ground truth of every household as
//!   JSON lines.
//! - `mock-agencies sql load|remove`: loads the housing, vehicle and land
//!   registers into views of a PostgreSQL or MariaDB (a department's test
//!   system for the SQL transport and the conformance kit), and removes
//!   them.

/// jemalloc, as in the broker (`broker/src/main.rs`): the simulated
/// departments share the benchmarks' two cores with the broker, and glibc's
/// malloc spent their CPU in `malloc_consolidate` and `unlink_chunk`.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::{
    collections::BTreeMap,
    io::{BufWriter, IsTerminal, Read, Write},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use hedui_adapters::server::{ServerAuth, ServerAuthFiles};
use hedui_mock_agencies::{
    Agency,
    population::{DEFAULT_HOUSEHOLDS, DEFAULT_SEED, Population, PopulationConfig, china_today},
    serve::{RunningAgencies, ServeConfig},
    sim::{FaultConfig, LatencyProfile, MAX_HOUSEHOLDS},
    truth::{TruthPolicy, purpose_from_name},
};
use hedui_proto::v1::Purpose;

/// The simulated departments and bank of Dachuan District.
#[derive(Debug, Parser)]
#[command(name = "mock-agencies", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves every simulated source over gRPC, each on its own port.
    Serve(ServeArgs),
    /// Writes the ground truth of every household as JSON lines.
    Truth(TruthArgs),
    /// Loads registers into database views, or removes them.
    #[command(subcommand)]
    Sql(SqlCommand),
}

#[derive(Debug, Subcommand)]
enum SqlCommand {
    /// Loads the registers into a new schema (PostgreSQL) or database
    /// (MariaDB) `hedui_<NAME>` with a reader `hedui_r_<NAME>`, and writes
    /// the broker's `[[sources]]` for them.
    Load {
        #[command(flatten)]
        population: PopulationArgs,
        #[command(flatten)]
        target: SqlTarget,
        /// The registers to load (default all: housing-management,
        /// traffic-police, agriculture).
        #[arg(long = "source", value_name = "SOURCE-ID")]
        sources: Vec<String>,
        /// Writes the broker's `[[sources]]` entries to this file (`-` for
        /// standard output).
        #[arg(long, value_name = "PATH", default_value = "-")]
        sources_out: PathBuf,
    },
    /// Removes a load and its reader.
    Remove {
        #[command(flatten)]
        target: SqlTarget,
    },
}

/// Where to load.
#[derive(Debug, Args)]
struct SqlTarget {
    /// `postgres` or `mariadb`.
    #[arg(long, value_parser = parse_server)]
    server: hedui_mock_agencies::sql::Server,
    /// An account that may create schemas, databases and users, e.g.
    /// postgres://postgres@127.0.0.1:5432/test or mysql://root@127.0.0.1:3306/test.
    #[arg(long)]
    admin_url: String,
    /// Name of the load: lower-case letters, digits and '_'.
    #[arg(long)]
    name: String,
}

fn parse_server(s: &str) -> Result<hedui_mock_agencies::sql::Server, String> {
    match s {
        "postgres" | "postgresql" => Ok(hedui_mock_agencies::sql::Server::Postgres),
        "mariadb" | "mysql" => Ok(hedui_mock_agencies::sql::Server::MariaDb),
        other => Err(format!(
            "unknown server {other:?}; expected postgres or mariadb"
        )),
    }
}

/// Which population.
#[derive(Debug, Args)]
struct PopulationArgs {
    /// Seed of the population.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Number of households.
    #[arg(long, default_value_t = DEFAULT_HOUSEHOLDS, value_parser = parse_households)]
    households: usize,
    /// The population's today, YYYY-MM-DD (default: today in China time).
    #[arg(long, value_parser = parse_date)]
    today: Option<NaiveDate>,
}

impl PopulationArgs {
    fn config(&self) -> PopulationConfig {
        PopulationConfig {
            seed: self.seed,
            households: self.households,
            today: self.today.unwrap_or_else(china_today),
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    population: PopulationArgs,
    /// Address to listen on; every source and the control service get an
    /// ephemeral port on it.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Latency of the sources: `zero` or `realistic`.
    #[arg(long, default_value = "realistic", value_parser = parse_profile)]
    profile: LatencyProfile,
    /// A fault from the start: SOURCE=hang, SOURCE=outage,
    /// SOURCE=error:RATE, SOURCE=timeout:RATE, SOURCE=malformed:RATE or
    /// SOURCE=oversized:RATE.
    /// May be repeated.
    #[arg(long = "fault", value_name = "SOURCE=FAULT", value_parser = parse_fault)]
    faults: Vec<(String, String)>,
    /// Writes the sources as the broker's configuration takes them
    /// (`[[sources]]` with a grpc transport) to this file.
    #[arg(long, value_name = "PATH")]
    sources_out: Option<PathBuf>,
    /// Publishes change events (`SimulateChange`) on this NATS server's
    /// JetStream, e.g. nats://127.0.0.1:4222.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// The JetStream stream of change events (created when missing).
    #[arg(long, default_value = "HEDUI_CHANGES", requires = "nats")]
    nats_stream: String,
    /// Subject prefix of change events: `<prefix>.<source_id>`.
    #[arg(long, default_value = "hedui.changes", requires = "nats")]
    nats_subject: String,
    /// Serves every source (gRPC and REST) over TLS with this PEM
    /// certificate chain (with --tls-key); the announced endpoints become
    /// https://. The control service stays plaintext.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Requires every client of a source to present a certificate signed by
    /// this PEM CA (mutual TLS; needs --tls-cert).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Requires `authorization: Bearer <token>` on every gRPC call to a
    /// source, the token read from this file (calls without it, or with
    /// another, get UNAUTHENTICATED). The REST APIs keep their own
    /// authentication.
    #[arg(long, value_name = "PATH")]
    bearer_token_file: Option<PathBuf>,
    /// Keeps serving when standard input closes (by default the end of
    /// standard input stops the process, so that a test's child dies with
    /// the test).
    #[arg(long)]
    ignore_stdin: bool,
}

#[derive(Debug, Args)]
struct TruthArgs {
    #[command(flatten)]
    population: PopulationArgs,
    /// Purpose whose thresholds apply, e.g. dibao-application, low-income.
    #[arg(long, default_value = "dibao-application", value_parser = parse_purpose)]
    purpose: Purpose,
    /// File to write the JSON lines to (`-` for standard output).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

fn parse_households(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of households"))?;
    if n == 0 || n > MAX_HOUSEHOLDS {
        return Err(format!("must be between 1 and {MAX_HOUSEHOLDS}"));
    }
    Ok(n)
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("{s:?} is not a date YYYY-MM-DD"))
}

fn parse_profile(s: &str) -> Result<LatencyProfile, String> {
    s.parse()
}

fn parse_purpose(s: &str) -> Result<Purpose, String> {
    purpose_from_name(s).ok_or_else(|| {
        format!(
            "unknown purpose {s:?}; expected dibao-application, dibao-review, extreme-poverty, \
             low-income, temporary-assistance, medical-assistance or education-assistance"
        )
    })
}

fn parse_fault(s: &str) -> Result<(String, String), String> {
    let (source, spec) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not SOURCE=FAULT"))?;
    if Agency::from_id(source).is_none() {
        return Err(format!("unknown source {source:?}"));
    }
    FaultConfig::none().apply_spec(spec)?;
    Ok((source.to_owned(), spec.to_owned()))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Truth(args) => truth(&args),
        Command::Sql(command) => sql(command).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut faults: BTreeMap<String, FaultConfig> = BTreeMap::new();
    for (source, spec) in &args.faults {
        faults
            .entry(source.clone())
            .or_default()
            .apply_spec(spec)
            .map_err(|m| anyhow::anyhow!("--fault {source}={spec}: {m}"))?;
    }
    let auth = ServerAuth::load(
        &ServerAuthFiles {
            tls_cert: args.tls_cert.clone(),
            tls_key: args.tls_key.clone(),
            tls_client_ca: args.tls_client_ca.clone(),
            bearer_token_file: args.bearer_token_file.clone(),
        },
        |field| format!("--{}", field.replace('_', "-")),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let mut config = ServeConfig::new(args.population.config());
    config.auth = auth;
    config.host = args.host;
    config.profile = args.profile;
    config.faults = faults.into_iter().collect();
    let running = RunningAgencies::start(config)
        .await
        .context("cannot start the simulated agencies")?;
    let _publisher = match &args.nats {
        Some(url) => Some(
            hedui_mock_agencies::nats::publish_changes(
                running.agencies(),
                &hedui_mock_agencies::nats::NatsTarget {
                    url: url.clone(),
                    stream: args.nats_stream.clone(),
                    prefix: args.nats_subject.clone(),
                },
            )
            .await?,
        ),
        None => None,
    };
    if let Some(path) = &args.sources_out {
        std::fs::write(path, running.sources_toml())
            .with_context(|| format!("--sources-out: cannot write {}", path.display()))?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", running.ready_line()).context("cannot write to standard output")?;
        out.flush().context("cannot write to standard output")?;
    }
    let reason = stopped(!args.ignore_stdin).await;
    tracing::info!(reason, "stopping");
    running.shutdown().await;
    Ok(())
}

/// Waits for SIGINT, SIGTERM or (when `watch_stdin`) the end of standard
/// input, and says which.
async fn stopped(watch_stdin: bool) -> &'static str {
    let eof = watch_stdin.then(|| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // A plain thread: tokio's stdin would hold the runtime's shutdown
        // until the read returns.
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
        rx
    });
    let stdin_closed = async move {
        let closed = match eof {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        if !closed {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = terminated() => "terminated",
        () = stdin_closed => "standard input closed",
    }
}

#[cfg(unix)]
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGTERM");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(not(unix))]
async fn terminated() {
    std::future::pending::<()>().await;
}

async fn sql(command: SqlCommand) -> anyhow::Result<()> {
    use hedui_mock_agencies::sql;
    match command {
        SqlCommand::Load {
            population,
            target,
            sources,
            sources_out,
        } => {
            let config = population.config();
            let pop = tokio::task::spawn_blocking(move || Population::generate(&config)).await?;
            let sources: Vec<&str> = if sources.is_empty() {
                sql::SQL_SOURCES.to_vec()
            } else {
                sources.iter().map(String::as_str).collect()
            };
            let loaded = sql::load(
                &pop,
                target.server,
                &target.admin_url,
                &target.name,
                &sources,
            )
            .await
            .context("cannot load the registers")?;
            let text = loaded.sources_toml();
            if sources_out.as_os_str() == "-" {
                print!("{text}");
            } else {
                std::fs::write(&sources_out, text).with_context(|| {
                    format!("--sources-out: cannot write {}", sources_out.display())
                })?;
            }
            tracing::info!(
                name = loaded.name(),
                reader = loaded.reader_url(),
                "registers loaded"
            );
            loaded.keep();
            Ok(())
        }
        SqlCommand::Remove { target } => {
            sql::remove(target.server, &target.admin_url, &target.name)
                .await
                .context("cannot remove the load")?;
            tracing::info!(name = %target.name, "load removed");
            Ok(())
        }
    }
}

fn truth(args: &TruthArgs) -> anyhow::Result<()> {
    let config = args.population.config();
    let population = Population::generate(&config);
    let mut policy = TruthPolicy::for_purpose(args.purpose);
    policy.verification_date = Some(config.today);
    let write = |w: &mut dyn Write| -> std::io::Result<()> {
        let mut w = BufWriter::new(w);
        for h in population.households() {
            writeln!(w, "{}", h.truth(&policy).to_json_line())?;
        }
        w.flush()
    };
    if args.out.as_os_str() == "-" {
        write(&mut std::io::stdout().lock()).context("cannot write to standard output")?;
    } else {
        let mut file = std::fs::File::create(&args.out)
            .with_context(|| format!("--out: cannot create {}", args.out.display()))?;
        write(&mut file).with_context(|| format!("--out: cannot write {}", args.out.display()))?;
    }
    tracing::info!(households = population.len(), out = %args.out.display(), "ground truth written");
    Ok(())
}
