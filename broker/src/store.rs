//! The report store: every report the broker returns is written here first,
//! so `GetReport` can return it later. SQLite through sqlx (WAL mode) is the
//! embedded default.
//!
//! # Group commit
//! Reports are written by one task: what queued while its last write
//! committed goes into the next one, a single `INSERT` of many rows (one
//! transaction, one `fsync`, one hand-off to SQLite's worker thread), and
//! every caller learns the outcome of its own row. Each report is durable
//! when its `put` returns, as before; under load the disk is synced once per
//! batch instead of once per report.
//!
//! # Written while its record commits
//! A verification's report is written while its access record commits
//! ([`ReportStore::put_unrecorded`]), not after it: one commit wait per
//! verification instead of two. Until [`ReportStore::recorded`] says the
//! record has committed, the report is *hidden*: no read returns it, as if
//! it were not stored. When the record fails, [`ReportStore::discard`]
//! deletes it. Such a row is written with `recorded = 0`, and a trigger
//! marks it in `unrecorded_reports` in the same statement; the mark is
//! deleted lazily, by the writer within a second (the report's row is not
//! written again), and only a broker that stopped in between finds a mark
//! left: it keeps the row if the audit log holds its record and deletes it
//! otherwise ([`crate::verify::Verifier::settle_unrecorded`]), before it
//! serves.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hedui_proto::v1::Report;
use prost::Message;
use sqlx::{
    ConnectOptions, Connection, QueryBuilder, Sqlite, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{mpsc, oneshot};

/// Why the store failed. Its text is for logs; callers see only that the
/// store is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("report store: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("report store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored report does not decode.
    #[error("stored report {0} does not decode")]
    Corrupt(String),
    /// The write of a batch of reports failed; none of them was stored.
    #[error("report store: {0}")]
    Write(String),
    /// The report is stored already at this revision or a later one.
    #[error("report {report_id} is stored already at revision {revision} or later")]
    Stale {
        /// The report.
        report_id: String,
        /// The revision that was refused.
        revision: u32,
    },
}

/// Where reports are kept.
#[derive(Debug, Clone)]
pub struct ReportStore {
    pool: SqlitePool,
    /// The writer's own connection (the same as `pool` in memory).
    write_pool: SqlitePool,
    /// To the task that writes reports ([group commit](self#group-commit)).
    writer: mpsc::Sender<Write>,
    /// Reports written ahead of their access record that no read may
    /// return yet ([written while its record commits](self#written-while-its-record-commits)).
    hidden: Arc<Mutex<HashSet<String>>>,
}

/// The most reports written in one statement (8 parameters each, well
/// under SQLite's limit of 32,766).
const MAX_BATCH: usize = 256;

/// A report as the store writes it: [`StoredReport::new`] takes what the
/// row needs of a report, so that the report itself need not be kept.
#[derive(Debug)]
pub struct StoredReport {
    report_id: String,
    completed_ms: i64,
    verdict: i32,
    body: bytes::Bytes,
    pending: bool,
    revision: u32,
    owner: String,
}

impl StoredReport {
    /// The row of `report`, whose protobuf encoding is `body`
    /// (`report.encode_to_vec()`), first returned to `owner`. `body` may
    /// be shared (a `Bytes` the response sends too).
    pub fn new(report: &Report, body: impl Into<bytes::Bytes>, owner: &str) -> Self {
        let body = body.into();
        debug_assert_eq!(
            body.as_ref(),
            report.encode_to_vec(),
            "body is the report's encoding"
        );
        let completed_ms = report
            .completed_at
            .as_ref()
            .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
            .unwrap_or_default();
        Self {
            report_id: report.report_id.clone(),
            completed_ms,
            verdict: report.verdict,
            body,
            pending: report.pending,
            revision: report.revision,
            owner: owner.to_owned(),
        }
    }

    /// The report's id.
    pub fn report_id(&self) -> &str {
        &self.report_id
    }
}

/// One report waiting for the writer, and who waits for it.
#[derive(Debug)]
struct Put {
    row: StoredReport,
    /// Whether its access record is known to be committed.
    recorded: bool,
    /// Whether the row was written (`false`: a revision as late or later
    /// is stored), or why the batch failed.
    reply: oneshot::Sender<Result<bool, String>>,
}

