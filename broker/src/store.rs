//! The report store: every report the broker returns is written here first,
//! so `GetReport` can return it later. SQLite through sqlx (WAL mode) is the
//! embedded default.

use std::{path::Path, str::FromStr, time::Duration};

use hedui_proto::v1::Report;
use prost::Message;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

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
        Ok(Self { pool })
    }

    /// Stores a report (a later revision of one stored keeps its owner);
    /// it is durable when this returns.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the write fails; nothing is stored then.
    pub async fn put(&self, report: &Report) -> Result<(), StoreError> {
        self.put_owned(report, "").await
    }

    /// Stores a report first returned to `owner`, the only client that may
    /// read it again ([`ReportStore::get_owned`]).
    ///
    /// # Errors
    /// As [`ReportStore::put`].
    pub async fn put_owned(&self, report: &Report, owner: &str) -> Result<(), StoreError> {
        let completed_ms = report
            .completed_at
            .as_ref()
            .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
            .unwrap_or_default();
        // A later revision (a report completed after late answers)
        // replaces the stored one; anything else is refused.
        let done = sqlx::query(
            "INSERT INTO reports (report_id, completed_at, verdict, body, pending, revision, owner) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (report_id) DO UPDATE SET completed_at = excluded.completed_at, \
             verdict = excluded.verdict, body = excluded.body, pending = excluded.pending, \
             revision = excluded.revision \
             WHERE excluded.revision > reports.revision",
        )
        .bind(&report.report_id)
        .bind(completed_ms)
        .bind(report.verdict)
        .bind(report.encode_to_vec())
        .bind(i64::from(report.pending))
        .bind(i64::from(report.revision))
        .bind(owner)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
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
