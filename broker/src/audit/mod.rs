//! The audit log: every access to a household's data, durable before the
//! answer leaves, tamper-evident, queryable by auditors and by the
//! household itself (issue 4; `docs/audit.md`).
//!
//! # Layout
//! - [`record`]: what a record says ([`Entry`]) and its canonical bytes.
//! - [`crypto`]: the algorithm suites (SHA-256 + Ed25519, SM3 + SM2), the
//!   keyed hash of identity numbers, checkpoint signatures.
//! - [`merkle`]: the RFC 6962 Merkle tree.
//! - [`store`]: the [`store::AuditBackend`] trait and the SQL both backends
//!   share; [`sqlite`] and [`postgres`] implement it.
//! - this module: [`AuditLog`], the handle every request uses, and its
//!   single writer task (group commit, checkpoints, purges).
//! - [`check`]: `hedui audit verify` and `hedui audit prove`, offline.
//! - [`service`]: the `AuditService` gRPC API; [`cli`]: `hedui audit`.
//! - [`mod@bench`]: `hedui bench-audit`; [`testkit`]: throw-away stores for
//!   tests and the benchmark.
//!
//! # Group commit
//! Callers send their [`Entry`] to one writer task and await its commit.
//! The writer takes whatever has queued while the previous transaction
//! committed (up to `batch_max`) and writes it in one transaction: each
//! record gets the next position, the leaf hash of the one before it, and
//! a leaf in the Merkle tree; a signed checkpoint is added every N records
//! or T milliseconds. Every caller of the batch learns the outcome of that
//! one commit.

pub mod bench;
pub mod check;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod merkle;
pub mod postgres;
pub mod record;
pub mod service;
pub mod sqlite;
pub mod store;
pub mod testkit;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

pub use self::{
    config::AuditConfig,
    record::{Entry, Kind, SourceEntry},
};
use self::{
    config::BackendKind,
    crypto::{Hash, KeyError, Signer, SubjectKey, Suite, read_secret},
    merkle::leaf_hash,
    record::{FORMAT, RecordRef, now_ms},
    store::{AuditBackend, BatchPlan, CheckpointRow, Head, Row},
};

/// Why the audit log failed. Its text is for logs and operators; callers
/// of the API see only what [`service`] and the verification path map it
/// to.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database failed.
    #[error("audit store: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("audit store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data is not what the broker wrote.
    #[error("audit store: {0} is corrupt")]
    Corrupt(String),
    /// The configuration is wrong.
    #[error("{0}")]
    Config(String),
    /// A key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The log was written with another suite.
    #[error(
        "audit.suite: the log is written with {stored}, the configuration says {configured}; a log keeps one suite"
    )]
    SuiteMismatch {
        /// The suite in the database.
        stored: String,
        /// The configured suite.
        configured: String,
    },
    /// The log cannot take records now: the writer stopped, or the store
    /// does not answer.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    /// A request to the log is wrong; `field` names what.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Where a committed record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Its position (leaf index).
    pub seq: u64,
    /// Its leaf hash.
    pub leaf_hash: Hash,
}

/// What a retention purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Records purged now.
    pub records: u64,
    /// Every record below this position is purged.
    pub before: u64,
    /// The purge's own record, when there was anything to purge.
    pub receipt: Option<Receipt>,
}

/// A record waiting to be committed, and who waits for it.
type Pending = (Box<Entry>, oneshot::Sender<Result<Receipt, String>>);

enum Command {
    Append(Box<Entry>, oneshot::Sender<Result<Receipt, String>>),
    Checkpoint(oneshot::Sender<Result<Option<CheckpointRow>, String>>),
    Purge(i64, oneshot::Sender<Result<Purged, String>>),
    Close(oneshot::Sender<()>),
}

/// The audit log as the broker uses it: cheap to clone, shared by every
/// request.
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

