//! `hedui`: the broker and its command line.
//!
//! - `hedui demo`: the main job on embedded defaults: in-process simulated
//!   agencies, a SQLite file for reports; verifies a few chosen households,
//!   prints their reports and keeps serving.
//! - `hedui serve [--config FILE] [--broker-id ID] [--federation-listen ADDR]`:
//!   the broker; with `--federation-listen` it also serves its sources to
//!   peer brokers (`hedui.v1.AdapterService`).
//! - `hedui adapter check <SOURCE-ID> [--config FILE]`: the conformance kit
//!   against one configured source.
//! - `hedui verify <ID> --consent REF --operator OP`: asks a running broker.
//! - `hedui report <REPORT-ID>`: prints a stored report.
//! - `hedui consent register|show|revoke`: authorization letters (授权书).
//! - `hedui audit query|export|verify|prove|purge`: the audit log.
//! - `hedui bench-audit`: the audit log's benchmark.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hedui::{app, audit::cli::AuditCommand, client, config::Config, server};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// jemalloc, not glibc's malloc: with glibc, malloc and free (with
/// `malloc_consolidate` and `unlink_chunk`, fragmentation) took about a
/// quarter of the broker's CPU in the verification benchmarks; jemalloc cut
/// the broker's CPU per verification by 13-26 % (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "hedui",
    version,
    about = "household economic-status verification broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        /// Configuration file (TOML); without it, embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, overriding the configuration's `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// This broker's id in a federation: peers see it in provenance and
        /// in the path of a lookup, where a loop is found by it.
        #[arg(long, env = "HEDUI_BROKER_ID", default_value = hedui_adapters::peer::DEFAULT_BROKER_ID)]
        broker_id: String,
        /// Also serve the broker's sources to peer brokers
        /// (`hedui.v1.AdapterService`) on this address.
        #[arg(long, env = "HEDUI_FEDERATION_LISTEN")]
        federation_listen: Option<SocketAddr>,
        /// The federation listener's certificate chain (PEM; with
        /// `--federation-tls-key`): peers connect over TLS.
        #[arg(long, requires = "federation_listen")]
        federation_tls_cert: Option<PathBuf>,
        /// The federation listener's private key (PEM file).
        #[arg(long, requires = "federation_listen")]
        federation_tls_key: Option<PathBuf>,
        /// CA whose certificates peers must present (mutual TLS).
        #[arg(long, requires = "federation_listen")]
        federation_tls_client_ca: Option<PathBuf>,
        /// A file holding the bearer token peers must send.
        #[arg(long, requires = "federation_listen")]
        federation_bearer_token_file: Option<PathBuf>,
        /// Also serve the control service of the in-process simulated
        /// sources (`hedui.mock.v1.AgencyControlService`: counters, faults,
        /// simulated changes) on this address, for demos and tests.
        #[arg(long)]
        simulation_control: Option<SocketAddr>,
        /// Serve without TLS: every caller is its peer address with every
        /// role. For development on one machine only, never real data.
        #[arg(long = "insecure-plaintext-development-only")]
        insecure_plaintext: bool,
    },
    /// Configuration: `hedui config check FILE` validates a configuration
    /// (with its `HEDUI__` environment overrides) without starting
    /// anything.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Certificates: `hedui certs dev` mints a development CA, a broker
    /// certificate and a client certificate per role.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Print the OpenAPI 3.1 description of the HTTP/JSON API (as served
    /// at /v1/openapi.json and committed as docs/openapi.json).
    Openapi,
    /// Adapters: run the conformance kit against a configured source.
    #[command(subcommand)]
    Adapter(AdapterCommand),
    /// Run the broker on embedded defaults with simulated agencies, verify a
    /// few chosen households and print their reports, then keep serving.
    Demo {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// SQLite file for reports.
        #[arg(long, default_value = "hedui-demo.db")]
        store: PathBuf,
        /// Households in the simulated population.
        #[arg(long, default_value_t = 3000)]
        households: usize,
        /// Stop after printing the reports instead of serving.
        #[arg(long)]
        no_serve: bool,
        /// Development certificates (minted here by `hedui certs dev` when
        /// missing); the demo serves with mTLS.
        #[arg(long, default_value = "hedui-dev-certs")]
        certs: PathBuf,
        /// Serve without TLS (every caller has every role).
        #[arg(long = "insecure-plaintext-development-only")]
        insecure_plaintext: bool,
    },
    /// Verify a household through a running broker and print the report.
    Verify(client::VerifyArgs),
    /// Print a stored report from a running broker.
    Report {
        /// The report id.
        report_id: String,
        /// Keep watching a report that waits for late answers and print its
        /// completion too.
        #[arg(long)]
        watch: bool,
        /// How to reach the broker.
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Each source's health: up, degraded, breaker open or rate limited,
    /// with its recent calls, error rate and latency.
    Sources {
        /// Keep watching: print the table again every 10 s and whenever a
        /// source's state changes.
        #[arg(long)]
        watch: bool,
        /// How to reach the broker.
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Re-verify every household this client has enrolled (bulk review),
    /// resuming an unfinished review, with a progress bar.
    Review {
        /// Households verified at once (the sources' rate limits set the
        /// pace); 0 means the broker's default.
        #[arg(long, default_value_t = 0)]
        concurrency: u32,
        /// How to reach the broker.
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Authorization letters (授权书): register, show, revoke.
    #[command(subcommand)]
    Consent(hedui::consent::cli::ConsentCommand),
    /// The audit log: query, export, verify, prove, purge.
    #[command(subcommand)]
    Audit(hedui::audit::cli::AuditCommand),
    /// Benchmark the audit log: durable records per second, SQLite and
    /// PostgreSQL, 1 writer vs 64 (docs/benchmarks.md).
    BenchAudit(hedui::audit::bench::BenchArgs),
    /// Benchmark a bulk review of a Dachuan-scale enrolment against
    /// rate-limited simulated sources (docs/benchmarks.md).
    BenchReview(hedui::watch::bench::BenchReviewArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file as `hedui serve` would read it (with
    /// `HEDUI__` environment variables over it): every key, the
    /// certificates and keys it names, its sources' transport parameters
    /// and its policy files. Creates nothing and connects to nothing;
    /// prints no secret. Exits 1 naming the file, key and what is allowed.
    Check {
        /// The configuration file.
        file: PathBuf,
        /// Also require `[tls]` (as `hedui serve` does without
        /// `--insecure-plaintext-development-only`).
        #[arg(long)]
        require_tls: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Mint a development CA, a broker certificate (localhost, 127.0.0.1),
    /// client certificates for each role, an empty CRL and a configuration
    /// that uses them. Never for real data: the CA key is written too.
    Dev {
        /// Directory to write into.
        #[arg(long, default_value = "hedui-dev-certs")]
        out: PathBuf,
        /// Replace certificates minted before.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AdapterCommand {
    /// Check one configured source with the conformance kit, the simulated
    /// population as its test data; exits 1 when a check fails.
    Check {
        /// The source's id, as configured.
        source_id: String,
        /// Configuration file (TOML); without it, embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Seed of the test population (default: the configuration's).
        #[arg(long)]
        seed: Option<u64>,
        /// Households of the test population (default: the configuration's).
        #[arg(long)]
        households: Option<usize>,
        /// The test population's today, YYYY-MM-DD (default: today in China).
        #[arg(long)]
        today: Option<chrono::NaiveDate>,
        /// Control endpoint of `mock-agencies serve`, to inject faults.
        #[arg(long)]
        control: Option<String>,
        /// Known test persons to compare.
        #[arg(long, default_value_t = 10)]
        known: usize,
    },
}

/// What `serve` checks before it creates any database: the audit keys can
/// be read and are valid, and the directories of the SQLite files exist.
/// The report store is opened before the audit log; without these checks a
/// wrong key or audit path would leave a report store behind.
fn preflight(config: &Config) -> Result<(), String> {
    config.audit.check_keys()?;
    let audit = config.audit_config();
    let mut files = vec![("store.path", config.store.path.clone())];
    if audit.backend == hedui::audit::config::BackendKind::Sqlite {
        files.push(("audit.path", audit.sqlite_path()));
    }
    for (key, file) in files {
        if file.as_os_str() == ":memory:" {
            continue;
        }
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(format!(
                "{key}: the directory {} of {} does not exist",
                dir.display(),
                file.display()
            ));
        }
    }
    Ok(())
}

/// `hedui config check`: everything `serve` checks before it opens a
/// database or a socket, and the sources' adapters built (which does no
/// I/O).
fn check_config(file: &std::path::Path, require_tls: bool) -> anyhow::Result<()> {
    let config = Config::load_layered(Some(file))?;
    let at = file.display();
    preflight(&config).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
    match &config.tls {
        Some(tls) => {
            hedui::security::tls::server_config(tls).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        }
        None if require_tls => anyhow::bail!("{at}: tls: required (--require-tls) and absent"),
        None => {}
    }
    let sources = config
        .resolve_sources(&hedui_adapters::catalog::Catalog::dachuan())
        .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
    let (registry, _) = app::registry_for(hedui_adapters::peer::DEFAULT_BROKER_ID);
    for s in &sources {
        registry
            .build(&s.spec, &s.transport)
            .map_err(|e| anyhow::anyhow!("{at}: source {:?}: {e}", s.spec.id))?;
    }
    if let Some(dir) = &config.policy.dir {
        hedui::report::PolicySet::load_dir(dir)
            .map_err(|e| anyhow::anyhow!("{at}: policy.dir: {e}"))?;
    }
    println!(
        "{at}: ok ({} sources, {}, {} clients, audit on {})",
        sources.len(),
        if config.tls.is_some() {
            "mTLS"
        } else {
            "no [tls]: plaintext only with --insecure-plaintext-development-only"
        },
        config.clients.len(),
        config.audit_config().location()
    );
    Ok(())
}

/// The offline audit commands (`verify`, `prove`, `purge`) work on an
/// existing SQLite log: a mistyped `--audit-db` (or `audit.path`) would
/// otherwise create an empty log, and `verify` would say it is fine.
fn existing_audit_log(command: &AuditCommand) -> anyhow::Result<()> {
    let (config, audit_db) = match command {
        AuditCommand::Verify {
            config, audit_db, ..
        }
        | AuditCommand::Prove {
            config, audit_db, ..
        }
        | AuditCommand::Purge { config, audit_db } => (config, audit_db),
        AuditCommand::Query { .. } | AuditCommand::Export { .. } => return Ok(()),
    };
    let (flag, file) = match audit_db {
        Some(file) => ("--audit-db", file.clone()),
        None => {
            let config = Config::load_layered(config.as_deref())?;
            let audit = config.audit_config();
            if audit.backend != hedui::audit::config::BackendKind::Sqlite {
                return Ok(());
            }
            ("audit.path", audit.sqlite_path())
        }
    };
    if file.as_os_str() != ":memory:" && !file.is_file() {
        anyhow::bail!(
            "{flag}: no audit log at {}; the offline audit commands do not create one",
            file.display()
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `serve` exports metrics and traces as its configuration says; the
    // configuration is read again (and its errors reported) below.
    let telemetry = match &cli.command {
        Command::Serve { config, .. } => match Config::load_layered(config.as_deref()) {
            Ok(c) => Some(Arc::new(hedui::telemetry::Telemetry::init(&c.telemetry)?)),
            Err(_) => None,
        },
        _ => None,
    };
    {
        use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
        let traces = telemetry
            .as_ref()
            .and_then(|t| t.tracer_provider())
            .map(|p| {
                use opentelemetry::trace::TracerProvider as _;
                tracing_opentelemetry::layer().with_tracer(p.tracer("hedui"))
            });
        tracing_subscriber::registry()
            .with(EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(traces)
            .init();
    }
    match cli.command {
        Command::Serve {
            config: config_path,
            listen,
            broker_id,
            federation_listen,
            federation_tls_cert,
            federation_tls_key,
            federation_tls_client_ca,
            federation_bearer_token_file,
            simulation_control,
            insecure_plaintext,
        } => {
            let federation_auth = hedui_adapters::server::ServerAuth::load(
                &hedui_adapters::server::ServerAuthFiles {
                    tls_cert: federation_tls_cert,
                    tls_key: federation_tls_key,
                    tls_client_ca: federation_tls_client_ca,
                    bearer_token_file: federation_bearer_token_file,
                },
                |f| format!("--federation-{}", f.replace('_', "-")),
            )
            .map_err(anyhow::Error::msg)?;
            let mut config = Config::load_layered(config_path.as_deref())?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            hedui_adapters::peer::check_broker_id(&broker_id)
                .map_err(|e| anyhow::anyhow!("--broker-id: {e}"))?;
            preflight(&config).map_err(|e| match &config_path {
                Some(path) => anyhow::anyhow!("{}: {e}", path.display()),
                None => anyhow::anyhow!("{e}"),
            })?;
            let where_ = config_path
                .as_ref()
                .map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string());
            if let Some(tls) = &config.tls {
                hedui::security::tls::server_config(tls)
                    .map_err(|e| anyhow::anyhow!("{where_}: {e}"))?;
                if insecure_plaintext {
                    anyhow::bail!(
                        "{}: {where_} configures [tls]; leave out one of them",
                        server::PLAINTEXT_FLAG
                    );
                }
            } else if !insecure_plaintext {
                anyhow::bail!(
                    "{where_}: no [tls]: the broker serves only over mTLS; `hedui certs dev` mints development certificates and a configuration, or pass {} to serve without TLS on one machine",
                    server::PLAINTEXT_FLAG
                );
            }
            let built = app::build_as(&config, &broker_id).await?;
            let security = server::Listener::from_config(
                &config,
                built.verifier.audit().clone(),
                insecure_plaintext,
            )
            .map_err(|e| anyhow::anyhow!("{where_}: {e}"))?;
            // SIGHUP: reload what can be reloaded, recorded in the audit
            // log; a configuration that cannot be applied changes nothing.
            #[cfg(unix)]
            {
                let reloader = Arc::new(built.reloader);
                let verifier = Arc::clone(&built.verifier);
                let gate = security.gate();
                let path = config_path.clone();
                let mut hup =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                        .context("SIGHUP handler")?;
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        match reloader
                            .reload_from(&verifier, Some(&gate), path.as_deref())
                            .await
                        {
                            Ok(summary) => tracing::info!(%summary, "configuration reloaded"),
                            Err(e) => tracing::warn!(error = %e, "configuration not reloaded"),
                        }
                    }
                });
            }
            if !security.is_tls() {
                tracing::warn!(
                    "SERVING WITHOUT TLS ({}): every caller has every role; never use this with real data",
                    server::PLAINTEXT_FLAG
                );
            }
            let listener = TcpListener::bind(config.server.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.server.listen))?;
            let addr = listener.local_addr()?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let federation = match federation_listen {
                None => None,
                Some(at) => {
                    let l = TcpListener::bind(at)
                        .await
                        .with_context(|| format!("--federation-listen: cannot listen on {at}"))?;
                    let fed_addr = l.local_addr()?;
                    let task = tokio::spawn(app::serve_federation(
                        Arc::clone(&built.verifier),
                        broker_id.clone(),
                        l,
                        federation_auth,
                        stopped(stop_rx.clone()),
                    ));
                    Some((fed_addr, task))
                }
            };
            let control = match simulation_control {
                None => None,
                Some(at) => {
                    if built.simulated.source_ids().is_empty() {
                        anyhow::bail!(
                            "--simulation-control: no source is on the simulated transport"
                        );
                    }
                    let l = TcpListener::bind(at)
                        .await
                        .with_context(|| format!("--simulation-control: cannot listen on {at}"))?;
                    let control_addr = l.local_addr()?;
                    let service =
                        hedui_mock_agencies::control::ControlServer::new(built.simulated.clone())
                            .into_service();
                    let stop = stopped(stop_rx.clone());
                    tokio::spawn(async move {
                        tonic::transport::Server::builder()
                            .add_service(service)
                            .serve_with_incoming_shutdown(
                                tonic::transport::server::TcpIncoming::from(l)
                                    .with_nodelay(Some(true)),
                                stop,
                            )
                            .await
                    });
                    Some(control_addr)
                }
            };
            let ops = match (config.ops.listen, &telemetry) {
                (Some(at), Some(t)) => {
                    let l = TcpListener::bind(at)
                        .await
                        .with_context(|| format!("ops.listen: cannot listen on {at}"))?;
                    let ops_addr = l.local_addr()?;
                    let ops = hedui::telemetry::ops::Ops::new(
                        Arc::clone(t),
                        built.verifier.audit().clone(),
                    );
                    // It answers until the process ends: while draining,
                    // readiness says so.
                    tokio::spawn(ops.clone().serve(l, std::future::pending()));
                    Some((ops, ops_addr))
                }
                _ => None,
            };
            let ops_addr = ops.as_ref().map(|(_, a)| *a);
            let ops = ops.map(|(o, _)| o);
            // One machine-readable line on stdout says the broker is ready.
            let mut ready =
                serde_json::json!({ "listening": addr.to_string(), "tls": security.is_tls() });
            if let Some((f, _)) = &federation {
                ready["federation"] = f.to_string().into();
            }
            if let Some(c) = control {
                ready["simulation_control"] = c.to_string().into();
            }
            if let Some(o) = ops_addr {
                ready["ops"] = o.to_string().into();
            }
            println!("{ready}");
            let grace = Duration::from_millis(config.server.shutdown_grace_ms);
            tokio::spawn({
                let ops = ops.clone();
                async move {
                    shutdown_signal().await;
                    tracing::info!(
                        grace_ms = grace.as_millis() as u64,
                        "stopping: no new calls; finishing the calls in flight"
                    );
                    if let Some(ops) = &ops {
                        ops.drain();
                    }
                    let _ = stop_tx.send(true);
                }
            });
            let serving = server::serve(
                Arc::clone(&built.verifier),
                Arc::clone(&built.watch),
                listener,
                security,
                stopped(stop_rx.clone()),
            );
            // Calls in flight get `grace` after the signal; then the broker
            // stops all the same (their reports are stored, or their
            // pending reports are closed at the next start).
            let mut stop_seen = stop_rx.clone();
            tokio::select! {
                served = serving => served?,
                () = async {
                    let _ = stop_seen.wait_for(|s| *s).await;
                    tokio::time::sleep(grace).await;
                } => tracing::warn!("calls still in flight after the grace period; stopping"),
            }
            if let Some((_, task)) = federation {
                let _ = tokio::time::timeout(grace, task).await;
            }
            built.verifier.store().close().await;
            built.verifier.audit().close().await;
            if let Some(t) = &telemetry {
                t.shutdown();
            }
            Ok(())
        }
        Command::Demo {
            listen,
            store,
            households,
            no_serve,
            certs,
            insecure_plaintext,
        } => {
            app::demo(app::DemoOptions {
                listen,
                store,
                households,
                serve: !no_serve,
                certs: (!insecure_plaintext).then_some(certs),
                shutdown: Box::pin(shutdown_signal()),
            })
            .await
        }
        Command::Verify(args) => client::verify(&args).await,
        Command::Config(ConfigCommand::Check { file, require_tls }) => {
            check_config(&file, require_tls)
        }
        Command::Openapi => {
            print!("{}", hedui::http::openapi::document_json());
            Ok(())
        }
        Command::Certs(CertsCommand::Dev { out, force }) => {
            let files = hedui::security::certs::dev(&out, force).map_err(anyhow::Error::msg)?;
            println!(
                "development certificates in {}; serve with them:\n  hedui serve --config {}\nclients: --certs {} --as platform|platform-b|auditor|admin",
                files.dir.display(),
                files.config.display(),
                files.dir.display()
            );
            Ok(())
        }
        Command::Adapter(AdapterCommand::Check {
            source_id,
            config,
            seed,
            households,
            today,
            control,
            known,
        }) => {
            let config = Config::load_layered(config.as_deref())?;
            let check = app::AdapterCheck {
                source_id,
                seed,
                households,
                today,
                control,
                known,
            };
            let report = app::adapter_check(&config, &check).await?;
            print!("{report}");
            if !report.passed() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Report {
            report_id,
            watch,
            connect,
        } => client::report(&connect, &report_id, watch).await,
        Command::Review {
            concurrency,
            connect,
        } => client::review(&connect, concurrency).await,
        Command::Sources { watch, connect } => hedui::health::run_cli(&connect, watch).await,
        Command::Consent(command) => hedui::consent::cli::run(command).await,
        Command::BenchAudit(args) => hedui::audit::bench::run(&args).await,
        Command::BenchReview(args) => hedui::watch::bench::run(&args).await,
        Command::Audit(command) => {
            existing_audit_log(&command)?;
            let code = hedui::audit::cli::run(command).await?;
            if code != std::process::ExitCode::SUCCESS {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
