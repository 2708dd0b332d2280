//! The audit store: one trait, [`AuditBackend`], with a SQLite and a
//! PostgreSQL implementation over the same schema (`migrations/sqlite/*audit*`
//! and `migrations/postgres/*audit*`) and the same SQL, written once in
//! `shared_sql!` and expanded for each database.
//!
//! Tables:
//! - `audit_records`: one row per record: `seq` (the leaf index), the
//!   columns queries filter on, `leaf_hash`, and `body`, the canonical
//!   bytes (NULL once purged past retention; the leaf hash stays).
//! - the index: `(key, seq)` for what queries look records up by:
//!   `subject:<keyed hash>` for every person a record concerns (a
//!   household's history is one lookup), `client:<identity>`,
//!   `operator:<id>`. A commit appends a record's keys to
//!   `audit_index_recent` in `seq` order (random inserts into an index
//!   would cost a page each, in every commit, while callers wait); the
//!   writer moves them in large batches ([`BatchPlan::index_keys_below`]).
//!   PostgreSQL moves them into `audit_index`, ordered by `(key, seq)`.
//!   SQLite, which writes every page a commit dirties whole to its WAL
//!   (and a moved key, a keyed hash, dirties a page of its own), moves them
//!   into a new *run* (`SqliteAudit::push_index_move`): the batch sorted by
//!   `(key, seq)`, appended at the end of `audit_index_runs` (primary key
//!   `(run, key, seq)`, runs listed in `audit_runs`), so its pages are
//!   written once and full, however large the index; the writer merges
//!   runs of about one size into one, a chunk of keys per step
//!   ([`AuditBackend::merge_index`], [`merge_window`]), so there are few.
//!   Queries read the index (each run) and the recent table.
//! - `audit_checkpoints`: signed (tree size, root, time).
//! - `audit_head`: one row, the tip of the log (size, last leaf, the Merkle
//!   frontier); writers lock it, so records get consecutive `seq` even with
//!   several brokers on one PostgreSQL.
//! - `audit_meta`: the suite the log is written with.

use std::fmt;

use async_trait::async_trait;

use super::{AuditError, crypto::Hash, merkle::Frontier};

/// The tip of the log, as locked by a writer.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// Records so far.
    pub tree_size: u64,
    /// Leaf hash of the last record.
    pub last_leaf: Option<Hash>,
    /// The Merkle frontier after the last record.
    pub frontier: Frontier,
    /// Tree size of the latest checkpoint.
    pub checkpoint_size: u64,
    /// Time of the latest checkpoint, ms since the epoch.
    pub checkpoint_time_ms: i64,
    /// Records below this `seq` have been purged.
    pub pruned_before: u64,
}

/// One row of `audit_records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Leaf index.
    pub seq: u64,
    /// Time of the access, ms since the epoch.
    pub time_ms: i64,
    /// Kind name.
    pub kind: String,
    /// Request id.
    pub request_id: String,
    /// Client identity.
    pub client: String,
    /// Operator.
    pub operator: String,
    /// Purpose.
    pub purpose: String,
    /// Outcome.
    pub outcome: String,
    /// Leaf hash of the canonical bytes.
    pub leaf_hash: Vec<u8>,
    /// Canonical bytes (JSON); `None` once purged.
    pub body: Option<String>,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    /// Records covered.
    pub tree_size: u64,
    /// When it was made, ms since the epoch.
    pub time_ms: i64,
    /// Merkle root of the first `tree_size` records.
    pub root: Vec<u8>,
    /// Public key (hex) that signed it.
    pub key: String,
    /// Signature of [`super::checkpoint_message`].
    pub signature: Vec<u8>,
}

/// What one write transaction stores.
#[derive(Debug, Default)]
pub struct BatchPlan {
    /// New records.
    pub rows: Vec<Row>,
    /// `(key, seq)` of the new records ([`index_keys`]).
    pub keys: Vec<(String, u64)>,
    /// The new head.
    pub head: Head,
    /// A checkpoint to add.
    pub checkpoint: Option<CheckpointRow>,
    /// Purge the bodies and keys of records below this `seq`.
    pub prune_before: Option<u64>,
    /// Move the keys of the committed records below this `seq` from
    /// `audit_index_recent` into the index (a new run, on SQLite).
    pub index_keys_below: Option<u64>,
}

