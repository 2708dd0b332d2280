//! The processes a benchmark starts on loopback: the simulated agencies
//! (`mock-agencies serve`), the broker (`hedui serve`) and the echo server
//! of baseline A (this binary's hidden `echo-server`). Each prints one JSON
//! line when ready, as `tests/src/lib.rs` reads them; each is killed when
//! its handle drops. Also what the kernel says about a process: CPU time
//! and resident memory from `/proc`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdin, Command},
};

/// How long a child may take to print its ready line (the population is
/// generated before it).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the release binaries `hedui` and `mock-agencies` are looked for,
/// and this benchmark's own executable (the echo server of baseline A).
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    candidates: Vec<PathBuf>,
    pub(crate) own: PathBuf,
}

impl Binaries {
    /// Looks in `dir` when given, else beside this executable
    /// (`target/release/`), one directory up (a test executable in
    /// `target/<profile>/deps/`), and in `$CARGO_TARGET_DIR/release`.
    pub(crate) fn new(dir: Option<&Path>) -> anyhow::Result<Self> {
        let own = std::env::current_exe().context("cannot find this executable")?;
        let mut candidates: Vec<PathBuf> = Vec::new();
        match dir {
            Some(d) => candidates.push(d.to_path_buf()),
            None => {
                if let Some(here) = own.parent() {
                    candidates.push(here.to_path_buf());
                    if let Some(up) = here.parent() {
                        candidates.push(up.to_path_buf());
                    }
                }
                if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
                    candidates.push(PathBuf::from(t).join("release"));
                }
            }
        }
        Ok(Self { candidates, own })
    }

    /// The binary `name`, or an error saying how to build it.
    pub(crate) fn find(&self, name: &str) -> anyhow::Result<PathBuf> {
        let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
        if let Some(p) = self
            .candidates
            .iter()
            .map(|d| d.join(&file))
            .find(|p| p.is_file())
        {
            return Ok(p);
        }
        let looked: Vec<String> = self
            .candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        bail!(
            "the binary `{name}` was not found (looked in: {}); build it first with \
             `cargo build --release --workspace --bins`, or pass --bin-dir",
            looked.join(", ")
        )
    }
}

/// A child process of the benchmark, killed when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    _stdin: Option<ChildStdin>,
    /// What it is, for messages.
    pub(crate) what: String,
    /// Its process id.
    pub(crate) pid: u32,
    /// Its ready line.
    pub(crate) ready: serde_json::Value,
    log: PathBuf,
    /// A broker's directory, whose databases [`Proc::stop`] deletes.
    data: Option<PathBuf>,
}

impl Proc {
    /// Spawns `command` with its standard error written to `log`, and waits
    /// for its ready line.
    async fn spawn(
        mut command: Command,
        what: &str,
        log: PathBuf,
        keep_stdin: bool,
    ) -> anyhow::Result<Self> {
        let err = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        command
            .stdin(if keep_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdin = child.stdin.take();
        let pid = child.id().context("child has no pid")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => bail!(
                "{what} exited before it was ready; its log:\n{}",
                log_tail(&log)
            ),
            Err(_) => bail!(
                "{what} did not get ready in {READY_TIMEOUT:?}; its log:\n{}",
                log_tail(&log)
            ),
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ready: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{what}: ready line {line:?}"))?;
        Ok(Self {
            child,
            _stdin: stdin,
            what: what.to_owned(),
            pid,
            ready,
            log,
            data: None,
        })
    }

    /// The `listening` address of its ready line, as a URL.
    pub(crate) fn listening_url(&self) -> anyhow::Result<String> {
        let addr = self.ready["listening"]
            .as_str()
            .with_context(|| format!("{}: ready line has no listening address", self.what))?;
        Ok(format!("http://{addr}"))
    }

    /// CPU seconds (user + system) it has used so far.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid).with_context(|| format!("{}: CPU time", self.what))
    }

    /// Its resident memory now, bytes.
    pub(crate) fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_bytes(self.pid).with_context(|| format!("{}: resident memory", self.what))
    }

    /// Fails, with the end of its log, when it is no longer running.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.what,
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Kills it, waits for it and, for a broker, deletes its databases (its
    /// configuration and log stay): the pages a scenario wrote and the
    /// kernel has not yet written back go with the files, instead of being
    /// written back while the next scenario's broker waits for its own
    /// commits.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
        if let Some(dir) = &self.data {
            remove_databases(dir);
        }
    }
}

