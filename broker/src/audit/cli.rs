//! `hedui audit`: the auditors' command line.
//!
//! - `query` and `export` ask a running broker's `AuditService` (so the
//!   query is itself recorded); the subject's identity number is sent to
//!   the broker, which hashes it.
//! - `verify`, `prove` and `purge` work offline on the store named by the
//!   configuration file.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use chrono::{DateTime, NaiveDate};
use hedui_proto::v1::{
    AuditFilter, AuditRecordKind, ExportFormat, ExportRecordsRequest, QueryRecordsRequest,
    audit_service_client::AuditServiceClient,
};

use super::{
    AuditLog,
    check::{prove, verify_log},
    configured_public_key, open_backend,
    record::now_ms,
};
use crate::{client::PurposeArg, config::Config};

/// `hedui audit ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Records matching filters, newest first (through a running broker).
    Query {
        /// The filters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Most records to print.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Every record matching filters as JSON Lines or CSV (through a
    /// running broker).
    Export {
        /// The filters.
        #[command(flatten)]
        filter: FilterArgs,
        /// `jsonl` or `csv`.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: FormatArg,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Checks the whole log offline; names the first bad record.
    Verify {
        /// The broker's configuration file (its `[audit]` section).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The SQLite audit file, overriding the configuration's.
        #[arg(long)]
        audit_db: Option<PathBuf>,
        /// The public key (hex) checkpoints must be signed with; default:
        /// the configured signing key's.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Prints the inclusion proof of one record against the latest
    /// checkpoint that covers it (offline).
    Prove {
        /// The record's position (`seq`).
        record: u64,
        /// The broker's configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The SQLite audit file, overriding the configuration's.
        #[arg(long)]
        audit_db: Option<PathBuf>,
    },
    /// Purges records past retention now, recorded and checkpointed
    /// (offline; the broker also does it every `purge_every_hours`).
    Purge {
        /// The broker's configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The SQLite audit file, overriding the configuration's.
        #[arg(long)]
        audit_db: Option<PathBuf>,
    },
}

/// Filters of `query` and `export`.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Who asks (recorded with the query).
    #[arg(long, env = "HEDUI_AUDITOR")]
    pub auditor: String,
    /// A person's resident identity number.
    #[arg(long)]
    pub subject: Option<String>,
    /// The calling platform's client identity.
    #[arg(long)]
    pub client: Option<String>,
    /// The operator who acted.
    #[arg(long)]
    pub operator: Option<String>,
    /// The purpose.
    #[arg(long, value_enum)]
    pub purpose: Option<PurposeArg>,
    /// A source contacted.
    #[arg(long)]
    pub source: Option<String>,
    /// The outcome (`ok`, `invalid_argument`, ...).
    #[arg(long)]
    pub outcome: Option<String>,
    /// The kind of record.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// From this time (RFC 3339, or a date `YYYY-MM-DD`, UTC).
    #[arg(long)]
    pub from: Option<String>,
    /// Before this time (RFC 3339, or a date, UTC).
    #[arg(long)]
    pub to: Option<String>,
    /// How to reach the broker (as an auditor: `--as auditor`).
    #[command(flatten)]
    pub connect: crate::client::Connect,
}

/// Record kinds as the CLI writes them.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// A verification.
    Verification,
    /// A refused request.
    Denied,
    /// A report read again.
    ReportRead,
    /// A query of the audit log.
    AuditQuery,
    /// A configuration load.
    Configuration,
    /// A retention purge.
    RetentionPurge,
    /// A streaming verification's opening record.
    VerificationStarted,
    /// A lookup served to a peer broker.
    FederationLookup,
    /// A report completed after late answers.
    ReportCompleted,
    /// An authorization letter registered.
    ConsentRegistered,
    /// An authorization letter revoked.
    ConsentRevoked,
}

/// Export formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// JSON Lines: the records' canonical bytes.
    Jsonl,
    /// CSV with a header line.
    Csv,
}

fn time_arg(flag: &str, s: &str) -> anyhow::Result<prost_types::Timestamp> {
    let ms = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.timestamp_millis()
    } else if let Ok(d) = s.parse::<NaiveDate>() {
        d.and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_millis()
    } else {
        anyhow::bail!("--{flag}: {s:?} is neither RFC 3339 nor YYYY-MM-DD");
    };
    Ok(prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<AuditFilter> {
        Ok(AuditFilter {
            subject_id: self.subject.clone().unwrap_or_default(),
            client: self.client.clone().unwrap_or_default(),
            operator_id: self.operator.clone().unwrap_or_default(),
            purpose: self
                .purpose
                .map_or(0, |p| hedui_proto::v1::Purpose::from(p) as i32),
            source_id: self.source.clone().unwrap_or_default(),
            outcome: self.outcome.clone().unwrap_or_default(),
            kind: self.kind.map_or(0, |k| {
                (match k {
                    KindArg::Verification => AuditRecordKind::Verification,
                    KindArg::Denied => AuditRecordKind::Denied,
                    KindArg::ReportRead => AuditRecordKind::ReportRead,
                    KindArg::AuditQuery => AuditRecordKind::AuditQuery,
                    KindArg::Configuration => AuditRecordKind::Configuration,
                    KindArg::RetentionPurge => AuditRecordKind::RetentionPurge,
                    KindArg::VerificationStarted => AuditRecordKind::VerificationStarted,
                    KindArg::FederationLookup => AuditRecordKind::FederationLookup,
                    KindArg::ReportCompleted => AuditRecordKind::ReportCompleted,
                    KindArg::ConsentRegistered => AuditRecordKind::ConsentRegistered,
                    KindArg::ConsentRevoked => AuditRecordKind::ConsentRevoked,
                }) as i32
            }),
            from_time: self
                .from
                .as_deref()
                .map(|s| time_arg("from", s))
                .transpose()?,
            to_time: self.to.as_deref().map(|s| time_arg("to", s)).transpose()?,
        })
    }
}