/// Filters of a query; all given ones must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Keyed hash of a person's identity number.
    pub subject: Option<String>,
    /// Client identity.
    pub client: Option<String>,
    /// Operator.
    pub operator: Option<String>,
    /// Purpose name.
    pub purpose: Option<String>,
    /// A source contacted.
    pub source: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
    /// Kind name.
    pub kind: Option<String>,
    /// From this time (ms, inclusive).
    pub from_ms: Option<i64>,
    /// Until this time (ms, exclusive).
    pub to_ms: Option<i64>,
    /// Only records with a smaller `seq` (the cursor; results are newest
    /// first).
    pub before_seq: Option<u64>,
    /// At most this many.
    pub limit: u32,
}

/// A place where audit records are kept.
#[async_trait]
pub trait AuditBackend: Send + Sync + fmt::Debug {
    /// `sqlite` or `postgres`.
    fn name(&self) -> &'static str;

    /// Whether the store answers (reads the head).
    async fn ping(&self) -> Result<(), AuditError>;

    /// In one transaction holding the head locked: gives the head and, when
    /// `prune_cutoff_ms` is set, the first `seq` whose time is at or after
    /// it (the records before may be purged), to `plan`; writes what it
    /// returns; commits.
    async fn append(
        &self,
        prune_cutoff_ms: Option<i64>,
        plan: &mut (dyn FnMut(Head, Option<u64>) -> Result<BatchPlan, AuditError> + Send),
    ) -> Result<(), AuditError>;

    /// The suite recorded in the database, recording `suite` if none is.
    async fn claim_suite(&self, suite: &str) -> Result<String, AuditError>;

    /// Up to `limit` records from `from_seq` on, in order.
    async fn records(&self, from_seq: u64, limit: u32) -> Result<Vec<Row>, AuditError>;

    /// `(seq, key)` of records in `[from, to)`, ordered.
    async fn keys_between(&self, from: u64, to: u64) -> Result<Vec<(u64, String)>, AuditError>;

    /// Every checkpoint, by tree size.
    async fn checkpoints(&self) -> Result<Vec<CheckpointRow>, AuditError>;

    /// Leaf hashes of records below `upto`, in order, as `(seq, hash)`.
    async fn leaf_hashes(&self, upto: u64) -> Result<Vec<(u64, Vec<u8>)>, AuditError>;

    /// One step of merging the index's runs, in a write transaction of its
    /// own: starts a merge when one is due ([`merge_window`]) and moves
    /// about `chunk` keys of each run being merged. Whether merging is
    /// left (call again). A store without runs (PostgreSQL) has none.
    async fn merge_index(&self, chunk: u64) -> Result<bool, AuditError>;

    /// Records matching `filter`, newest first.
    async fn query(&self, filter: &Filter) -> Result<Vec<Row>, AuditError>;

    /// The head as stored (not locked).
    async fn head(&self) -> Result<Head, AuditError>;

    /// Closes the connections.
    async fn close(&self);
}

type RowTuple = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Vec<u8>,
    Option<String>,
);

pub(super) fn row_of(t: RowTuple) -> Row {
    Row {
        seq: t.0 as u64,
        time_ms: t.1,
        kind: t.2,
        request_id: t.3,
        client: t.4,
        operator: t.5,
        purpose: t.6,
        outcome: t.7,
        leaf_hash: t.8,
        body: t.9,
    }
}

pub(super) type HeadTuple = (i64, Option<Vec<u8>>, Vec<u8>, i64, i64, i64);

pub(super) fn head_of(t: HeadTuple) -> Result<Head, AuditError> {
    let corrupt = || AuditError::Corrupt("audit_head".into());
    let frontier = Frontier::from_bytes(&t.2).ok_or_else(corrupt)?;
    if frontier.size() != t.0 as u64 {
        return Err(corrupt());
    }
    Ok(Head {
        tree_size: t.0 as u64,
        last_leaf: match t.1 {
            None => None,
            Some(b) => Some(b.try_into().map_err(|_| corrupt())?),
        },
        frontier,
        checkpoint_size: t.3 as u64,
        checkpoint_time_ms: t.4,
        pruned_before: t.5 as u64,
    })
}

