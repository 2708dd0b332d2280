//! The hostile input catalogue (issue 10 item 5): bad input at every
//! interface the broker has today, each row with what must come back.
//!
//! - **gRPC** (`VerificationService`, `AuditService`): each row names the
//!   request, the status code and a substring naming the field. After every
//!   row nothing was written: no lookup reached the simulated agencies, no
//!   report was stored, and the audit log holds nothing new but, for a
//!   refused verification, the one `denied` record that docs/audit.md says
//!   is written by design (its detail naming the field too).
//! - **The command line** (the real `hedui` binary): each row names the
//!   arguments, and the process exits non-zero with a message naming the
//!   flag or field, and leaves no file in its working directory.
//! - **Configuration** (`hedui serve --config FILE`): each row is a whole
//!   file; the process exits non-zero naming the key and creates no
//!   database file in its working directory.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use hedui_mock_agencies::{
    control::proto::{
        ResetStatsRequest, agency_control_service_client::AgencyControlServiceClient,
    },
    population::{Population, PopulationConfig},
};
use hedui_proto::{
    resident_id,
    v1::{
        AuditFilter, ExportRecordsRequest, GetChainStatusRequest, GetReportRequest,
        GetSubjectAccessHistoryRequest, Purpose, QueryRecordsRequest, StreamVerifyRequest,
        VerificationRequest, VerifyRequest,
    },
};
use hedui_tests::{Agencies, BrokerProcess, SEED, china_today, total_lookups, workspace_bin};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use tonic::Code;

const HOUSEHOLDS: usize = 20;
/// Longest a process of a command-line or configuration row may run.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

// === What was written ===

/// The places a request could write to: the agencies' lookup counters, the
/// report store and the audit log of the broker.
struct Sinks {
    control: String,
    reports: SqlitePool,
    audit: SqlitePool,
}

/// One audit record as stored: its kind, outcome and detail.
#[derive(Debug, Clone)]
struct AuditRow {
    kind: String,
    outcome: String,
    detail: String,
}

impl Sinks {
    async fn open(control: &str, dir: &Path) -> Self {
        let pool = |file: &str| {
            let path = dir.join(file);
            async move {
                SqlitePool::connect_with(
                    SqliteConnectOptions::new().filename(&path).read_only(true),
                )
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            }
        };
        Sinks {
            control: control.to_owned(),
            reports: pool("reports.db").await,
            audit: pool("reports-audit.db").await,
        }
    }

    async fn reset_lookups(&self) {
        AgencyControlServiceClient::connect(self.control.clone())
            .await
            .unwrap()
            .reset_stats(ResetStatsRequest::default())
            .await
            .unwrap();
        assert_eq!(total_lookups(&self.control).await.unwrap(), 0);
    }

    async fn lookups(&self) -> u64 {
        total_lookups(&self.control).await.unwrap()
    }

    async fn reports(&self) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM reports")
            .fetch_one(&self.reports)
            .await
            .unwrap();
        n
    }

    async fn audit_rows(&self) -> Vec<AuditRow> {
        let rows: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT kind, outcome, body FROM audit_records ORDER BY seq")
                .fetch_all(&self.audit)
                .await
                .unwrap();
        rows.into_iter()
            .map(|(kind, outcome, body)| {
                let detail = body
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["entry"]["detail"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                AuditRow {
                    kind,
                    outcome,
                    detail,
                }
            })
            .collect()
    }

    /// Checks that since `before` nothing was written but, when `denied`
    /// names a field, one `denied` record naming it.
    async fn assert_nothing_written(&self, row: &str, before: usize, denied: Option<&str>) {
        assert_eq!(self.lookups().await, 0, "{row}: a source was asked");
        assert_eq!(self.reports().await, 0, "{row}: a report was stored");
        let rows = self.audit_rows().await;
        let new = &rows[before..];
        match denied {
            None => assert!(new.is_empty(), "{row}: audit records written: {new:?}"),
            Some(field) => {
                assert_eq!(new.len(), 1, "{row}: one denied record expected: {new:?}");
                assert_eq!(new[0].kind, "denied", "{row}: {new:?}");
                assert_eq!(new[0].outcome, "invalid_argument", "{row}: {new:?}");
                assert!(
                    new[0].detail.contains(field),
                    "{row}: the denied record's detail {:?} does not name {field}",
                    new[0].detail
                );
            }
        }
    }
}

// === gRPC: VerificationService ===

/// `id` with each character replaced by what `f` makes of it.
fn mangle(id: &str, f: impl Fn(usize, char) -> String) -> String {
    id.chars().enumerate().map(|(i, c)| f(i, c)).collect()
}

/// A valid number whose check character is `X`.
fn id_ending_in_x() -> String {
    (0..1000)
        .map(|seq| resident_id::compose("511703", 1975, 6, 15, seq))
        .find(|id| id.ends_with('X'))
        .expect("one in eleven ends in X")
}

/// The same number with another check character.
fn wrong_check(id: &str) -> String {
    let last = id.chars().last().unwrap();
    let other = if last == '0' { '1' } else { '0' };
    format!("{}{other}", &id[..17])
}

/// A verification row: a change to a good request, what must come back,
/// and whether the refusal is recorded as `denied` (every refusal the
/// broker itself makes; not one the transport makes before it).
struct VerifyRow {
    name: String,
    request: Option<VerificationRequest>,
    code: Code,
    names: &'static str,
    denied: bool,
}

