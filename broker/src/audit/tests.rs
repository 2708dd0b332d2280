//! The audit store's test suite, run against both backends and both
//! suites: `suite!(name, open)` expands every test for one combination.

use std::sync::Arc;

use super::{
    AuditLog, Entry, Kind,
    check::{prove, verify_log},
    crypto::Suite,
    merkle,
    record::now_ms,
    store::{AuditBackend, Filter},
    testkit::{TestStore, sample_entry, sample_id},
};

async fn fill(log: &AuditLog, n: usize) {
    let key = log.subject_key().clone();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let log = log.clone();
            let e = sample_entry(i, &key);
            tokio::spawn(async move { log.record(e).await.unwrap() })
        })
        .collect();
    let mut seqs = Vec::new();
    for h in handles {
        seqs.push(h.await.unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>(), "one position each");
}

async fn verify(store: &TestStore, log_key: &str) -> super::check::VerifyReport {
    let backend = store.backend().await.unwrap();
    let r = verify_log(backend.as_ref(), store.config.suite, log_key)
        .await
        .unwrap();
    backend.close().await;
    r
}

/// Tampers with a copy of `store` and returns the first bad record
/// `verify` names.
async fn tampered(store: &TestStore, name: &str, sql: &str, key: &str) -> Option<u64> {
    let copy = store.copy(name).await.unwrap();
    copy.exec(sql).await.unwrap();
    let report = verify(&copy, key).await;
    let problem = report.problem.expect("tampering is found");
    problem.record
}

