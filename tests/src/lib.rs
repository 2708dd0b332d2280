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

/// Writes the configuration of a broker that asks `agencies`, with its
/// report store in `dir` and `extra_config` added; returns its path.
fn write_broker_config(
    dir: &Path,
    agencies: &Agencies,
    extra_config: &str,
) -> anyhow::Result<PathBuf> {
    let config_path = dir.join("hedui.toml");
    let store = dir.join("reports.db");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = {store:?}\n\n{extra_config}\n\n{}",
        agencies.sources_toml
    );
    std::fs::write(&config_path, config)?;
    Ok(config_path)
}

/// Starts `hedui serve --config <config_path>`, with `configure` applied to
/// the command first, and waits for its ready line; returns the child, the
/// URL of its gRPC API and the whole ready line.
async fn spawn_hedui(
    config_path: &Path,
    configure: impl FnOnce(&mut Command),
) -> anyhow::Result<(Child, String, serde_json::Value)> {
    let mut command = Command::new(workspace_bin("hedui"));
    command.arg("serve").arg("--config").arg(config_path);
    // A configuration without [tls] runs in the plaintext development
    // mode, which the broker refuses unless told so by name.
    let text = std::fs::read_to_string(config_path).unwrap_or_default();
    let tls = text.lines().any(|l| l.trim() == "[tls]");
    if !tls {
        command.arg("--insecure-plaintext-development-only");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    configure(&mut command);
    let mut child = command.spawn().context("starting hedui")?;
    let line = ready_line(&mut child, "hedui").await?;
    let ready: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("ready line {line:?}"))?;
    let Some(addr) = ready["listening"].as_str() else {
        bail!("ready line {line:?} has no listening address");
    };
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    Ok((child, url, ready))
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
        let config_path = write_broker_config(dir.path(), agencies, extra_config)?;
        let (child, url, _) = spawn_hedui(&config_path, |_| {}).await?;
        Ok(Self {
            child,
            url,
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

// === Audit (issue 4): a broker with its log captured, the audit client,
// and a TCP proxy that can cut a store away from the broker ===

impl Broker {
    /// Starts `hedui serve` as [`Broker::start`] does, with its log (at
    /// `RUST_LOG`, default `debug`) written to `log_file` instead of the
    /// test's standard error.
    ///
    /// # Errors
    /// When the process does not start or get ready.
    pub async fn start_logged(
        agencies: &Agencies,
        extra_config: &str,
        log_file: &Path,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = write_broker_config(dir.path(), agencies, extra_config)?;
        let log = std::fs::File::create(log_file)?;
        let (child, url, _) = spawn_hedui(&config_path, |c| {
            c.env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .env("NO_COLOR", "1")
            .stderr(Stdio::from(log));
        })
        .await?;
        Ok(Self {
            child,
            url,
            _dir: dir,
        })
    }

    /// A client of its `AuditService`.
    ///
    /// # Errors
    /// When it cannot be reached.
    pub async fn audit_client(
        &self,
    ) -> anyhow::Result<hedui_proto::v1::audit_service_client::AuditServiceClient<Channel>> {
        let channel = Channel::from_shared(self.url.clone())?.connect().await?;
        Ok(hedui_proto::v1::audit_service_client::AuditServiceClient::new(channel))
    }

    /// Stops the process gracefully (SIGTERM) so it writes its last audit
    /// checkpoint, then waits for it.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// A TCP proxy on loopback to `target`: what goes through it can be cut at
/// once ([`TcpProxy::stop`]), as when a database server stops.
#[derive(Debug)]
pub struct TcpProxy {
    /// Its address.
    pub addr: std::net::SocketAddr,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on an ephemeral loopback port and forwards every connection
    /// to `target`.
    ///
    /// # Errors
    /// When it cannot listen.
    pub async fn start(target: String) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            std::sync::Arc::default();
        let registry = std::sync::Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                registry.lock().expect("proxy tasks").push(task);
            }
        });
        Ok(Self {
            addr,
            tasks,
            accept,
        })
    }

    /// Stops listening and cuts every connection.
    pub fn stop(&self) {
        self.accept.abort();
        for t in self.tasks.lock().expect("proxy tasks").drain(..) {
            t.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

// === Transports (issue 3): the agencies' REST APIs and announced
// endpoints, brokers from a whole configuration (federation flags
// included), the test databases ===

/// `mock-agencies serve` as its own process, with every endpoint it
/// announced: each source's gRPC endpoint and each REST API.
#[derive(Debug)]
pub struct AgencyProcess {
    child: Child,
    _stdin: ChildStdin,
    /// URL of the control service.
    pub control: String,
    /// Each source's gRPC endpoint, by source id.
    pub grpc: std::collections::BTreeMap<String, String>,
    /// Each REST API's endpoint, by source id.
    pub http: std::collections::BTreeMap<String, String>,
}

impl AgencyProcess {
    /// Starts `mock-agencies serve` (zero latency) with `households`
    /// households generated for `today` and the given extra arguments.
    ///
    /// # Errors
    /// When the process does not start or get ready.
    pub async fn start(households: usize, today: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(workspace_bin("mock-agencies"))
            .arg("serve")
            .args(["--seed", &SEED.to_string()])
            .args(["--households", &households.to_string()])
            .args(["--today", today])
            .args(["--host", "127.0.0.1", "--profile", "zero"])
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
        let map = |key: &str| -> anyhow::Result<std::collections::BTreeMap<String, String>> {
            ready[key]
                .as_object()
                .with_context(|| format!("ready line has no {key}"))?
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_str().context("endpoint")?.to_owned())))
                .collect()
        };
        Ok(Self {
            control: ready["control"]
                .as_str()
                .context("ready line has no control address")?
                .to_owned(),
            grpc: map("sources")?,
            http: map("http")?,
            child,
            _stdin: stdin,
        })
    }

    /// The `[[sources]]` of a broker: every catalog source over gRPC, in
    /// catalog order, except those in `replace`, which take the entry
    /// given; then the entries of `add`.
    pub fn sources(
        &self,
        replace: &std::collections::BTreeMap<String, String>,
        add: &[String],
    ) -> String {
        let mut out = String::new();
        for spec in hedui_adapters::catalog::Catalog::dachuan().iter() {
            match replace.get(&spec.id) {
                Some(entry) => out.push_str(entry),
                None => out.push_str(&format!(
                    "[[sources]]\nid = \"{}\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"{}\"\n",
                    spec.id, self.grpc[&spec.id]
                )),
            }
            out.push('\n');
        }
        for entry in add {
            out.push_str(entry);
            out.push('\n');
        }
        out
    }

    /// The broker's entry for a source over its REST API, from the
    /// configuration shipped with the simulated agencies.
    ///
    /// # Errors
    /// When the source has no REST API.
    pub fn http_entry(&self, source_id: &str) -> anyhow::Result<String> {
        let endpoint = self
            .http
            .get(source_id)
            .with_context(|| format!("{source_id} has no REST API"))?;
        hedui_mock_agencies::http::source_toml(source_id, endpoint)
            .with_context(|| format!("{source_id} has no shipped HTTP configuration"))
    }

    /// Stops the process.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `hedui serve` from a whole configuration, in a directory of its own
/// (where its report store and audit log are written).
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    /// URL of its gRPC API.
    pub url: String,
    /// URL of its federation listener, when it serves one.
    pub federation: Option<String>,
    /// URL of the control service of its in-process simulated sources,
    /// when it serves one (`--simulation-control`).
    pub simulation_control: Option<String>,
    /// Address of its operations listener (`[ops] listen`), when it
    /// serves one.
    pub ops: Option<String>,
    /// Its directory.
    pub dir: tempfile::TempDir,
    args: Vec<String>,
}