fn verify_rows(good: &VerificationRequest, members: &[String]) -> Vec<VerifyRow> {
    let mut rows = Vec::new();
    let mut add =
        |name: &str, code: Code, names: &'static str, change: &dyn Fn(&mut VerificationRequest)| {
            let mut r = good.clone();
            change(&mut r);
            rows.push(VerifyRow {
                name: name.to_owned(),
                request: Some(r),
                code,
                names,
                denied: code == Code::InvalidArgument,
            });
        };
    let id = good.applicant_id.clone();
    let invalid = Code::InvalidArgument;
    // The applicant's identity number.
    add("applicant_id empty", invalid, "applicant_id", &|r| {
        r.applicant_id.clear();
    });
    add(
        "applicant_id bad check digit",
        invalid,
        "applicant_id",
        &|r| {
            r.applicant_id = wrong_check(&id);
        },
    );
    add(
        "applicant_id 17 characters",
        invalid,
        "applicant_id",
        &|r| {
            r.applicant_id = id[..17].to_owned();
        },
    );
    add(
        "applicant_id 19 characters",
        invalid,
        "applicant_id",
        &|r| {
            r.applicant_id = format!("{id}0");
        },
    );
    add(
        "applicant_id with a space before",
        invalid,
        "applicant_id",
        &|r| {
            r.applicant_id = format!(" {id}");
        },
    );
    add(
        "applicant_id born 30 February",
        invalid,
        "applicant_id",
        &|r| {
            r.applicant_id = resident_id::compose("511703", 1990, 2, 30, 12);
        },
    );
    add(
        "applicant_id born in month 13",
        invalid,
        "applicant_id",
        &|r| {
            r.applicant_id = resident_id::compose("511703", 1990, 13, 1, 12);
        },
    );
    add("applicant_id born in 2999", invalid, "applicant_id", &|r| {
        r.applicant_id = resident_id::compose("511703", 2999, 1, 1, 12);
    });
    add("applicant_id born in 1899", invalid, "applicant_id", &|r| {
        r.applicant_id = resident_id::compose("511703", 1899, 12, 31, 12);
    });
    add(
        "applicant_id full-width digits",
        invalid,
        "applicant_id",
        &|r| {
            r.applicant_id = mangle(&id, |_, c| {
                c.to_digit(10)
                    .map_or(c, |d| char::from_u32(0xFF10 + d).unwrap())
                    .to_string()
            });
        },
    );
    add(
        "applicant_id Arabic-Indic digits",
        invalid,
        "applicant_id",
        &|r| {
            r.applicant_id = mangle(&id, |_, c| {
                c.to_digit(10)
                    .map_or(c, |d| char::from_u32(0x0660 + d).unwrap())
                    .to_string()
            });
        },
    );
    add("applicant_id lower-case x", invalid, "applicant_id", &|r| {
        r.applicant_id = id_ending_in_x().to_lowercase();
    });
    add("applicant_id with a NUL", invalid, "applicant_id", &|r| {
        r.applicant_id = mangle(&id, |i, c| if i == 5 { "\0".into() } else { c.into() });
    });
    add(
        "applicant_id with a zero-width space",
        invalid,
        "applicant_id",
        &|r| {
            r.applicant_id = format!("{}\u{200b}{}", &id[..9], &id[9..]);
        },
    );
    add(
        "applicant_id 10,000 characters",
        invalid,
        "applicant_id",
        &|r| {
            r.applicant_id = id.repeat(556);
        },
    );
    add("applicant_id SQL", invalid, "applicant_id", &|r| {
        r.applicant_id = "' OR 1=1 --".into();
    });
    // Consent, purpose, operator.
    add(
        "consent_reference empty",
        invalid,
        "consent_reference",
        &|r| {
            r.consent_reference.clear();
        },
    );
    add(
        "consent_reference blank",
        invalid,
        "consent_reference",
        &|r| {
            r.consent_reference = " \t ".into();
        },
    );
    add(
        "consent_reference 129 characters",
        invalid,
        "consent_reference",
        &|r| {
            r.consent_reference = "S".repeat(129);
        },
    );
    add(
        "consent_reference with a newline",
        invalid,
        "consent_reference",
        &|r| {
            r.consent_reference = "SQ-1\nforged: yes".into();
        },
    );
    add(
        "consent_reference with a NUL",
        invalid,
        "consent_reference",
        &|r| {
            r.consent_reference = "SQ-1\0".into();
        },
    );
    add("purpose unspecified", invalid, "purpose", &|r| {
        r.purpose = 0
    });
    add("purpose unknown (999)", invalid, "purpose", &|r| {
        r.purpose = 999
    });
    add("purpose negative", invalid, "purpose", &|r| r.purpose = -1);
    add("operator_id empty", invalid, "operator_id", &|r| {
        r.operator_id.clear();
    });
    add("operator_id 65 characters", invalid, "operator_id", &|r| {
        r.operator_id = "o".repeat(65);
    });
    add("operator_id with ESC", invalid, "operator_id", &|r| {
        r.operator_id = "case\u{1b}[2Jworker".into();
    });
    add("operator_id with DEL", invalid, "operator_id", &|r| {
        r.operator_id = "case-worker\u{7f}".into();
    });
    // Deadlines and ages.
    let dur = |seconds: i64, nanos: i32| Some(prost_types::Duration { seconds, nanos });
    add("deadline negative", invalid, "deadline", &|r| {
        r.deadline = dur(-1, 0);
    });
    add("deadline negative nanos", invalid, "deadline", &|r| {
        r.deadline = dur(0, -1);
    });
    add("deadline zero", invalid, "deadline", &|r| {
        r.deadline = dur(0, 0)
    });
    add("deadline one day", invalid, "deadline", &|r| {
        r.deadline = dur(86_400, 0);
    });
    add("deadline i64::MAX seconds", invalid, "deadline", &|r| {
        r.deadline = dur(i64::MAX, 999_999_999);
    });
    add("deadline i64::MIN seconds", invalid, "deadline", &|r| {
        r.deadline = dur(i64::MIN, 0);
    });
    add("max_age negative", invalid, "max_age", &|r| {
        r.max_age = dur(-60, 0)
    });
    add("max_age i64::MIN seconds", invalid, "max_age", &|r| {
        r.max_age = dur(i64::MIN, -999_999_999);
    });
    // Declared members.
    let many: Vec<String> = (0..31)
        .map(|i| resident_id::compose("511703", 1980, 1, 1, i))
        .collect();
    add(
        "declared_member_ids 31 members",
        invalid,
        "declared_member_ids",
        &|r| {
            r.declared_member_ids = many.clone();
        },
    );
    add(
        "declared_member_ids 10,000 members",
        invalid,
        "declared_member_ids",
        &|r| {
            r.declared_member_ids = vec![String::new(); 10_000];
        },
    );
    let m = members[0].clone();
    add(
        "declared_member_ids duplicated",
        invalid,
        "declared_member_ids",
        &|r| {
            r.declared_member_ids = vec![m.clone(), m.clone()];
        },
    );
    add(
        "declared_member_ids bad check digit",
        invalid,
        "declared_member_ids",
        &|r| {
            r.declared_member_ids = vec![wrong_check(&m)];
        },
    );
    add(
        "declared_member_ids empty string",
        invalid,
        "declared_member_ids",
        &|r| {
            r.declared_member_ids = vec![String::new()];
        },
    );
    add(
        "declared_member_ids born in 2999",
        invalid,
        "declared_member_ids",
        &|r| {
            r.declared_member_ids = vec![resident_id::compose("511703", 2999, 12, 31, 1)];
        },
    );
    // The whole message: larger than the broker reads. The transport
    // refuses it before the broker sees it, so no denied record.
    add(
        "operator_id of 100,000 characters (request over 64 KiB)",
        Code::OutOfRange,
        "message length too large",
        &|r| r.operator_id = "o".repeat(100_000),
    );
    rows.push(VerifyRow {
        name: "request missing".into(),
        request: None,
        code: invalid,
        names: "request",
        denied: true,
    });
    rows
}

