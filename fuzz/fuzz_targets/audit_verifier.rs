//! The audit verifier (`hedui audit verify`) on corrupted logs.
//!
//! A real log is written once per suite (SQLite, by the broker's own
//! writer: records of several kinds, an early part purged past retention,
//! signed checkpoints, the last one covering every record), and read back
//! as stored rows. Each input then corrupts those rows as someone with
//! write access to the database could: a byte of a body, a column, a leaf
//! hash, an index key or a checkpoint changed; rows deleted (leaving a gap
//! or renumbered), copied in, swapped, cut off the end; bodies purged;
//! records rewritten consistently (a new canonical body, its leaf hash, its
//! columns and index keys, with the link to the record before kept or
//! re-chained). [`verify_log`] must:
//!
//! - not panic, whatever it reads;
//! - find every change: when the rows differ from what was written and the
//!   latest signed checkpoint is still there, the log does not verify (but
//!   for the time and kind columns of a purged record, which nothing signed
//!   covers: docs/audit.md, Retention);
//! - name, when it names a record, one at or below the end of the log.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use async_trait::async_trait;
use hedui::audit::{
    AuditError, Entry, Kind,
    check::verify_log,
    crypto::Suite,
    merkle::leaf_hash,
    record::{Record, now_ms},
    store::{AuditBackend, BatchPlan, CheckpointRow, Filter, Head, Row, index_keys},
    testkit::{TestStore, sample_entry},
};
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;

/// The stored state of a log: what the verifier reads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    /// Rows by `seq` (the primary key).
    rows: BTreeMap<u64, Row>,
    /// Index keys, `(seq, key)` (the primary key).
    keys: BTreeMap<(u64, String), ()>,
    /// Checkpoints by tree size (the primary key).
    checkpoints: BTreeMap<u64, CheckpointRow>,
}

/// The stored state behind the [`AuditBackend`] the verifier reads (it
/// writes nothing).
#[derive(Debug)]
struct Memory(Stored);

fn read_only() -> AuditError {
    AuditError::Config("the fuzzing store is read-only".into())
}

#[async_trait]
impl AuditBackend for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }
    async fn ping(&self) -> Result<(), AuditError> {
        Ok(())
    }
    async fn append(
        &self,
        _: Option<i64>,
        _: &mut (dyn FnMut(Head, Option<u64>) -> Result<BatchPlan, AuditError> + Send),
    ) -> Result<(), AuditError> {
        Err(read_only())
    }
    async fn claim_suite(&self, _: &str) -> Result<String, AuditError> {
        Err(read_only())
    }
    async fn records(&self, from_seq: u64, limit: u32) -> Result<Vec<Row>, AuditError> {
        Ok(self
            .0
            .rows
            .range(from_seq..)
            .take(limit as usize)
            .map(|(_, r)| r.clone())
            .collect())
    }
    async fn keys_between(&self, from: u64, to: u64) -> Result<Vec<(u64, String)>, AuditError> {
        Ok(self
            .0
            .keys
            .keys()
            .filter(|(s, _)| (from..to).contains(s))
            .cloned()
            .collect())
    }
    async fn merge_index(&self, _chunk: u64) -> Result<bool, AuditError> {
        // Keys are kept in one ordered map: there are no runs to merge.
        Ok(false)
    }
    async fn checkpoints(&self) -> Result<Vec<CheckpointRow>, AuditError> {
        Ok(self.0.checkpoints.values().cloned().collect())
    }
    async fn leaf_hashes(&self, upto: u64) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        Ok(self
            .0
            .rows
            .range(..upto)
            .map(|(s, r)| (*s, r.leaf_hash.clone()))
            .collect())
    }
    async fn query(&self, _: &Filter) -> Result<Vec<Row>, AuditError> {
        Err(read_only())
    }
    async fn head(&self) -> Result<Head, AuditError> {
        Err(read_only())
    }
    async fn close(&self) {}
}

struct Fixture {
    suite: Suite,
    key: String,
    stored: Stored,
}