/// The keys a record is found by: its subjects, client and operator.
pub fn index_keys(entry: &super::Entry) -> Vec<String> {
    let mut keys: Vec<String> = entry
        .subjects
        .iter()
        .map(|s| format!("subject:{s}"))
        .collect();
    if !entry.client.is_empty() {
        keys.push(format!("client:{}", entry.client));
    }
    if !entry.operator.is_empty() {
        keys.push(format!("operator:{}", entry.operator));
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Keys in a run below which a run is of the lowest tier, divided by
/// [`RUN_FANIN`]: runs of fewer than `RUN_BASE * RUN_FANIN` keys are tier
/// 0, then each tier holds runs up to [`RUN_FANIN`] times larger.
const RUN_BASE: u64 = 4_096;
/// How many runs of one tier a merge takes.
pub(super) const RUN_FANIN: usize = 8;
/// Runs of this tier (from `RUN_BASE * RUN_FANIN.pow(RUN_TOP_TIER)` keys,
/// 262,144, to eight times that when merged) are not merged again: a key
/// is rewritten at most this many times after its move, and `audit verify`
/// reads through every run the records it checks are in (`check`'s
/// `KEY_WINDOW`), so runs stay of a bounded size.
const RUN_TOP_TIER: u32 = 2;
/// More runs below the top tier than this are merged whatever their sizes
/// and wherever they are (a move of many waiting keys at once, after a
/// restart, can make a top-tier run newer than smaller ones, which then
/// never find enough of their tier next to them).
const RUN_SMALL_MAX: usize = 24;

fn run_tier(keys: u64) -> u32 {
    let mut tier = 0;
    let mut limit = RUN_BASE * RUN_FANIN as u64;
    while keys >= limit && tier < RUN_TOP_TIER {
        tier += 1;
        limit *= RUN_FANIN as u64;
    }
    tier
}

/// Which runs the next merge takes (their positions), given the key count
/// of every run in `seq` order: the oldest [`RUN_FANIN`] adjacent runs of
/// one tier below the top. Taking the oldest keeps the tiers falling from
/// old runs to new ([`RUN_FANIN`] runs of tier t make one of tier t + 1,
/// or of tier 0 when they are that small, and the run before them is of a
/// higher tier, or it would have been taken), so there are at most
/// `RUN_FANIN - 1` runs of each tier below the top and a query probes few.
/// Past [`RUN_SMALL_MAX`] runs below the top, the oldest [`RUN_FANIN`] of
/// them, adjacent or not.
pub fn merge_window(keys: &[u64]) -> Option<Vec<usize>> {
    let tiers: Vec<u32> = keys.iter().map(|&k| run_tier(k)).collect();
    if let Some(i) = (0..(tiers.len() + 1).saturating_sub(RUN_FANIN)).find(|&i| {
        let t = tiers[i];
        t < RUN_TOP_TIER && tiers[i..i + RUN_FANIN].iter().all(|&x| x == t)
    }) {
        return Some((i..i + RUN_FANIN).collect());
    }
    let small: Vec<usize> = (0..tiers.len())
        .filter(|&i| tiers[i] < RUN_TOP_TIER)
        .collect();
    (small.len() > RUN_SMALL_MAX).then(|| small[..RUN_FANIN].to_vec())
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
pub(super) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(super) const RECORD_COLUMNS: &str =
    "seq, time_ms, kind, request_id, client, operator, purpose, outcome, leaf_hash, body";

/// Records per INSERT statement (10 parameters each; below every
/// database's parameter limit).
pub(super) const ROWS_PER_INSERT: usize = 500;

/// What [`AuditBackend::append`] asks for the batch (the same type, named
/// for the backends' own functions): given the locked head and the first
/// `seq` to keep (when purging), the plan to write.
pub type Planner<'a> = dyn FnMut(Head, Option<u64>) -> Result<BatchPlan, AuditError> + Send + 'a;

/// The keys of a batch as one JSON array of `[key, seq]` pairs, in order,
/// for the backend's `INSERT_KEYS`: one bound text whatever the number of
/// keys, so the commit's statement is the same text for batches with the
/// same number of records (prepared once and cached), where a `VALUES`
/// row per key made nearly every commit's text new.
pub(super) fn keys_json(keys: &[(String, u64)]) -> String {
    serde_json::to_string(keys).expect("strings and integers serialize")
}

/// Statements under construction (each backend adds its index's own
/// statements: `push_index_move`, `push_index_purge`): each its own
/// query, or (`one`) all
/// appended to one multi-statement query (SQLite runs them in order in one
/// call; bind parameters carry on from statement to statement).
pub(super) struct Statements<DB: sqlx::Database> {
    one: bool,
    list: Vec<sqlx::QueryBuilder<DB>>,
}

impl<DB: sqlx::Database> Statements<DB> {
    pub(super) fn new(one: bool) -> Self {
        Self {
            one,
            list: Vec::new(),
        }
    }

    /// Starts the next statement with `sql`.
    pub(super) fn next(&mut self, sql: impl Into<String>) -> &mut sqlx::QueryBuilder<DB> {
        let sql = sql.into();
        match self.list.last_mut() {
            Some(q) if self.one => {
                q.push("; ").push(sql);
            }
            _ => self.list.push(sqlx::QueryBuilder::new(sql)),
        }
        self.list.last_mut().expect("a statement was just started")
    }

    pub(super) fn into_list(self) -> Vec<sqlx::QueryBuilder<DB>> {
        self.list
    }
}

/// The SQL both backends share, expanded once per database type: every
/// statement is built with `QueryBuilder`, which writes the placeholders
/// each database wants.
macro_rules! shared_sql {
    ($backend:ty, $db:ty) => {
        impl $backend {
            /// The statements that store `plan`, in order, after those
            /// `out` holds: one each, or (`Statements::new(true)`, SQLite)
            /// all in one multi-statement query, so the whole write is one
            /// hand-off to the database's thread.
            fn push_plan(
                mut out: $crate::audit::store::Statements<$db>,
                mut plan: $crate::audit::store::BatchPlan,
            ) -> Vec<sqlx::QueryBuilder<$db>> {
                let mut rows = std::mem::take(&mut plan.rows);
                while !rows.is_empty() {
                    let rest =
                        rows.split_off(rows.len().min($crate::audit::store::ROWS_PER_INSERT));
                    out.next(format!(
                        "INSERT INTO audit_records ({}) ",
                        $crate::audit::store::RECORD_COLUMNS
                    ))
                    .push_values(rows, |mut b, r| {
                        b.push_bind(r.seq as i64)
                            .push_bind(r.time_ms)
                            .push_bind(r.kind)
                            .push_bind(r.request_id)
                            .push_bind(r.client)
                            .push_bind(r.operator)
                            .push_bind(r.purpose)
                            .push_bind(r.outcome)
                            .push_bind(r.leaf_hash)
                            .push_bind(r.body);
                    });
                    rows = rest;
                }
                if !plan.keys.is_empty() {
                    out.next(Self::INSERT_KEYS)
                        .push_bind($crate::audit::store::keys_json(&plan.keys))
                        .push(Self::INSERT_KEYS_END);
                }
                if let Some(before) = plan.prune_before {
                    let before = before as i64;
                    out.next(
                        "UPDATE audit_records SET body = NULL, request_id = '', client = '', \
                         operator = '', purpose = '', outcome = '' \
                         WHERE body IS NOT NULL AND seq < ",
                    )
                    .push_bind(before);
                    Self::push_index_purge(&mut out, before);
                    out.next("DELETE FROM audit_index_recent WHERE seq < ")
                        .push_bind(before);
                }
                if let Some(below) = plan.index_keys_below {
                    Self::push_index_move(&mut out, below as i64);
                }
                if let Some(c) = plan.checkpoint {
                    out.next(
                        "INSERT INTO audit_checkpoints (tree_size, time_ms, root, signing_key, signature) VALUES (",
                    )
                    .push_bind(c.tree_size as i64)
                    .push(", ")
                    .push_bind(c.time_ms)
                    .push(", ")
                    .push_bind(c.root)
                    .push(", ")
                    .push_bind(c.key)
                    .push(", ")
                    .push_bind(c.signature)
                    .push(")");
                }
                let h = &plan.head;
                out.next("UPDATE audit_head SET tree_size = ")
                    .push_bind(h.tree_size as i64)
                    .push(", last_leaf = ")
                    .push_bind(h.last_leaf.map(|l| l.to_vec()))
                    .push(", frontier = ")
                    .push_bind(h.frontier.to_bytes())
                    .push(", checkpoint_size = ")
                    .push_bind(h.checkpoint_size as i64)
                    .push(", checkpoint_time_ms = ")
                    .push_bind(h.checkpoint_time_ms)
                    .push(", pruned_before = ")
                    .push_bind(h.pruned_before as i64)
                    .push(" WHERE id = 1");
                out.into_list()
            }

            async fn prune_point<'c, E>(
                executor: E,
                cutoff_ms: i64,
                tree_size: u64,
            ) -> Result<u64, sqlx::Error>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                let first: Option<(i64,)> = sqlx::QueryBuilder::<$db>::new(
                    "SELECT seq FROM audit_records WHERE time_ms >= ",
                )
                .push_bind(cutoff_ms)
                .push(" ORDER BY seq LIMIT 1")
                .build_query_as()
                .fetch_optional(executor)
                .await?;
                Ok(first.map_or(tree_size, |(s,)| s as u64))
            }

            /// The plan for `head` as read under the lock, with the first
            /// `seq` to keep when purging by `prune_cutoff_ms`.
            async fn plan_for(
                conn: &mut <$db as sqlx::Database>::Connection,
                head: $crate::audit::store::HeadTuple,
                prune_cutoff_ms: Option<i64>,
                plan: &mut $crate::audit::store::Planner<'_>,
            ) -> Result<$crate::audit::store::BatchPlan, $crate::audit::AuditError> {
                let head = $crate::audit::store::head_of(head)?;
                let prune = match prune_cutoff_ms {
                    Some(cutoff) => Some(Self::prune_point(&mut *conn, cutoff, head.tree_size).await?),
                    None => None,
                };
                plan(head, prune)
            }

            async fn claim_suite_impl(&self, suite: &str) -> Result<String, sqlx::Error> {
                sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO audit_meta (key, value) VALUES ('suite', ",
                )
                .push_bind(suite.to_owned())
                .push(") ON CONFLICT (key) DO NOTHING")
                .build()
                .execute(&self.pool)
                .await?;
                let (v,): (String,) =
                    sqlx::query_as("SELECT value FROM audit_meta WHERE key = 'suite'")
                        .fetch_one(&self.pool)
                        .await?;
                Ok(v)
            }

            async fn records_impl(
                &self,
                from_seq: u64,
                limit: u32,
            ) -> Result<Vec<$crate::audit::store::Row>, sqlx::Error> {
                let rows: Vec<_> = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM audit_records WHERE seq >= ",
                    $crate::audit::store::RECORD_COLUMNS
                ))
                .push_bind(from_seq as i64)
                .push(" ORDER BY seq LIMIT ")
                .push_bind(i64::from(limit))
                .build_query_as()
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map($crate::audit::store::row_of).collect())
            }

            async fn keys_between_impl(
                &self,
                from: u64,
                to: u64,
            ) -> Result<Vec<(u64, String)>, sqlx::Error> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT seq, key FROM ");
                Self::push_index_between(&mut q, from as i64, to as i64);
                let rows: Vec<(i64, String)> = q
                .push(" UNION ALL SELECT seq, key FROM audit_index_recent WHERE seq >= ")
                .push_bind(from as i64)
                .push(" AND seq < ")
                .push_bind(to as i64)
                .push(" ORDER BY 1, 2")
                .build_query_as()
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(|(s, x)| (s as u64, x)).collect())
            }

            async fn checkpoints_impl(
                &self,
            ) -> Result<Vec<$crate::audit::store::CheckpointRow>, sqlx::Error> {
                let rows: Vec<(i64, i64, Vec<u8>, String, Vec<u8>)> = sqlx::query_as(
                    "SELECT tree_size, time_ms, root, signing_key, signature \
                     FROM audit_checkpoints ORDER BY tree_size, time_ms",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| $crate::audit::store::CheckpointRow {
                        tree_size: r.0 as u64,
                        time_ms: r.1,
                        root: r.2,
                        key: r.3,
                        signature: r.4,
                    })
                    .collect())
            }

            async fn leaf_hashes_impl(
                &self,
                upto: u64,
            ) -> Result<Vec<(u64, Vec<u8>)>, sqlx::Error> {
                let rows: Vec<(i64, Vec<u8>)> = sqlx::QueryBuilder::<$db>::new(
                    "SELECT seq, leaf_hash FROM audit_records WHERE seq < ",
                )
                .push_bind(upto as i64)
                .push(" ORDER BY seq")
                .build_query_as()
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(|(s, h)| (s as u64, h)).collect())
            }

            async fn query_impl(
                &self,
                f: &$crate::audit::store::Filter,
            ) -> Result<Vec<$crate::audit::store::Row>, sqlx::Error> {
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM audit_records WHERE body IS NOT NULL",
                    $crate::audit::store::RECORD_COLUMNS
                ));
                for (prefix, value) in [
                    ("subject", &f.subject),
                    ("client", &f.client),
                    ("operator", &f.operator),
                ] {
                    if let Some(v) = value {
                        let key = format!("{prefix}:{v}");
                        q.push(" AND seq IN (SELECT seq FROM ")
                            .push(Self::INDEX_LOOKUP)
                            .push_bind(key.clone())
                            .push(" UNION ALL SELECT seq FROM audit_index_recent WHERE key = ")
                            .push_bind(key)
                            .push(")");
                    }
                }
                for (column, value) in [
                    ("purpose", &f.purpose),
                    ("outcome", &f.outcome),
                    ("kind", &f.kind),
                ] {
                    if let Some(v) = value {
                        q.push(format!(" AND {column} = ")).push_bind(v.clone());
                    }
                }
                if let Some(s) = &f.source {
                    // A source is `["id","status",cache_hit,facts]` in
                    // the canonical body.
                    q.push(" AND body LIKE ")
                        .push_bind(format!(
                            "%[{},%",
                            $crate::audit::store::like_escape(
                                &serde_json::to_string(s).expect("a string serializes")
                            )
                        ))
                        .push(" ESCAPE '\\'");
                }
                if let Some(t) = f.from_ms {
                    q.push(" AND time_ms >= ").push_bind(t);
                }
                if let Some(t) = f.to_ms {
                    q.push(" AND time_ms < ").push_bind(t);
                }
                if let Some(s) = f.before_seq {
                    q.push(" AND seq < ").push_bind(s as i64);
                }
                q.push(" ORDER BY seq DESC LIMIT ")
                    .push_bind(i64::from(f.limit));
                let rows: Vec<_> = q.build_query_as().fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map($crate::audit::store::row_of).collect())
            }

            async fn head_impl(&self) -> Result<$crate::audit::store::HeadTuple, sqlx::Error> {
                sqlx::query_as(
                    "SELECT tree_size, last_leaf, frontier, checkpoint_size, checkpoint_time_ms, \
                     pruned_before FROM audit_head WHERE id = 1",
                )
                .fetch_one(&self.pool)
                .await
            }
        }

        #[async_trait::async_trait]
        impl $crate::audit::store::AuditBackend for $backend {
            fn name(&self) -> &'static str {
                Self::NAME
            }

            async fn ping(&self) -> Result<(), $crate::audit::AuditError> {
                self.head_impl().await?;
                Ok(())
            }

            async fn append(
                &self,
                prune_cutoff_ms: Option<i64>,
                plan: &mut (dyn FnMut(
                    $crate::audit::store::Head,
                    Option<u64>,
                ) -> Result<$crate::audit::store::BatchPlan, $crate::audit::AuditError>
                          + Send),
            ) -> Result<(), $crate::audit::AuditError> {
                self.append_locked(prune_cutoff_ms, plan).await
            }

            async fn claim_suite(&self, suite: &str) -> Result<String, $crate::audit::AuditError> {
                Ok(self.claim_suite_impl(suite).await?)
            }

            async fn records(
                &self,
                from_seq: u64,
                limit: u32,
            ) -> Result<Vec<$crate::audit::store::Row>, $crate::audit::AuditError> {
                Ok(self.records_impl(from_seq, limit).await?)
            }

            async fn keys_between(
                &self,
                from: u64,
                to: u64,
            ) -> Result<Vec<(u64, String)>, $crate::audit::AuditError> {
                Ok(self.keys_between_impl(from, to).await?)
            }

            async fn checkpoints(
                &self,
            ) -> Result<Vec<$crate::audit::store::CheckpointRow>, $crate::audit::AuditError> {
                Ok(self.checkpoints_impl().await?)
            }

            async fn leaf_hashes(
                &self,
                upto: u64,
            ) -> Result<Vec<(u64, Vec<u8>)>, $crate::audit::AuditError> {
                Ok(self.leaf_hashes_impl(upto).await?)
            }

            async fn merge_index(&self, chunk: u64) -> Result<bool, $crate::audit::AuditError> {
                self.merge_locked(chunk).await
            }

            async fn query(
                &self,
                filter: &$crate::audit::store::Filter,
            ) -> Result<Vec<$crate::audit::store::Row>, $crate::audit::AuditError> {
                Ok(self.query_impl(filter).await?)
            }

            async fn head(&self) -> Result<$crate::audit::store::Head, $crate::audit::AuditError> {
                $crate::audit::store::head_of(self.head_impl().await?)
            }

            async fn close(&self) {
                self.close_pools().await;
            }
        }
    };
}