// === gRPC: AuditService and GetReport ===

/// A call that must be refused.
enum Call {
    Report(GetReportRequest),
    Watch(hedui_proto::v1::WatchReportRequest),
    Query(QueryRecordsRequest),
    Export(ExportRecordsRequest),
    Chain(GetChainStatusRequest),
    Subject(GetSubjectAccessHistoryRequest),
}

struct CallRow {
    name: &'static str,
    call: Call,
    code: Code,
    names: &'static str,
}

fn query(change: impl FnOnce(&mut QueryRecordsRequest)) -> Call {
    let mut r = QueryRecordsRequest {
        auditor_id: "inspector-1".into(),
        filter: Some(AuditFilter::default()),
        page_size: 10,
        page_token: String::new(),
    };
    change(&mut r);
    Call::Query(r)
}

fn filter(change: impl FnOnce(&mut AuditFilter)) -> Call {
    query(|r| change(r.filter.as_mut().unwrap()))
}

fn export(change: impl FnOnce(&mut ExportRecordsRequest)) -> Call {
    let mut r = ExportRecordsRequest {
        auditor_id: "inspector-1".into(),
        filter: None,
        format: hedui_proto::v1::ExportFormat::Csv as i32,
    };
    change(&mut r);
    Call::Export(r)
}

fn subject(id: &str, change: impl FnOnce(&mut GetSubjectAccessHistoryRequest)) -> Call {
    let mut r = GetSubjectAccessHistoryRequest {
        subject_id: id.to_owned(),
        requester_id: "self-service-app".into(),
        page_size: 10,
        page_token: String::new(),
    };
    change(&mut r);
    Call::Subject(r)
}