const RECORDS: usize = 40;
const OLD: usize = 6;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Writes a log with the broker's writer and reads back what is stored.
async fn write(suite: Suite) -> Fixture {
    let dir = std::env::temp_dir().join(format!("hedui-fuzz-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let mut store = TestStore::sqlite(&dir, suite.name(), suite);
    let _ = std::fs::remove_file(store.config.sqlite_path());
    store.config.checkpoint_every_records = 9;
    store.config.retention_days = 183;
    let log = store.open().await.expect("the log opens");
    log.ready().await.expect("the log is ready");
    let subject_key = log.subject_key().clone();
    let year_ago = now_ms() - 400 * 86_400_000;
    for i in 0..RECORDS {
        let mut e = if i % 5 == 4 {
            let mut e = Entry::new(Kind::Denied);
            e.client = format!("10.0.0.{i}");
            e.outcome = "permission_denied".into();
            e.detail = "role auditor required".into();
            e
        } else {
            sample_entry(i, &subject_key)
        };
        if i < OLD {
            e.time_ms = year_ago + i as i64;
        }
        log.record(e).await.expect("a record is written");
    }
    log.purge(now_ms()).await.expect("the purge runs");
    log.checkpoint().await.expect("a checkpoint is written");
    let key = log.public_key_hex();
    log.close().await;
    let backend = store.backend().await.expect("the store opens");
    let report = verify_log(backend.as_ref(), suite, &key)
        .await
        .expect("the log reads");
    assert!(report.ok(), "the log as written verifies: {report}");
    let rows = backend.records(0, u32::MAX).await.expect("records");
    let end = rows.len() as u64;
    let stored = Stored {
        rows: rows.into_iter().map(|r| (r.seq, r)).collect(),
        keys: backend
            .keys_between(0, end)
            .await
            .expect("keys")
            .into_iter()
            .map(|k| (k, ()))
            .collect(),
        checkpoints: backend
            .checkpoints()
            .await
            .expect("checkpoints")
            .into_iter()
            .map(|c| (c.tree_size, c))
            .collect(),
    };
    backend.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        stored.checkpoints.keys().last(),
        Some(&end),
        "the last checkpoint covers every record"
    );
    Fixture { suite, key, stored }
}

fn fixtures() -> &'static [Fixture; 2] {
    static F: OnceLock<[Fixture; 2]> = OnceLock::new();
    F.get_or_init(|| {
        runtime().block_on(async {
            [
                write(Suite::Sha256Ed25519).await,
                write(Suite::Sm3Sm2).await,
            ]
        })
    })
}

fn flip(u: &mut Unstructured<'_>, bytes: &mut [u8]) -> AResult<()> {
    if !bytes.is_empty() {
        let i = u.choose_index(bytes.len())?;
        bytes[i] ^= u.int_in_range(1..=255)?;
    }
    Ok(())
}

fn text(u: &mut Unstructured<'_>, s: &mut String) -> AResult<()> {
    match u.int_in_range(0..=2)? {
        0 => s.push(u.arbitrary()?),
        1 => *s = u.arbitrary()?,
        _ => s.clear(),
    }
    Ok(())
}

/// Moves every row and key at or after `from` by `by` positions.
fn renumber(s: &mut Stored, from: u64, up: bool) {
    let shift = |seq: u64| {
        if seq < from {
            seq
        } else if up {
            seq + 1
        } else {
            seq - 1
        }
    };
    let rows = std::mem::take(&mut s.rows);
    s.rows = rows
        .into_values()
        .map(|mut r| {
            r.seq = shift(r.seq);
            (r.seq, r)
        })
        .collect();
    let keys = std::mem::take(&mut s.keys);
    s.keys = keys
        .into_keys()
        .map(|(seq, k)| ((shift(seq), k), ()))
        .collect();
}

/// Rewrites row `seq` as a consistent record: a changed entry, canonical
/// bytes, leaf hash, columns and keys; linked to the leaf hash of the row
/// before when `rechain`, else to what the record said.
fn rewrite(
    u: &mut Unstructured<'_>,
    s: &mut Stored,
    suite: Suite,
    seq: u64,
    rechain: bool,
) -> AResult<()> {
    let Some(row) = s.rows.get(&seq).cloned() else {
        return Ok(());
    };
    let Some(mut record) = row
        .body
        .as_deref()
        .and_then(|b| Record::parse(b.as_bytes()))
    else {
        return Ok(());
    };
    let e = &mut record.entry;
    match u.int_in_range(0..=6)? {
        0 => text(u, &mut e.operator)?,
        1 => text(u, &mut e.client)?,
        2 => text(u, &mut e.outcome)?,
        3 => e.subjects.clear(),
        4 => e.time_ms = u.arbitrary()?,
        5 => e.latency_ms = u.arbitrary()?,
        _ => text(u, &mut e.detail)?,
    }
    if rechain
        && seq > 0
        && let Some(before) = s.rows.get(&(seq - 1))
    {
        record.prev = hex::encode(&before.leaf_hash);
    }
    let body = String::from_utf8(record.canonical()).expect("canonical bytes are UTF-8");
    let e = &record.entry;
    let new = Row {
        seq,
        time_ms: e.time_ms,
        kind: e.kind().name().into(),
        request_id: e.request_id.clone(),
        client: e.client.clone(),
        operator: e.operator.clone(),
        purpose: e.purpose.clone(),
        outcome: e.outcome.clone(),
        leaf_hash: leaf_hash(suite, body.as_bytes()).to_vec(),
        body: Some(body),
    };
    s.keys.retain(|(k, _), _| *k != seq);
    for k in index_keys(e) {
        s.keys.insert((seq, k), ());
    }
    s.rows.insert(seq, new);
    Ok(())
}