pub(super) use shared_sql;

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs after moves of `moves` keys each, merged as far as due after
    /// each move, with `each` called on the runs after every move.
    fn grow(moves: impl IntoIterator<Item = u64>, mut each: impl FnMut(&[u64])) -> Vec<u64> {
        let mut runs: Vec<u64> = Vec::new();
        for m in moves {
            runs.push(m);
            while let Some(w) = merge_window(&runs) {
                let merged = w.iter().map(|&i| runs[i]).sum();
                // In place of the oldest, as the merged run's seq range
                // starts there.
                for &i in w.iter().skip(1).rev() {
                    runs.remove(i);
                }
                runs[w[0]] = merged;
            }
            each(&runs);
        }
        runs
    }

    #[test]
    fn equal_moves_make_few_runs_with_tiers_falling_from_old_to_new() {
        // 12 million keys in moves of 6,000 (a thousand records' keys).
        let runs = grow(std::iter::repeat_n(6_000, 2_000), |runs| {
            let tiers: Vec<u32> = runs.iter().map(|&k| run_tier(k)).collect();
            assert!(tiers.windows(2).all(|w| w[0] >= w[1]), "{tiers:?}");
            for t in 0..RUN_TOP_TIER {
                assert!(
                    tiers.iter().filter(|&&x| x == t).count() < RUN_FANIN,
                    "{tiers:?}"
                );
            }
        });
        assert_eq!(runs.iter().sum::<u64>(), 12_000_000);
        let top = RUN_BASE * (RUN_FANIN as u64).pow(RUN_TOP_TIER);
        assert!(runs.iter().all(|&k| k < RUN_FANIN as u64 * top), "{runs:?}");
        // 12,000,000 / 384,000 top runs, and fewer than RUN_FANIN of each tier
        // below.
        assert!(
            runs.len() <= 32 + (RUN_FANIN - 1) * RUN_TOP_TIER as usize,
            "{}",
            runs.len()
        );
    }

    #[test]
    fn uneven_moves_keep_the_runs_below_the_top_bounded() {
        // Tick moves of a few keys, chunks, and now and then all that
        // waited after a restart: a top-tier run newer than small ones.
        let moves = (0..20_000u64).map(|i| match i % 97 {
            0 => 300_000,
            n if n % 3 == 0 => 6_000,
            n => n * 7,
        });
        let mut most = 0;
        grow(moves, |runs| {
            let small = runs.iter().filter(|&&k| run_tier(k) < RUN_TOP_TIER).count();
            most = most.max(small);
        });
        assert!(most <= RUN_SMALL_MAX, "{most} runs below the top tier");
    }

    #[test]
    fn a_merge_takes_the_oldest_runs_of_one_tier() {
        let f = RUN_FANIN;
        assert_eq!(merge_window(&[]), None);
        assert_eq!(merge_window(&vec![10; f - 1]), None);
        assert_eq!(merge_window(&vec![10; f]), Some((0..f).collect()));
        let mut runs = vec![100_000, 40_000];
        runs.extend(vec![10; f + 1]);
        assert_eq!(merge_window(&runs), Some((2..2 + f).collect()));
        // Top-tier runs are not merged again.
        assert_eq!(merge_window(&vec![300_000; 2 * f]), None);
        // Past the bound, small runs are merged across a large one.
        let mut runs = vec![300_000];
        runs.extend(vec![10; f - 1]);
        let small = |runs: &[u64]| runs.iter().filter(|&&k| k != 300_000).count();
        while small(&runs) + 3 <= RUN_SMALL_MAX {
            runs.extend([300_000, 40_000, 10, 10]);
        }
        assert_eq!(merge_window(&runs), None);
        runs.extend([300_000, 40_000, 10, 10]);
        let oldest: Vec<usize> = (0..runs.len())
            .filter(|&i| runs[i] != 300_000)
            .take(f)
            .collect();
        assert_eq!(merge_window(&runs), Some(oldest));
    }
}