impl BrokerProcess {
    /// Starts `hedui serve` on an ephemeral loopback port with these
    /// `[[sources]]` (and any other tables) and extra arguments (e.g.
    /// `--broker-id`, `--federation-listen`).
    ///
    /// # Errors
    /// When the process does not start or get ready.
    pub async fn start(config_body: &str, args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("hedui.toml");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = \"reports.db\"\n\n[verification]\ndefault_deadline_ms = 10000\n\n{config_body}"
        );
        std::fs::write(&config_path, config)?;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Self::spawn(dir, args).await
    }

    async fn spawn(dir: tempfile::TempDir, args: Vec<String>) -> anyhow::Result<Self> {
        let config_path = dir.path().join("hedui.toml");
        let (child, url, ready) = spawn_hedui(&config_path, |c| {
            c.args(&args).current_dir(dir.path());
        })
        .await?;
        Ok(Self {
            child,
            url,
            federation: ready["federation"].as_str().map(|a| format!("http://{a}")),
            simulation_control: ready["simulation_control"]
                .as_str()
                .map(|a| format!("http://{a}")),
            ops: ready["ops"].as_str().map(str::to_owned),
            dir,
            args,
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit; its exit status.
    pub async fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Kills the process (as a crash would) and starts it again with the
    /// same configuration, directory and arguments.
    ///
    /// # Errors
    /// When the new process does not start or get ready.
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        let Self { dir, args, .. } = self;
        Self::spawn(dir, args).await
    }

    /// A client of its `VerificationService`.
    ///
    /// # Errors
    /// When it cannot be reached.
    pub async fn client(&self) -> anyhow::Result<VerificationServiceClient<Channel>> {
        let channel = Channel::from_shared(self.url.clone())?.connect().await?;
        Ok(VerificationServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024))
    }

    /// A client of its `AuditService`.
    ///
    /// # Errors
    /// When it cannot be reached.
    pub async fn audit_client(
        &self,
    ) -> anyhow::Result<hedui_proto::v1::audit_service_client::AuditServiceClient<Channel>> {
        let channel = Channel::from_shared(self.url.clone())?.connect().await?;
        Ok(hedui_proto::v1::audit_service_client::AuditServiceClient::new(channel))
    }

    /// Stops the process.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The PostgreSQL the tests use (`HEDUI_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`); tests fail without it.
pub fn postgres_url() -> String {
    std::env::var("HEDUI_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The MariaDB the tests use (`HEDUI_TEST_MARIADB_URL`, default
/// `mysql://root@127.0.0.1:3306/test`); tests fail without it.
pub fn mariadb_url() -> String {
    std::env::var("HEDUI_TEST_MARIADB_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A name no other test run uses at the same time: `tag`, the process id
/// and a clock reading (lower-case letters, digits and `_`).
pub fn unique_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{tag}_{}_{nanos}", std::process::id())
}

/// A loopback port free a moment ago (for two processes that must know
/// each other's address before either starts).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Lookups the simulated agencies behind the control service at `control`
/// have served since their counters were last reset, over every source.
///
/// # Errors
/// When the control service cannot be reached.
pub async fn total_lookups(control: &str) -> anyhow::Result<u64> {
    use hedui_mock_agencies::control::proto::{
        GetStatsRequest, agency_control_service_client::AgencyControlServiceClient,
    };
    let mut c = AgencyControlServiceClient::connect(control.to_owned()).await?;
    let stats = c.get_stats(GetStatsRequest::default()).await?.into_inner();
    Ok(stats.sources.iter().map(|s| s.lookups).sum())
}

/// Resets the lookup counters of the simulated agencies behind the control
/// service at `control`.
///
/// # Errors
/// When the control service cannot be reached.
pub async fn reset_stats(control: &str) -> anyhow::Result<()> {
    use hedui_mock_agencies::control::proto::{
        ResetStatsRequest, agency_control_service_client::AgencyControlServiceClient,
    };
    let mut c = AgencyControlServiceClient::connect(control.to_owned()).await?;
    c.reset_stats(ResetStatsRequest::default()).await?;
    Ok(())
}

// === Authentication toward sources (issue 5): a broker from a whole
// configuration with its log captured ===

impl BrokerProcess {
    /// Starts `hedui serve` as [`BrokerProcess::start`] does, with its log
    /// (at `RUST_LOG`, default `debug`) written to `log_file` instead of the
    /// test's standard error.
    ///
    /// # Errors
    /// When the process does not start or get ready.
    pub async fn start_logged(
        config_body: &str,
        args: &[&str],
        log_file: &Path,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("hedui.toml");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = \"reports.db\"\n\n[verification]\ndefault_deadline_ms = 10000\n\n{config_body}"
        );
        std::fs::write(&config_path, config)?;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let log = std::fs::File::create(log_file)?;
        let (child, url, ready) = spawn_hedui(&config_path, |c| {
            c.args(&args)
                .current_dir(dir.path())
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
                )
                .env("NO_COLOR", "1")
                .stderr(Stdio::from(log));
        })
        .await?;
        Ok(Self {
            child,
            url,
            federation: ready["federation"].as_str().map(|a| format!("http://{a}")),
            simulation_control: ready["simulation_control"]
                .as_str()
                .map(|a| format!("http://{a}")),
            ops: ready["ops"].as_str().map(str::to_owned),
            dir,
            args,
        })
    }
}

impl BrokerProcess {
    /// Starts `hedui serve` as [`BrokerProcess::start`] does, with these
    /// environment variables (e.g. `HEDUI__SERVER__MAX_IN_FLIGHT`: keys of
    /// sections the harness writes itself).
    ///
    /// # Errors
    /// When the process does not start or get ready.
    pub async fn start_with_env(
        config_body: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("hedui.toml");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = \"reports.db\"\n\n[verification]\ndefault_deadline_ms = 10000\n\n{config_body}"
        );
        std::fs::write(&config_path, config)?;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (child, url, ready) = spawn_hedui(&config_path, |c| {
            c.args(&args).current_dir(dir.path());
            for (k, v) in env {
                c.env(k, v);
            }
        })
        .await?;
        Ok(Self {
            child,
            url,
            federation: ready["federation"].as_str().map(|a| format!("http://{a}")),
            simulation_control: ready["simulation_control"]
                .as_str()
                .map(|a| format!("http://{a}")),
            ops: ready["ops"].as_str().map(str::to_owned),
            dir,
            args,
        })
    }
}