fn call_rows(id: &str) -> Vec<CallRow> {
    let ts = |seconds: i64, nanos: i32| Some(prost_types::Timestamp { seconds, nanos });
    let invalid = Code::InvalidArgument;
    let row = |name, call, code, names| CallRow {
        name,
        call,
        code,
        names,
    };
    let report = |id: &str| {
        Call::Report(GetReportRequest {
            report_id: id.to_owned(),
        })
    };
    let watch = |id: &str| {
        Call::Watch(hedui_proto::v1::WatchReportRequest {
            report_id: id.to_owned(),
        })
    };
    vec![
        // GetReport.
        row("report_id empty", report(""), invalid, "report_id"),
        row(
            "report_id not a UUID",
            report("not-a-uuid"),
            invalid,
            "report_id",
        ),
        row(
            "report_id SQL",
            report("'; DROP TABLE reports; --"),
            invalid,
            "report_id",
        ),
        row(
            "report_id 50,000 characters",
            report(&"a".repeat(50_000)),
            invalid,
            "report_id",
        ),
        row(
            "report_id with a newline",
            report("6f1c1b2e-0c1d-4f7e-9a55-0a0b0c0d0e0f\n"),
            invalid,
            "report_id",
        ),
        // WatchReport.
        row("watch report_id empty", watch(""), invalid, "report_id"),
        row(
            "watch report_id not a UUID",
            watch("../../etc/passwd"),
            invalid,
            "report_id",
        ),
        row(
            "watch report_id unknown",
            watch("6f1c1b2e-0c1d-4f7e-9a55-0a0b0c0d0e0f"),
            Code::NotFound,
            "report_id",
        ),
        row(
            "report_id unknown",
            report("6f1c1b2e-0c1d-4f7e-9a55-0a0b0c0d0e0f"),
            Code::NotFound,
            "report_id",
        ),
        // QueryRecords.
        row(
            "auditor_id empty",
            query(|r| r.auditor_id.clear()),
            invalid,
            "auditor_id",
        ),
        row(
            "auditor_id 65 characters",
            query(|r| r.auditor_id = "a".repeat(65)),
            invalid,
            "auditor_id",
        ),
        row(
            "auditor_id with a newline",
            query(|r| r.auditor_id = "inspector\n1".into()),
            invalid,
            "auditor_id",
        ),
        row(
            "filter.subject_id bad check digit",
            filter(|f| f.subject_id = wrong_check(id)),
            invalid,
            "filter.subject_id",
        ),
        row(
            "filter.subject_id 17 characters",
            filter(|f| f.subject_id = id[..17].to_owned()),
            invalid,
            "filter.subject_id",
        ),
        row(
            "filter.subject_id full-width digits",
            filter(|f| {
                f.subject_id = mangle(id, |_, c| {
                    c.to_digit(10)
                        .map_or(c, |d| char::from_u32(0xFF10 + d).unwrap())
                        .to_string()
                });
            }),
            invalid,
            "filter.subject_id",
        ),
        row(
            "filter.purpose unknown",
            filter(|f| f.purpose = 999),
            invalid,
            "filter.purpose",
        ),
        row(
            "filter.kind unknown",
            filter(|f| f.kind = 999),
            invalid,
            "filter.kind",
        ),
        row(
            "filter.client 129 characters",
            filter(|f| f.client = "c".repeat(129)),
            invalid,
            "filter.client",
        ),
        row(
            "filter.operator_id with a NUL",
            filter(|f| f.operator_id = "op\0".into()),
            invalid,
            "filter.operator_id",
        ),
        row(
            "filter.source_id 10,000 characters",
            filter(|f| f.source_id = "s".repeat(10_000)),
            invalid,
            "filter.source_id",
        ),
        row(
            "filter.outcome with ESC",
            filter(|f| f.outcome = "ok\u{1b}".into()),
            invalid,
            "filter.outcome",
        ),
        row(
            "filter.from_time i64::MAX seconds",
            filter(|f| f.from_time = ts(i64::MAX, 0)),
            invalid,
            "filter.from_time",
        ),
        row(
            "filter.to_time i64::MIN seconds",
            filter(|f| f.to_time = ts(i64::MIN, 0)),
            invalid,
            "filter.to_time",
        ),
        row(
            "filter.from_time negative nanos",
            filter(|f| f.from_time = ts(0, -1)),
            invalid,
            "filter.from_time",
        ),
        row(
            "page_size 1001",
            query(|r| r.page_size = 1001),
            invalid,
            "page_size",
        ),
        row(
            "page_size u32::MAX",
            query(|r| r.page_size = u32::MAX),
            invalid,
            "page_size",
        ),
        row(
            "page_token not a number",
            query(|r| r.page_token = "abc".into()),
            invalid,
            "page_token",
        ),
        row(
            "page_token negative",
            query(|r| r.page_token = "-1".into()),
            invalid,
            "page_token",
        ),
        row(
            "page_token with a space",
            query(|r| r.page_token = " 5".into()),
            invalid,
            "page_token",
        ),
        row(
            "page_token u64::MAX",
            query(|r| r.page_token = u64::MAX.to_string()),
            invalid,
            "page_token",
        ),
        row(
            "page_token 60,000 digits",
            query(|r| r.page_token = "9".repeat(60_000)),
            invalid,
            "page_token",
        ),
        // ExportRecords.
        row(
            "export format unspecified",
            export(|r| r.format = 0),
            invalid,
            "format",
        ),
        row(
            "export format unknown",
            export(|r| r.format = 99),
            invalid,
            "format",
        ),
        row(
            "export auditor_id blank",
            export(|r| r.auditor_id = "   ".into()),
            invalid,
            "auditor_id",
        ),
        row(
            "export filter.subject_id SQL",
            export(|r| {
                r.filter = Some(AuditFilter {
                    subject_id: "' OR 1=1 --".into(),
                    ..AuditFilter::default()
                });
            }),
            invalid,
            "filter.subject_id",
        ),
        row(
            "export filter.to_time i64::MAX seconds",
            export(|r| {
                r.filter = Some(AuditFilter {
                    to_time: ts(i64::MAX, 999_999_999),
                    ..AuditFilter::default()
                });
            }),
            invalid,
            "filter.to_time",
        ),
        // GetChainStatus.
        row(
            "chain status auditor_id empty",
            Call::Chain(GetChainStatusRequest::default()),
            invalid,
            "auditor_id",
        ),
        row(
            "chain status auditor_id 1,000 characters",
            Call::Chain(GetChainStatusRequest {
                auditor_id: "a".repeat(1000),
            }),
            invalid,
            "auditor_id",
        ),
        // GetSubjectAccessHistory.
        row(
            "subject history requester_id empty",
            subject(id, |r| r.requester_id.clear()),
            invalid,
            "requester_id",
        ),
        row(
            "subject history subject_id empty",
            subject("", |_| {}),
            invalid,
            "subject_id",
        ),
        row(
            "subject history subject_id bad check digit",
            subject(&wrong_check(id), |_| {}),
            invalid,
            "subject_id",
        ),
        row(
            "subject history subject_id born 31 April",
            subject(&resident_id::compose("511703", 1990, 4, 31, 7), |_| {}),
            invalid,
            "subject_id",
        ),
        row(
            "subject history subject_id Arabic-Indic digits",
            subject(
                &mangle(id, |_, c| {
                    c.to_digit(10)
                        .map_or(c, |d| char::from_u32(0x0660 + d).unwrap())
                        .to_string()
                }),
                |_| {},
            ),
            invalid,
            "subject_id",
        ),
        row(
            "subject history page_size 5000",
            subject(id, |r| r.page_size = 5000),
            invalid,
            "page_size",
        ),
        row(
            "subject history page_token not a number",
            subject(id, |r| r.page_token = "next".into()),
            invalid,
            "page_token",
        ),
        row(
            "subject history page_token 30,000 characters",
            subject(id, |r| r.page_token = "x".repeat(30_000)),
            invalid,
            "page_token",
        ),
    ]
}

/// Makes one call; the status it ended with (a stream is read to its end).
async fn make(broker: &BrokerProcess, call: Call) -> Result<(), tonic::Status> {
    use futures::StreamExt;
    match call {
        Call::Report(r) => broker
            .client()
            .await
            .unwrap()
            .get_report(r)
            .await
            .map(|_| ()),
        Call::Watch(r) => broker
            .client()
            .await
            .unwrap()
            .watch_report(r)
            .await
            .map(|_| ()),
        Call::Query(r) => broker
            .audit_client()
            .await
            .unwrap()
            .query_records(r)
            .await
            .map(|_| ()),
        Call::Chain(r) => broker
            .audit_client()
            .await
            .unwrap()
            .get_chain_status(r)
            .await
            .map(|_| ()),
        Call::Subject(r) => broker
            .audit_client()
            .await
            .unwrap()
            .get_subject_access_history(r)
            .await
            .map(|_| ()),
        Call::Export(r) => {
            let mut s = broker
                .audit_client()
                .await
                .unwrap()
                .export_records(r)
                .await?
                .into_inner();
            while let Some(m) = s.next().await {
                m?;
            }
            Ok(())
        }
    }
}