fn corrupt(u: &mut Unstructured<'_>, s: &mut Stored, suite: Suite) -> AResult<()> {
    let end = s.rows.keys().last().map_or(0, |k| k + 1);
    if end == 0 {
        return Ok(());
    }
    let seq = u.int_in_range(0..=end - 1)?;
    match u.int_in_range(0..=16)? {
        0 => {
            if let Some(b) = s.rows.get_mut(&seq).and_then(|r| r.body.take()) {
                let mut bytes = b.into_bytes();
                flip(u, &mut bytes)?;
                s.rows.get_mut(&seq).expect("the row").body =
                    Some(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        1 => {
            if let Some(r) = s.rows.get_mut(&seq) {
                match u.int_in_range(0..=6)? {
                    0 => r.time_ms = r.time_ms.wrapping_add(u.int_in_range(1..=1000)?),
                    1 => text(u, &mut r.kind)?,
                    2 => text(u, &mut r.request_id)?,
                    3 => text(u, &mut r.client)?,
                    4 => text(u, &mut r.operator)?,
                    5 => text(u, &mut r.purpose)?,
                    _ => text(u, &mut r.outcome)?,
                }
            }
        }
        2 => {
            if let Some(r) = s.rows.get_mut(&seq) {
                if u.arbitrary()? {
                    flip(u, &mut r.leaf_hash)?;
                } else {
                    r.leaf_hash.truncate(u.choose_index(32)?);
                }
            }
        }
        // Deleted, leaving a gap.
        3 => {
            s.rows.remove(&seq);
            s.keys.retain(|(k, _), _| *k != seq);
        }
        // Deleted and the rows after renumbered.
        4 => {
            s.rows.remove(&seq);
            s.keys.retain(|(k, _), _| *k != seq);
            renumber(s, seq + 1, false);
        }
        // A copy of another row inserted.
        5 => {
            let from = u.int_in_range(0..=end - 1)?;
            if let Some(mut copy) = s.rows.get(&from).cloned() {
                let keys: Vec<String> = s
                    .keys
                    .keys()
                    .filter(|(k, _)| *k == from)
                    .map(|(_, k)| k.clone())
                    .collect();
                renumber(s, seq, true);
                copy.seq = seq;
                s.rows.insert(seq, copy);
                for k in keys {
                    s.keys.insert((seq, k), ());
                }
            }
        }
        // Two rows swapped (their contents; the positions stay).
        6 => {
            let other = u.int_in_range(0..=end - 1)?;
            if let (Some(mut a), Some(mut b)) =
                (s.rows.get(&seq).cloned(), s.rows.get(&other).cloned())
            {
                std::mem::swap(&mut a.seq, &mut b.seq);
                s.rows.insert(a.seq, a);
                s.rows.insert(b.seq, b);
            }
        }
        // The tail cut off.
        7 => {
            s.rows.retain(|k, _| *k < seq);
            s.keys.retain(|(k, _), _| *k < seq);
        }
        // Purged: the body gone, with or without its index keys.
        8 => {
            if let Some(r) = s.rows.get_mut(&seq) {
                r.body = None;
                if u.arbitrary()? {
                    s.keys.retain(|(k, _), _| *k != seq);
                }
            }
        }
        9 => {
            let keys: Vec<(u64, String)> = s.keys.keys().cloned().collect();
            if !keys.is_empty() {
                let k = u.choose(&keys)?.clone();
                s.keys.remove(&k);
                if u.arbitrary()? {
                    let mut changed = k.1.clone();
                    text(u, &mut changed)?;
                    s.keys.insert((k.0, changed), ());
                }
            }
        }
        10 => {
            let mut k: String = u.arbitrary()?;
            if u.arbitrary()? {
                k = format!("subject:{k}");
            }
            s.keys.insert((seq, k), ());
        }
        11 | 12 => {
            let rechain = u.arbitrary()?;
            rewrite(u, s, suite, seq, rechain)?;
        }
        // A checkpoint changed.
        13 | 14 => {
            let sizes: Vec<u64> = s.checkpoints.keys().copied().collect();
            let size = *u.choose(&sizes)?;
            let mut c = s.checkpoints.remove(&size).expect("the checkpoint");
            match u.int_in_range(0..=4)? {
                0 => flip(u, &mut c.root)?,
                1 => flip(u, &mut c.signature)?,
                2 => c.time_ms = c.time_ms.wrapping_add(u.int_in_range(1..=1000)?),
                3 => text(u, &mut c.key)?,
                _ => c.tree_size = u.int_in_range(0..=end + 1)?,
            }
            s.checkpoints.entry(c.tree_size).or_insert(c);
        }
        // A checkpoint deleted.
        15 => {
            let sizes: Vec<u64> = s.checkpoints.keys().copied().collect();
            if !sizes.is_empty() {
                s.checkpoints.remove(u.choose(&sizes)?);
            }
        }
        // A checkpoint copied from the other suite's log.
        _ => {
            let other = &fixtures()[usize::from(suite == Suite::Sha256Ed25519)];
            let theirs: Vec<&CheckpointRow> = other.stored.checkpoints.values().collect();
            let c = u.choose(&theirs)?;
            s.checkpoints.insert(c.tree_size, (*c).clone());
        }
    }
    Ok(())
}

/// A row as far as anything signed covers it: a purged record's time and
/// kind columns are kept for the index, and nothing is left to check them
/// against (docs/audit.md, Retention).
fn signed(row: &Row) -> Row {
    let mut r = row.clone();
    if r.body.is_none() {
        r.time_ms = 0;
        r.kind.clear();
    }
    r
}

/// What differs, for the failure message.
fn difference(was: &Stored, now: &Stored) -> String {
    let mut out = Vec::new();
    let seqs: std::collections::BTreeSet<u64> =
        was.rows.keys().chain(now.rows.keys()).copied().collect();
    for seq in seqs {
        let (a, b) = (was.rows.get(&seq), now.rows.get(&seq));
        if a != b {
            out.push(format!("row {seq}: {a:?}\n  now {b:?}"));
        }
    }
    for k in was.keys.keys().filter(|k| !now.keys.contains_key(*k)) {
        out.push(format!("key removed: {k:?}"));
    }
    for k in now.keys.keys().filter(|k| !was.keys.contains_key(*k)) {
        out.push(format!("key added: {k:?}"));
    }
    for (size, c) in &now.checkpoints {
        if was.checkpoints.get(size) != Some(c) {
            out.push(format!("checkpoint {size} changed: {c:?}"));
        }
    }
    out.join("\n")
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(which) = u.int_in_range(0..=1usize) else {
        return;
    };
    let f = &fixtures()[which];
    let mut stored = f.stored.clone();
    let Ok(n) = u.int_in_range(1..=4u8) else {
        return;
    };
    for _ in 0..n {
        if corrupt(&mut u, &mut stored, f.suite).is_err() {
            break;
        }
    }
    let latest = f.stored.checkpoints.values().last().expect("a checkpoint");
    let covered = stored.checkpoints.get(&latest.tree_size) == Some(latest);
    // A checkpoint deleted changes nothing the remaining ones sign; any
    // other difference is a change.
    let changed = stored.rows.iter().map(|(seq, r)| (seq, signed(r))).ne(f
        .stored
        .rows
        .iter()
        .map(|(seq, r)| (seq, signed(r))))
        || stored.keys != f.stored.keys
        || stored
            .checkpoints
            .iter()
            .any(|(size, c)| f.stored.checkpoints.get(size) != Some(c));
    let end = stored.rows.keys().last().map_or(0, |k| k + 1);
    let diff = difference(&f.stored, &stored);
    let report = runtime()
        .block_on(verify_log(&Memory(stored), f.suite, &f.key))
        .expect("reading the memory store does not fail");
    if changed && covered {
        assert!(
            !report.ok(),
            "a change to the rows went unnoticed: {report}\n{diff}"
        );
    }
    if !changed {
        assert!(report.ok(), "the log as written fails: {report}");
    }
    if let Some(record) = report.problem.as_ref().and_then(|p| p.record) {
        assert!(
            record <= end.max(latest.tree_size),
            "names record {record} of a log of {end}: {report}"
        );
    }
});
