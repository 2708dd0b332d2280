//! Checking a whole log offline (`hedui audit verify`) and proving one
//! record's inclusion (`hedui audit prove`).
//!
//! [`verify_log`] reads every record in order and checks, for each: its
//! position (none missing), its canonical bytes, that the body says the
//! position it is stored at, its leaf hash, the query columns and the
//! index (subjects, client, operator) against the body, and its link to the record before. It then
//! checks every signed checkpoint: the signature, and the Merkle root of
//! the records it covers. The first thing found wrong names a record:
//!
//! - a changed field: that record (its leaf hash, a column, or the link of
//!   the next record no longer matches it);
//! - a deleted row: the position that is missing, or (rows renumbered) the
//!   first record stored at a position its body does not say;
//! - an inserted row: the inserted record;
//! - two rows swapped: the first of them;
//! - a cut tail: the first missing position, from the latest checkpoint.
//!
//! Records after the latest checkpoint are protected by the chain only; a
//! checkpoint is written every N records or T seconds, and on shutdown.

use std::collections::{HashMap, VecDeque};

use super::{
    AuditError, Kind, checkpoint_message,
    crypto::{Hash, Suite, verify_signature},
    merkle::{self, Frontier, leaf_hash},
    purged_before,
    record::Record,
    store::{AuditBackend, CheckpointRow, Row},
};

/// Records read per page.
const PAGE: u32 = 2000;
/// Index keys are read for this many records at a time: the index keeps
/// each run's keys in key order, so reading the keys of some records reads
/// through every run they are in (up to about two million keys each); read a
/// page at a time, a large run would be read hundreds of times. About 60 MB
/// of keys at six keys a record.
const KEY_WINDOW: u64 = 100_000;
/// How far back an inserted record's predecessor is looked for.
const LOOKBACK: usize = 4096;

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The first bad record, when a record is to blame (a forged checkpoint
    /// names none).
    pub record: Option<u64>,
    /// What is wrong.
    pub message: String,
}

/// The result of [`verify_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records in the log.
    pub records: u64,
    /// Records whose bodies were purged past retention.
    pub purged: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The latest checkpoint.
    pub latest: Option<CheckpointRow>,
    /// The first problem; `None` means the log verifies.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    /// Whether the log verifies.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.problem {
            None => write!(
                f,
                "ok: {} records ({} purged past retention), {} signed checkpoints",
                self.records, self.purged, self.checkpoints
            )?,
            Some(p) => match p.record {
                Some(r) => write!(f, "FAILED: first bad record {r}: {}", p.message)?,
                None => write!(f, "FAILED: {}", p.message)?,
            },
        }
        if let Some(c) = &self.latest {
            let uncovered = self.records.saturating_sub(c.tree_size);
            write!(
                f,
                "\nlatest checkpoint: size {} root {} at {} ms",
                c.tree_size,
                hex::encode(&c.root),
                c.time_ms
            )?;
            if uncovered > 0 {
                write!(
                    f,
                    "; {uncovered} later records are covered by the chain only"
                )?;
            }
        }
        Ok(())
    }
}

fn bad(record: u64, message: impl Into<String>) -> Problem {
    Problem {
        record: Some(record),
        message: message.into(),
    }
}