/// Index keys are moved from the recent table into the index at most this
/// often...
const INDEX_EVERY: Duration = Duration::from_secs(5);
/// ...unless this many records wait.
const INDEX_PENDING_MAX: u64 = 50_000;
/// Once this many records wait, a commit of new records also moves the
/// keys of this many into the index, in the same transaction. The move
/// holds the writer, so every caller waiting for its record, and its cost
/// grows with the index: moving 9,000 records' keys at once took 84 ms on
/// a fresh log and 270 ms some minutes later (2026-12-05, O1 at half its
/// peak), long enough for 64 verifications to pile up behind it. A chunk
/// bounds that pause.
const INDEX_CHUNK: u64 = 1_000;
/// Keys of each run a step of a merge of the index's runs moves
/// ([`AuditBackend::merge_index`]): a step of eight runs writes at most
/// 16,000 keys, a pause of milliseconds for the records waiting behind it.
const MERGE_CHUNK: u64 = 2_000;
/// Merge steps after each move of keys into a new run and on each tick, at
/// most: enough that merging keeps up with moves (a key is merged again at
/// most twice), few enough that records do not wait long behind them.
const MERGE_STEPS: usize = 4;

/// How long the store may take to answer a readiness check.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after a failed check callers are refused without a new one.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// A ping of the store that every caller arriving while it runs awaits.
type SharedPing = futures::future::Shared<futures::future::BoxFuture<'static, Result<(), String>>>;

/// The ping in progress, if any.
#[derive(Default)]
struct PingSlot(std::sync::Mutex<Option<SharedPing>>);

impl std::fmt::Debug for PingSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PingSlot")
    }
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Command>,
    down_since: std::sync::Mutex<Option<std::time::Instant>>,
    ping: PingSlot,
    backend: Arc<dyn AuditBackend>,
    subject_key: SubjectKey,
    signer: Signer,
    config: AuditConfig,
}

/// The message a checkpoint's signature covers.
pub fn checkpoint_message(suite: Suite, tree_size: u64, root: &[u8], time_ms: i64) -> Vec<u8> {
    format!(
        "hedui-audit-checkpoint/v1\n{}\n{tree_size}\n{}\n{time_ms}\n",
        suite.name(),
        hex::encode(root)
    )
    .into_bytes()
}

/// The record of a configuration (re)load: the digest of the
/// configuration in force (secrets left out) and where the log is.
pub fn configuration_entry(config: &crate::config::Config) -> Entry {
    let mut shown = config.clone();
    shown.audit.hmac_key = None;
    shown.audit.signing_key = None;
    let mut entry = Entry::new(Kind::Configuration);
    entry.request_id = uuid::Uuid::new_v4().to_string();
    entry.client = "hedui".into();
    entry.operator = "broker".into();
    entry.report_digest = hex::encode(config.audit.suite.hash(&[format!("{shown:?}").as_bytes()]));
    entry.detail = format!(
        "configuration loaded: {} sources, audit {}, retention {} days",
        if config.sources.is_empty() {
            28
        } else {
            config.sources.len()
        },
        config.audit.location(),
        config.audit.retention_days
    );
    entry
}

/// Text of a purge record's `detail`; [`purged_before`] reads it back.
pub fn purge_detail(before: u64, cutoff_ms: i64, records: u64) -> String {
    format!("purged_before={before} cutoff_ms={cutoff_ms} records={records}")
}

/// The position below which a purge record says records were purged.
pub fn purged_before(detail: &str) -> Option<u64> {
    detail
        .split(' ')
        .find_map(|p| p.strip_prefix("purged_before="))
        .and_then(|v| v.parse().ok())
}

impl AuditLog {
    /// Opens the configured store (creating and migrating it as needed),
    /// loads the keys and starts the writer.
    ///
    /// # Errors
    /// [`AuditError`] when the configuration or a key is wrong, the store
    /// cannot be opened, or the log was written with another suite.
    pub async fn open(config: &AuditConfig) -> Result<Self, AuditError> {
        let backend = open_backend(config).await?;
        Self::with_backend(backend, config).await
    }