/// What the writer is asked to do.
#[derive(Debug)]
enum Write {
    /// Write a report.
    Put(Put),
    /// The access record of this report (written unrecorded) committed:
    /// set its flag. Nobody waits for it.
    Recorded(String),
}

/// The most flags written in one statement.
const MAX_FLAGS: usize = 1024;

/// How long the flags of recorded reports wait to be written together:
/// nobody waits for them, and written with every batch they made each
/// commit a transaction of four statements instead of one.
const FLAG_EVERY: Duration = Duration::from_secs(1);

/// Writes what queues, a batch at a time, until every sender is gone.
async fn write_reports(pool: SqlitePool, mut rx: mpsc::Receiver<Write>) {
    let mut puts = Vec::with_capacity(MAX_BATCH);
    let mut recorded = Vec::new();
    // When the flags waiting in `recorded` are written, at the latest.
    let mut flags_due: Option<tokio::time::Instant> = None;
    loop {
        let first = match flags_due {
            Some(due) => tokio::select! {
                write = rx.recv() => write,
                () = tokio::time::sleep_until(due) => {
                    write_flags(&pool, &mut recorded).await;
                    flags_due = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(first) = first else {
            write_flags(&pool, &mut recorded).await;
            return;
        };
        let mut next = Some(first);
        while let Some(write) = next.take() {
            match write {
                Write::Put(put) => puts.push(put),
                Write::Recorded(id) => recorded.push(id),
            }
            if puts.len() < MAX_BATCH && recorded.len() < MAX_FLAGS {
                next = rx.try_recv().ok();
            }
        }
        if !puts.is_empty() {
            match insert(&pool, &puts).await {
                Ok(mut written) => {
                    for put in puts.drain(..) {
                        // A row is written at most once: of two puts of the
                        // same report and revision in one batch, only the
                        // first is.
                        let done = written
                            .get_mut(&(put.row.report_id, put.row.revision))
                            .filter(|n| **n > 0)
                            .map(|n| *n -= 1)
                            .is_some();
                        let _ = put.reply.send(Ok(done));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for put in puts.drain(..) {
                        let _ = put.reply.send(Err(message.clone()));
                    }
                }
            }
        }
        if recorded.len() >= MAX_FLAGS {
            write_flags(&pool, &mut recorded).await;
            flags_due = None;
        } else if !recorded.is_empty() && flags_due.is_none() {
            flags_due = Some(tokio::time::Instant::now() + FLAG_EVERY);
        }
    }
}

/// Deletes a report written ahead of its record (`?`: its id), and its
/// mark (a trigger); a report not marked unrecorded is left alone.
const DELETE_UNRECORDED: &str = "DELETE FROM reports WHERE report_id = ?1 \
     AND EXISTS (SELECT 1 FROM unrecorded_reports WHERE report_id = ?1)";

/// Sets the flags of the reports in `recorded` (deletes their marks in
/// `unrecorded_reports`: the report rows are not rewritten), in one
/// statement, and empties it. A mark not deleted stays: the next start
/// settles it from the audit log ([`ReportStore::unrecorded`]).
async fn write_flags(pool: &SqlitePool, recorded: &mut Vec<String>) {
    if recorded.is_empty() {
        return;
    }
    let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM unrecorded_reports WHERE report_id IN ");
    q.push_tuples(recorded.iter(), |mut t, id| {
        t.push_bind(id);
    });
    if let Err(e) = q.build().execute(pool).await {
        tracing::debug!(error = %e, "recorded flags not written; the next start settles them");
    }
    recorded.clear();
}

/// Writes `batch` in one statement; how many rows of each report and
/// revision were written.
async fn insert(
    pool: &SqlitePool,
    batch: &[Put],
) -> Result<HashMap<(String, u32), usize>, sqlx::Error> {
    // A later revision (a report completed after late answers) replaces
    // the stored one and keeps its owner; anything else is not written, and
    // not returned.
    let mut query = QueryBuilder::<Sqlite>::new(
        "INSERT INTO reports (report_id, completed_at, verdict, body, pending, revision, owner, recorded) ",
    );
    query.push_values(batch, |mut row, put| {
        let r = &put.row;
        row.push_bind(&r.report_id)
            .push_bind(r.completed_ms)
            .push_bind(r.verdict)
            .push_bind(r.body.as_ref())
            .push_bind(i64::from(r.pending))
            .push_bind(i64::from(r.revision))
            .push_bind(&r.owner)
            .push_bind(i64::from(put.recorded));
    });
    query.push(
        " ON CONFLICT (report_id) DO UPDATE SET completed_at = excluded.completed_at, \
         verdict = excluded.verdict, body = excluded.body, pending = excluded.pending, \
         revision = excluded.revision, recorded = excluded.recorded \
         WHERE excluded.revision > reports.revision \
         RETURNING report_id, revision",
    );
    let rows: Vec<(String, i64)> = query.build_query_as().fetch_all(pool).await?;
    let mut written = HashMap::new();
    for (id, revision) in rows {
        let revision = u32::try_from(revision).unwrap_or(u32::MAX);
        *written.entry((id, revision)).or_insert(0) += 1;
    }
    Ok(written)
}

/// The pool a SQLite writer commits on: one connection of its own. SQLite
/// drops a connection's page cache whenever another connection has written
/// since its last transaction, and sqlx hands idle connections out first
/// in, first out: a writer on a shared pool would start most commits with
/// an empty cache and read the upper pages of its tables again. In memory,
/// `pool` itself (one connection: every other would see its own empty
/// database). The report store's and the audit log's writers use it.
pub(crate) async fn writer_pool(
    pool: &SqlitePool,
    options: SqliteConnectOptions,
    memory: bool,
) -> Result<SqlitePool, sqlx::Error> {
    if memory {
        return Ok(pool.clone());
    }
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
}

/// Copies the WAL of `pool`'s database back into it every second, beside
/// its writer (a passive checkpoint never blocks the writer, and the
/// writer's commits no longer run the checkpoint themselves), then lets the
/// WAL start again from its beginning ([`restart_wal`]), until the pool
/// closes. It works on a connection of its own, opened with `options`. The
/// report store's and the audit log's databases use it.
pub(crate) async fn checkpoint_wal(
    pool: SqlitePool,
    options: SqliteConnectOptions,
    what: &'static str,
) {
    let options = options.busy_timeout(Duration::from_millis(RESTART_WAIT_MS));
    let mut conn: Option<SqliteConnection> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if pool.is_closed() {
            if let Some(conn) = conn {
                let _ = conn.close().await;
            }
            return;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match options.connect().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::debug!(error = %e, "{what}: no connection for the WAL checkpoint");
                    continue;
                }
            },
        };
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *c)
            .await
        {
            tracing::debug!(error = %e, "{what}: WAL checkpoint failed");
            continue;
        }
        match restart_wal(c).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!("{what}: WAL not restarted, busy; next second"),
            Err(e) => tracing::debug!(error = %e, "{what}: WAL restart failed"),
        }
    }
}

