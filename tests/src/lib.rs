//! The end-to-end test harness: starts the real `mock-agencies` and `hedui`
//! binaries as child processes on loopback (ephemeral ports), waits for
//! their ready lines, and hands out gRPC clients. Children are killed when
//! their handle drops, and the simulated agencies also exit when their
//! standard input closes, so nothing outlives a test.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use hedui_proto::v1::verification_service_client::VerificationServiceClient;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdin, Command},
};
use tonic::transport::Channel;

/// How long a child may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Seed of the populations the tests use.
pub const SEED: u64 = 2018;

/// A binary of the workspace, next to the test executable's directory
/// (`target/<profile>/`); `cargo test --workspace` and `cargo nextest run
/// --workspace` build every binary before running tests.
///
/// # Panics
/// If the binary has not been built.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (or the test command of the README)",
        path.display()
    );
    path
}

async fn ready_line(child: &mut Child, what: &str) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
        .await
        .with_context(|| format!("{what} did not get ready in {READY_TIMEOUT:?}"))??
        .with_context(|| format!("{what} exited before it was ready"))?;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(line)
}

/// The simulated agencies, running as their own process.
#[derive(Debug)]
pub struct Agencies {
    child: Child,
    _stdin: ChildStdin,
    /// URL of the control service.
    pub control: String,
    /// The broker configuration fragment (`[[sources]]` over gRPC).
    pub sources_toml: String,
    _dir: tempfile::TempDir,
}

impl Agencies {
    /// Starts `mock-agencies serve` with `households` households generated
    /// for `today` and the given extra arguments (e.g. `--fault X=hang`).
    ///
    /// # Errors
    /// When the process does not start or get ready.
    pub async fn start(households: usize, today: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let sources_path = dir.path().join("sources.toml");
        let mut child = Command::new(workspace_bin("mock-agencies"))
            .arg("serve")
            .args(["--seed", &SEED.to_string()])
            .args(["--households", &households.to_string()])
            .args(["--today", today])
            .args(["--host", "127.0.0.1", "--profile", "zero"])
            .arg("--sources-out")
            .arg(&sources_path)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting mock-agencies")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let line = ready_line(&mut child, "mock-agencies").await?;
        let ready: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("ready line {line:?}"))?;
        let control = ready["control"]
            .as_str()
            .context("ready line has no control address")?
            .to_owned();
        let sources_toml = std::fs::read_to_string(&sources_path)?;
        Ok(Self {
            child,
            _stdin: stdin,
            control,
            sources_toml,
            _dir: dir,
        })
    }

    /// Stops the process.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The broker, running as its own process.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    /// URL of its gRPC API.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts `hedui serve` on an ephemeral loopback port with the sources
    /// of `agencies` and `extra_config` appended to its configuration.
    ///
    /// # Errors
    /// When the process does not start or get ready.
    pub async fn start(agencies: &Agencies, extra_config: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("hedui.toml");
        let store = dir.path().join("reports.db");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = {store:?}\n\n{extra_config}\n\n{}",
            agencies.sources_toml
        );
        std::fs::write(&config_path, config)?;
        let mut child = Command::new(workspace_bin("hedui"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting hedui")?;
        let line = ready_line(&mut child, "hedui").await?;
        let ready: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("ready line {line:?}"))?;
        let Some(addr) = ready["listening"].as_str() else {
            bail!("ready line {line:?} has no listening address");
        };
        Ok(Self {
            child,
            url: format!("http://{addr}"),
            _dir: dir,
        })
    }

    /// A client of its `VerificationService`.
    ///
    /// # Errors
    /// When it cannot be reached.
    pub async fn client(&self) -> anyhow::Result<VerificationServiceClient<Channel>> {
        let channel = Channel::from_shared(self.url.clone())?.connect().await?;
        Ok(VerificationServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024))
    }

    /// Stops the process.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Today's date in China, as the population generator and the broker use it.
pub fn china_today() -> String {
    let offset = chrono::FixedOffset::east_opt(8 * 3600).expect("offset");
    chrono::Utc::now()
        .with_timezone(&offset)
        .date_naive()
        .format("%Y-%m-%d")
        .to_string()
}