    /// Starts the log over an opened backend.
    ///
    /// # Errors
    /// As [`AuditLog::open`].
    pub async fn with_backend(
        backend: Arc<dyn AuditBackend>,
        config: &AuditConfig,
    ) -> Result<Self, AuditError> {
        let suite = config.suite;
        let stored = backend.claim_suite(suite.name()).await?;
        if stored != suite.name() {
            return Err(AuditError::SuiteMismatch {
                stored,
                configured: suite.name().into(),
            });
        }
        check_head(backend.as_ref()).await?;
        let (subject_key, signer) = keys(config)?;
        if subject_key.is_demo() {
            warn!(
                "audit: using the embedded demo hmac key; not for production (set audit.hmac_key_file)"
            );
        }
        if signer.is_demo() {
            warn!(
                "audit: using the embedded demo signing key; not for production (set audit.signing_key_file)"
            );
        }
        let (tx, rx) = mpsc::channel(4 * config.batch_max.max(64));
        let writer = Writer {
            backend: Arc::clone(&backend),
            indexed: std::sync::atomic::AtomicU64::new(u64::MAX),
            last_index: std::sync::Mutex::new(std::time::Instant::now()),
            // Merging may have been left under way, or due, at the last
            // stop: the first tick looks.
            merging: std::sync::atomic::AtomicBool::new(true),
            signer: signer.clone(),
            every_records: config.checkpoint_every_records,
            every_ms: config.checkpoint_every_ms,
            batch_max: config.batch_max,
        };
        tokio::spawn(writer.run(rx));
        if config.purge_every_hours > 0 {
            let every = Duration::from_secs(config.purge_every_hours * 3600);
            let log = tx.clone();
            let retention_ms = i64::from(config.retention_days) * 86_400_000;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let (reply, rx) = oneshot::channel();
                    if log
                        .send(Command::Purge(now_ms() - retention_ms, reply))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    if let Ok(Err(e)) = rx.await {
                        warn!(error = %e, "audit retention purge failed");
                    }
                }
            });
        }
        info!(store = %config.location(), suite = %suite, public_key = %signer.public_key_hex(), "audit log open");
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                down_since: std::sync::Mutex::new(None),
                ping: PingSlot::default(),
                backend,
                subject_key,
                signer,
                config: config.clone(),
            }),
        })
    }

    /// The keyed hash that stands for identity numbers in this log.
    pub fn subject_key(&self) -> &SubjectKey {
        &self.inner.subject_key
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.inner.config.suite
    }

    /// The public key checkpoints are signed with (hex).
    pub fn public_key_hex(&self) -> String {
        self.inner.signer.public_key_hex()
    }

    /// The configuration the log runs with.
    pub fn config(&self) -> &AuditConfig {
        &self.inner.config
    }

    /// The store, for queries and checks.
    pub fn backend(&self) -> &Arc<dyn AuditBackend> {
        &self.inner.backend
    }

    /// The suite's digest (hex) of `bytes`, e.g. of a report returned.
    pub fn digest(&self, bytes: &[u8]) -> String {
        hex::encode(self.suite().hash(&[bytes]))
    }

    /// Whether the log can take records now: the writer runs and the store
    /// answers. The verification path asks before it calls any source.
    ///
    /// # Errors
    /// [`AuditError::Unavailable`] naming why.
    pub async fn ready(&self) -> Result<(), AuditError> {
        if self.inner.tx.is_closed() {
            return Err(AuditError::Unavailable("the writer has stopped".into()));
        }
        // After a failed check, callers are refused at once for a moment
        // instead of each waiting for the store again.
        if let Some(at) = *self.inner.down_since.lock().expect("not poisoned")
            && at.elapsed() < RECHECK_AFTER
        {
            return Err(AuditError::Unavailable(
                "the store did not answer just now".into(),
            ));
        }
        // One ping at a time: callers that arrive while it runs share its
        // answer, which comes after they arrived (under load, one round
        // trip to the store for many verifications instead of one each).
        let ping = {
            let mut slot = self.inner.ping.0.lock().expect("not poisoned");
            match slot.as_ref() {
                Some(running) if running.peek().is_none() => running.clone(),
                _ => {
                    let backend = Arc::clone(&self.inner.backend);
                    let ping = async move {
                        match tokio::time::timeout(PING_TIMEOUT, backend.ping()).await {
                            Err(_) => Err(format!(
                                "the store did not answer in {} ms",
                                PING_TIMEOUT.as_millis()
                            )),
                            Ok(Err(e)) => Err(e.to_string()),
                            Ok(Ok(())) => Ok(()),
                        }
                    };
                    let ping = futures::FutureExt::shared(futures::FutureExt::boxed(ping));
                    *slot = Some(ping.clone());
                    ping
                }
            }
        };
        let result = ping.await.map_err(AuditError::Unavailable);
        *self.inner.down_since.lock().expect("not poisoned") =
            result.is_err().then(std::time::Instant::now);
        result
    }

    /// Records an entry and returns once it is committed. Free text is
    /// redacted first ([`record::redact_ids`]); duplicate subjects are
    /// dropped.
    ///
    /// # Errors
    /// [`AuditError::Unavailable`] when the record could not be committed;
    /// it is then not in the log.
    pub async fn record(&self, entry: Entry) -> Result<Receipt, AuditError> {
        let mut entry = entry.redacted(&self.inner.subject_key);
        let mut seen = std::collections::HashSet::new();
        entry.subjects.retain(|s| seen.insert(s.clone()));
        let (tx, rx) = oneshot::channel();
        self.send(Command::Append(Box::new(entry), tx)).await?;
        rx.await
            .map_err(|_| AuditError::Unavailable("the writer has stopped".into()))?
            .map_err(AuditError::Unavailable)
    }

    /// Writes a signed checkpoint now if records arrived since the last;
    /// returns it (or `None` when there was nothing new).
    ///
    /// # Errors
    /// [`AuditError::Unavailable`] when it could not be written.
    pub async fn checkpoint(&self) -> Result<Option<CheckpointRow>, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Checkpoint(tx)).await?;
        rx.await
            .map_err(|_| AuditError::Unavailable("the writer has stopped".into()))?
            .map_err(AuditError::Unavailable)
    }

    /// Purges records older than the retention at `now_ms`: their bodies
    /// and subjects go, their leaf hashes stay; the purge is recorded and
    /// checkpointed in the same transaction.
    ///
    /// # Errors
    /// [`AuditError::Unavailable`] when it could not be done.
    pub async fn purge(&self, now_ms: i64) -> Result<Purged, AuditError> {
        let retention_ms = i64::from(self.inner.config.retention_days) * 86_400_000;
        let (tx, rx) = oneshot::channel();
        self.send(Command::Purge(now_ms - retention_ms, tx)).await?;
        rx.await
            .map_err(|_| AuditError::Unavailable("the writer has stopped".into()))?
            .map_err(AuditError::Unavailable)
    }

    /// Writes a last checkpoint, stops the writer and closes the store.
    /// Records submitted afterwards fail with [`AuditError::Unavailable`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Command::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.inner.backend.close().await;
    }

    async fn send(&self, command: Command) -> Result<(), AuditError> {
        self.inner
            .tx
            .send(command)
            .await
            .map_err(|_| AuditError::Unavailable("the writer has stopped".into()))
    }
}

