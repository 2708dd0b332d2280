//! `hedui`: the broker and its command line.
//!
//! - `hedui demo`: the main job on embedded defaults: in-process simulated
//!   agencies, a SQLite file for reports; verifies a few chosen households,
//!   prints their reports and keeps serving.
//! - `hedui serve [--config FILE]`: the broker.
//! - `hedui verify <ID> --consent REF --operator OP`: asks a running broker.
//! - `hedui report <REPORT-ID>`: prints a stored report.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hedui::{app, client, config::Config, server};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

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
    },
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
    },
    /// Verify a household through a running broker and print the report.
    Verify(client::VerifyArgs),
    /// Print a stored report from a running broker.
    Report {
        /// The report id.
        report_id: String,
        /// The broker's address.
        #[arg(long, default_value = "http://127.0.0.1:50051", env = "HEDUI_SERVER")]
        server: String,
    },
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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen } => {
            let mut config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let built = app::build(&config).await?;
            let listener = TcpListener::bind(config.server.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.server.listen))?;
            let addr = listener.local_addr()?;
            // One machine-readable line on stdout says the broker is ready.
            println!("{{\"listening\":\"{addr}\"}}");
            server::serve(Arc::clone(&built.verifier), listener, shutdown_signal()).await?;
            built.verifier.store().close().await;
            Ok(())
        }
        Command::Demo {
            listen,
            store,
            households,
            no_serve,
        } => {
            app::demo(app::DemoOptions {
                listen,
                store,
                households,
                serve: !no_serve,
                shutdown: Box::pin(shutdown_signal()),
            })
            .await
        }
        Command::Verify(args) => client::verify(&args).await,
        Command::Report { report_id, server } => client::report(&server, &report_id).await,
    }
}