/// Checks the whole log; `public_key` (hex) is the key checkpoints must be
/// signed with.
///
/// # Errors
/// [`AuditError`] when the store cannot be read (a log that does not
/// verify is not an error: see [`VerifyReport::problem`]).
pub async fn verify_log(
    backend: &dyn AuditBackend,
    suite: Suite,
    public_key: &str,
) -> Result<VerifyReport, AuditError> {
    let checkpoints = backend.checkpoints().await?;
    let mut report = VerifyReport {
        records: 0,
        purged: 0,
        checkpoints: checkpoints.len() as u64,
        latest: checkpoints.last().cloned(),
        problem: None,
    };
    let mut walk = Walk {
        suite,
        public_key,
        checkpoints: &checkpoints,
        next_checkpoint: 0,
        last_good_checkpoint: 0,
        frontier: Frontier::default(),
        prev_leaf: None,
        recent: VecDeque::new(),
        recent_index: HashMap::new(),
        seen_body: false,
        purged_prefix: 0,
        purge_claimed: 0,
    };
    let mut buffer: VecDeque<Row> = VecDeque::new();
    let mut keys: HashMap<u64, Vec<String>> = HashMap::new();
    // Keys are read up to here.
    let mut keys_to = 0u64;
    let mut next_page = 0u64;
    let mut exhausted = false;
    loop {
        if buffer.len() < 2 && !exhausted {
            let page = backend.records(next_page, PAGE).await?;
            exhausted = page.len() < PAGE as usize;
            if let (Some(first), Some(last)) = (page.first(), page.last()) {
                if last.seq >= keys_to {
                    let from = first.seq.max(keys_to);
                    let to = (last.seq + 1).max(from.saturating_add(KEY_WINDOW));
                    for (seq, k) in backend.keys_between(from, to).await? {
                        keys.entry(seq).or_default().push(k);
                    }
                    keys_to = to;
                }
                next_page = last.seq + 1;
            }
            buffer.extend(page);
        }
        let Some(row) = buffer.pop_front() else {
            break;
        };
        let row_keys = keys.remove(&row.seq).unwrap_or_default();
        if let Err(p) = walk.row(&row, buffer.front(), row_keys) {
            report.problem = Some(p);
            break;
        }
        report.records += 1;
    }
    report.purged = walk.purged_prefix;
    if report.problem.is_none() {
        report.problem = walk.finish(report.records).err();
    }
    Ok(report)
}

struct Walk<'a> {
    suite: Suite,
    public_key: &'a str,
    checkpoints: &'a [CheckpointRow],
    next_checkpoint: usize,
    last_good_checkpoint: u64,
    frontier: Frontier,
    prev_leaf: Option<Hash>,
    recent: VecDeque<Hash>,
    recent_index: HashMap<Hash, u64>,
    seen_body: bool,
    /// Purged records at the start of the log.
    purged_prefix: u64,
    /// The highest position below which purge records say records were
    /// purged.
    purge_claimed: u64,
}

