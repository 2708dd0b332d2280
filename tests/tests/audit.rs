//! The audit log's "done when" tests (issue 4):
//! - 10,000 records, then each kind of tampering in SQL: `verify` names the
//!   first bad record; both backends, both suites (the audit layer driven
//!   directly, as real verifications of 10,000 households would take long);
//! - through the real broker process: no identity number in clear in any
//!   audit table or in the broker's log, yet a query by the number finds
//!   every record of it;
//! - the audit store stopped mid-run: every later request is `UNAVAILABLE`
//!   and the simulated agencies receive zero calls.

use std::time::Duration;

use hedui::audit::{
    AuditLog,
    check::verify_log,
    crypto::Suite,
    merkle,
    record::{FORMAT, Record},
    testkit::{TestStore, postgres_url, sample_entry},
};
use hedui_mock_agencies::{
    control::proto::{
        ResetStatsRequest, agency_control_service_client::AgencyControlServiceClient,
    },
    population::{Population, PopulationConfig},
    truth::TruthPolicy,
};
use hedui_proto::v1::{
    AuditFilter, AuditRecordKind, ExportFormat, ExportRecordsRequest, GetChainStatusRequest,
    GetReportRequest, GetSubjectAccessHistoryRequest, Purpose, QueryRecordsRequest,
    VerificationRequest, VerifyRequest,
};
use hedui_tests::{Agencies, Broker, SEED, TcpProxy, china_today, total_lookups};
use tonic::Code;

const RECORDS: usize = 10_000;

async fn write(log: &AuditLog, n: usize) {
    let key = log.subject_key().clone();
    // 64 writers at a time, as a busy broker would.
    let mut next = 0;
    while next < n {
        let wave: Vec<_> = (next..(next + 64).min(n))
            .map(|i| {
                let log = log.clone();
                let e = sample_entry(i, &key);
                tokio::spawn(async move { log.record(e).await.expect("recorded") })
            })
            .collect();
        for w in wave {
            w.await.unwrap();
        }
        next += 64;
    }
}

async fn first_bad(store: &TestStore, public_key: &str) -> Result<(), Option<u64>> {
    let backend = store.backend().await.unwrap();
    let report = verify_log(backend.as_ref(), store.config.suite, public_key)
        .await
        .unwrap();
    backend.close().await;
    match report.problem {
        None => {
            assert_eq!(report.records, RECORDS as u64);
            Ok(())
        }
        Some(p) => Err(p.record),
    }
}

fn blob(store: &TestStore, bytes: &[u8]) -> String {
    match store.kind() {
        "sqlite" => format!("X'{}'", hex::encode(bytes)),
        _ => format!("decode('{}', 'hex')", hex::encode(bytes)),
    }
}