/// How long a restart of the WAL waits for the writer's transaction and
/// for readers of the WAL, in milliseconds; the writer waits for the
/// restart meanwhile.
const RESTART_WAIT_MS: u64 = 50;

/// Copies what the WAL holds beyond the last checkpoint and has the next
/// commit write the WAL from its beginning again; `false` when the writer
/// or a reader kept it busy for longer than `conn`'s busy timeout (nothing
/// is lost: the next round tries again).
///
/// A passive checkpoint alone never catches up with a writer that commits
/// while it copies, and SQLite starts the WAL over only once a checkpoint
/// has copied all of it: under steady load the WAL grew until the
/// automatic checkpoint (at 400 MB of WAL) ran inside a commit,
/// and every commit in between extended the file. Right after a passive
/// checkpoint only the frames written meanwhile are left to copy, so the
/// writer waits for a few milliseconds at most, once a second; a reader
/// that holds the WAL longer (a long query) makes the restart give up after
/// [`RESTART_WAIT_MS`], rather than hold the writer back.
pub(crate) async fn restart_wal(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    let restarted: Result<(i64, i64, i64), sqlx::Error> =
        sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&mut *conn)
            .await;
    match restarted {
        Ok((busy, _, _)) => Ok(busy == 0),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("5") => Ok(false),
        Err(e) => Err(e),
    }
}

