//! The PostgreSQL audit store: for production, shared by every broker
//! replica. Writers lock the head row (`SELECT ... FOR UPDATE`), so records
//! from several brokers still get consecutive positions and one chain.

use std::time::Duration;

use sqlx::{
    PgPool, Postgres,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{
    AuditError,
    store::{HeadTuple, Planner, Statements, shared_sql},
};

/// The audit store in a PostgreSQL schema.
#[derive(Debug, Clone)]
pub struct PostgresAudit {
    pool: PgPool,
}

impl PostgresAudit {
    const NAME: &'static str = "postgres";
    /// Finds a key's records in the index (the key bound after it).
    const INDEX_LOOKUP: &'static str = "audit_index WHERE key = ";
    /// Appends the keys of [`super::store::keys_json`] (the bind between
    /// this and [`Self::INSERT_KEYS_END`]).
    const INSERT_KEYS: &'static str = "INSERT INTO audit_index_recent (key, seq) \
         SELECT value ->> 0, (value ->> 1)::bigint FROM jsonb_array_elements(CAST(";
    const INSERT_KEYS_END: &'static str = " AS jsonb))";
    const HEAD_FOR_UPDATE: &'static str = "SELECT tree_size, last_leaf, frontier, checkpoint_size, checkpoint_time_ms, pruned_before FROM audit_head WHERE id = 1 FOR UPDATE";

    /// Connects to `url`, creates `schema` if missing, and brings the audit
    /// schema up to date in it.
    ///
    /// # Errors
    /// [`AuditError`] when the server cannot be reached or migrated.
    pub async fn open(url: &str, schema: &str, max_connections: u32) -> Result<Self, AuditError> {
        if !valid_schema_name(schema) {
            return Err(AuditError::Config(format!(
                "audit.schema: {schema:?} must be letters, digits and underscores, not starting with a digit"
            )));
        }
        let options: PgConnectOptions = url.parse()?;
        // Create the schema with a connection outside it.
        {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&pool)
            .await?;
            pool.close().await;
        }
        let options = options.options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    /// [`AuditBackend::append`](super::store::AuditBackend::append): one
    /// transaction, the head locked first, then each statement of the plan.
    async fn append_locked(
        &self,
        prune_cutoff_ms: Option<i64>,
        plan: &mut Planner<'_>,
    ) -> Result<(), AuditError> {
        let mut tx = self.pool.begin().await?;
        let head: HeadTuple = sqlx::query_as(Self::HEAD_FOR_UPDATE)
            .fetch_one(&mut *tx)
            .await?;
        let planned = Self::plan_for(&mut tx, head, prune_cutoff_ms, plan).await?;
        for mut q in Self::push_plan(Statements::new(false), planned) {
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves the keys below `below` from the recent table into
    /// `audit_index`. PostgreSQL logs changed rows, not pages (but for a
    /// page's first change after a checkpoint), so unlike SQLite it keeps
    /// one key-ordered table: sorted runs, with every merge rewriting keys
    /// into the heap and its index and leaving dead rows for vacuum,
    /// recorded 30 % fewer records a second (`hedui bench-audit --records
    /// 200000`, 2026-12-07: 6,610-7,768/s against 8,750-10,875/s).
    fn push_index_move(out: &mut Statements<Postgres>, below: i64) {
        out.next(
            "INSERT INTO audit_index (key, seq) SELECT key, seq FROM audit_index_recent WHERE seq < ",
        )
        .push_bind(below);
        out.next("DELETE FROM audit_index_recent WHERE seq < ")
            .push_bind(below);
    }

    /// Deletes the keys of records below `before`.
    fn push_index_purge(out: &mut Statements<Postgres>, before: i64) {
        for table in ["audit_index", "audit_index_recent"] {
            out.next(format!("DELETE FROM {table} WHERE seq < "))
                .push_bind(before);
        }
    }

    /// The index's keys of records in `[from, to)`, to follow `SELECT seq,
    /// key FROM `.
    fn push_index_between(q: &mut sqlx::QueryBuilder<Postgres>, from: i64, to: i64) {
        q.push("audit_index WHERE seq >= ")
            .push_bind(from)
            .push(" AND seq < ")
            .push_bind(to);
    }

    /// [`AuditBackend::merge_index`](super::store::AuditBackend::merge_index):
    /// the keys are in one table, so there are no runs to merge.
    async fn merge_locked(&self, _chunk: u64) -> Result<bool, AuditError> {
        Ok(false)
    }

    async fn close_pools(&self) {
        self.pool.close().await;
    }
}

/// Whether `s` is a plain SQL identifier (it is spliced into SQL).
pub fn valid_schema_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

shared_sql!(PostgresAudit, Postgres);