async fn ten_thousand_then_tamper(store: TestStore) {
    let log = store.open().await.unwrap();
    write(&log, RECORDS).await;
    log.checkpoint().await.unwrap();
    let public_key = log.public_key_hex();
    let suite = log.suite();
    log.close().await;
    assert_eq!(first_bad(&store, &public_key).await, Ok(()), "untouched");

    // A record crafted to fit (right position, right link), inserted at
    // 5000 with everything after it moved up.
    let crafted = {
        let backend = store.backend().await.unwrap();
        let before = backend.records(4999, 1).await.unwrap().remove(0);
        backend.close().await;
        let mut entry = sample_entry(
            1,
            &hedui::audit::crypto::SubjectKey::new(suite, None).unwrap(),
        );
        entry.operator = "intruder".into();
        let record = Record {
            v: FORMAT,
            seq: 5000,
            prev: hex::encode(&before.leaf_hash),
            entry,
        };
        let body = record.canonical();
        let leaf = merkle::leaf_hash(suite, &body);
        let e = &record.entry;
        format!(
            "UPDATE audit_records SET seq = -seq - 1 WHERE seq >= 5000; \
             UPDATE audit_records SET seq = -seq WHERE seq < 0; \
             INSERT INTO audit_records VALUES (5000, {}, 'verification', '{}', '{}', '{}', '{}', 'ok', {}, '{}')",
            e.time_ms,
            e.request_id,
            e.client,
            e.operator,
            e.purpose,
            blob(&store, &leaf),
            String::from_utf8(body).unwrap().replace('\'', "''"),
        )
    };
    let cases: Vec<(&str, String, u64)> = vec![
        ("change a field", "UPDATE audit_records SET purpose = 'education_assistance' WHERE seq = 1234".into(), 1234),
        ("change a body", "UPDATE audit_records SET body = REPLACE(body, ',false,1]', ',false,0]') WHERE seq = 2345".into(), 2345),
        ("delete a row", "DELETE FROM audit_records WHERE seq = 3456".into(), 3456),
        ("insert a row", "UPDATE audit_records SET seq = -seq - 1 WHERE seq >= 4567; UPDATE audit_records SET seq = -seq WHERE seq < 0; INSERT INTO audit_records SELECT 4567, time_ms, kind, request_id, client, operator, purpose, outcome, leaf_hash, body FROM audit_records WHERE seq = 17".into(), 4567),
        ("insert a crafted row", crafted, 5000),
        ("swap two rows", "UPDATE audit_records SET seq = -1 WHERE seq = 6789; UPDATE audit_records SET seq = 6789 WHERE seq = 6790; UPDATE audit_records SET seq = 6790 WHERE seq = -1".into(), 6789),
        ("cut the tail", "DELETE FROM audit_records WHERE seq >= 9000".into(), 9000),
    ];
    for (i, (kind, sql, expected)) in cases.into_iter().enumerate() {
        let copy = store.copy(&format!("tampered{i}")).await.unwrap();
        copy.exec(&sql)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(
            first_bad(&copy, &public_key).await,
            Err(Some(expected)),
            "{} {}: {kind}",
            store.kind(),
            suite
        );
    }
    assert_eq!(
        first_bad(&store, &public_key).await,
        Ok(()),
        "untouched after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_sqlite_sha256_ed25519() {
    let dir = tempfile::tempdir().unwrap();
    ten_thousand_then_tamper(TestStore::sqlite(dir.path(), "log", Suite::Sha256Ed25519)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_sqlite_sm3_sm2() {
    let dir = tempfile::tempdir().unwrap();
    ten_thousand_then_tamper(TestStore::sqlite(dir.path(), "log", Suite::Sm3Sm2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_postgres_sha256_ed25519() {
    ten_thousand_then_tamper(TestStore::postgres(Suite::Sha256Ed25519)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_postgres_sm3_sm2() {
    ten_thousand_then_tamper(TestStore::postgres(Suite::Sm3Sm2)).await;
}

// === Through the broker process ===

fn request(applicant_id: &str) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant_id.to_owned(),
        consent_reference: "SQ-2026-000123".into(),
        purpose: Purpose::DibaoApplication as i32,
        operator_id: "case-worker-07".into(),
        deadline: None,
        max_age: None,
        declared_member_ids: Vec::new(),
    }
}

/// Every text and blob in every audit table, as text.
async fn dump_audit_tables(path: &std::path::Path) -> String {
    use sqlx::{Row, sqlite::SqliteConnectOptions};
    let pool =
        sqlx::SqlitePool::connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
            .await
            .unwrap();
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'audit_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.len() >= 5, "{tables:?}");
    let mut out = String::new();
    for (t,) in tables {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {t}")))
            .fetch_all(&pool)
            .await
            .unwrap();
        for row in rows {
            for i in 0..row.len() {
                if let Ok(Some(s)) = row.try_get::<Option<String>, _>(i) {
                    out.push_str(&s);
                } else if let Ok(Some(b)) = row.try_get::<Option<Vec<u8>>, _>(i) {
                    out.push_str(&String::from_utf8_lossy(&b));
                } else if let Ok(v) = row.try_get::<i64, _>(i) {
                    out.push_str(&v.to_string());
                }
                out.push('\u{1f}');
            }
            out.push('\n');
        }
    }
    pool.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identity_number_in_clear_yet_queries_by_number_find_every_record() {
    const HOUSEHOLDS: usize = 40;
    let today = china_today();
    let agencies = Agencies::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit_db = dir.path().join("audit.db");
    let log_file = dir.path().join("hedui.log");
    let broker = Broker::start_logged(
        &agencies,
        &format!(
            "[audit]\npath = {audit_db:?}\nhmac_key = \"a test hmac key of at least 32 bytes\"\n"
        ),
        &log_file,
    )
    .await
    .unwrap();
    let mut client = broker.client().await.unwrap();
    let mut audit = broker.audit_client().await.unwrap();
    let truths = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: today.parse().unwrap(),
    })
    .truth(&TruthPolicy::default());

    // Every household once; the first one three times, once read back.
    let mut report_ids = Vec::new();
    for (i, t) in truths.iter().enumerate() {
        let times = if i == 0 { 3 } else { 1 };
        for _ in 0..times {
            let report = client
                .verify(VerifyRequest {
                    request: Some(request(&t.applicant_id)),
                })
                .await
                .unwrap()
                .into_inner()
                .report
                .unwrap();
            if i == 0 {
                report_ids.push(report.report_id);
            }
        }
    }
    client
        .get_report(GetReportRequest {
            report_id: report_ids[0].clone(),
        })
        .await
        .unwrap();
    // Refused: a wrong check character (the applicant of household 1,
    // altered) and an id typed into the operator field.
    let applicant = truths[0].applicant_id.clone();
    let mut wrong = truths[1].applicant_id.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let refused = client
        .verify(VerifyRequest {
            request: Some(request(&wrong)),
        })
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
    let mut r = request(&applicant);
    r.operator_id = format!("{applicant}\n");
    let refused = client.verify(VerifyRequest { request: Some(r) }).await;
    assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);

    // The first household's members, by number: 3 verifications, 1 read,
    // 1 refusal.
    let found = audit
        .query_records(QueryRecordsRequest {
            auditor_id: "inspector-1".into(),
            filter: Some(AuditFilter {
                subject_id: applicant.clone(),
                ..Default::default()
            }),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let kinds: Vec<i32> = found.iter().map(|r| r.kind).collect();
    let count = |k: AuditRecordKind| kinds.iter().filter(|x| **x == k as i32).count();
    assert_eq!(count(AuditRecordKind::Verification), 3, "{kinds:?}");
    assert_eq!(count(AuditRecordKind::ReportRead), 1, "{kinds:?}");
    assert_eq!(count(AuditRecordKind::Denied), 1, "{kinds:?}");
    // The first verification asked every source; the two after it were
    // served from the cache, and their records say so: serving from the
    // cache is a disclosure too, found by the same number.
    let mut from_cache = Vec::new();
    for r in found
        .iter()
        .filter(|r| r.kind == AuditRecordKind::Verification as i32)
    {
        assert_eq!(r.sources.len(), 28);
        assert_eq!(r.purpose, "dibao_application");
        assert_eq!(r.client, "127.0.0.1");
        from_cache.push(r.sources.iter().filter(|s| s.cache_hit).count());
    }
    from_cache.sort_unstable();
    assert_eq!(from_cache, vec![0, 28, 28], "cache hits per verification");
    // Every other member of the household finds the same verifications.
    for member in &truths[0].member_ids {
        let n = audit
            .query_records(QueryRecordsRequest {
                auditor_id: "inspector-1".into(),
                filter: Some(AuditFilter {
                    subject_id: member.clone(),
                    kind: AuditRecordKind::Verification as i32,
                    ..Default::default()
                }),
                page_size: 100,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .records
            .len();
        assert_eq!(n, 3, "member of household 0");
    }
    // The household's own view, and the auditor's queries recorded (but
    // not shown to the household).
    let history = audit
        .get_subject_access_history(GetSubjectAccessHistoryRequest {
            subject_id: applicant.clone(),
            requester_id: "self-service".into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .accesses;
    assert_eq!(history.len(), 5);
    assert!(
        history
            .iter()
            .all(|a| a.operator_id.is_empty() && a.kind != AuditRecordKind::AuditQuery as i32)
    );
    // Paged two at a time, the same five: the auditors' queries among
    // them (hidden from the household) do not shorten a page.
    let mut paged = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = audit
            .get_subject_access_history(GetSubjectAccessHistoryRequest {
                subject_id: applicant.clone(),
                requester_id: "self-service".into(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            page.accesses.len() == 2 || page.next_page_token.is_empty(),
            "a page of {} before the end",
            page.accesses.len()
        );
        paged.extend(page.accesses);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, history);
    let queries = audit
        .query_records(QueryRecordsRequest {
            auditor_id: "inspector-2".into(),
            filter: Some(AuditFilter {
                kind: AuditRecordKind::AuditQuery as i32,
                ..Default::default()
            }),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(queries.len() >= 6, "{}", queries.len());
    assert!(queries.iter().any(|q| q.operator_id == "inspector-1"));
    // Exports: every verification, in both formats.
    for (format, min_lines) in [
        (ExportFormat::JsonLines, HOUSEHOLDS + 2),
        (ExportFormat::Csv, HOUSEHOLDS + 3),
    ] {
        let mut stream = audit
            .export_records(ExportRecordsRequest {
                auditor_id: "inspector-1".into(),
                filter: Some(AuditFilter {
                    kind: AuditRecordKind::Verification as i32,
                    ..Default::default()
                }),
                format: format as i32,
            })
            .await
            .unwrap()
            .into_inner();
        let mut text = String::new();
        while let Some(c) = stream.message().await.unwrap() {
            text.push_str(std::str::from_utf8(&c.data).unwrap());
        }
        assert_eq!(text.lines().count(), min_lines, "{format:?}");
    }
    let status = audit
        .get_chain_status(GetChainStatusRequest {
            auditor_id: "inspector-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.verified, "{}", status.problem);
    let bad = audit
        .query_records(QueryRecordsRequest {
            auditor_id: "inspector-1".into(),
            filter: Some(AuditFilter {
                subject_id: wrong.clone(),
                ..Default::default()
            }),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().starts_with("filter.subject_id"),
        "{}",
        bad.message()
    );
    broker.terminate().await;

    // No identity number of anyone in the population, in clear, in any
    // audit table or in the broker's log.
    let tables = dump_audit_tables(&audit_db).await;
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("audit log open"), "the log was captured");
    let mut ids: Vec<&str> = truths
        .iter()
        .flat_map(|t| t.member_ids.iter().map(String::as_str))
        .collect();
    ids.push(&wrong);
    for id in ids {
        assert!(!tables.contains(id), "{id} in an audit table");
        assert!(!log.contains(id), "{id} in the broker's log");
        // Nor its first 14 characters (address code and birth date).
        assert!(
            !tables.contains(&id[..14]),
            "{} in an audit table",
            &id[..14]
        );
    }
    agencies.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_audit_store_fails_closed_with_zero_source_calls() {
    let today = china_today();
    let agencies = Agencies::start(20, &today, &[]).await.unwrap();
    let store = TestStore::postgres(Suite::Sha256Ed25519);
    // The broker reaches PostgreSQL only through a proxy the test can cut.
    let url = postgres_url();
    let target = url
        .split('@')
        .nth(1)
        .and_then(|h| h.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_owned();
    let proxy = TcpProxy::start(target.clone()).await.unwrap();
    let proxied = url.replacen(&target, &proxy.addr.to_string(), 1);
    let broker = Broker::start(
        &agencies,
        &format!(
            "[audit]\nbackend = \"postgres\"\nurl = {proxied:?}\nschema = {:?}\n",
            store.config.schema
        ),
    )
    .await
    .unwrap();
    let mut client = broker.client().await.unwrap();
    let truths = Population::generate(&PopulationConfig {
        seed: SEED,
        households: 20,
        today: today.parse().unwrap(),
    })
    .truth(&TruthPolicy::default());

    for t in &truths[..3] {
        client
            .verify(VerifyRequest {
                request: Some(request(&t.applicant_id)),
            })
            .await
            .expect("verified while the store is up");
    }
    assert!(total_lookups(&agencies.control).await.unwrap() > 0);

    proxy.stop();
    let mut control = AgencyControlServiceClient::connect(agencies.control.clone())
        .await
        .unwrap();
    control
        .reset_stats(ResetStatsRequest::default())
        .await
        .unwrap();
    for t in &truths[3..15] {
        let status = tokio::time::timeout(
            Duration::from_secs(20),
            client.verify(VerifyRequest {
                request: Some(request(&t.applicant_id)),
            }),
        )
        .await
        .expect("answered in time")
        .expect_err("no report without its audit record");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("audit"), "{}", status.message());
    }
    assert_eq!(
        total_lookups(&agencies.control).await.unwrap(),
        0,
        "no source was called"
    );
    broker.stop().await;
    agencies.stop().await;
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_cli_verifies_names_the_bad_record_and_proves() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::sqlite(dir.path(), "log", Suite::Sha256Ed25519);
    let log = store.open().await.unwrap();
    write(&log, 300).await;
    log.close().await;
    let db = store.config.sqlite_path();
    let hedui = hedui_tests::workspace_bin("hedui");
    let run = |args: Vec<String>| {
        let hedui = hedui.clone();
        async move {
            let out = tokio::process::Command::new(hedui)
                .args(&args)
                .env("RUST_LOG", "error")
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    };
    let db_arg = db.display().to_string();
    let (code, out) = run(vec![
        "audit".into(),
        "verify".into(),
        "--audit-db".into(),
        db_arg.clone(),
    ])
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("ok: 300 records"), "{out}");
    let (code, out) = run(vec![
        "audit".into(),
        "prove".into(),
        "123".into(),
        "--audit-db".into(),
        db_arg.clone(),
    ])
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("record 123\n"), "{out}");
    assert!(
        out.contains("path[8] "),
        "a tree of 300 has paths of 9: {out}"
    );

    store
        .exec("UPDATE audit_records SET client = 'someone else' WHERE seq = 77")
        .await
        .unwrap();
    let (code, out) = run(vec![
        "audit".into(),
        "verify".into(),
        "--audit-db".into(),
        db_arg,
    ])
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("FAILED: first bad record 77: column client"),
        "{out}"
    );
}

/// `StreamVerify` tells the members and each source's outcome before the
/// report: its opening record is committed before the first event leaves,
/// and the verification record follows with the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sends_nothing_before_its_opening_record() {
    let today = china_today();
    let agencies = Agencies::start(10, &today, &[]).await.unwrap();
    let broker = Broker::start(&agencies, "").await.unwrap();
    let mut client = broker.client().await.unwrap();
    let mut audit = broker.audit_client().await.unwrap();
    let truth = Population::generate(&PopulationConfig {
        seed: SEED,
        households: 10,
        today: today.parse().unwrap(),
    })
    .truth(&TruthPolicy::default())
    .into_iter()
    .find(|t| t.member_ids.len() > 1)
    .expect("a household of several");
    let query = |kind: AuditRecordKind| QueryRecordsRequest {
        auditor_id: "inspector-1".into(),
        filter: Some(AuditFilter {
            subject_id: truth.applicant_id.clone(),
            kind: kind as i32,
            ..Default::default()
        }),
        page_size: 10,
        page_token: String::new(),
    };
    let mut stream = client
        .stream_verify(hedui_proto::v1::StreamVerifyRequest {
            request: Some(request(&truth.applicant_id)),
        })
        .await
        .unwrap()
        .into_inner();
    // The first event names the members: its record is already there.
    let first = stream.message().await.unwrap().expect("a first event");
    let Some(hedui_proto::v1::stream_verify_response::Event::HouseholdResolved(h)) = first.event
    else {
        panic!("the household comes first: {first:?}");
    };
    let started = audit
        .query_records(query(AuditRecordKind::VerificationStarted))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].request_id, h.report_id);
    assert_eq!(started[0].sources.len(), 28);
    assert!(started[0].sources.iter().all(|s| s.status == "asked"));
    assert!(started[0].report_digest.is_empty(), "no report yet");
    // Every member finds it by number.
    for member in &truth.member_ids {
        let mut q = query(AuditRecordKind::VerificationStarted);
        q.filter.as_mut().unwrap().subject_id = member.clone();
        let n = audit.query_records(q).await.unwrap().into_inner().records;
        assert_eq!(n.len(), 1, "member {} not recorded", &member[..6]);
    }
    let mut report = None;
    while let Some(m) = stream.message().await.unwrap() {
        if let Some(hedui_proto::v1::stream_verify_response::Event::Report(r)) = m.event {
            report = Some(r);
        }
    }
    let report = report.expect("the stream ends with the report");
    let done = audit
        .query_records(query(AuditRecordKind::Verification))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].request_id, report.report_id);
    assert!(done[0].seq > started[0].seq);
    assert!(!done[0].report_digest.is_empty());
    broker.stop().await;
    agencies.stop().await;
}
