//! The SQLite audit store: the embedded default. WAL mode with
//! `synchronous = FULL`, so a committed record is on disk; writers take the
//! database's write lock (`BEGIN IMMEDIATE`) before reading the head, or
//! before checking that it is the one they planned on.

use std::{borrow::Cow, path::Path, str::FromStr, time::Duration};

use sqlx::{
    Sqlite, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{
    AuditError,
    store::{BatchPlan, Head, HeadTuple, Planner, Statements, shared_sql},
};

/// The audit store in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteAudit {
    /// For reads (queries, the readiness ping, the checkpoints of the WAL).
    pool: SqlitePool,
    /// The one connection the writer commits on
    /// ([`crate::store::writer_pool`]).
    writer: SqlitePool,
    /// The head as this store's last commit left it: the next commit plans
    /// on it and checks it under the lock in the same call
    /// ([`Self::append_known`]). `None` after a failure or a start.
    known: std::sync::Arc<std::sync::Mutex<Option<Head>>>,
}

/// What a commit planned on the known head came to.
enum Known {
    /// Committed, leaving this head.
    Committed(Head),
    /// The stored head was not the known one (another process wrote):
    /// nothing written, the transaction rolled back.
    Moved,
}

impl SqliteAudit {
    const NAME: &'static str = "sqlite";
    /// Finds a key's records in the index (the key bound after it): one
    /// probe per run.
    const INDEX_LOOKUP: &'static str =
        "audit_index_runs WHERE run IN (SELECT run FROM audit_runs) AND key = ";
    /// Appends the keys of [`super::store::keys_json`] (the bind between
    /// this and [`Self::INSERT_KEYS_END`]), in their order.
    const INSERT_KEYS: &'static str =
        "INSERT INTO audit_index_recent (key, seq) SELECT value ->> 0, value ->> 1 FROM json_each(";
    const INSERT_KEYS_END: &'static str = ")";
    /// Takes the write lock and reads the head, in one call.
    const BEGIN_AND_HEAD: &'static str = "BEGIN IMMEDIATE; SELECT tree_size, last_leaf, frontier, checkpoint_size, checkpoint_time_ms, pruned_before FROM audit_head WHERE id = 1";
    /// Takes the write lock and fails unless the stored head is the one
    /// bound after it (tree size, last leaf, checkpoint size and time,
    /// purge point): then it inserts a head row numbered 0, which
    /// `audit_head`'s `CHECK (id = 1)` refuses with [`Self::HEAD_MOVED`].
    /// A statement that fails is the only way one multi-statement call can
    /// stop before the plan that follows it.
    const BEGIN_ON_KNOWN_HEAD: &'static str = "BEGIN IMMEDIATE; \
         INSERT INTO audit_head (id, tree_size, frontier, checkpoint_size, checkpoint_time_ms, pruned_before) \
         SELECT 0, 0, X'', 0, 0, 0 WHERE NOT EXISTS (SELECT 1 FROM audit_head WHERE id = 1 AND tree_size = ";
    /// The error of [`Self::BEGIN_ON_KNOWN_HEAD`] when the head moved.
    const HEAD_MOVED: &'static str = "CHECK constraint failed";