/// The `[audit]` section of the configuration file (or the defaults),
/// with the SQLite file overridden by `audit_db`.
fn audit_config_of(
    path: Option<&PathBuf>,
    audit_db: Option<PathBuf>,
) -> anyhow::Result<super::AuditConfig> {
    let config = Config::load_layered(path.map(PathBuf::as_path))?;
    let mut audit = config.audit_config();
    if audit_db.is_some() {
        audit.path = audit_db;
    }
    Ok(audit)
}

fn status_error(what: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {:?}: {}", s.code(), s.message())
}

/// Runs an audit command; the exit code says whether the log verified.
///
/// # Errors
/// When the broker or the store cannot be reached, or arguments are wrong.
pub async fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Query { filter, limit } => {
            let mut client = AuditServiceClient::new(filter.connect.channel_as("auditor").await?);
            let mut token = String::new();
            let mut printed = 0;
            println!("seq\ttime\tkind\tclient\toperator\tpurpose\toutcome\tsources\trequest_id");
            while printed < limit {
                let page = client
                    .query_records(QueryRecordsRequest {
                        auditor_id: filter.auditor.clone(),
                        filter: Some(filter.filter()?),
                        page_size: (limit - printed).min(1000),
                        page_token: token.clone(),
                    })
                    .await
                    .map_err(|s| status_error("query", &s))?
                    .into_inner();
                for r in &page.records {
                    let time = r
                        .time
                        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32))
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default();
                    let kind = AuditRecordKind::try_from(r.kind)
                        .map(|k| {
                            k.as_str_name()
                                .trim_start_matches("AUDIT_RECORD_KIND_")
                                .to_ascii_lowercase()
                        })
                        .unwrap_or_default();
                    println!(
                        "{}\t{time}\t{kind}\t{}\t{}\t{}\t{}\t{}\t{}",
                        r.seq,
                        r.client,
                        r.operator_id,
                        r.purpose,
                        r.outcome,
                        r.sources.len(),
                        r.request_id
                    );
                    printed += 1;
                }
                if page.next_page_token.is_empty() || page.records.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export {
            filter,
            format,
            out,
        } => {
            let mut client = AuditServiceClient::new(filter.connect.channel_as("auditor").await?);
            let mut stream = client
                .export_records(ExportRecordsRequest {
                    auditor_id: filter.auditor.clone(),
                    filter: Some(filter.filter()?),
                    format: match format {
                        FormatArg::Jsonl => ExportFormat::JsonLines,
                        FormatArg::Csv => ExportFormat::Csv,
                    } as i32,
                })
                .await
                .map_err(|s| status_error("export", &s))?
                .into_inner();
            let mut sink: Box<dyn Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("--out {}", p.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| status_error("export", &s))?
            {
                sink.write_all(&chunk.data)?;
            }
            sink.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            config,
            audit_db,
            public_key,
        } => {
            let audit = audit_config_of(config.as_ref(), audit_db)?;
            let key = match public_key {
                Some(k) => k,
                None => configured_public_key(&audit)?,
            };
            let backend = open_backend(&audit)
                .await
                .with_context(|| format!("audit log ({})", audit.location()))?;
            let report = verify_log(backend.as_ref(), audit.suite, &key).await?;
            backend.close().await;
            println!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Prove {
            record,
            config,
            audit_db,
        } => {
            let audit = audit_config_of(config.as_ref(), audit_db)?;
            let backend = open_backend(&audit)
                .await
                .with_context(|| format!("audit log ({})", audit.location()))?;
            let proof = prove(backend.as_ref(), audit.suite, record).await?;
            backend.close().await;
            print!("{proof}");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Purge { config, audit_db } => {
            let audit = audit_config_of(config.as_ref(), audit_db)?;
            let log = AuditLog::open(&audit)
                .await
                .with_context(|| format!("audit log ({})", audit.location()))?;
            let purged = log.purge(now_ms()).await?;
            log.close().await;
            println!(
                "purged {} records; every record below {} is purged",
                purged.records, purged.before
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
