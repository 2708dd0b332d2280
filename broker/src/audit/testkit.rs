//! Test and benchmark support: throw-away audit stores (a SQLite file in a
//! directory the caller owns, or a PostgreSQL schema of its own that is
//! dropped when the store is), raw SQL on them (to tamper, as an attacker
//! with database access would), copies, and realistic entries.
//!
//! PostgreSQL is reached at [`postgres_url`]: `HEDUI_TEST_POSTGRES_URL`, or
//! `postgres://postgres@127.0.0.1:5432/test`. Tests that use it fail when
//! it is absent; they never skip.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use sqlx::{
    AssertSqlSafe, Executor,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqlitePoolOptions},
};

use super::{
    AuditConfig, AuditError, AuditLog, Entry, Kind, SourceEntry,
    config::BackendKind,
    crypto::{SubjectKey, Suite},
    postgres::PostgresAudit,
    sqlite::SqliteAudit,
    store::AuditBackend,
};

/// The PostgreSQL server tests use.
pub fn postgres_url() -> String {
    std::env::var("HEDUI_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A throw-away audit store.
#[derive(Debug)]
pub struct TestStore {
    /// The configuration that opens it.
    pub config: AuditConfig,
}

impl TestStore {
    /// A SQLite store in `dir` (the caller keeps `dir` alive).
    pub fn sqlite(dir: &Path, name: &str, suite: Suite) -> Self {
        Self {
            config: AuditConfig {
                path: Some(dir.join(format!("{name}.db"))),
                suite,
                ..AuditConfig::default()
            },
        }
    }

    /// A PostgreSQL store in a new schema of its own, dropped with it.
    pub fn postgres(suite: Suite) -> Self {
        Self {
            config: AuditConfig {
                backend: BackendKind::Postgres,
                url: Some(postgres_url()),
                schema: format!("hedui_test_{}", uuid::Uuid::new_v4().simple()),
                suite,
                ..AuditConfig::default()
            },
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self.config.backend {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }

    /// The table the index keeps moved keys in: SQLite's runs
    /// (`migrations/sqlite/0010_audit_index_runs.sql`), PostgreSQL's one
    /// table.
    pub fn index_table(&self) -> &'static str {
        match self.config.backend {
            BackendKind::Sqlite => "audit_index_runs",
            BackendKind::Postgres => "audit_index",
        }
    }

    /// Opens the log (writer included).
    ///
    /// # Errors
    /// When the store cannot be opened.
    pub async fn open(&self) -> Result<AuditLog, AuditError> {
        AuditLog::open(&self.config).await
    }

    /// Opens the store alone, as `hedui audit verify` does.
    ///
    /// # Errors
    /// When the store cannot be opened.
    pub async fn backend(&self) -> Result<Arc<dyn AuditBackend>, AuditError> {
        Ok(match self.config.backend {
            BackendKind::Sqlite => Arc::new(
                SqliteAudit::open(&self.config.sqlite_path(), self.config.sqlite_cache_mib).await?,
            ),
            BackendKind::Postgres => {
                Arc::new(PostgresAudit::open(&postgres_url(), &self.config.schema, 2).await?)
            }
        })
    }

    /// A pool of one connection to the SQLite file.
    async fn sqlite_pool(&self) -> Result<sqlx::SqlitePool, sqlx::Error> {
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::new().filename(self.config.sqlite_path()))
            .await
    }

    /// A pool of one connection to the PostgreSQL schema.
    async fn postgres_pool(&self) -> Result<sqlx::PgPool, sqlx::Error> {
        let options: PgConnectOptions = postgres_url().parse()?;
        PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.options([("search_path", self.config.schema.as_str())]))
            .await
    }

    /// Runs SQL statements (`;`-separated) directly on the store.
    ///
    /// # Errors
    /// When the SQL fails.
    pub async fn exec(&self, sql: &str) -> Result<(), sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_owned());
        match self.config.backend {
            BackendKind::Sqlite => {
                let pool = self.sqlite_pool().await?;
                pool.execute(sqlx::raw_sql(sql)).await?;
                pool.close().await;
            }
            BackendKind::Postgres => {
                let pool = self.postgres_pool().await?;
                pool.execute(sqlx::raw_sql(sql)).await?;
                pool.close().await;
            }
        }
        Ok(())
    }

    /// The single integer a query gives (`SELECT COUNT(*) ...`).
    ///
    /// # Errors
    /// When the SQL fails.
    pub async fn count(&self, sql: &str) -> Result<i64, sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_owned());
        let (n,): (i64,) = match self.config.backend {
            BackendKind::Sqlite => {
                let pool = self.sqlite_pool().await?;
                let row = sqlx::query_as(sql).fetch_one(&pool).await?;
                pool.close().await;
                row
            }
            BackendKind::Postgres => {
                let pool = self.postgres_pool().await?;
                let row = sqlx::query_as(sql).fetch_one(&pool).await?;
                pool.close().await;
                row
            }
        };
        Ok(n)
    }

    /// A copy of the store as it is now (the log must be closed or idle),
    /// named `name`; SQLite copies go next to the original.
    ///
    /// # Errors
    /// When the copy fails.
    pub async fn copy(&self, name: &str) -> Result<TestStore, sqlx::Error> {
        match self.config.backend {
            BackendKind::Sqlite => {
                let path = self.config.sqlite_path();
                let dir: PathBuf = path.parent().unwrap_or(Path::new(".")).into();
                let copy = TestStore::sqlite(&dir, name, self.config.suite);
                let _ = std::fs::remove_file(copy.config.sqlite_path());
                self.exec(&format!(
                    "VACUUM INTO '{}'",
                    copy.config
                        .sqlite_path()
                        .display()
                        .to_string()
                        .replace('\'', "''")
                ))
                .await?;
                Ok(copy)
            }
            BackendKind::Postgres => {
                let copy = TestStore::postgres(self.config.suite);
                let (from, to) = (&self.config.schema, &copy.config.schema);
                let mut sql = format!("CREATE SCHEMA \"{to}\";");
                for t in [
                    "_sqlx_migrations",
                    "audit_records",
                    "audit_index",
                    "audit_index_recent",
                    "audit_checkpoints",
                    "audit_head",
                    "audit_meta",
                ] {
                    sql.push_str(&format!(
                        "CREATE TABLE \"{to}\".{t} (LIKE \"{from}\".{t} INCLUDING ALL); \
                         INSERT INTO \"{to}\".{t} SELECT * FROM \"{from}\".{t};"
                    ));
                }
                self.exec(&sql).await?;
                Ok(copy)
            }
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if self.config.backend != BackendKind::Postgres {
            return;
        }
        let schema = self.config.schema.clone();
        // Dropping is synchronous: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(pool) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&postgres_url())
                    .await
                {
                    let _ = pool
                        .execute(AssertSqlSafe(format!(
                            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                        )))
                        .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// A realistic verification entry: an applicant and two more members
/// (identity numbers made from `i`, hashed with `key`), 28 sources.
pub fn sample_entry(i: usize, key: &SubjectKey) -> Entry {
    let mut e = Entry::new(Kind::Verification);
    e.request_id = uuid::Uuid::new_v4().to_string();
    e.client = format!("10.0.0.{}", i % 7);
    e.operator = format!("case-worker-{:02}", i % 13);
    e.purpose = ["dibao_application", "dibao_review", "temporary_assistance"][i % 3].into();
    e.consent_reference = format!("SQ-2026-{i:06}");
    e.subjects = (0..3).map(|m| key.subject(&sample_id(i, m))).collect();
    e.sources = (0..28)
        .map(|s| SourceEntry {
            id: format!("source-{s:02}"),
            status: if (i + s).is_multiple_of(17) {
                "timeout"
            } else {
                "ok"
            }
            .into(),
            cache_hit: false,
            facts: (s % 4) as u32,
        })
        .collect();
    e.report_digest = hex::encode(key_digest(i));
    e.latency_ms = 40 + (i % 50) as u64;
    e
}

/// A syntactically plausible identity number for member `m` of sample
/// household `i` (not checked: the log never sees numbers in clear).
pub fn sample_id(i: usize, m: usize) -> String {
    format!(
        "51170319{:02}{:06}{m}{}",
        50 + i % 40,
        i % 1_000_000,
        i % 10
    )
}

fn key_digest(i: usize) -> [u8; 32] {
    Suite::Sha256Ed25519.hash(&[&i.to_be_bytes()])
}