impl Walk<'_> {
    fn row(&mut self, row: &Row, next: Option<&Row>, mut keys: Vec<String>) -> Result<(), Problem> {
        let expected = self.frontier.size();
        if row.seq != expected {
            return Err(bad(
                expected,
                format!("missing: the next record stored is {}", row.seq),
            ));
        }
        let leaf: Hash = match &row.body {
            None => {
                if self.seen_body {
                    return Err(bad(row.seq, "purged, but records before it are not"));
                }
                if !keys.is_empty() {
                    return Err(bad(row.seq, "purged, but it is still indexed"));
                }
                // A purge clears these columns; a value in one was put
                // there afterwards (its time and kind stay, and nothing
                // is left to check them against).
                let cleared = [
                    ("request_id", &row.request_id),
                    ("client", &row.client),
                    ("operator", &row.operator),
                    ("purpose", &row.purpose),
                    ("outcome", &row.outcome),
                ];
                if let Some((c, _)) = cleared.iter().find(|(_, v)| !v.is_empty()) {
                    return Err(bad(
                        row.seq,
                        format!("purged, but column {c} holds a value"),
                    ));
                }
                self.purged_prefix += 1;
                row.leaf_hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad(row.seq, "leaf hash is not 32 bytes"))?
            }
            Some(body) => {
                self.seen_body = true;
                let record = Record::parse(body.as_bytes())
                    .ok_or_else(|| bad(row.seq, "body is not a canonical record"))?;
                if record.seq != row.seq {
                    return Err(bad(
                        self.inserted_before(&record, row.seq),
                        format!(
                            "stored at {} but says it is record {} (rows deleted, inserted or swapped)",
                            row.seq, record.seq
                        ),
                    ));
                }
                let leaf = leaf_hash(self.suite, body.as_bytes());
                if row.leaf_hash != leaf {
                    return Err(bad(row.seq, "leaf hash does not match the body"));
                }
                let e = &record.entry;
                let columns = [
                    ("time_ms", row.time_ms == e.time_ms),
                    ("kind", row.kind == e.kind().name()),
                    ("request_id", row.request_id == e.request_id),
                    ("client", row.client == e.client),
                    ("operator", row.operator == e.operator),
                    ("purpose", row.purpose == e.purpose),
                    ("outcome", row.outcome == e.outcome),
                ];
                if let Some((c, _)) = columns.iter().find(|(_, ok)| !ok) {
                    return Err(bad(row.seq, format!("column {c} differs from the record")));
                }
                keys.sort();
                if keys != super::store::index_keys(e) {
                    return Err(bad(row.seq, "the index differs from the record"));
                }
                let prev = self.prev_leaf.map(hex::encode).unwrap_or_default();
                if record.prev != prev {
                    // Either the record before changed after this one was
                    // chained to it, or this one's link changed: the next
                    // record tells which.
                    let next_links_here = next
                        .and_then(|n| n.body.as_deref())
                        .and_then(|b| Record::parse(b.as_bytes()))
                        .is_some_and(|n| n.prev == hex::encode(leaf));
                    return Err(if next_links_here && row.seq > 0 {
                        bad(
                            row.seq - 1,
                            format!("does not match what record {} was chained to", row.seq),
                        )
                    } else {
                        bad(row.seq, "its link to the record before does not match")
                    });
                }
                if e.kind() == Kind::RetentionPurge
                    && let Some(before) = purged_before(&e.detail)
                {
                    self.purge_claimed = self.purge_claimed.max(before);
                }
                leaf
            }
        };
        self.frontier.push(self.suite, leaf);
        self.prev_leaf = Some(leaf);
        self.remember(leaf, row.seq);
        self.check_checkpoints()
    }

    /// For a record stored at `at` that says it is `record.seq`: when it
    /// links to the record two rows back, the row between was inserted
    /// (and made to look right); otherwise this row is the bad one (a
    /// copy, a swap, or the first after a deletion).
    fn inserted_before(&self, record: &Record, at: u64) -> u64 {
        let Some(prev) = hex::decode(&record.prev)
            .ok()
            .and_then(|p| Hash::try_from(p.as_slice()).ok())
        else {
            return at;
        };
        match self.recent_index.get(&prev) {
            Some(&s) if s + 2 == at => at - 1,
            _ => at,
        }
    }

    fn remember(&mut self, leaf: Hash, seq: u64) {
        self.recent.push_back(leaf);
        self.recent_index.insert(leaf, seq);
        if self.recent.len() > LOOKBACK
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_index.remove(&old);
        }
    }

    fn check_checkpoints(&mut self) -> Result<(), Problem> {
        let size = self.frontier.size();
        while let Some(c) = self.checkpoints.get(self.next_checkpoint) {
            if c.tree_size > size {
                break;
            }
            self.next_checkpoint += 1;
            if c.tree_size < size {
                // Sizes below were checked when reached; a checkpoint of
                // size 0 or out of order is forged.
                return Err(Problem {
                    record: None,
                    message: format!("checkpoint of size {} is out of order", c.tree_size),
                });
            }
            self.check_signature(c)?;
            if c.root != self.frontier.root(self.suite) {
                return Err(bad(
                    self.last_good_checkpoint,
                    format!(
                        "records {}..{} do not match the signed checkpoint of size {}",
                        self.last_good_checkpoint, c.tree_size, c.tree_size
                    ),
                ));
            }
            self.last_good_checkpoint = c.tree_size;
        }
        Ok(())
    }

    fn check_signature(&self, c: &CheckpointRow) -> Result<(), Problem> {
        let message = checkpoint_message(self.suite, c.tree_size, &c.root, c.time_ms);
        if c.key != self.public_key
            || !verify_signature(self.suite, self.public_key, &message, &c.signature)
        {
            return Err(Problem {
                record: None,
                message: format!(
                    "checkpoint of size {} is not signed by the configured key",
                    c.tree_size
                ),
            });
        }
        Ok(())
    }

    fn finish(&mut self, records: u64) -> Result<(), Problem> {
        if let Some(c) = self.checkpoints.get(self.next_checkpoint) {
            self.check_signature(c)?;
            return Err(bad(
                records,
                format!(
                    "missing: the log ends after {records} records, a signed checkpoint covers {}",
                    c.tree_size
                ),
            ));
        }
        if self.purged_prefix > self.purge_claimed {
            return Err(bad(
                self.purge_claimed,
                "purged, but no purge record covers it",
            ));
        }
        Ok(())
    }
}