fn check_status(row: &str, got: Result<(), tonic::Status>, code: Code, names: &str) {
    let status = match got {
        Ok(()) => panic!("{row}: accepted, expected {code:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{row}: {}", status.message());
    assert!(
        status.message().contains(names),
        "{row}: the message {:?} does not name {names}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_requests_are_refused_naming_the_field_and_write_nothing() {
    let today = china_today();
    let agencies = Agencies::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let broker = BrokerProcess::start(&agencies.sources_toml, &[])
        .await
        .unwrap();
    let sinks = Sinks::open(&agencies.control, broker.dir.path()).await;
    sinks.reset_lookups().await;
    let pop = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: today.parse().unwrap(),
    });
    let hh = pop
        .households()
        .find(|h| h.active_members().count() >= 2)
        .expect("a household of two");
    let members = hh.active_member_ids();
    let good = VerificationRequest {
        applicant_id: hh.applicant().id().to_owned(),
        consent_reference: "SQ-2026-000123".into(),
        purpose: Purpose::DibaoApplication as i32,
        operator_id: "case-worker-07".into(),
        deadline: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        max_age: None,
        declared_member_ids: Vec::new(),
    };

    let rows = verify_rows(&good, &members);
    let mut client = broker.client().await.unwrap();
    for row in &rows {
        for rpc in ["Verify", "StreamVerify"] {
            let name = format!("{rpc}: {}", row.name);
            let before = sinks.audit_rows().await.len();
            let got = match rpc {
                "Verify" => client
                    .verify(VerifyRequest {
                        request: row.request.clone(),
                    })
                    .await
                    .map(|_| ()),
                _ => match client
                    .stream_verify(StreamVerifyRequest {
                        request: row.request.clone(),
                    })
                    .await
                {
                    Err(s) => Err(s),
                    Ok(r) => {
                        let mut s = r.into_inner();
                        let mut end = Ok(());
                        while let Some(m) = futures::StreamExt::next(&mut s).await {
                            if let Err(e) = m {
                                end = Err(e);
                                break;
                            }
                        }
                        end
                    }
                },
            };
            check_status(&name, got, row.code, row.names);
            sinks
                .assert_nothing_written(&name, before, row.denied.then_some(row.names))
                .await;
        }
    }

    let calls = call_rows(&good.applicant_id);
    let n_calls = calls.len();
    for row in calls {
        let before = sinks.audit_rows().await.len();
        let got = make(&broker, row.call).await;
        check_status(row.name, got, row.code, row.names);
        sinks.assert_nothing_written(row.name, before, None).await;
    }
    eprintln!(
        "gRPC catalogue: {} verification rows × 2 RPCs, {n_calls} GetReport and AuditService rows",
        rows.len()
    );

    // The instruments see writes: empty page token and size are the first
    // page (recorded as a query), and a good verification asks the sources
    // and stores its report.
    let before = sinks.audit_rows().await.len();
    make(
        &broker,
        query(|r| {
            r.page_size = 0;
            r.page_token.clear();
        }),
    )
    .await
    .expect("an empty page token and size are the first page");
    let new = &sinks.audit_rows().await[before..];
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].kind, "audit_query");
    client
        .verify(VerifyRequest {
            request: Some(good.clone()),
        })
        .await
        .expect("the good request");
    assert!(sinks.lookups().await > 0);
    assert_eq!(sinks.reports().await, 1);
    broker.stop().await;
    agencies.stop().await;
}

// === The command line ===

