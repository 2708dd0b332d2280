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

use std::{collections::HashMap, path::Path, str::FromStr, time::Duration};

use hedui_proto::v1::Report;
use prost::Message;
use sqlx::{
    QueryBuilder, Sqlite, SqlitePool,
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
    /// To the task that writes reports ([group commit](self#group-commit)).
    writer: mpsc::Sender<Put>,
}

/// The most reports written in one statement (7 parameters each, well
/// under SQLite's limit of 32,766).
const MAX_BATCH: usize = 256;

/// One report waiting for the writer, and who waits for it.
#[derive(Debug)]
struct Put {
    report_id: String,
    completed_ms: i64,
    verdict: i32,
    body: Vec<u8>,
    pending: bool,
    revision: u32,
    owner: String,
    /// Whether the row was written (`false`: a revision as late or later
    /// is stored), or why the batch failed.
    reply: oneshot::Sender<Result<bool, String>>,
}

/// Writes what queues, a batch at a time, until every sender is gone.
async fn write_reports(pool: SqlitePool, mut rx: mpsc::Receiver<Put>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(put) => batch.push(put),
                Err(_) => break,
            }
        }
        match insert(&pool, &batch).await {
            Ok(mut written) => {
                for put in batch.drain(..) {
                    // A row is written at most once: of two puts of the same
                    // report and revision in one batch, only the first is.
                    let done = written
                        .get_mut(&(put.report_id, put.revision))
                        .filter(|n| **n > 0)
                        .map(|n| *n -= 1)
                        .is_some();
                    let _ = put.reply.send(Ok(done));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for put in batch.drain(..) {
                    let _ = put.reply.send(Err(message.clone()));
                }
            }
        }
    }
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
        "INSERT INTO reports (report_id, completed_at, verdict, body, pending, revision, owner) ",
    );
    query.push_values(batch, |mut row, put| {
        row.push_bind(&put.report_id)
            .push_bind(put.completed_ms)
            .push_bind(put.verdict)
            .push_bind(&put.body)
            .push_bind(i64::from(put.pending))
            .push_bind(i64::from(put.revision))
            .push_bind(&put.owner);
    });
    query.push(
        " ON CONFLICT (report_id) DO UPDATE SET completed_at = excluded.completed_at, \
         verdict = excluded.verdict, body = excluded.body, pending = excluded.pending, \
         revision = excluded.revision \
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
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
        }
        .busy_timeout(Duration::from_secs(5));
        // One connection for an in-memory database: every connection would
        // otherwise see its own empty database.
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 8 })
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let (writer, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_reports(pool.clone(), rx));
        Ok(Self { pool, writer })
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
        debug_assert_eq!(
            body,
            report.encode_to_vec(),
            "body is the report's encoding"
        );
        let completed_ms = report
            .completed_at
            .as_ref()
            .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
            .unwrap_or_default();
        let (reply, written) = oneshot::channel();
        let put = Put {
            report_id: report.report_id.clone(),
            completed_ms,
            verdict: report.verdict,
            body,
            pending: report.pending,
            revision: report.revision,
            owner: owner.to_owned(),
            reply,
        };
        let stopped = || StoreError::Write("the report writer has stopped".to_owned());
        self.writer.send(put).await.map_err(|_| stopped())?;
        if !written
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::Write)?
        {
            return Err(StoreError::Stale {
                report_id: report.report_id.clone(),
                revision: report.revision,
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
            .map(|(id, body)| Report::decode(body.as_slice()).map_err(|_| StoreError::Corrupt(id)))
            .collect()
    }

    /// The report with this id, if stored.
    ///
    /// # Errors
    /// [`StoreError`] when the read fails or the stored bytes do not decode.
    pub async fn get(&self, report_id: &str) -> Result<Option<Report>, StoreError> {
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
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
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