/// Deletes the SQLite files (`*.db`, `*.db-wal`, `*.db-shm`) in `dir`.
fn remove_databases(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if [".db", ".db-wal", ".db-shm"]
            .iter()
            .any(|end| name.ends_with(end))
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            eprintln!("cannot delete {}: {e}", entry.path().display());
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The simulated agencies as their own process.
#[derive(Debug)]
pub(crate) struct Agencies {
    pub(crate) proc: Proc,
    /// URL of the control service.
    pub(crate) control: String,
    /// Each source's gRPC endpoint, by source id.
    pub(crate) endpoints: BTreeMap<String, String>,
    /// The broker's `[[sources]]` for them (`--sources-out`).
    pub(crate) sources_toml: String,
}

/// The population both sides generate.
#[derive(Debug, Clone)]
pub(crate) struct PopulationArgs {
    pub(crate) seed: u64,
    pub(crate) households: usize,
    pub(crate) today: String,
}

impl Agencies {
    /// Starts `mock-agencies serve` at zero latency, logging into `dir`.
    pub(crate) async fn start(
        bins: &Binaries,
        pop: &PopulationArgs,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let sources_out = dir.join("sources.toml");
        let mut command = Command::new(bins.find("mock-agencies")?);
        command
            .arg("serve")
            .args(["--seed", &pop.seed.to_string()])
            .args(["--households", &pop.households.to_string()])
            .args(["--today", &pop.today])
            .args(["--host", "127.0.0.1", "--profile", "zero"])
            .arg("--sources-out")
            .arg(&sources_out);
        let proc = Proc::spawn(command, "mock-agencies", dir.join("agencies.log"), true).await?;
        let control = proc.ready["control"]
            .as_str()
            .context("mock-agencies: ready line has no control address")?
            .to_owned();
        let endpoints = proc.ready["sources"]
            .as_object()
            .context("mock-agencies: ready line has no sources")?
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    v.as_str().context("a source endpoint")?.to_owned(),
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let sources_toml = std::fs::read_to_string(&sources_out)
            .with_context(|| format!("cannot read {}", sources_out.display()))?;
        Ok(Self {
            proc,
            control,
            endpoints,
            sources_toml,
        })
    }
}

/// Starts `hedui serve` with `config` (written into `dir`, where its report
/// store and audit log are kept too).
pub(crate) async fn start_broker(
    bins: &Binaries,
    dir: &Path,
    name: &str,
    config: &str,
) -> anyhow::Result<Proc> {
    start_broker_on(bins, dir, name, config, None).await
}

/// [`start_broker`], confined from its start to `cores` (`taskset -c`)
/// when given: its runtime then sizes itself to those cores, as it would
/// in a container given that many.
pub(crate) async fn start_broker_on(
    bins: &Binaries,
    dir: &Path,
    name: &str,
    config: &str,
    cores: Option<&str>,
) -> anyhow::Result<Proc> {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub)?;
    let path = sub.join("hedui.toml");
    std::fs::write(&path, config)?;
    let hedui = bins.find("hedui")?;
    let mut command = match cores {
        Some(cores) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cores).arg(hedui);
            c
        }
        None => Command::new(hedui),
    };
    command
        .arg("serve")
        .arg("--config")
        .arg(&path)
        // The benchmarks measure the broker's work, not TLS.
        .arg("--insecure-plaintext-development-only")
        .current_dir(&sub);
    let mut proc = Proc::spawn(
        command,
        &format!("hedui ({name})"),
        sub.join("hedui.log"),
        false,
    )
    .await?;
    proc.data = Some(sub);
    Ok(proc)
}

/// Starts this binary's echo server (baseline A).
pub(crate) async fn start_echo(bins: &Binaries, dir: &Path) -> anyhow::Result<Proc> {
    let mut command = Command::new(&bins.own);
    command.arg("echo-server");
    Proc::spawn(command, "echo server", dir.join("echo.log"), true).await
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// CPU seconds (utime + stime) of a process, from `/proc/<pid>/stat`.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: the fields after it start after
    // the last ')'. Field 3 (state) is then index 0; utime (14) index 11,
    // stime (15) index 12.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc stat")?
            .parse::<u64>()
            .context("unreadable /proc stat")? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

/// Resident memory of a process (`VmRSS` of `/proc/<pid>/status`), bytes.
pub(crate) fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("unreadable VmRSS")?
        .parse()
        .context("unreadable VmRSS")?;
    Ok(kib * 1024)
}

/// Samples a process's resident memory at a fixed interval, from its start
/// until [`RssSampler::finish`].
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(f64, u64)>>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(b) = rss_bytes(pid) {
                    samples.push((started.elapsed().as_secs_f64(), b / 1024));
                }
            }
            samples
        });
        Self { stop, task }
    }

    /// `(seconds since the start, KiB)`, every sample.
    pub(crate) async fn finish(self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }

    /// The highest sample, KiB.
    pub(crate) async fn finish_peak(self) -> u64 {
        self.finish()
            .await
            .iter()
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0)
    }
}