impl ReportStore {
    /// Opens (creating if needed) the SQLite file at `path` and brings its
    /// schema up to date. `:memory:` keeps reports in memory only.
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be opened or migrated.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let memory = path.as_os_str() == ":memory:";
        let options = if memory {
            SqliteConnectOptions::from_str("sqlite::memory:")?
        } else {
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                // A new file's pages are 8 KiB (a file made with 4 KiB keeps
                // them): a report (about 6.4 KB) then fits one page, one
                // WAL frame and one system call at its commit, instead of a
                // leaf page and an overflow page (docs/benchmarks.md,
                // 2026-12-07 night).
                .page_size(8192)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                // The WAL is copied back into the database by a task of
                // its own ([`checkpoint_wal`]), not inside the writer's
                // commits (the automatic checkpoint, every 1,000 pages by
                // default, is kept as a safety net at 400 MB).
                // 50,000 pages of 8 KiB (100,000 of 4 KiB before).
                .pragma("wal_autocheckpoint", "50000")
        }
        .busy_timeout(Duration::from_secs(5));
        // One connection for an in-memory database: every connection would
        // otherwise see its own empty database.
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 7 })
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        if !memory {
            tokio::spawn(checkpoint_wal(
                pool.clone(),
                options.clone(),
                "report store",
            ));
        }
        let write_pool = writer_pool(&pool, options, memory).await?;
        let (writer, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_reports(write_pool.clone(), rx));
        Ok(Self {
            pool,
            write_pool,
            writer,
            hidden: Arc::default(),
        })
    }

    /// Stores a report (a later revision of one stored keeps its owner);
    /// it is durable when this returns.
    ///
    /// # Errors
    /// [`StoreError::Stale`] when this revision or a later one is stored;
    /// [`StoreError::Write`] when the write fails: nothing of its batch is
    /// stored then.
    pub async fn put(&self, report: &Report) -> Result<(), StoreError> {
        self.put_owned(report, "").await
    }

    /// Stores a report first returned to `owner`, the only client that may
    /// read it again ([`ReportStore::get_owned`]).
    ///
    /// # Errors
    /// As [`ReportStore::put`].
    pub async fn put_owned(&self, report: &Report, owner: &str) -> Result<(), StoreError> {
        self.put_encoded(report, report.encode_to_vec(), owner)
            .await
    }

    /// [`Self::put_owned`] with the report's protobuf encoding made by the
    /// caller (who needed it too: the audit record's digest), so that it is
    /// not encoded twice. `body` must be `report.encode_to_vec()`.
    ///
    /// # Errors
    /// As [`Self::put_owned`].
    pub async fn put_encoded(
        &self,
        report: &Report,
        body: Vec<u8>,
        owner: &str,
    ) -> Result<(), StoreError> {
        self.write(StoredReport::new(report, body, owner), true)
            .await
    }

    /// Stores a report while its access record is being committed: it is
    /// durable when this returns, but no read returns it until
    /// [`Self::recorded`] is called, and [`Self::discard`] deletes it
    /// ([written while its record commits](self#written-while-its-record-commits)).
    ///
    /// # Errors
    /// As [`ReportStore::put`]; nothing is stored then.
    pub async fn put_unrecorded(&self, row: StoredReport) -> Result<(), StoreError> {
        let id = row.report_id.clone();
        self.hidden().insert(id.clone());
        let written = self.write(row, false).await;
        if written.is_err() {
            self.hidden().remove(&id);
        }
        written
    }

    /// The access record of a report stored by [`Self::put_unrecorded`]
    /// has committed: reads return it from now on.
    pub async fn recorded(&self, report_id: String) {
        self.hidden().remove(&report_id);
        // Nobody waits for the flag; if it is not written, the next start
        // sets it from the audit log.
        let _ = self.writer.send(Write::Recorded(report_id)).await;
    }

    /// The access record of a report stored by [`Self::put_unrecorded`]
    /// failed: deletes the report. When the deletion fails, the report
    /// stays hidden, and the next start deletes it.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the report could not be deleted.
    pub async fn discard(&self, report_id: String) -> Result<(), StoreError> {
        // Rare (the audit log failed): on a reader's connection, beside
        // the writer, as `settle`.
        sqlx::query(DELETE_UNRECORDED)
            .bind(&report_id)
            .execute(&self.pool)
            .await?;
        self.hidden().remove(&report_id);
        Ok(())
    }

    /// Reports written by [`Self::put_unrecorded`] whose flag was never
    /// set (the broker stopped first), with the time each was completed
    /// (ms since the epoch).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn unrecorded(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.report_id, r.completed_at FROM unrecorded_reports u \
                 JOIN reports r ON r.report_id = u.report_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Settles what [`Self::unrecorded`] listed, in one transaction: the
    /// reports in `recorded` are kept (their flag set), the others
    /// deleted. How many were deleted.
    ///
    /// # Errors
    /// When the store cannot be written; nothing is changed then.
    pub async fn settle(
        &self,
        unrecorded: &[(String, i64)],
        recorded: &HashSet<String>,
    ) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut deleted = 0;
        for (id, _) in unrecorded {
            let sql = if recorded.contains(id) {
                "DELETE FROM unrecorded_reports WHERE report_id = ?"
            } else {
                deleted += 1;
                DELETE_UNRECORDED
            };
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    fn hidden(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.hidden.lock().expect("hidden reports lock")
    }

    fn is_hidden(&self, report_id: &str) -> bool {
        self.hidden().contains(report_id)
    }

    async fn write(&self, row: StoredReport, recorded: bool) -> Result<(), StoreError> {
        let (reply, written) = oneshot::channel();
        let (report_id, revision) = (row.report_id.clone(), row.revision);
        let put = Put {
            row,
            recorded,
            reply,
        };
        let stopped = || StoreError::Write("the report writer has stopped".to_owned());
        self.writer
            .send(Write::Put(put))
            .await
            .map_err(|_| stopped())?;
        if !written
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::Write)?
        {
            return Err(StoreError::Stale {
                report_id,
                revision,
            });
        }
        Ok(())
    }

    /// The database, for the tables of households under management
    /// ([`crate::watch`]), which live beside the reports.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Every report still waiting for late answers.
    ///
    /// # Errors
    /// When the store cannot be read or a report does not decode.
    pub async fn pending(&self) -> Result<Vec<Report>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT report_id, body FROM reports WHERE pending = 1")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .filter(|(id, _)| !self.is_hidden(id))
            .map(|(id, body)| Report::decode(body.as_slice()).map_err(|_| StoreError::Corrupt(id)))
            .collect()
    }

    /// The report with this id, if stored.
    ///
    /// # Errors
    /// [`StoreError`] when the read fails or the stored bytes do not decode.
    pub async fn get(&self, report_id: &str) -> Result<Option<Report>, StoreError> {
        if self.is_hidden(report_id) {
            return Ok(None);
        }
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT body FROM reports WHERE report_id = ?")
                .bind(report_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(body,)| {
            Report::decode(body.as_slice()).map_err(|_| StoreError::Corrupt(report_id.to_owned()))
        })
        .transpose()
    }

    /// The report with this id and the client it belongs to, if stored.
    ///
    /// # Errors
    /// As [`ReportStore::get`].
    pub async fn get_owned(&self, report_id: &str) -> Result<Option<(Report, String)>, StoreError> {
        if self.is_hidden(report_id) {
            return Ok(None);
        }
        let row: Option<(Vec<u8>, String)> =
            sqlx::query_as("SELECT body, owner FROM reports WHERE report_id = ?")
                .bind(report_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(body, owner)| {
            Report::decode(body.as_slice())
                .map(|r| (r, owner))
                .map_err(|_| StoreError::Corrupt(report_id.to_owned()))
        })
        .transpose()
    }

    /// Closes the pool, waiting for writes in progress.
    pub async fn close(&self) {
        self.write_pool.close().await;
        self.pool.close().await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_and_returns_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReportStore::open(&dir.path().join("r.db")).await.unwrap();
        let report = Report {
            report_id: "abc".into(),
            verdict: 1,
            ..Default::default()
        };
        store.put(&report).await.unwrap();
        assert_eq!(store.get("abc").await.unwrap(), Some(report.clone()));
        assert_eq!(store.get("nope").await.unwrap(), None);
        // The same id twice is refused, not overwritten...
        assert!(matches!(
            store.put(&report).await,
            Err(StoreError::Stale { .. })
        ));
        // ...but a later revision replaces it.
        let completed = Report {
            revision: 1,
            verdict: 2,
            ..report.clone()
        };
        store.put(&completed).await.unwrap();
        assert_eq!(store.get("abc").await.unwrap(), Some(completed.clone()));
        assert!(store.put(&report).await.is_err(), "no going back");
        assert_eq!(store.get("abc").await.unwrap(), Some(completed));
    }

    /// The page size of the SQLite file at `path`.
    pub(crate) async fn page_size(path: &Path) -> i64 {
        let options = SqliteConnectOptions::new().filename(path);
        let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
        sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn new_files_get_8_kib_pages_and_old_files_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let report = Report {
            report_id: "abc".into(),
            ..Default::default()
        };
        let new = dir.path().join("new.db");
        ReportStore::open(&new)
            .await
            .unwrap()
            .put(&report)
            .await
            .unwrap();
        assert_eq!(page_size(&new).await, 8192);
        // A file made with 4 KiB pages before is used as it is.
        let old = dir.path().join("old.db");
        let options = SqliteConnectOptions::new()
            .filename(&old)
            .create_if_missing(true)
            .page_size(4096)
            .journal_mode(SqliteJournalMode::Wal);
        let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
        sqlx::query("CREATE TABLE t (x)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::Connection::close(conn).await.unwrap();
        let store = ReportStore::open(&old).await.unwrap();
        store.put(&report).await.unwrap();
        assert_eq!(store.get("abc").await.unwrap(), Some(report));
        assert_eq!(page_size(&old).await, 4096);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_are_each_stored_once_and_told_their_own_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReportStore::open(&dir.path().join("r.db")).await.unwrap();
        let report = |id: usize, revision: u32| Report {
            report_id: format!("r{id}"),
            revision,
            verdict: i32::try_from(id % 4).unwrap(),
            ..Default::default()
        };
        // 600 reports at once (more than one batch), each put twice at the
        // same revision, and 100 of them later at a higher one.
        let mut puts = tokio::task::JoinSet::new();
        for id in 0..600 {
            for _ in 0..2 {
                let (store, r) = (store.clone(), report(id, 0));
                puts.spawn(async move { (id, store.put_owned(&r, "p").await) });
            }
        }
        let mut stored = vec![0; 600];
        while let Some(done) = puts.join_next().await {
            match done.unwrap() {
                (id, Ok(())) => stored[id] += 1,
                (_, Err(StoreError::Stale { revision: 0, .. })) => {}
                (id, Err(e)) => panic!("r{id}: {e}"),
            }
        }
        assert!(stored.iter().all(|n| *n == 1), "each stored exactly once");
        let mut later = tokio::task::JoinSet::new();
        for id in 0..100 {
            let (store, r) = (store.clone(), report(id, 1));
            later.spawn(async move { store.put(&r).await });
        }
        while let Some(done) = later.join_next().await {
            done.unwrap().unwrap();
        }
        for id in [0, 99, 100, 599] {
            let (got, owner) = store.get_owned(&format!("r{id}")).await.unwrap().unwrap();
            assert_eq!(got, report(id, u32::from(id < 100)));
            assert_eq!(owner, "p", "a later revision keeps the owner");
        }
    }

    #[tokio::test]
    async fn a_failed_batch_stores_nothing_and_says_why() {
        let store = ReportStore::open(Path::new(":memory:")).await.unwrap();
        sqlx::query("DROP TABLE reports")
            .execute(store.pool())
            .await
            .unwrap();
        let report = Report {
            report_id: "r".into(),
            ..Default::default()
        };
        let e = store.put(&report).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Write(m) if m.contains("reports")),
            "{e}"
        );
    }

    async fn rows(store: &ReportStore) -> Vec<(String, i64)> {
        sqlx::query_as(
            "SELECT report_id, report_id NOT IN (SELECT report_id FROM unrecorded_reports) \
             FROM reports ORDER BY report_id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    }

    fn report(id: &str) -> Report {
        Report {
            report_id: id.into(),
            pending: true,
            ..Default::default()
        }
    }

    fn row(id: &str) -> StoredReport {
        let r = report(id);
        StoredReport::new(&r, r.encode_to_vec(), "p")
    }

    #[tokio::test]
    async fn the_wal_is_copied_back_by_the_checkpoint_task() {
        // The writer's commits no longer checkpoint (every 50,000 pages):
        // the reports reach the database file only through the task.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = ReportStore::open(&path).await.unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        for i in 0..200 {
            let mut r = report(&format!("r{i}"));
            r.policy_id = "x".repeat(2_000);
            store.put(&r).await.unwrap();
        }
        let mut after = size();
        for _ in 0..50 {
            if after > before + 200 * 2_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = size();
        }
        assert!(
            after > before + 200 * 2_000,
            "the database file is still {after} bytes (was {before})"
        );
    }

    /// A connection to the store at `path` as the checkpoint task opens it.
    async fn checkpointer(path: &Path) -> SqliteConnection {
        SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(Duration::from_millis(RESTART_WAIT_MS))
            .connect()
            .await
            .unwrap()
    }

    /// The frames the WAL holds (after a passive checkpoint).
    async fn wal_frames(conn: &mut SqliteConnection) -> i64 {
        let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(conn)
            .await
            .unwrap();
        log
    }

    #[tokio::test]
    async fn the_wal_starts_over_while_the_writer_goes_on() {
        // A passive checkpoint never catches up with a writer that commits
        // meanwhile: without the restart the WAL holds every frame written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = ReportStore::open(&path).await.unwrap();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..400 {
                    let mut r = report(&format!("r{i}"));
                    r.policy_id = "x".repeat(2_000);
                    store.put(&r).await.unwrap();
                }
            })
        };
        let mut conn = checkpointer(&path).await;
        let mut restarts = 0;
        while !writer.is_finished() {
            wal_frames(&mut conn).await;
            if restart_wal(&mut conn).await.unwrap() {
                restarts += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writer.await.unwrap();
        // One more report: the WAL holds what came after the last restart.
        store.put(&report("last")).await.unwrap();
        let frames = wal_frames(&mut conn).await;
        assert!(restarts > 0);
        assert!(
            frames < 400,
            "the WAL holds {frames} frames after 401 reports"
        );
    }

    #[tokio::test]
    async fn a_reader_holding_the_wal_makes_the_restart_give_up_soon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = ReportStore::open(&path).await.unwrap();
        store.put(&report("a")).await.unwrap();
        let mut reader = checkpointer(&path).await;
        sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
        let _: Vec<(String,)> = sqlx::query_as("SELECT report_id FROM reports")
            .fetch_all(&mut reader)
            .await
            .unwrap();
        store.put(&report("b")).await.unwrap();
        let mut conn = checkpointer(&path).await;
        let started = std::time::Instant::now();
        assert!(!restart_wal(&mut conn).await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(2));
        // The writer is not held back once the restart gave up.
        store.put(&report("c")).await.unwrap();
        sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
        assert!(restart_wal(&mut conn).await.unwrap());
        store.put(&report("d")).await.unwrap();
        assert_eq!(store.get("d").await.unwrap().unwrap().report_id, "d");
    }

    #[tokio::test]
    async fn a_report_written_ahead_of_its_record_is_read_by_nobody_until_recorded() {
        let store = ReportStore::open(Path::new(":memory:")).await.unwrap();
        store.put_unrecorded(row("a")).await.unwrap();
        // Durable, but hidden from every read.
        assert_eq!(rows(&store).await, [("a".to_owned(), 0)]);
        assert_eq!(store.get("a").await.unwrap(), None);
        assert_eq!(store.get_owned("a").await.unwrap(), None);
        assert_eq!(store.pending().await.unwrap(), []);
        assert_eq!(store.unrecorded().await.unwrap().len(), 1);
        store.recorded("a".into()).await;
        assert_eq!(store.get("a").await.unwrap(), Some(report("a")));
        assert_eq!(store.pending().await.unwrap(), [report("a")]);
        // The flag is written apart, within FLAG_EVERY.
        store.put(&report("b")).await.unwrap();
        let started = std::time::Instant::now();
        while !store.unrecorded().await.unwrap().is_empty() {
            assert!(
                started.elapsed() < FLAG_EVERY * 5,
                "the flag was not written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            rows(&store).await,
            [("a".to_owned(), 1), ("b".to_owned(), 1)]
        );
    }

    #[tokio::test]
    async fn a_later_revision_is_marked_as_it_was_written() {
        let store = ReportStore::open(Path::new(":memory:")).await.unwrap();
        store.put_unrecorded(row("a")).await.unwrap();
        let mut later = report("a");
        later.revision = 1;
        store.put(&later).await.unwrap();
        assert_eq!(rows(&store).await, [("a".to_owned(), 1)]);
        later.revision = 2;
        store
            .put_unrecorded(StoredReport::new(&later, later.encode_to_vec(), "p"))
            .await
            .unwrap();
        assert_eq!(rows(&store).await, [("a".to_owned(), 0)]);
        assert_eq!(store.unrecorded().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn rows_left_unrecorded_before_the_marks_table_are_marked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        {
            let pool = SqlitePool::connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
            let mut m = sqlx::migrate!("./migrations/sqlite");
            m.migrations = std::borrow::Cow::Owned(
                m.migrations
                    .iter()
                    .filter(|m| m.version <= 8)
                    .cloned()
                    .collect(),
            );
            m.run(&pool).await.unwrap();
            for (id, recorded) in [("kept", 1), ("left", 0)] {
                sqlx::query(
                    "INSERT INTO reports (report_id, completed_at, verdict, body, recorded) \
                     VALUES (?, 7, 1, x'', ?)",
                )
                .bind(id)
                .bind(recorded)
                .execute(&pool)
                .await
                .unwrap();
            }
            pool.close().await;
        }
        let store = ReportStore::open(&path).await.unwrap();
        assert_eq!(store.unrecorded().await.unwrap(), [("left".to_owned(), 7)]);
        assert_eq!(
            rows(&store).await,
            [("kept".to_owned(), 1), ("left".to_owned(), 0)]
        );
    }

    #[tokio::test]
    async fn a_report_whose_record_failed_is_deleted() {
        let store = ReportStore::open(Path::new(":memory:")).await.unwrap();
        store.put(&report("kept")).await.unwrap();
        store.put_unrecorded(row("a")).await.unwrap();
        store.discard("a".into()).await.unwrap();
        assert_eq!(rows(&store).await, [("kept".to_owned(), 1)]);
        assert_eq!(store.get("a").await.unwrap(), None);
        // Discarding touches only reports written ahead of their record.
        store.discard("kept".into()).await.unwrap();
        assert_eq!(rows(&store).await, [("kept".to_owned(), 1)]);
    }

    #[tokio::test]
    async fn a_report_that_cannot_be_deleted_stays_hidden() {
        let store = ReportStore::open(Path::new(":memory:")).await.unwrap();
        store.put_unrecorded(row("a")).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER no_delete BEFORE DELETE ON reports \
             BEGIN SELECT RAISE(ABORT, 'deletes refused'); END",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let e = store.discard("a".into()).await.unwrap_err();
        assert!(e.to_string().contains("deletes refused"), "{e}");
        assert_eq!(rows(&store).await, [("a".to_owned(), 0)]);
        assert_eq!(store.get("a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_report_not_written_is_not_hidden_either() {
        let store = ReportStore::open(Path::new(":memory:")).await.unwrap();
        store.put(&report("a")).await.unwrap();
        // The same id again is refused: nothing of it is hidden.
        assert!(matches!(
            store.put_unrecorded(row("a")).await,
            Err(StoreError::Stale { .. })
        ));
        assert_eq!(store.get("a").await.unwrap(), Some(report("a")));
    }

    #[tokio::test]
    async fn settling_keeps_what_was_recorded_and_deletes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = ReportStore::open(&path).await.unwrap();
        store.put_unrecorded(row("a")).await.unwrap();
        store.put_unrecorded(row("b")).await.unwrap();
        store.put(&report("c")).await.unwrap();
        store.close().await;
        // The broker stopped before it learnt either record's outcome.
        let store = ReportStore::open(&path).await.unwrap();
        let unrecorded = store.unrecorded().await.unwrap();
        assert_eq!(unrecorded.len(), 2);
        let recorded = HashSet::from(["a".to_owned()]);
        assert_eq!(store.settle(&unrecorded, &recorded).await.unwrap(), 1);
        assert_eq!(
            rows(&store).await,
            [("a".to_owned(), 1), ("c".to_owned(), 1)]
        );
    }

    #[tokio::test]
    async fn a_report_keeps_its_first_owner() {
        let store = ReportStore::open(Path::new(":memory:")).await.unwrap();
        let report = Report {
            report_id: "r".into(),
            ..Default::default()
        };
        store.put_owned(&report, "platform-a").await.unwrap();
        let later = Report {
            revision: 1,
            ..report
        };
        store.put(&later).await.unwrap();
        let (got, owner) = store.get_owned("r").await.unwrap().unwrap();
        assert_eq!((got, owner.as_str()), (later, "platform-a"));
        assert_eq!(store.get_owned("x").await.unwrap(), None);
    }
}