/// An inclusion proof of one record against a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The record's position.
    pub seq: u64,
    /// Its canonical bytes (`None` once purged).
    pub body: Option<String>,
    /// Its leaf hash.
    pub leaf_hash: Hash,
    /// The checkpoint proved against.
    pub checkpoint: CheckpointRow,
    /// The audit path, from the leaf's sibling up (RFC 6962 §2.1.1).
    pub path: Vec<Hash>,
}

impl std::fmt::Display for InclusionProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "record {}", self.seq)?;
        if let Some(b) = &self.body {
            writeln!(f, "body {b}")?;
        }
        writeln!(f, "leaf_hash {}", hex::encode(self.leaf_hash))?;
        writeln!(
            f,
            "checkpoint tree_size {} root {} time_ms {}",
            self.checkpoint.tree_size,
            hex::encode(&self.checkpoint.root),
            self.checkpoint.time_ms
        )?;
        writeln!(f, "checkpoint signing_key {}", self.checkpoint.key)?;
        writeln!(
            f,
            "checkpoint signature {}",
            hex::encode(&self.checkpoint.signature)
        )?;
        for (i, h) in self.path.iter().enumerate() {
            writeln!(f, "path[{i}] {}", hex::encode(h))?;
        }
        Ok(())
    }
}

/// The inclusion proof of record `seq` against the latest checkpoint that
/// covers it, checked before it is returned.
///
/// # Errors
/// [`AuditError::InvalidArgument`] when no checkpoint covers the record
/// yet (or it does not exist); [`AuditError::Corrupt`] when the stored
/// leaves do not give the checkpoint's root (run `verify`).
pub async fn prove(
    backend: &dyn AuditBackend,
    suite: Suite,
    seq: u64,
) -> Result<InclusionProof, AuditError> {
    let checkpoint = backend
        .checkpoints()
        .await?
        .into_iter()
        .rev()
        .find(|c| c.tree_size > seq)
        .ok_or_else(|| AuditError::InvalidArgument {
            field: "record",
            message: format!("no checkpoint covers record {seq} yet; wait for the next one"),
        })?;
    let stored = backend.leaf_hashes(checkpoint.tree_size).await?;
    let mut leaves = Vec::with_capacity(stored.len());
    for (i, (s, h)) in stored.into_iter().enumerate() {
        let h: Hash = h
            .as_slice()
            .try_into()
            .map_err(|_| AuditError::Corrupt(format!("leaf hash of record {s}")))?;
        if s != i as u64 {
            return Err(AuditError::Corrupt(format!("record {i} is missing")));
        }
        leaves.push(h);
    }
    if leaves.len() as u64 != checkpoint.tree_size {
        return Err(AuditError::Corrupt(format!(
            "the log has fewer records than its checkpoint of size {}",
            checkpoint.tree_size
        )));
    }
    let path = merkle::inclusion_proof(suite, &leaves, seq);
    let leaf = leaves[seq as usize];
    let root: Hash = checkpoint
        .root
        .as_slice()
        .try_into()
        .map_err(|_| AuditError::Corrupt("checkpoint root".into()))?;
    if !merkle::verify_inclusion(suite, &leaf, seq, checkpoint.tree_size, &path, &root) {
        return Err(AuditError::Corrupt(format!(
            "the records do not give the root of the checkpoint of size {}",
            checkpoint.tree_size
        )));
    }
    let body = backend
        .records(seq, 1)
        .await?
        .into_iter()
        .find(|r| r.seq == seq)
        .and_then(|r| r.body);
    Ok(InclusionProof {
        seq,
        body,
        leaf_hash: leaf,
        checkpoint,
        path,
    })
}