/// Refuses a log whose tip is not its last record: a cut or extended tail
/// would otherwise be written over (`hedui audit verify` says where).
async fn check_head(backend: &dyn AuditBackend) -> Result<(), AuditError> {
    let head = backend.head().await?;
    let from = head.tree_size.saturating_sub(1);
    let rows = backend.records(from, 2).await?;
    let ok = match (head.tree_size, rows.as_slice()) {
        (0, []) => true,
        (n, [last]) if n > 0 => {
            last.seq == n - 1 && head.last_leaf.is_some_and(|l| last.leaf_hash == l)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(AuditError::Corrupt(format!(
            "the log's head (size {}) does not match its last record; run `hedui audit verify`",
            head.tree_size
        )))
    }
}

/// Opens the configured store alone (no writer), as the offline commands
/// do, and checks its suite.
///
/// # Errors
/// As [`AuditLog::open`].
pub async fn open_backend(config: &AuditConfig) -> Result<Arc<dyn AuditBackend>, AuditError> {
    config.validate().map_err(AuditError::Config)?;
    let backend: Arc<dyn AuditBackend> = match config.backend {
        BackendKind::Sqlite => Arc::new(
            sqlite::SqliteAudit::open(&config.sqlite_path(), config.sqlite_cache_mib).await?,
        ),
        BackendKind::Postgres => Arc::new(
            postgres::PostgresAudit::open(
                config.url.as_deref().unwrap_or_default(),
                &config.schema,
                config.max_connections,
            )
            .await?,
        ),
    };
    Ok(backend)
}

/// The public key (hex) checkpoints of this configuration are signed with.
///
/// # Errors
/// When the signing key cannot be read.
pub fn configured_public_key(config: &AuditConfig) -> Result<String, AuditError> {
    Ok(keys(config)?.1.public_key_hex())
}

fn keys(config: &AuditConfig) -> Result<(SubjectKey, Signer), AuditError> {
    let hmac = read_secret(
        "audit.hmac_key_file",
        config.hmac_key.as_ref().map(config::Secret::expose),
        config.hmac_key_file.as_deref(),
    )?;
    let signing = read_secret(
        "audit.signing_key_file",
        config.signing_key.as_ref().map(config::Secret::expose),
        config.signing_key_file.as_deref(),
    )?;
    Ok((
        SubjectKey::new(config.suite, hmac.as_deref())?,
        Signer::new(config.suite, signing.as_deref())?,
    ))
}

/// Every checkpoint goes to the broker's log too: shipped elsewhere, it is
/// a copy of the log's signed state that whoever can write the database
/// cannot change.
fn log_checkpoint(c: &CheckpointRow) {
    info!(
        tree_size = c.tree_size,
        root = %hex::encode(&c.root),
        time_ms = c.time_ms,
        signature = %hex::encode(&c.signature),
        "audit checkpoint"
    );
}

/// How long the audit writer waits for more records before it commits a
/// batch that holds fewer than the last one.
///
/// Waiting gathers callers into one commit when they come close together
/// (each commit is a transaction and an `fsync`), and delays every record
/// in the batch when nobody else comes. So the writer waits (at most the
/// last commit's time, and 2 ms) only when the last batch had company and
/// the records' arrival rate, measured over the last batches, makes
/// another one likely within the wait. At a few hundred verifications a
/// second, one at a time, two records now and then share a batch by chance,
/// and a wait would mostly end with nobody (docs/benchmarks.md, S3).
#[derive(Debug, Default)]
struct Linger {
    /// Records in the last batch.
    last_batch: usize,
    /// How long its commit took.
    last_commit: Duration,
    /// When the last batch took its first record.
    last_formed: Option<std::time::Instant>,
    /// Records arriving per second, smoothed over the last batches.
    rate: f64,
}

impl Linger {
    /// The longest wait.
    const MAX: Duration = Duration::from_millis(2);
    /// Weight of the newest batch in the smoothed rate.
    const WEIGHT: f64 = 0.25;

    /// How long the next batch may wait for more records.
    fn wait(&self) -> Duration {
        let wait = self.last_commit.min(Self::MAX);
        if self.last_batch > 1 && self.rate * wait.as_secs_f64() >= 1.0 {
            wait
        } else {
            Duration::ZERO
        }
    }

    /// A batch of `records`, which took its first record at `formed`,
    /// committed in `took`.
    fn committed(&mut self, records: usize, formed: std::time::Instant, took: Duration) {
        // The batch's records arrived since the last batch took its first.
        if let Some(gap) = self
            .last_formed
            .map(|last| formed.saturating_duration_since(last).as_secs_f64())
            .filter(|gap| *gap > 0.0)
        {
            let rate = records as f64 / gap;
            self.rate = if self.rate == 0.0 {
                rate
            } else {
                self.rate + Self::WEIGHT * (rate - self.rate)
            };
        }
        self.last_batch = records;
        self.last_commit = took;
        self.last_formed = Some(formed);
    }
}

/// The single writer: batches, chains, checkpoints.
struct Writer {
    backend: Arc<dyn AuditBackend>,
    /// Tree size when keys were last moved to the index.
    indexed: std::sync::atomic::AtomicU64,
    /// When keys were last moved.
    last_index: std::sync::Mutex<std::time::Instant>,
    /// Whether the index's runs may need merging.
    merging: std::sync::atomic::AtomicBool,
    signer: Signer,
    every_records: u64,
    every_ms: u64,
    batch_max: usize,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.every_ms.clamp(10, 1000)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deferred: Option<Command> = None;
        let mut linger = Linger::default();
        loop {
            let command = match deferred.take() {
                Some(c) => c,
                // The tick first when both are ready: its first, at once,
                // learns how many records' keys wait to be indexed (until
                // then commits move none), and a steady stream of records
                // does not put off checkpoints by chance.
                None => tokio::select! {
                    biased;
                    _ = tick.tick() => {
                        if let Err(e) = self.checkpoint(false).await {
                            warn!(error = %e, "audit checkpoint failed");
                        }
                        if let Err(e) = self.index_keys(false).await {
                            warn!(error = %e, "audit indexing failed");
                        }
                        self.merge_runs().await;
                        continue;
                    }
                    c = rx.recv() => match c {
                        Some(c) => c,
                        None => break,
                    },
                },
            };
            match command {
                Command::Append(entry, reply) => {
                    let formed = std::time::Instant::now();
                    let mut batch = vec![(entry, reply)];
                    // Group commit: what queued while the last transaction
                    // committed, and those that arrive within a short
                    // linger when more are expected ([`Linger`]), until as
                    // many as last time are in.
                    let (wait, last_batch) = (linger.wait(), linger.last_batch);
                    let until = tokio::time::Instant::now() + wait;
                    while batch.len() < self.batch_max {
                        let next = match rx.try_recv() {
                            Ok(c) => Some(c),
                            Err(_) if batch.len() < last_batch && !wait.is_zero() => {
                                tokio::time::timeout_at(until, rx.recv())
                                    .await
                                    .ok()
                                    .flatten()
                            }
                            Err(_) => None,
                        };
                        match next {
                            Some(Command::Append(e, r)) => batch.push((e, r)),
                            Some(other) => {
                                deferred = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    let records = batch.len();
                    let started = std::time::Instant::now();
                    let moved = self.append(batch).await;
                    let took = started.elapsed();
                    linger.committed(records, formed, took);
                    let m = crate::telemetry::metrics();
                    m.audit_commit.record(took.as_secs_f64(), &[]);
                    m.audit_batch.record(records as u64, &[]);
                    if moved {
                        // A new run: merge a little (the callers of this
                        // batch have their answers).
                        self.merge_runs().await;
                    }
                }
                Command::Checkpoint(reply) => {
                    let _ = reply.send(self.checkpoint(true).await.map_err(|e| e.to_string()));
                }
                Command::Purge(cutoff, reply) => {
                    let _ = reply.send(self.purge(cutoff).await.map_err(|e| e.to_string()));
                }
                Command::Close(reply) => {
                    if let Err(e) = self.checkpoint(true).await {
                        warn!(error = %e, "audit: last checkpoint failed");
                    }
                    if let Err(e) = self.index_keys(true).await {
                        warn!(error = %e, "audit indexing failed");
                    }
                    let _ = reply.send(());
                    break;
                }
            }
        }
        debug!("audit writer stopped");
    }

    /// Adds `entries` to `head` in `plan`, returning their receipts.
    fn plan_records(
        &self,
        head: &mut Head,
        plan: &mut BatchPlan,
        entries: &[&Entry],
    ) -> Vec<Receipt> {
        let suite = self.signer.suite();
        let mut receipts = Vec::with_capacity(entries.len());
        if head.checkpoint_time_ms == 0 {
            // The time rule of checkpoints counts from the first record.
            head.checkpoint_time_ms = now_ms();
        }
        for entry in entries {
            let seq = head.tree_size;
            let prev = head.last_leaf.map(hex::encode).unwrap_or_default();
            let body = RecordRef {
                v: FORMAT,
                seq,
                prev: &prev,
                entry,
            }
            .canonical();
            let leaf = leaf_hash(suite, &body);
            plan.rows.push(Row {
                seq,
                time_ms: entry.time_ms,
                kind: entry.kind().name().into(),
                request_id: entry.request_id.clone(),
                client: entry.client.clone(),
                operator: entry.operator.clone(),
                purpose: entry.purpose.clone(),
                outcome: entry.outcome.clone(),
                leaf_hash: leaf.to_vec(),
                body: Some(String::from_utf8(body).expect("json is utf-8")),
            });
            plan.keys
                .extend(store::index_keys(entry).into_iter().map(|k| (k, seq)));
            head.frontier.push(suite, leaf);
            head.tree_size += 1;
            head.last_leaf = Some(leaf);
            receipts.push(Receipt {
                seq,
                leaf_hash: leaf,
            });
        }
        receipts
    }

    /// A signed checkpoint of `head`, which it then records.
    fn sign_checkpoint(&self, head: &mut Head) -> CheckpointRow {
        let suite = self.signer.suite();
        let root = head.frontier.root(suite);
        let time_ms = now_ms().max(head.checkpoint_time_ms);
        let signature =
            self.signer
                .sign(&checkpoint_message(suite, head.tree_size, &root, time_ms));
        head.checkpoint_size = head.tree_size;
        head.checkpoint_time_ms = time_ms;
        CheckpointRow {
            tree_size: head.tree_size,
            time_ms,
            root: root.to_vec(),
            key: self.signer.public_key_hex(),
            signature,
        }
    }

    fn checkpoint_due(&self, head: &Head) -> bool {
        let new = head.tree_size - head.checkpoint_size;
        new >= self.every_records
            || (new > 0 && now_ms() - head.checkpoint_time_ms >= self.every_ms as i64)
    }

    /// Commits `batch` and answers its callers; whether the commit moved
    /// keys into a new run.
    async fn append(&self, batch: Vec<Pending>) -> bool {
        let entries: Vec<&Entry> = batch.iter().map(|(e, _)| e.as_ref()).collect();
        let mut receipts = Vec::new();
        let mut checkpoint = None;
        let indexed = self.indexed.load(std::sync::atomic::Ordering::Relaxed);
        let mut moved = None;
        let result = self
            .backend
            .append(None, &mut |mut head, _| {
                // A chunk of the keys waiting, when enough wait (the first
                // move after a start, with nothing known, is the tick's).
                let mut plan = BatchPlan {
                    index_keys_below: (indexed != u64::MAX
                        && head.tree_size >= indexed.saturating_add(INDEX_CHUNK))
                    .then_some(indexed.saturating_add(INDEX_CHUNK)),
                    ..BatchPlan::default()
                };
                moved = plan.index_keys_below;
                receipts = self.plan_records(&mut head, &mut plan, &entries);
                checkpoint = None;
                if self.checkpoint_due(&head) {
                    plan.checkpoint = Some(self.sign_checkpoint(&mut head));
                    checkpoint.clone_from(&plan.checkpoint);
                }
                plan.head = head;
                Ok(plan)
            })
            .await;
        match result {
            Ok(()) => {
                if let Some(c) = &checkpoint {
                    log_checkpoint(c);
                }
                if let Some(below) = moved {
                    self.indexed
                        .store(below, std::sync::atomic::Ordering::Relaxed);
                    self.merging
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                for ((_, reply), receipt) in batch.into_iter().zip(receipts) {
                    let _ = reply.send(Ok(receipt));
                }
                moved.is_some()
            }
            Err(e) => {
                error!(error = %e, records = batch.len(), "audit commit failed; the records are not in the log");
                let message = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(message.clone()));
                }
                false
            }
        }
    }

    /// Up to [`MERGE_STEPS`] steps of merging the index's runs, while any
    /// is due.
    async fn merge_runs(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        for _ in 0..MERGE_STEPS {
            if !self.merging.load(Relaxed) {
                return;
            }
            match self.backend.merge_index(MERGE_CHUNK).await {
                Ok(more) => self.merging.store(more, Relaxed),
                Err(e) => {
                    // Left for the next tick: queries read every run.
                    warn!(error = %e, "audit: merging the index's runs failed");
                    return;
                }
            }
        }
    }

    /// Writes a checkpoint if records arrived since the last and, unless
    /// `force`, one is due by time.
    async fn checkpoint(&self, force: bool) -> Result<Option<CheckpointRow>, AuditError> {
        let mut made = None;
        // Cheap check first: nothing new, nothing to write.
        let head = self.backend.head().await?;
        if head.tree_size == head.checkpoint_size || (!force && !self.checkpoint_due(&head)) {
            return Ok(None);
        }
        self.backend
            .append(None, &mut |mut head, _| {
                let mut plan = BatchPlan::default();
                if head.tree_size > head.checkpoint_size {
                    made = Some(self.sign_checkpoint(&mut head));
                    plan.checkpoint.clone_from(&made);
                }
                plan.head = head;
                Ok(plan)
            })
            .await?;
        if let Some(c) = &made {
            log_checkpoint(c);
        }
        Ok(made)
    }

    /// Moves the keys of every committed record into the index, in one
    /// transaction of its own: when due by time, when many wait, or when
    /// `force`d (commits move chunks of [`INDEX_CHUNK`] on their own).
    async fn index_keys(&self, force: bool) -> Result<(), AuditError> {
        let size = self.backend.head().await?.tree_size;
        let indexed = self.indexed.load(std::sync::atomic::Ordering::Relaxed);
        // Moving many keys at once dirties each index page once for many
        // of them: at most every INDEX_EVERY, unless many are waiting.
        let due = self.last_index.lock().expect("not poisoned").elapsed() >= INDEX_EVERY
            || size.saturating_sub(indexed) >= INDEX_PENDING_MAX
            || indexed == u64::MAX;
        if size == indexed || !(due || force) {
            return Ok(());
        }
        *self.last_index.lock().expect("not poisoned") = std::time::Instant::now();
        self.indexed
            .store(size, std::sync::atomic::Ordering::Relaxed);
        self.backend
            .append(None, &mut |head, _| {
                Ok(BatchPlan {
                    head,
                    index_keys_below: Some(size),
                    ..BatchPlan::default()
                })
            })
            .await?;
        self.merging
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Purges the records older than `cutoff` (ms since the epoch).
    async fn purge(&self, cutoff: i64) -> Result<Purged, AuditError> {
        let mut out = Purged {
            records: 0,
            before: 0,
            receipt: None,
        };
        self.backend
            .append(Some(cutoff), &mut |mut head, prune| {
                let mut plan = BatchPlan::default();
                let before = prune.unwrap_or(0);
                out = Purged {
                    records: 0,
                    before: head.pruned_before,
                    receipt: None,
                };
                if before > head.pruned_before {
                    let records = before - head.pruned_before;
                    let mut entry = Entry::new(Kind::RetentionPurge);
                    entry.request_id = uuid::Uuid::new_v4().to_string();
                    entry.client = "hedui".into();
                    entry.operator = "retention".into();
                    entry.detail = purge_detail(before, cutoff, records);
                    let receipts = self.plan_records(&mut head, &mut plan, &[&entry]);
                    plan.prune_before = Some(before);
                    head.pruned_before = before;
                    plan.checkpoint = Some(self.sign_checkpoint(&mut head));
                    out = Purged {
                        records,
                        before,
                        receipt: receipts.first().copied(),
                    };
                }
                plan.head = head;
                Ok(plan)
            })
            .await?;
        if out.records > 0 {
            info!(
                records = out.records,
                before = out.before,
                "audit: records past retention purged"
            );
        }
        Ok(out)
    }
}