/// Files in `dir`, recursively, by name.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Runs `hedui` with `args` in `dir` (nothing from the environment that
/// the CLI reads); its exit code and everything it printed.
async fn run_hedui(dir: &Path, args: &[String]) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(workspace_bin("hedui"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("HEDUI_SERVER")
        .env_remove("HEDUI_AUDITOR")
        .env_remove("HEDUI_BROKER_ID")
        .env_remove("HEDUI_FEDERATION_LISTEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROCESS_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("hedui {args:?} still runs after {PROCESS_TIMEOUT:?}"))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A command-line row: arguments (`{server}` stands for the running
/// broker's URL), the exit code when it must be one (2: refused by the
/// argument parser), and a substring naming the flag or field; `denied`
/// says a refused verification's `denied` record is expected.
struct CliRow {
    args: &'static [&'static str],
    exit: Option<i32>,
    names: &'static str,
    denied: bool,
}

const fn cli(args: &'static [&'static str], exit: Option<i32>, names: &'static str) -> CliRow {
    CliRow {
        args,
        exit,
        names,
        denied: false,
    }
}

const BAD_ID: &str = "51170319900101123";

fn cli_rows() -> Vec<CliRow> {
    let usage = Some(2);
    vec![
        cli(&[], usage, "Usage"),
        cli(&["frobnicate"], usage, "frobnicate"),
        cli(&["serve", "--config", "missing.toml"], None, "missing.toml"),
        cli(&["serve", "--config", "."], None, "cannot read"),
        cli(&["serve"], None, "--insecure-plaintext-development-only"),
        cli(&["config", "check", "missing.toml"], None, "missing.toml"),
        cli(
            &[
                "serve",
                "--insecure-plaintext-development-only",
                "--federation-listen",
                "127.0.0.1:0",
                "--federation-tls-key",
                "k.pem",
            ],
            None,
            "--federation-tls-cert",
        ),
        cli(&["config", "check"], usage, "FILE"),
        cli(
            &["certs", "dev", "--out", "/proc/no-such-dir"],
            None,
            "/proc/no-such-dir",
        ),
        cli(&["serve", "--listen", "not-an-address"], usage, "--listen"),
        cli(&["serve", "--listen", "127.0.0.1:99999"], usage, "--listen"),
        cli(
            &["serve", "--broker-id", "Dachuan/../x"],
            None,
            "--broker-id",
        ),
        cli(&["serve", "--broker-id", ""], None, "--broker-id"),
        cli(
            &["serve", "--federation-listen", "everywhere"],
            usage,
            "--federation-listen",
        ),
        cli(&["serve", "--colour", "red"], usage, "--colour"),
        cli(&["verify"], usage, "APPLICANT_ID"),
        cli(&["verify", BAD_ID, "--operator", "op"], usage, "--consent"),
        cli(&["verify", BAD_ID, "--consent", "c"], usage, "--operator"),
        cli(
            &[
                "verify",
                BAD_ID,
                "--consent",
                "c",
                "--operator",
                "op",
                "--purpose",
                "fun",
            ],
            usage,
            "--purpose",
        ),
        cli(
            &[
                "verify",
                BAD_ID,
                "--consent",
                "c",
                "--operator",
                "op",
                "--deadline-ms=-5",
            ],
            usage,
            "--deadline-ms",
        ),
        cli(
            &[
                "verify",
                BAD_ID,
                "--consent",
                "c",
                "--operator",
                "op",
                "--deadline-ms",
                "soon",
            ],
            usage,
            "--deadline-ms",
        ),
        cli(
            &[
                "verify",
                BAD_ID,
                "--consent",
                "c",
                "--operator",
                "op",
                "--server",
                "not a url",
            ],
            None,
            "--server",
        ),
        CliRow {
            args: &[
                "verify",
                BAD_ID,
                "--consent",
                "c",
                "--operator",
                "op",
                "--server",
                "{server}",
            ],
            exit: None,
            names: "applicant_id",
            denied: true,
        },
        CliRow {
            args: &[
                "verify",
                "{applicant}",
                "--consent",
                "c",
                "--operator",
                "op",
                "--deadline-ms",
                "99999999999",
                "--server",
                "{server}",
            ],
            exit: None,
            names: "deadline",
            denied: true,
        },
        CliRow {
            args: &[
                "verify",
                "{applicant}",
                "--consent",
                "c",
                "--operator",
                "op",
                "--member",
                "{applicant}",
                "--member",
                "{applicant}",
                "--server",
                "{server}",
            ],
            exit: None,
            names: "declared_member_ids",
            denied: true,
        },
        cli(&["report"], usage, "REPORT_ID"),
        cli(
            &["report", "not-a-uuid", "--server", "{server}"],
            None,
            "report_id",
        ),
        cli(&["audit"], usage, "Usage"),
        cli(&["audit", "query"], usage, "--auditor"),
        cli(
            &[
                "audit",
                "query",
                "--auditor",
                "a",
                "--from",
                "yesterday",
                "--server",
                "{server}",
            ],
            None,
            "--from",
        ),
        cli(
            &[
                "audit",
                "query",
                "--auditor",
                "a",
                "--to",
                "2026-02-30",
                "--server",
                "{server}",
            ],
            None,
            "--to",
        ),
        cli(
            &["audit", "query", "--auditor", "a", "--kind", "secret"],
            usage,
            "--kind",
        ),
        cli(
            &["audit", "query", "--auditor", "a", "--limit=-1"],
            usage,
            "--limit",
        ),
        cli(
            &["audit", "query", "--auditor", "a", "--purpose", "fun"],
            usage,
            "--purpose",
        ),
        cli(
            &[
                "audit",
                "query",
                "--auditor",
                "a",
                "--subject",
                BAD_ID,
                "--server",
                "{server}",
            ],
            None,
            "filter.subject_id",
        ),
        cli(
            &["audit", "query", "--auditor", "", "--server", "{server}"],
            None,
            "auditor_id",
        ),
        cli(
            &["audit", "export", "--auditor", "a", "--format", "xml"],
            usage,
            "--format",
        ),
        cli(&["audit", "prove", "first"], usage, "RECORD"),
        cli(&["audit", "prove", "-1"], usage, "-1"),
        cli(
            &["audit", "verify", "--audit-db", "typo.db"],
            None,
            "--audit-db",
        ),
        cli(&["audit", "verify"], None, "audit.path"),
        cli(
            &["audit", "prove", "5", "--audit-db", "typo.db"],
            None,
            "--audit-db",
        ),
        cli(
            &["audit", "purge", "--audit-db", "typo.db"],
            None,
            "--audit-db",
        ),
        cli(
            &["audit", "verify", "--config", "missing.toml"],
            None,
            "missing.toml",
        ),
        cli(
            &["audit", "purge", "--config", "missing.toml"],
            None,
            "missing.toml",
        ),
        cli(&["adapter"], usage, "Usage"),
        cli(&["adapter", "check"], usage, "SOURCE_ID"),
        cli(&["adapter", "check", "nobody"], None, "nobody"),
        cli(
            &["adapter", "check", "employment", "--today", "2026-13-45"],
            usage,
            "--today",
        ),
        cli(
            &["adapter", "check", "employment", "--households=-3"],
            usage,
            "--households",
        ),
        cli(
            &["adapter", "check", "employment", "--config", "missing.toml"],
            None,
            "missing.toml",
        ),
        cli(&["demo", "--households", "many"], usage, "--households"),
        cli(
            &["demo", "--households", "0", "--no-serve"],
            None,
            "households",
        ),
        cli(&["demo", "--listen", "port-80"], usage, "--listen"),
        cli(&["bench-audit", "--colour", "red"], usage, "--colour"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_command_lines_exit_non_zero_naming_the_flag_and_write_nothing() {
    let today = china_today();
    let agencies = Agencies::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let broker = BrokerProcess::start(&agencies.sources_toml, &[])
        .await
        .unwrap();
    let sinks = Sinks::open(&agencies.control, broker.dir.path()).await;
    sinks.reset_lookups().await;
    let pop = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: today.parse().unwrap(),
    });
    let applicant = pop.household_at(0).unwrap().applicant().id().to_owned();
    let rows = cli_rows();
    for row in &rows {
        let args: Vec<String> = row
            .args
            .iter()
            .map(|a| {
                a.replace("{server}", &broker.url)
                    .replace("{applicant}", &applicant)
            })
            .collect();
        let name = format!("hedui {}", args.join(" "));
        let dir = tempfile::tempdir().unwrap();
        let before = sinks.audit_rows().await.len();
        let (code, out) = run_hedui(dir.path(), &args).await;
        assert_ne!(code, Some(0), "{name}: exit 0\n{out}");
        assert!(code.is_some(), "{name}: killed by a signal\n{out}");
        if let Some(want) = row.exit {
            assert_eq!(code, Some(want), "{name}\n{out}");
        }
        assert!(!out.contains("panicked"), "{name}: panicked\n{out}");
        assert!(
            out.contains(row.names),
            "{name}: the output does not name {:?}\n{out}",
            row.names
        );
        let left = files_in(dir.path());
        assert!(left.is_empty(), "{name}: left {left:?}");
        sinks
            .assert_nothing_written(&name, before, row.denied.then_some(row.names))
            .await;
    }
    eprintln!("command-line catalogue: {} rows", rows.len());
    broker.stop().await;
    agencies.stop().await;
}

// === Configuration ===

const HEAD: &str = "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = \"reports.db\"\n\n";
const HOUSEHOLD: &str = "[[sources]]\nid = \"public-security\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"http://127.0.0.1:9\"\n\n";
const EMPLOYMENT: &str = "[[sources]]\nid = \"employment\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"http://127.0.0.1:9\"\n\n";

/// A configuration row: the whole file and a substring naming the key.
struct ConfigRow {
    name: &'static str,
    text: String,
    names: &'static str,
}

/// The good file with `extra` (tables) before the sources.
fn with(extra: &str) -> String {
    format!("{HEAD}{extra}\n\n{HOUSEHOLD}{EMPLOYMENT}")
}

/// The good file with `sources` instead of its sources.
fn sources(sources: &str) -> String {
    format!("{HEAD}{sources}")
}

fn config_rows() -> Vec<ConfigRow> {
    let row = |name, text: String, names| ConfigRow { name, text, names };
    let grpc = |id: &str, params: &str| {
        format!(
            "[[sources]]\nid = \"{id}\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"http://127.0.0.1:9\"\n{params}\n\n"
        )
    };
    let tls = |extra: &str| {
        with(&format!(
            "[tls]\ncert = \"broker.pem\"\nkey = \"broker-key.pem\"\nclient_ca = [\"ca.pem\"]\n{extra}\n[clients.\"spiffe://t/p\"]\nrole = \"platform\""
        ))
    };
    vec![
        row("tls.cert missing file", tls(""), "tls.cert"),
        row(
            "tls.min_version 1.1",
            tls("min_version = \"1.1\""),
            "tls.min_version",
        ),
        row(
            "tls without client_ca",
            with("[tls]\ncert = \"b.pem\"\nkey = \"k.pem\"\n[clients.\"x\"]\nrole = \"admin\""),
            "tls.client_ca",
        ),
        row(
            "clients role unknown",
            with("[clients.\"spiffe://t/p\"]\nrole = \"superuser\""),
            "superuser",
        ),
        row(
            "clients purposes unknown",
            with("[clients.\"spiffe://t/p\"]\nrole = \"platform\"\npurposes = [\"holiday\"]"),
            "purposes[0]",
        ),
        row(
            "quotas negative rate",
            with("[quotas]\nrate_per_s = -5.0"),
            "quotas.rate_per_s",
        ),
        row("not TOML", "this is = = not toml [".into(), "hedui.toml"),
        row(
            "an unknown table",
            with("[servre]\nlisten = \"127.0.0.1:0\""),
            "servre",
        ),
        row(
            "an unknown key",
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nport = 3\n[store]\npath = \"reports.db\"\n{HOUSEHOLD}"
            ),
            "port",
        ),
        row(
            "server.listen not an address",
            format!(
                "[server]\nlisten = \"everywhere\"\n[store]\npath = \"reports.db\"\n{HOUSEHOLD}"
            ),
            "listen",
        ),
        row(
            "store.path of the wrong type",
            format!("[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = 5\n{HOUSEHOLD}"),
            "path",
        ),
        row(
            "store.path in a missing directory",
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"no/such/dir/reports.db\"\n{HOUSEHOLD}"
            ),
            "store.path",
        ),
        row(
            "default_deadline_ms a string",
            with("[verification]\ndefault_deadline_ms = \"ten\""),
            "default_deadline_ms",
        ),
        row(
            "default_deadline_ms negative",
            with("[verification]\ndefault_deadline_ms = -1"),
            "default_deadline_ms",
        ),
        row(
            "default_deadline_ms zero",
            with("[verification]\ndefault_deadline_ms = 0"),
            "verification.default_deadline_ms",
        ),
        row(
            "max_deadline_ms below the default",
            with("[verification]\ndefault_deadline_ms = 5000\nmax_deadline_ms = 10"),
            "verification.max_deadline_ms",
        ),
        row(
            "policy.dir missing",
            with("[policy]\ndir = \"no-such-policies\""),
            "no-such-policies",
        ),
        row(
            "simulation.households zero",
            format!("{HEAD}[simulation]\nhouseholds = 0\n"),
            "households",
        ),
        row(
            "simulation unknown key",
            format!("{HEAD}[simulation]\ncolour = \"red\"\n"),
            "colour",
        ),
        row(
            "an unknown transport",
            sources(&format!(
                "{HOUSEHOLD}[[sources]]\nid = \"employment\"\n[sources.transport]\ntype = \"carrier-pigeon\"\n"
            )),
            "carrier-pigeon",
        ),
        row(
            "a transport without type",
            sources(&format!(
                "{HOUSEHOLD}[[sources]]\nid = \"employment\"\n[sources.transport]\nendpoint = \"http://127.0.0.1:9\"\n"
            )),
            "type",
        ),
        row(
            "a bad endpoint",
            sources(&format!(
                "{HOUSEHOLD}[[sources]]\nid = \"employment\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"not a url\"\n"
            )),
            "endpoint",
        ),
        row(
            "an unknown grpc key",
            sources(&format!(
                "{HOUSEHOLD}{}",
                grpc("employment", "colour = \"red\"")
            )),
            "colour",
        ),
        row(
            "max_answer_bytes zero",
            sources(&format!(
                "{HOUSEHOLD}{}",
                grpc("employment", "max_answer_bytes = 0")
            )),
            "max_answer_bytes",
        ),
        row(
            "max_answer_bytes over the limit",
            sources(&format!(
                "{HOUSEHOLD}{}",
                grpc("employment", "max_answer_bytes = 1073741824")
            )),
            "max_answer_bytes",
        ),
        row(
            "connect_timeout_ms negative",
            sources(&format!(
                "{HOUSEHOLD}{}",
                grpc("employment", "connect_timeout_ms = -5")
            )),
            "connect_timeout_ms",
        ),
        row(
            "an unknown source id",
            sources(&format!("{HOUSEHOLD}{}", grpc("bank-of-atlantis", ""))),
            "bank-of-atlantis",
        ),
        row(
            "a new source with an unknown fact kind",
            sources(&format!(
                "{HOUSEHOLD}[[sources]]\nid = \"county-bank\"\nname = \"County Bank\"\nfact_kinds = [\"GOLD_BARS\"]\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"http://127.0.0.1:9\"\n"
            )),
            "GOLD_BARS",
        ),
        row(
            "a duplicate source",
            sources(&format!("{HOUSEHOLD}{EMPLOYMENT}{EMPLOYMENT}")),
            "appears twice",
        ),
        row(
            "no household source",
            sources(EMPLOYMENT),
            "public-security",
        ),
        row(
            "a simulated source with a rate over 1",
            sources(&format!(
                "{HOUSEHOLD}[[sources]]\nid = \"employment\"\n[sources.transport]\ntype = \"simulated\"\nhouseholds = 10\noversized_rate = 2.0\n"
            )),
            "oversized_rate",
        ),
        row(
            "changes.transport unknown",
            with("[changes]\ntransport = \"kafka\""),
            "changes.transport",
        ),
        row(
            "changes.stream with a wildcard",
            with("[changes]\ntransport = \"nats\"\nstream = \"A.>\""),
            "changes.stream",
        ),
        row(
            "changes.url not NATS",
            with("[changes]\ntransport = \"nats\"\nurl = \"http://127.0.0.1:4222\""),
            "changes.url",
        ),
        row(
            "cache.max_bytes below 1 MiB",
            with("[cache]\nmax_bytes = 1000"),
            "cache.max_bytes",
        ),
        row(
            "cache.kind_ttl_s of no fact kind",
            with("[cache.kind_ttl_s]\nCARS = 60"),
            "cache.kind_ttl_s.CARS",
        ),
        row(
            "cache for a source not configured",
            with("[cache.sources.nobody]\nttl_s = 60"),
            "cache.sources.nobody",
        ),
        row("cache.ttl_s negative", with("[cache]\nttl_s = -5"), "ttl_s"),
        row(
            "limits key unknown",
            with("[limits.default]\nrate = 5"),
            "rate",
        ),
        row(
            "limits.retry_budget above 1",
            with("[limits.default]\nretry_budget = 1.5"),
            "limits.default.retry_budget",
        ),
        row(
            "limits for a source not configured",
            with("[limits.sources.nobody]\nrate_per_s = 5"),
            "limits.sources.nobody",
        ),
        row(
            "limits.late_deadline_ms over 7 days",
            with("[limits.sources.employment]\nlate_deadline_ms = 999999999999"),
            "limits.sources.employment.late_deadline_ms",
        ),
        row(
            "limits.burst without a rate",
            with("[limits.default]\nburst = 4"),
            "limits.default.burst",
        ),
        row(
            "audit.retention_days below six months",
            with("[audit]\nretention_days = 182"),
            "audit.retention_days",
        ),
        row(
            "audit.retention_days negative",
            with("[audit]\nretention_days = -1"),
            "retention_days",
        ),
        row(
            "audit.backend unknown",
            with("[audit]\nbackend = \"oracle\""),
            "oracle",
        ),
        row(
            "audit.backend postgres without url",
            with("[audit]\nbackend = \"postgres\""),
            "audit.url",
        ),
        row(
            "audit.schema with SQL",
            with(
                "[audit]\nbackend = \"postgres\"\nurl = \"postgres://127.0.0.1:9/x\"\nschema = \"a; DROP TABLE x\"",
            ),
            "audit.schema",
        ),
        row(
            "audit.suite unknown",
            with("[audit]\nsuite = \"md5-rsa\""),
            "md5-rsa",
        ),
        row(
            "audit.hmac_key too short",
            with("[audit]\nhmac_key = \"short\""),
            "audit.hmac_key",
        ),
        row(
            "audit.hmac_key of the wrong type",
            with("[audit]\nhmac_key = 12345"),
            "hmac_key",
        ),
        row(
            "audit.hmac_key_file missing",
            with("[audit]\nhmac_key_file = \"no-such-hmac.key\""),
            "audit.hmac_key_file",
        ),
        row(
            "audit.signing_key not hex",
            with("[audit]\nsigning_key = \"not hex at all\""),
            "audit.signing_key",
        ),
        row(
            "audit.signing_key_file missing",
            with("[audit]\nsigning_key_file = \"no-such-signing.key\""),
            "audit.signing_key_file",
        ),
        row(
            "audit.batch_max zero",
            with("[audit]\nbatch_max = 0"),
            "audit.batch_max",
        ),
        row(
            "audit.checkpoint_every_ms zero",
            with("[audit]\ncheckpoint_every_ms = 0"),
            "audit.checkpoint_every_ms",
        ),
        row(
            "audit.path in a missing directory",
            with("[audit]\npath = \"no/such/dir/audit.db\""),
            "audit",
        ),
        row(
            "audit.subject_view unknown key",
            with("[audit.subject_view]\nbirth_date = true"),
            "birth_date",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_non_zero_naming_the_key_and_creates_no_database() {
    // The good file starts, and creates its databases: the rows below
    // differ from it in one thing each.
    {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hedui.toml"), with("")).unwrap();
        let mut child = tokio::process::Command::new(workspace_bin("hedui"))
            .args([
                "serve",
                "--config",
                "hedui.toml",
                "--insecure-plaintext-development-only",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let line = tokio::time::timeout(PROCESS_TIMEOUT, lines.next_line())
            .await
            .expect("the good configuration starts")
            .unwrap()
            .expect("a ready line");
        assert!(line.contains("listening"), "{line}");
        child.kill().await.unwrap();
        assert!(dir.path().join("reports.db").exists());
        assert!(dir.path().join("reports-audit.db").exists());
    }
    let rows = config_rows();
    for row in &rows {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hedui.toml"), &row.text).unwrap();
        let args = [
            "serve",
            "--config",
            "hedui.toml",
            "--insecure-plaintext-development-only",
        ]
        .map(String::from);
        let (code, out) = run_hedui(dir.path(), &args).await;
        let name = row.name;
        assert!(
            code.is_some_and(|c| c != 0),
            "{name}: exit {code:?}\n{}\n{out}",
            row.text
        );
        assert!(!out.contains("panicked"), "{name}: panicked\n{out}");
        assert!(
            out.contains(row.names),
            "{name}: the output does not name {:?}\n{out}",
            row.names
        );
        let dbs: Vec<PathBuf> = files_in(dir.path())
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n != "hedui.toml"))
            .collect();
        assert!(dbs.is_empty(), "{name}: created {dbs:?}\n{out}");
    }
    eprintln!("configuration catalogue: {} rows", rows.len());
}