macro_rules! suite {
    ($name:ident, $store:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_records_get_one_position_each_and_verify() {
                let dir = tempfile::tempdir().unwrap();
                let store: TestStore = ($store)(dir.path());
                let log = store.open().await.unwrap();
                fill(&log, 300).await;
                log.checkpoint().await.unwrap();
                let key = log.public_key_hex();
                log.close().await;
                let report = verify(&store, &key).await;
                assert!(report.ok(), "{report}");
                assert_eq!(report.records, 300);
                assert_eq!(report.latest.unwrap().tree_size, 300);
                // A closed log takes no more records.
                assert!(log.record(Entry::new(Kind::Denied)).await.is_err());
                assert!(log.ready().await.is_err());
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn commits_move_waiting_keys_into_the_index_a_chunk_at_a_time() {
                let dir = tempfile::tempdir().unwrap();
                let store: TestStore = ($store)(dir.path());
                let log = store.open().await.unwrap();
                let n = 2 * super::super::INDEX_CHUNK as usize + 600;
                fill(&log, n).await;
                // Well within the tick's 5 s: only commits have moved keys,
                // a whole chunk at a time.
                let waiting = store
                    .count("SELECT COUNT(DISTINCT seq) FROM audit_index_recent")
                    .await
                    .unwrap();
                let chunk = super::super::INDEX_CHUNK as i64;
                assert!(waiting < n as i64 - chunk, "{waiting} of {n} records' keys wait");
                let indexed = store
                    .count(&format!("SELECT COUNT(DISTINCT seq) FROM {}", store.index_table()))
                    .await
                    .unwrap();
                assert!(indexed >= chunk, "{indexed} records' keys indexed");
                assert_eq!(indexed + waiting, n as i64, "each record's keys in one table");
                // Every record is found by its subject, wherever its keys are.
                let key = log.subject_key().clone();
                for i in 0..n {
                    let subject = key.subject(&sample_id(i, 0));
                    let found = log
                        .backend()
                        .query(&Filter {
                            subject: Some(subject),
                            limit: 10,
                            ..Filter::default()
                        })
                        .await
                        .unwrap();
                    assert_eq!(found.len(), 1, "the record of sample {i}");
                }
                let public = log.public_key_hex();
                log.close().await;
                let report = verify(&store, &public).await;
                assert!(report.ok(), "{report}");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn queries_filter_and_page() {
                let dir = tempfile::tempdir().unwrap();
                let store: TestStore = ($store)(dir.path());
                let log = store.open().await.unwrap();
                log.ready().await.unwrap();
                let key = log.subject_key().clone();
                for i in 0..60 {
                    log.record(sample_entry(i, &key)).await.unwrap();
                }
                let b = log.backend();
                let q = |f: Filter| {
                    let b = Arc::clone(b);
                    async move { b.query(&Filter { limit: 1000, ..f }).await.unwrap() }
                };
                let subject = key.subject(&sample_id(7, 1));
                let rows = q(Filter { subject: Some(subject), ..Default::default() }).await;
                assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![7]);
                let rows = q(Filter { operator: Some("case-worker-03".into()), ..Default::default() }).await;
                assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![55, 42, 29, 16, 3]);
                let rows = q(Filter { client: Some("10.0.0.1".into()), purpose: Some("dibao_review".into()), ..Default::default() }).await;
                assert!(rows.iter().all(|r| r.seq % 7 == 1 && r.seq % 3 == 1));
                assert_eq!(rows.len(), 3);
                // Source 05 timed out for i with (i + 5) % 17 == 0.
                let mut f = Filter { source: Some("source-05".into()), ..Default::default() };
                assert_eq!(q(f.clone()).await.len(), 60);
                f.source = Some("source_05".into());
                assert_eq!(q(f).await.len(), 0, "LIKE wildcards are escaped");
                let rows = q(Filter { kind: Some("denied".into()), ..Default::default() }).await;
                assert!(rows.is_empty());
                let rows = q(Filter { outcome: Some("ok".into()), from_ms: Some(0), to_ms: Some(now_ms() + 1000), ..Default::default() }).await;
                assert_eq!(rows.len(), 60);
                // Pages of 25, newest first, by cursor.
                let mut seen = Vec::new();
                let mut before = None;
                loop {
                    let page = b.query(&Filter { limit: 25, before_seq: before, ..Default::default() }).await.unwrap();
                    if page.is_empty() {
                        break;
                    }
                    before = page.last().map(|r| r.seq);
                    seen.extend(page.iter().map(|r| r.seq));
                }
                assert_eq!(seen, (0..60).rev().collect::<Vec<_>>());
                log.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keys_of_any_text_find_their_records() {
                // A batch's keys travel as one JSON text: quotes,
                // backslashes and other scripts must come out as they went in.
                let dir = tempfile::tempdir().unwrap();
                let store: TestStore = ($store)(dir.path());
                let log = store.open().await.unwrap();
                let key = log.subject_key().clone();
                let names = ["王\"小\\明", "o'brien", "tab\there", "[1,2]", "案例·审核"];
                let entries: Vec<_> = names.iter().enumerate().map(|(i, name)| {
                    let mut e = sample_entry(i, &key);
                    e.operator = (*name).into();
                    e
                }).collect();
                let ids: Vec<String> = entries.iter().map(|e| e.request_id.clone()).collect();
                // At once: most share a commit.
                for r in futures::future::join_all(entries.into_iter().map(|e| log.record(e))).await {
                    r.unwrap();
                }
                for (i, name) in names.iter().enumerate() {
                    let f = Filter { operator: Some((*name).into()), limit: 10, ..Default::default() };
                    let rows = log.backend().query(&f).await.unwrap();
                    let found: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
                    assert_eq!(found, [ids[i].as_str()], "{name:?}");
                    let subject = key.subject(&sample_id(i, 1));
                    let f = Filter { subject: Some(subject), limit: 10, ..Default::default() };
                    assert_eq!(log.backend().query(&f).await.unwrap().len(), 1, "{name:?}");
                }
                log.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_kind_of_tampering_names_the_first_bad_record() {
                let dir = tempfile::tempdir().unwrap();
                let store: TestStore = ($store)(dir.path());
                let log = store.open().await.unwrap();
                fill(&log, 120).await;
                log.checkpoint().await.unwrap();
                let key = log.public_key_hex();
                log.close().await;
                assert!(verify(&store, &key).await.ok());
                let index = store.index_table();
                let subject = format!("DELETE FROM {index} WHERE seq = 42 AND key LIKE 'subject:%'");
                let operator = format!("UPDATE {index} SET key = 'operator:someone' WHERE seq = 39 AND key LIKE 'operator:%'");
                let cases = [
                    ("field", "UPDATE audit_records SET operator = 'forged' WHERE seq = 40", 40),
                    ("body", "UPDATE audit_records SET body = REPLACE(body, '\"latency_ms\":', '\"latency_ms\":1') WHERE seq = 41", 41),
                    ("subject", subject.as_str(), 42),
                    ("operator", operator.as_str(), 39),
                    ("delete", "DELETE FROM audit_records WHERE seq = 43", 43),
                    ("renumbered", "DELETE FROM audit_records WHERE seq = 44; UPDATE audit_records SET seq = -seq WHERE seq > 44; UPDATE audit_records SET seq = -seq - 1 WHERE seq < 0", 44),
                    ("insert", "UPDATE audit_records SET seq = -seq - 1 WHERE seq >= 45; UPDATE audit_records SET seq = -seq WHERE seq < 0; INSERT INTO audit_records SELECT 45, time_ms, kind, request_id, client, operator, purpose, outcome, leaf_hash, body FROM audit_records WHERE seq = 10", 45),
                    ("swap", "UPDATE audit_records SET seq = -1 WHERE seq = 46; UPDATE audit_records SET seq = 46 WHERE seq = 90; UPDATE audit_records SET seq = 90 WHERE seq = -1", 46),
                    ("truncate", "DELETE FROM audit_records WHERE seq >= 100", 100),
                ];
                for (name, sql, first_bad) in cases {
                    assert_eq!(tampered(&store, name, sql, &key).await, Some(first_bad), "{name}");
                }
                // A log whose tail was cut is not written to.
                let cut = store.copy("cut").await.unwrap();
                cut.exec("DELETE FROM audit_records WHERE seq >= 100").await.unwrap();
                let e = cut.open().await.unwrap_err();
                assert!(e.to_string().contains("does not match its last record"), "{e}");
                // A forged checkpoint names no record but fails.
                let copy = store.copy("forged").await.unwrap();
                copy.exec("UPDATE audit_checkpoints SET time_ms = time_ms + 1").await.unwrap();
                let r = verify(&copy, &key).await;
                assert!(r.problem.unwrap().message.contains("not signed"));
                // The untouched log still verifies.
                assert!(verify(&store, &key).await.ok());
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn purge_keeps_the_log_verifiable() {
                let dir = tempfile::tempdir().unwrap();
                let store: TestStore = ($store)(dir.path());
                let log = store.open().await.unwrap();
                let key = log.subject_key().clone();
                let old = now_ms() - 4 * 366 * 86_400_000;
                for i in 0..30 {
                    let mut e = sample_entry(i, &key);
                    if i < 20 {
                        e.time_ms = old + i as i64;
                    }
                    log.record(e).await.unwrap();
                }
                let purged = log.purge(now_ms()).await.unwrap();
                assert_eq!((purged.records, purged.before), (20, 20));
                assert_eq!(purged.receipt.unwrap().seq, 30);
                // Nothing more to purge: nothing recorded.
                assert_eq!(log.purge(now_ms()).await.unwrap().records, 0);
                let gone = key.subject(&sample_id(3, 0));
                let f = Filter { subject: Some(gone), limit: 10, ..Default::default() };
                assert!(log.backend().query(&f).await.unwrap().is_empty());
                let kept = key.subject(&sample_id(25, 0));
                let f = Filter { subject: Some(kept), limit: 10, ..Default::default() };
                assert_eq!(log.backend().query(&f).await.unwrap().len(), 1);
                let pk = log.public_key_hex();
                log.close().await;
                let report = verify(&store, &pk).await;
                assert!(report.ok(), "{report}");
                assert_eq!((report.records, report.purged), (31, 20));
                // Purging more than a purge record covers is tampering.
                let bad = tampered(&store, "overpurged", "UPDATE audit_records SET body = NULL WHERE seq = 20", &pk).await;
                assert_eq!(bad, Some(20));
                // A purge clears these columns: a value put back is tampering.
                let bad = tampered(&store, "refilled", "UPDATE audit_records SET client = '10.9.9.9' WHERE seq = 7", &pk).await;
                assert_eq!(bad, Some(7));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn proofs_verify_against_the_checkpoint() {
                let dir = tempfile::tempdir().unwrap();
                let store: TestStore = ($store)(dir.path());
                let log = store.open().await.unwrap();
                fill(&log, 37).await;
                let suite = store.config.suite;
                assert!(prove(log.backend().as_ref(), suite, 5).await.is_err(), "no checkpoint yet");
                log.checkpoint().await.unwrap();
                for seq in [0, 5, 36] {
                    let p = prove(log.backend().as_ref(), suite, seq).await.unwrap();
                    let root: merkle::Hash = p.checkpoint.root.as_slice().try_into().unwrap();
                    assert!(merkle::verify_inclusion(suite, &p.leaf_hash, seq, 37, &p.path, &root));
                    assert_eq!(p.leaf_hash, merkle::leaf_hash(suite, p.body.unwrap().as_bytes()));
                }
                assert!(prove(log.backend().as_ref(), suite, 37).await.is_err());
                log.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_failed_commit_leaves_nothing_and_the_next_commits() {
                use super::super::store::{BatchPlan, Row};
                let dir = tempfile::tempdir().unwrap();
                let store: TestStore = ($store)(dir.path());
                let log = store.open().await.unwrap();
                fill(&log, 3).await;
                let backend = log.backend().clone();
                let row = |seq: u64| Row {
                    seq,
                    time_ms: 1,
                    kind: "denied".into(),
                    request_id: "r".into(),
                    client: "c".into(),
                    operator: String::new(),
                    purpose: String::new(),
                    outcome: "denied".into(),
                    leaf_hash: vec![7; 32],
                    body: Some("{}".into()),
                };
                // The record's row is written, then its keys fail (the
                // same key twice): the row must go too.
                let e = backend
                    .append(None, &mut |mut head, _| {
                        let seq = head.tree_size;
                        head.tree_size += 1;
                        Ok(BatchPlan {
                            rows: vec![row(seq)],
                            keys: vec![("client:c".into(), seq), ("client:c".into(), seq)],
                            head,
                            ..BatchPlan::default()
                        })
                    })
                    .await
                    .unwrap_err();
                assert!(e.to_string().to_lowercase().contains("unique"), "{e}");
                // A plan that fails before anything is written.
                let e = backend
                    .append(None, &mut |_, _| {
                        Err(super::super::AuditError::Unavailable("planned to fail".into()))
                    })
                    .await
                    .unwrap_err();
                assert!(e.to_string().contains("planned to fail"), "{e}");
                assert_eq!(backend.head().await.unwrap().tree_size, 3);
                let records = "SELECT COUNT(*) FROM audit_records";
                assert_eq!(store.count(records).await.unwrap(), 3);
                // The log goes on where it was.
                let key = log.subject_key().clone();
                let r = log.record(sample_entry(3, &key)).await.unwrap();
                assert_eq!(r.seq, 3);
                assert_eq!(store.count(records).await.unwrap(), 4);
                log.checkpoint().await.unwrap();
                let public = log.public_key_hex();
                log.close().await;
                let report = verify(&store, &public).await;
                assert!(report.ok(), "{report}");
                assert_eq!(report.records, 4);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_log_keeps_its_suite() {
                let dir = tempfile::tempdir().unwrap();
                let mut store: TestStore = ($store)(dir.path());
                let log = store.open().await.unwrap();
                log.close().await;
                store.config.suite = match store.config.suite {
                    Suite::Sha256Ed25519 => Suite::Sm3Sm2,
                    Suite::Sm3Sm2 => Suite::Sha256Ed25519,
                };
                let e = store.open().await.unwrap_err();
                assert!(e.to_string().starts_with("audit.suite"), "{e}");
            }
        }
    };
}

suite!(sqlite_sha256, |d: &std::path::Path| TestStore::sqlite(
    d,
    "a",
    Suite::Sha256Ed25519
));
suite!(sqlite_sm3, |d: &std::path::Path| TestStore::sqlite(
    d,
    "a",
    Suite::Sm3Sm2
));
suite!(postgres_sha256, |_: &std::path::Path| TestStore::postgres(
    Suite::Sha256Ed25519
));
suite!(postgres_sm3, |_: &std::path::Path| TestStore::postgres(
    Suite::Sm3Sm2
));

// SQLite keeps moved keys in sorted runs and merges them (store.rs,
// merge_window); PostgreSQL keeps one index table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_keys_merge_a_chunk_at_a_time_and_purge_with_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::sqlite(dir.path(), "a", Suite::Sha256Ed25519);
    let old = now_ms() - 4 * 366 * 86_400_000;
    let log = store.open().await.unwrap();
    let key = log.subject_key().clone();
    for i in 0..400 {
        let mut e = sample_entry(i, &key);
        if i < 150 {
            e.time_ms = old + i as i64;
        }
        assert_eq!(log.record(e).await.unwrap().seq, i as u64);
    }
    let pk = log.public_key_hex();
    // Every key is in a run after the close.
    log.close().await;
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM audit_index_recent")
            .await
            .unwrap(),
        0
    );
    // Made as many runs as a merge takes, of 400 / RUN_FANIN
    // records each, as that many moves would (when the writer
    // moved keys and merged runs on its own depends on time).
    let fanin = super::store::RUN_FANIN;
    store
        .exec(&format!(
            "INSERT INTO audit_index_runs (run, key, seq) \
                 SELECT 1000 + seq / {}, key, seq FROM audit_index_runs WHERE run < 1000; \
                 DELETE FROM audit_index_runs WHERE run < 1000; \
                 DELETE FROM audit_runs; \
                 INSERT INTO audit_runs (run, first_seq, end_seq, key_count) \
                 SELECT run, MIN(seq), MAX(seq) + 1, COUNT(*) FROM audit_index_runs GROUP BY run",
            400 / fanin
        ))
        .await
        .unwrap();
    let runs = || store.count("SELECT COUNT(*) FROM audit_runs");
    assert_eq!(runs().await.unwrap(), fanin as i64);
    let backend = store.backend().await.unwrap();
    let keys = backend.keys_between(0, 400).await.unwrap();
    // Three subjects, a client and an operator each.
    assert_eq!(keys.len(), 400 * 5);
    let found = |backend: &Arc<dyn AuditBackend>, i: usize| {
        let f = Filter {
            subject: Some(key.subject(&sample_id(i, 1))),
            limit: 10,
            ..Default::default()
        };
        let backend = backend.clone();
        async move { backend.query(&f).await.unwrap().len() }
    };
    let mut steps = 0;
    // Keys a run, and about a fifth of them at a step.
    let each = 400 / fanin as u64 * 5;
    while backend.merge_index(each / 5).await.unwrap() {
        steps += 1;
        assert!(steps < 100, "a merge ends");
        if steps == 2 {
            // Halfway, each key is in the new run or its old
            // one, never both.
            assert_eq!(runs().await.unwrap(), fanin as i64 + 1);
            assert_eq!(backend.keys_between(0, 400).await.unwrap(), keys);
            for i in (0..400).step_by(7) {
                assert_eq!(found(&backend, i).await, 1, "record {i}");
            }
        }
    }
    assert!((4..=7).contains(&steps), "{steps} steps");
    assert_eq!(runs().await.unwrap(), 1);
    assert_eq!(backend.keys_between(0, 400).await.unwrap(), keys);
    for i in (0..400).step_by(7) {
        assert_eq!(found(&backend, i).await, 1, "record {i}");
    }
    backend.close().await;
    // A purge takes the keys of the purged records out of the
    // run they are in.
    let log = store.open().await.unwrap();
    let purged = log.purge(now_ms()).await.unwrap();
    assert_eq!((purged.records, purged.before), (150, 150));
    let backend = log.backend().clone();
    let kept: Vec<_> = keys
        .iter()
        .filter(|(seq, _)| *seq >= 150)
        .cloned()
        .collect();
    assert_eq!(backend.keys_between(0, 400).await.unwrap(), kept);
    assert_eq!(found(&backend, 3).await, 0);
    assert_eq!(found(&backend, 153).await, 1);
    log.close().await;
    let report = verify(&store, &pk).await;
    assert!(report.ok(), "{report}");
    assert_eq!((report.records, report.purged), (401, 150));
}

/// A store that counts its pings and holds each until told to answer,
/// failing them when `down`.
#[derive(Debug)]
struct HeldPings {
    inner: Arc<dyn super::store::AuditBackend>,
    pings: std::sync::atomic::AtomicUsize,
    answer: tokio::sync::Semaphore,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl super::store::AuditBackend for HeldPings {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn ping(&self) -> Result<(), super::AuditError> {
        use std::sync::atomic::Ordering;
        self.pings.fetch_add(1, Ordering::SeqCst);
        self.answer.acquire().await.expect("open").forget();
        if self.down.load(Ordering::SeqCst) {
            return Err(super::AuditError::Unavailable("down for the test".into()));
        }
        self.inner.ping().await
    }
    async fn append(
        &self,
        prune_cutoff_ms: Option<i64>,
        plan: &mut (
                 dyn FnMut(
            super::store::Head,
            Option<u64>,
        ) -> Result<super::store::BatchPlan, super::AuditError>
                     + Send
             ),
    ) -> Result<(), super::AuditError> {
        self.inner.append(prune_cutoff_ms, plan).await
    }
    async fn claim_suite(&self, suite: &str) -> Result<String, super::AuditError> {
        self.inner.claim_suite(suite).await
    }
    async fn records(
        &self,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<super::store::Row>, super::AuditError> {
        self.inner.records(from_seq, limit).await
    }
    async fn keys_between(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, String)>, super::AuditError> {
        self.inner.keys_between(from, to).await
    }
    async fn merge_index(&self, chunk: u64) -> Result<bool, super::AuditError> {
        self.inner.merge_index(chunk).await
    }
    async fn checkpoints(&self) -> Result<Vec<super::store::CheckpointRow>, super::AuditError> {
        self.inner.checkpoints().await
    }
    async fn leaf_hashes(&self, upto: u64) -> Result<Vec<(u64, Vec<u8>)>, super::AuditError> {
        self.inner.leaf_hashes(upto).await
    }
    async fn query(
        &self,
        filter: &super::store::Filter,
    ) -> Result<Vec<super::store::Row>, super::AuditError> {
        self.inner.query(filter).await
    }
    async fn head(&self) -> Result<super::store::Head, super::AuditError> {
        self.inner.head().await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

// One thread: every caller spawned has run up to the ping (and waits on
// it) before the test's own task runs again, so no timing is assumed.
#[tokio::test(flavor = "current_thread")]
async fn callers_arriving_during_a_ping_share_its_answer() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::sqlite(dir.path(), "pings", Suite::Sha256Ed25519);
    let held = Arc::new(HeldPings {
        inner: store.backend().await.unwrap(),
        pings: 0.into(),
        answer: tokio::sync::Semaphore::new(0),
        down: false.into(),
    });
    let log = AuditLog::with_backend(held.clone(), &store.config)
        .await
        .unwrap();
    let ready_all = |n: usize| {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..n {
            let log = log.clone();
            calls.spawn(async move { log.ready().await });
        }
        calls
    };
    // 20 callers while one ping is held: one ping answers them all.
    let mut calls = ready_all(20);
    while held.pings.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    held.answer.add_permits(1);
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(held.pings.load(Ordering::SeqCst), 1);
    // A caller after that answer asks the store again; when the store is
    // down, every caller sharing the ping is refused.
    held.down.store(true, Ordering::SeqCst);
    let mut calls = ready_all(10);
    while held.pings.load(Ordering::SeqCst) == 1 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    held.answer.add_permits(1);
    while let Some(r) = calls.join_next().await {
        let e = r.unwrap().unwrap_err();
        assert!(e.to_string().contains("down for the test"), "{e}");
    }
    assert_eq!(held.pings.load(Ordering::SeqCst), 2);
}

/// The group commit's wait ([`super::Linger`]), fed batches at chosen
/// times: it waits only after a batch with company, and only when the
/// arrival rate makes another record likely within the wait.
mod linger {
    use std::time::{Duration, Instant};

    use super::super::Linger;

    const MS: Duration = Duration::from_millis(1);

    /// Batches of `records` taken every `every`, each committing in
    /// `took`; the linger after the last.
    fn after(batches: &[(usize, Duration, Duration)]) -> Linger {
        let mut linger = Linger::default();
        let mut at = Instant::now();
        for &(records, every, took) in batches {
            at += every;
            linger.committed(records, at, took);
        }
        linger
    }

    #[test]
    fn nothing_is_awaited_before_the_first_commit_or_after_a_lone_record() {
        assert_eq!(Linger::default().wait(), Duration::ZERO);
        // Busy (4,000 records a second) but the last batch was alone.
        let l = after(&[(20, 5 * MS, 4 * MS), (20, 5 * MS, 4 * MS), (1, 5 * MS, MS)]);
        assert_eq!(l.wait(), Duration::ZERO);
    }

    #[test]
    fn many_callers_close_together_wait_for_each_other() {
        // 25 records every 7 ms (about 3,600 a second), commits of 5 ms:
        // the wait is the commit's time, capped at 2 ms.
        let l = after(&[(25, 7 * MS, 5 * MS); 4]);
        assert_eq!(l.wait(), 2 * MS);
        let l = after(&[(25, 7 * MS, 5 * MS), (25, 7 * MS, MS)]);
        assert_eq!(l.wait(), MS);
    }

    #[test]
    fn two_records_together_by_chance_at_a_low_rate_do_not_wait() {
        // About 375 records a second, one at a time, and then two in one
        // batch: a wait of the commit's 1.2 ms would expect 0.45 records.
        let (every, took) = (Duration::from_micros(2_700), Duration::from_micros(1_200));
        let mut batches = vec![(1, every, took); 8];
        batches.push((2, 2 * every, took));
        let l = after(&batches);
        assert!(l.rate > 300.0 && l.rate < 450.0, "{}", l.rate);
        assert_eq!(l.wait(), Duration::ZERO);
    }

    #[test]
    fn the_rate_follows_the_load_down() {
        // Busy, then a batch of two after a second of quiet.
        let mut batches = vec![(25, 7 * MS, 2 * MS); 6];
        let busy = after(&batches);
        assert_eq!(busy.wait(), 2 * MS);
        batches.push((2, Duration::from_secs(1), 2 * MS));
        let quiet = after(&batches);
        assert!(quiet.rate < busy.rate, "{} {}", quiet.rate, busy.rate);
        // Still expected within the wait after one quiet gap (smoothed)...
        assert_eq!(quiet.wait(), 2 * MS);
        // ...not after a few.
        batches.extend([(2, Duration::from_secs(1), 2 * MS); 12]);
        assert_eq!(after(&batches).wait(), Duration::ZERO);
    }
}

// Two brokers on one SQLite file: a commit plans on the head its store's
// last commit left (sqlite.rs, append_known); after the other's commit
// that head has moved, and the commit is rolled back and written again on
// the stored head. Planned on the stale head, it would reuse a position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logs_on_one_sqlite_file_take_turns_on_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::sqlite(dir.path(), "a", Suite::Sha256Ed25519);
    let (a, b) = (store.open().await.unwrap(), store.open().await.unwrap());
    let key = a.subject_key().clone();
    for i in 0..40 {
        let log = if i % 3 == 2 { &b } else { &a };
        let receipt = log.record(sample_entry(i, &key)).await.unwrap();
        assert_eq!(receipt.seq, i as u64, "record {i}");
    }
    let public = a.public_key_hex();
    a.close().await;
    b.close().await;
    let report = verify(&store, &public).await;
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, 40);
}

#[tokio::test]
async fn a_new_sqlite_file_has_8_kib_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::sqlite(dir.path(), "a", Suite::Sha256Ed25519);
    let log = store.open().await.unwrap();
    let key = log.subject_key().clone();
    log.record(sample_entry(0, &key)).await.unwrap();
    log.close().await;
    assert_eq!(
        crate::store::tests::page_size(&store.config.sqlite_path()).await,
        8192
    );
}