    /// Opens (creating if needed) the SQLite file at `path` and brings the
    /// audit schema up to date. `:memory:` keeps the log in memory (tests).
    ///
    /// # Errors
    /// [`AuditError`] when the file cannot be opened or migrated.
    pub async fn open(path: &Path, cache_mib: u32) -> Result<Self, AuditError> {
        let memory = path.as_os_str() == ":memory:";
        let options = if memory {
            SqliteConnectOptions::from_str("sqlite::memory:")?
        } else {
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                // A new file's pages are 8 KiB (a file made with 4 KiB keeps
                // them): a record's row (about 2.2 KB) fills more than half
                // of a 4 KiB page, one page per record, where 8 KiB takes
                // three; and the WAL is written one page per system call
                // (docs/benchmarks.md, 2026-12-07 night).
                .page_size(8192)
                .journal_mode(SqliteJournalMode::Wal)
                // Each commit is on disk before its caller goes on: a
                // record the broker answered after survives a power cut.
                .synchronous(SqliteSynchronous::Full)
                // Index pages stay in memory (bounded: `cache_mib` per
                // connection); the WAL is copied back into the database by
                // a task of its own (below), not by the committing writer
                // (the automatic checkpoint is a safety net at 400 MB).
                .pragma("cache_size", format!("-{}", u64::from(cache_mib) * 1024))
                // 50,000 pages of 8 KiB (100,000 of 4 KiB before).
                .pragma("wal_autocheckpoint", "50000")
                // Statement journals of multi-row inserts in memory, not in
                // temporary files.
                .pragma("temp_store", "memory")
        }
        .busy_timeout(Duration::from_secs(5));
        // One connection for an in-memory database: every connection would
        // otherwise see its own empty database.
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 3 })
            .connect_with(options.clone())
            .await?;
        migrator().run(&pool).await?;
        if !memory {
            tokio::spawn(crate::store::checkpoint_wal(
                pool.clone(),
                options.clone(),
                "audit",
            ));
        }
        let writer = crate::store::writer_pool(&pool, options, memory).await?;
        Ok(Self {
            pool,
            writer,
            known: std::sync::Arc::default(),
        })
    }

    /// [`AuditBackend::append`](super::store::AuditBackend::append) in as
    /// few calls to the connection's thread as it can: each call is a
    /// hand-off to sqlx's worker thread and back, and the next batch waits
    /// for every one of them (six in a transaction of single statements).
    /// On any failure the transaction is rolled back.
    ///
    /// A commit that follows one of this store's own (no purge) is one call:
    /// it plans on the head that commit left, and the call checks under
    /// the lock that the stored head is still that one before it writes
    /// ([`Self::append_known`]). Otherwise, and when another process wrote
    /// meanwhile (rolled back, then done again), two: the lock with the
    /// head, then the whole plan with its `COMMIT` as one multi-statement
    /// query. In S3, where commits come one or two records at a time, the
    /// call saved is about 0.07 ms of each commit (docs/benchmarks.md).
    async fn append_locked(
        &self,
        prune_cutoff_ms: Option<i64>,
        plan: &mut Planner<'_>,
    ) -> Result<(), AuditError> {
        let mut conn = self.writer.acquire().await?;
        let known = self.known.lock().expect("not poisoned").take();
        if let Some(head) = known.filter(|_| prune_cutoff_ms.is_none()) {
            let result = Self::append_known(&mut conn, head, plan).await;
            match Self::rolled_back_on_error(conn, result).await? {
                Known::Committed(head) => {
                    *self.known.lock().expect("not poisoned") = Some(head);
                    return Ok(());
                }
                Known::Moved => {
                    tracing::debug!("audit: the head moved since this store's last commit");
                    conn = self.writer.acquire().await?;
                }
            }
        }
        let result = Self::append_on(&mut conn, prune_cutoff_ms, plan).await;
        let head = Self::rolled_back_on_error(conn, result).await?;
        *self.known.lock().expect("not poisoned") = Some(head);
        Ok(())
    }

    /// The plan for `head`, the head this store's last commit left, written
    /// in one call that first checks the stored head is still `head`
    /// ([`Self::BEGIN_ON_KNOWN_HEAD`]).
    async fn append_known(
        conn: &mut SqliteConnection,
        head: Head,
        plan: &mut Planner<'_>,
    ) -> Result<Known, AuditError> {
        let mut out = Statements::<Sqlite>::new(true);
        out.next(Self::BEGIN_ON_KNOWN_HEAD)
            .push_bind(head.tree_size as i64)
            .push(" AND last_leaf IS ")
            .push_bind(head.last_leaf.map(|l| l.to_vec()))
            .push(" AND checkpoint_size = ")
            .push_bind(head.checkpoint_size as i64)
            .push(" AND checkpoint_time_ms = ")
            .push_bind(head.checkpoint_time_ms)
            .push(" AND pruned_before = ")
            .push_bind(head.pruned_before as i64)
            .push(")");
        let (after, mut q) = Self::commit_query(out, plan(head, None)?);
        match q.build().execute(&mut *conn).await {
            Ok(_) => Ok(Known::Committed(after)),
            Err(sqlx::Error::Database(e)) if e.message().starts_with(Self::HEAD_MOVED) => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                Ok(Known::Moved)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves the keys below `below` from the recent table into a new run
    /// (`migrations/sqlite/0010_audit_index_runs.sql`): SQLite writes every
    /// page a commit dirties whole to its WAL, and keys moved into one
    /// key-ordered table dirtied a page each. The run is numbered above
    /// every other, so its rows, sorted, go at the end of the table.
    fn push_index_move(out: &mut Statements<Sqlite>, below: i64) {
        out.next(
            "INSERT INTO audit_runs (run, first_seq, end_seq, key_count) \
             SELECT COALESCE((SELECT MAX(run) FROM audit_runs), 0) + 1, \
             MIN(seq), MAX(seq) + 1, COUNT(*) FROM audit_index_recent WHERE seq < ",
        )
        .push_bind(below)
        .push(" HAVING COUNT(*) > 0");
        out.next(
            "INSERT INTO audit_index_runs (run, key, seq) \
             SELECT (SELECT MAX(run) FROM audit_runs), key, seq \
             FROM audit_index_recent WHERE seq < ",
        )
        .push_bind(below)
        .push(" ORDER BY key, seq");
        out.next("DELETE FROM audit_index_recent WHERE seq < ")
            .push_bind(below);
    }

    /// Deletes the keys of records below `before`: the runs wholly below
    /// go; the one across the point is read through (one run, of bounded
    /// size).
    fn push_index_purge(out: &mut Statements<Sqlite>, before: i64) {
        out.next(
            "DELETE FROM audit_index_runs WHERE run IN \
             (SELECT run FROM audit_runs WHERE first_seq < ",
        )
        .push_bind(before)
        .push(") AND seq < ")
        .push_bind(before);
        out.next("DELETE FROM audit_runs WHERE end_seq <= ")
            .push_bind(before);
        out.next("UPDATE audit_runs SET first_seq = ")
            .push_bind(before)
            .push(
                ", key_count = (SELECT COUNT(*) FROM audit_index_runs i \
                 WHERE i.run = audit_runs.run) WHERE first_seq < ",
            )
            .push_bind(before);
        out.next("DELETE FROM audit_index_recent WHERE seq < ")
            .push_bind(before);
    }

    /// The index's keys of records in `[from, to)`, to follow `SELECT seq,
    /// key FROM `: the runs that cover any of them, read through.
    fn push_index_between(q: &mut sqlx::QueryBuilder<Sqlite>, from: i64, to: i64) {
        q.push("audit_index_runs WHERE run IN (SELECT run FROM audit_runs WHERE first_seq < ")
            .push_bind(to)
            .push(" AND end_seq > ")
            .push_bind(from)
            .push(") AND seq >= ")
            .push_bind(from)
            .push(" AND seq < ")
            .push_bind(to);
    }

    /// [`AuditBackend::merge_index`](super::store::AuditBackend::merge_index)
    /// on the writer's connection, in a transaction that holds the write
    /// lock.
    async fn merge_locked(&self, chunk: u64) -> Result<bool, AuditError> {
        let mut conn = self.writer.acquire().await?;
        let result = async {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            let more = Self::merge_on(&mut conn, chunk).await?;
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(more)
        }
        .await;
        Self::rolled_back_on_error(conn, result).await
    }

    /// `a, b, c` of the runs `runs`, bound.
    fn push_runs(q: &mut sqlx::QueryBuilder<Sqlite>, runs: &[i64]) {
        let mut list = q.separated(", ");
        for r in runs {
            list.push_bind(*r);
        }
    }

    /// [`AuditBackend::merge_index`](super::store::AuditBackend::merge_index)
    /// in the caller's transaction, which holds the writer's lock.
    async fn merge_on(conn: &mut SqliteConnection, chunk: u64) -> Result<bool, sqlx::Error> {
        let runs: Vec<(i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT run, key_count, into_run FROM audit_runs ORDER BY first_seq, run",
        )
        .fetch_all(&mut *conn)
        .await?;
        let (target, sources) = match runs.iter().find_map(|r| r.2) {
            Some(t) => (
                t,
                runs.iter()
                    .filter(|r| r.2 == Some(t))
                    .map(|r| r.0)
                    .collect::<Vec<_>>(),
            ),
            None => {
                let counts: Vec<u64> = runs.iter().map(|r| r.1.max(0) as u64).collect();
                let Some(window) = super::store::merge_window(&counts) else {
                    return Ok(false);
                };
                // Numbered above every run, so its rows go at the end of the
                // table while no newer run is moved in.
                let target = runs.iter().map(|r| r.0).max().unwrap_or(0) + 1;
                let sources: Vec<i64> = window.iter().map(|&i| runs[i].0).collect();
                let mut q = sqlx::QueryBuilder::<Sqlite>::new(
                    "INSERT INTO audit_runs (run, first_seq, end_seq, key_count) SELECT ",
                );
                q.push_bind(target).push(
                    ", MIN(first_seq), MAX(end_seq), SUM(key_count) FROM audit_runs \
                     WHERE run IN (",
                );
                Self::push_runs(&mut q, &sources);
                q.push(")").build().execute(&mut *conn).await?;
                let mut q = sqlx::QueryBuilder::<Sqlite>::new("UPDATE audit_runs SET into_run = ");
                q.push_bind(target).push(" WHERE run IN (");
                Self::push_runs(&mut q, &sources);
                q.push(")").build().execute(&mut *conn).await?;
                (target, sources)
            }
        };
        // The chunk ends at the smallest of the sources' keys `chunk` rows
        // on: each source gives at most `chunk` + 1 rows, and every key up
        // to the bound moves from every source, so the target grows in key
        // order.
        let mut bound: Option<(String, i64)> = None;
        for run in &sources {
            let at: Option<(String, i64)> = sqlx::QueryBuilder::<Sqlite>::new(
                "SELECT key, seq FROM audit_index_runs WHERE run = ",
            )
            .push_bind(*run)
            .push(" ORDER BY key, seq LIMIT 1 OFFSET ")
            .push_bind(chunk.min(i64::MAX as u64) as i64)
            .build_query_as()
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(at) = at
                && bound.as_ref().is_none_or(|b| at < *b)
            {
                bound = Some(at);
            }
        }
        let bounded = |q: &mut sqlx::QueryBuilder<Sqlite>| {
            if let Some((key, seq)) = &bound {
                q.push(" AND key <= ")
                    .push_bind(key.clone())
                    .push(" AND (key < ")
                    .push_bind(key.clone())
                    .push(" OR seq <= ")
                    .push_bind(*seq)
                    .push(")");
            }
        };
        // One ordered arm per source, merged as they come (a MERGE
        // (UNION ALL) of the runs' primary-key order): no sort.
        let mut q =
            sqlx::QueryBuilder::<Sqlite>::new("INSERT INTO audit_index_runs (run, key, seq) ");
        for (i, run) in sources.iter().enumerate() {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            q.push("SELECT ")
                .push_bind(target)
                .push(", key, seq FROM audit_index_runs WHERE run = ")
                .push_bind(*run);
            bounded(&mut q);
        }
        q.push(" ORDER BY 2, 3");
        q.build().execute(&mut *conn).await?;
        let mut q =
            sqlx::QueryBuilder::<Sqlite>::new("DELETE FROM audit_index_runs WHERE run IN (");
        Self::push_runs(&mut q, &sources);
        q.push(")");
        bounded(&mut q);
        q.build().execute(&mut *conn).await?;
        if bound.is_none() {
            // The sources are empty: the merge is done.
            let mut q = sqlx::QueryBuilder::<Sqlite>::new("DELETE FROM audit_runs WHERE run IN (");
            Self::push_runs(&mut q, &sources);
            q.push(")").build().execute(&mut *conn).await?;
        }
        Ok(true)
    }

    /// `result`, after rolling back the transaction `conn` may hold when it
    /// is an error.
    async fn rolled_back_on_error<T>(
        mut conn: sqlx::pool::PoolConnection<Sqlite>,
        result: Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        if result.is_err()
            && let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await
            // BEGIN itself failed: nothing to roll back.
            && !e.to_string().contains("no transaction is active")
        {
            // A connection that may still hold the transaction is not
            // reused (the pool opens a fresh one).
            tracing::warn!(error = %e, "audit: rollback failed; closing the writer's connection");
            conn.close_on_drop();
        }
        result
    }

    /// Takes the lock, reads the head, writes the plan for it; the head it
    /// leaves.
    async fn append_on(
        conn: &mut SqliteConnection,
        prune_cutoff_ms: Option<i64>,
        plan: &mut Planner<'_>,
    ) -> Result<Head, AuditError> {
        let head: HeadTuple = sqlx::query_as(Self::BEGIN_AND_HEAD)
            .fetch_one(&mut *conn)
            .await?;
        let planned = Self::plan_for(conn, head, prune_cutoff_ms, plan).await?;
        let (after, mut q) = Self::commit_query(Statements::new(true), planned);
        q.build().execute(&mut *conn).await?;
        Ok(after)
    }

    /// `planned`'s statements after those `out` holds, and `COMMIT`, as one
    /// multi-statement query; with the head the plan leaves.
    fn commit_query(
        out: Statements<Sqlite>,
        planned: BatchPlan,
    ) -> (Head, sqlx::QueryBuilder<Sqlite>) {
        let after = planned.head.clone();
        let mut statements = Self::push_plan(out, planned);
        let mut q = statements.pop().expect("a plan writes the head");
        debug_assert!(statements.is_empty(), "one query for the whole plan");
        q.push("; COMMIT");
        (after, q)
    }

    async fn close_pools(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// The audit migrations of `migrations/sqlite` (the directory also holds
/// the report store's, which an audit database does not need).
fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.migrations = Cow::Owned(
        m.migrations
            .iter()
            .filter(|m| m.description.contains("audit"))
            .cloned()
            .collect(),
    );
    m.set_ignore_missing(true);
    m
}

shared_sql!(SqliteAudit, Sqlite);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::store::{BatchPlan, Row};

    fn plan(records: u64, keys_each: u64) -> BatchPlan {
        BatchPlan {
            rows: (0..records)
                .map(|seq| Row {
                    seq,
                    time_ms: 1,
                    kind: "verification".into(),
                    request_id: format!("r{seq}"),
                    client: "c".into(),
                    operator: String::new(),
                    purpose: "p".into(),
                    outcome: "ok".into(),
                    leaf_hash: vec![0; 32],
                    body: Some("{}".into()),
                })
                .collect(),
            keys: (0..records)
                .flat_map(|seq| (0..keys_each).map(move |k| (format!("subject:{k}"), seq)))
                .collect(),
            ..BatchPlan::default()
        }
    }

    #[test]
    fn a_commit_is_the_same_statement_whatever_the_number_of_keys() {
        let sql = |p| {
            let mut qs = SqliteAudit::push_plan(Statements::new(true), p);
            assert_eq!(qs.len(), 1, "one query");
            qs.pop().unwrap().sql().as_str().to_owned()
        };
        let few = sql(plan(3, 2));
        assert_eq!(few, sql(plan(3, 7)));
        assert!(few.contains("json_each"), "{few}");
        assert_ne!(few, sql(plan(4, 2)), "one VALUES row per record");
    }
}
