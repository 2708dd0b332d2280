//! `hedui.v1.AuditService`: queries, exports, the chain's status and a
//! household's own access history, over the [`AuditLog`]. Every call is
//! itself recorded before it answers; identity numbers in requests are
//! hashed on arrival. Errors become statuses in [`to_status`], and only
//! there.

use std::pin::Pin;

use futures::Stream;
use hedui_proto::{
    resident_id,
    v1::{
        AuditFilter, AuditRecord, AuditRecordKind, AuditSource, Checkpoint, ExportFormat,
        ExportRecordsRequest, ExportRecordsResponse, GetChainStatusRequest, GetChainStatusResponse,
        GetInclusionProofRequest, GetInclusionProofResponse, GetSubjectAccessHistoryRequest,
        GetSubjectAccessHistoryResponse, QueryRecordsRequest, QueryRecordsResponse, SubjectAccess,
        audit_service_server::AuditService,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::error;

use super::{
    AuditError, AuditLog, Entry, Kind,
    check::verify_log,
    record::Record,
    store::{Filter, Row},
};
use crate::{server::caller_of, verify::purpose_name};

/// Records per page when none is asked for.
pub const DEFAULT_PAGE: u32 = 100;
/// Most records per page.
pub const MAX_PAGE: u32 = 1000;
/// Longest auditor or requester id accepted, in characters.
pub const MAX_AUDITOR_ID: usize = 64;

/// `AuditService` over the broker's audit log.
#[derive(Debug, Clone)]
pub struct AuditApi {
    log: AuditLog,
}

impl AuditApi {
    /// The service over `log`.
    pub fn new(log: AuditLog) -> Self {
        Self { log }
    }
}

/// The one place where an audit error becomes a gRPC status: the request's
/// own mistakes are `INVALID_ARGUMENT` naming the field; everything else is
/// `UNAVAILABLE` without the store's internals (they go to the log).
pub fn to_status(e: AuditError) -> Status {
    match e {
        AuditError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        AuditError::Database(_)
        | AuditError::Migrate(_)
        | AuditError::Corrupt(_)
        | AuditError::Config(_)
        | AuditError::Key(_)
        | AuditError::SuiteMismatch { .. }
        | AuditError::Unavailable(_) => {
            error!(error = %e, "audit service failed");
            Status::unavailable("the audit log is unavailable")
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> AuditError {
    AuditError::InvalidArgument {
        field,
        message: message.into(),
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), AuditError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.chars().count() > MAX_AUDITOR_ID || value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("at most {MAX_AUDITOR_ID} characters, no control characters"),
        ));
    }
    Ok(())
}

/// The keyed hash of an identity number given in a request, checked first.
fn subject_of(log: &AuditLog, field: &'static str, id: &str) -> Result<String, AuditError> {
    let today = crate::time::china_today();
    resident_id::validate(id, (today.0, today.1, today.2))
        .map_err(|e| invalid(field, e.to_string()))?;
    Ok(log.subject_key().subject(id))
}

fn page(size: u32, token: &str) -> Result<(u32, Option<u64>), AuditError> {
    let size = match size {
        0 => DEFAULT_PAGE,
        n if n > MAX_PAGE => {
            return Err(invalid("page_size", format!("at most {MAX_PAGE}")));
        }
        n => n,
    };
    let before = if token.is_empty() {
        None
    } else {
        // A token is a record's position, which the store keeps as a
        // signed 64-bit number.
        Some(
            token
                .parse::<u64>()
                .ok()
                .filter(|t| i64::try_from(*t).is_ok())
                .ok_or_else(|| {
                    invalid("page_token", "must be a next_page_token returned before")
                })?,
        )
    };
    Ok((size, before))
}

fn next_token(rows: &[Row], size: u32) -> String {
    match rows.last() {
        Some(r) if rows.len() == size as usize && r.seq > 0 => r.seq.to_string(),
        _ => String::new(),
    }
}

fn kind_to_proto(kind: Kind) -> AuditRecordKind {
    match kind {
        Kind::Verification => AuditRecordKind::Verification,
        Kind::Denied => AuditRecordKind::Denied,
        Kind::ReportRead => AuditRecordKind::ReportRead,
        Kind::AuditQuery => AuditRecordKind::AuditQuery,
        Kind::Configuration => AuditRecordKind::Configuration,
        Kind::RetentionPurge => AuditRecordKind::RetentionPurge,
        Kind::VerificationStarted => AuditRecordKind::VerificationStarted,
        Kind::FederationLookup => AuditRecordKind::FederationLookup,
        Kind::ReportCompleted => AuditRecordKind::ReportCompleted,
        Kind::ConsentRegistered => AuditRecordKind::ConsentRegistered,
        Kind::ConsentRevoked => AuditRecordKind::ConsentRevoked,
    }
}

fn kind_from_proto(kind: i32) -> Result<Option<Kind>, AuditError> {
    Ok(
        match AuditRecordKind::try_from(kind)
            .map_err(|_| invalid("filter.kind", format!("{kind} is not a known kind")))?
        {
            AuditRecordKind::Unspecified => None,
            AuditRecordKind::Verification => Some(Kind::Verification),
            AuditRecordKind::Denied => Some(Kind::Denied),
            AuditRecordKind::ReportRead => Some(Kind::ReportRead),
            AuditRecordKind::AuditQuery => Some(Kind::AuditQuery),
            AuditRecordKind::Configuration => Some(Kind::Configuration),
            AuditRecordKind::RetentionPurge => Some(Kind::RetentionPurge),
            AuditRecordKind::VerificationStarted => Some(Kind::VerificationStarted),
            AuditRecordKind::FederationLookup => Some(Kind::FederationLookup),
            AuditRecordKind::ReportCompleted => Some(Kind::ReportCompleted),
            AuditRecordKind::ConsentRegistered => Some(Kind::ConsentRegistered),
            AuditRecordKind::ConsentRevoked => Some(Kind::ConsentRevoked),
        },
    )
}

/// A time of a filter in milliseconds since the epoch; refused when it
/// is not a valid timestamp (nanoseconds out of range) or out of range of
/// milliseconds.
fn millis(field: &'static str, t: &prost_types::Timestamp) -> Result<i64, AuditError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(field, "nanos must be between 0 and 999999999"));
    }
    t.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(t.nanos) / 1_000_000))
        .ok_or_else(|| invalid(field, "out of range"))
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A proto filter as a store filter, and its description for the record
/// of the query (the subject by its keyed hash only).
fn filter_of(
    log: &AuditLog,
    f: Option<AuditFilter>,
) -> Result<(Filter, String, Option<String>), AuditError> {
    let f = f.unwrap_or_default();
    let mut out = Filter::default();
    let mut said = Vec::new();
    let text = |field: &'static str, v: &str| -> Result<Option<String>, AuditError> {
        if v.is_empty() {
            return Ok(None);
        }
        if v.chars().count() > 128 || v.chars().any(char::is_control) {
            return Err(invalid(
                field,
                "at most 128 characters, no control characters",
            ));
        }
        Ok(Some(v.to_owned()))
    };
    let subject = if f.subject_id.is_empty() {
        None
    } else {
        Some(subject_of(log, "filter.subject_id", &f.subject_id)?)
    };
    out.subject.clone_from(&subject);
    out.client = text("filter.client", &f.client)?;
    out.operator = text("filter.operator_id", &f.operator_id)?;
    out.source = text("filter.source_id", &f.source_id)?;
    out.outcome = text("filter.outcome", &f.outcome)?;
    if f.purpose != 0 {
        if hedui_proto::v1::Purpose::try_from(f.purpose).is_err() {
            return Err(invalid(
                "filter.purpose",
                format!("{} is not a known purpose", f.purpose),
            ));
        }
        out.purpose = Some(purpose_name(f.purpose));
    }
    out.kind = kind_from_proto(f.kind)?.map(|k| k.name().to_owned());
    out.from_ms = f
        .from_time
        .as_ref()
        .map(|t| millis("filter.from_time", t))
        .transpose()?;
    out.to_ms = f
        .to_time
        .as_ref()
        .map(|t| millis("filter.to_time", t))
        .transpose()?;
    if let Some(s) = &subject {
        said.push(format!("subject={}", &s[..16]));
    }
    for (k, v) in [
        ("client", &out.client),
        ("operator", &out.operator),
        ("purpose", &out.purpose),
        ("source", &out.source),
        ("outcome", &out.outcome),
        ("kind", &out.kind),
    ] {
        if let Some(v) = v {
            said.push(format!("{k}={v}"));
        }
    }
    if let Some(t) = out.from_ms {
        said.push(format!("from_ms={t}"));
    }
    if let Some(t) = out.to_ms {
        said.push(format!("to_ms={t}"));
    }
    Ok((out, said.join(" "), subject))
}

/// A stored row as the API shows it.
pub fn record_of(row: &Row) -> AuditRecord {
    let mut out = AuditRecord {
        seq: row.seq,
        time: Some(timestamp(row.time_ms)),
        kind: Kind::from_name(&row.kind).map_or(0, |k| kind_to_proto(k) as i32),
        request_id: row.request_id.clone(),
        client: row.client.clone(),
        operator_id: row.operator.clone(),
        purpose: row.purpose.clone(),
        outcome: row.outcome.clone(),
        leaf_hash: hex::encode(&row.leaf_hash),
        canonical: row.body.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(r) = row
        .body
        .as_deref()
        .and_then(|b| Record::parse(b.as_bytes()))
    {
        let e = r.entry;
        out.consent_reference = e.consent_reference;
        out.subjects = e.subjects;
        out.sources = e
            .sources
            .into_iter()
            .map(|s| AuditSource {
                source_id: s.id,
                status: s.status,
                cache_hit: s.cache_hit,
                fact_count: s.facts,
            })
            .collect();
        out.report_digest = e.report_digest;
        out.latency = Some(prost_types::Duration {
            seconds: (e.latency_ms / 1000) as i64,
            nanos: ((e.latency_ms % 1000) * 1_000_000) as i32,
        });
        out.detail = e.detail;
    }
    out
}

/// The CSV header of exports.
pub const CSV_HEADER: &str = "seq,time_ms,kind,request_id,client,operator,purpose,consent_reference,subjects,sources,report_digest,latency_ms,outcome,detail,leaf_hash\n";

fn csv_field(out: &mut String, v: &str) {
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

/// One record as a CSV line (RFC 4180).
pub fn csv_line(row: &Row) -> String {
    let r = record_of(row);
    let fields = [
        r.seq.to_string(),
        row.time_ms.to_string(),
        row.kind.clone(),
        r.request_id,
        r.client,
        r.operator_id,
        r.purpose,
        r.consent_reference,
        r.subjects.join(";"),
        r.sources
            .iter()
            .map(|s| format!("{}:{}:{}", s.source_id, s.status, u8::from(s.cache_hit)))
            .collect::<Vec<_>>()
            .join(";"),
        r.report_digest,
        r.latency
            .map(|d| (d.seconds * 1000 + i64::from(d.nanos) / 1_000_000).to_string())
            .unwrap_or_default(),
        r.outcome,
        r.detail,
        r.leaf_hash,
    ];
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(&mut out, f);
    }
    out.push('\n');
    out
}

impl AuditApi {
    /// Records a call of this service before it answers.
    async fn record_query<T>(
        &self,
        request: &Request<T>,
        who: &str,
        what: String,
        subject: Option<String>,
    ) -> Result<(), AuditError> {
        let mut entry = Entry::new(Kind::AuditQuery);
        entry.request_id = uuid::Uuid::new_v4().to_string();
        entry.client = caller_of(request).identity;
        entry.operator = who.to_owned();
        entry.detail = what;
        entry.subjects.extend(subject);
        self.log.record(entry).await.map(|_| ())
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportRecordsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn query_records(
        &self,
        request: Request<QueryRecordsRequest>,
    ) -> Result<Response<QueryRecordsResponse>, Status> {
        let r = request.get_ref().clone();
        check_id("auditor_id", &r.auditor_id).map_err(to_status)?;
        let (mut filter, said, subject) = filter_of(&self.log, r.filter).map_err(to_status)?;
        let (size, before) = page(r.page_size, &r.page_token).map_err(to_status)?;
        filter.limit = size;
        filter.before_seq = before;
        self.record_query(
            &request,
            &r.auditor_id,
            format!("query {said}").trim_end().to_owned(),
            subject,
        )
        .await
        .map_err(to_status)?;
        let rows = self.log.backend().query(&filter).await.map_err(to_status)?;
        Ok(Response::new(QueryRecordsResponse {
            next_page_token: next_token(&rows, size),
            records: rows.iter().map(record_of).collect(),
        }))
    }

    type ExportRecordsStream = ExportStream;

    async fn export_records(
        &self,
        request: Request<ExportRecordsRequest>,
    ) -> Result<Response<Self::ExportRecordsStream>, Status> {
        let r = request.get_ref().clone();
        check_id("auditor_id", &r.auditor_id).map_err(to_status)?;
        let format = match ExportFormat::try_from(r.format) {
            Ok(ExportFormat::JsonLines) => ExportFormat::JsonLines,
            Ok(ExportFormat::Csv) => ExportFormat::Csv,
            Ok(ExportFormat::Unspecified) | Err(_) => {
                return Err(to_status(invalid("format", "must be JSON_LINES or CSV")));
            }
        };
        let (mut filter, said, subject) = filter_of(&self.log, r.filter).map_err(to_status)?;
        self.record_query(
            &request,
            &r.auditor_id,
            format!("export {} {said}", format.as_str_name())
                .trim_end()
                .to_owned(),
            subject,
        )
        .await
        .map_err(to_status)?;
        let (tx, rx) = mpsc::channel(4);
        let backend = std::sync::Arc::clone(self.log.backend());
        tokio::spawn(async move {
            filter.limit = MAX_PAGE;
            if format == ExportFormat::Csv {
                let header = ExportRecordsResponse {
                    data: CSV_HEADER.as_bytes().to_vec(),
                };
                if tx.send(Ok(header)).await.is_err() {
                    return;
                }
            }
            loop {
                let rows = match backend.query(&filter).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                };
                let mut data = String::new();
                for row in &rows {
                    match format {
                        ExportFormat::Csv => data.push_str(&csv_line(row)),
                        ExportFormat::JsonLines | ExportFormat::Unspecified => {
                            data.push_str(row.body.as_deref().unwrap_or("{}"));
                            data.push('\n');
                        }
                    }
                }
                if !data.is_empty()
                    && tx
                        .send(Ok(ExportRecordsResponse {
                            data: data.into_bytes(),
                        }))
                        .await
                        .is_err()
                {
                    return;
                }
                match rows.last() {
                    Some(last) if rows.len() == MAX_PAGE as usize && last.seq > 0 => {
                        filter.before_seq = Some(last.seq);
                    }
                    _ => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_chain_status(
        &self,
        request: Request<GetChainStatusRequest>,
    ) -> Result<Response<GetChainStatusResponse>, Status> {
        let auditor = request.get_ref().auditor_id.clone();
        check_id("auditor_id", &auditor).map_err(to_status)?;
        self.record_query(&request, &auditor, "chain status".into(), None)
            .await
            .map_err(to_status)?;
        let report = verify_log(
            self.log.backend().as_ref(),
            self.log.suite(),
            &self.log.public_key_hex(),
        )
        .await
        .map_err(to_status)?;
        Ok(Response::new(GetChainStatusResponse {
            verified: report.ok(),
            records: report.records,
            purged: report.purged,
            problem: report
                .problem
                .as_ref()
                .map(|p| p.message.clone())
                .unwrap_or_default(),
            first_bad_record: report.problem.as_ref().and_then(|p| p.record),
            latest_checkpoint: report.latest.map(|c| Checkpoint {
                tree_size: c.tree_size,
                root: hex::encode(&c.root),
                time: Some(timestamp(c.time_ms)),
                suite: self.log.suite().name().into(),
                signing_key: c.key,
                signature: hex::encode(&c.signature),
            }),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<GetInclusionProofResponse>, Status> {
        let r = request.get_ref().clone();
        check_id("auditor_id", &r.auditor_id).map_err(to_status)?;
        self.record_query(
            &request,
            &r.auditor_id,
            format!("inclusion proof record={}", r.seq),
            None,
        )
        .await
        .map_err(to_status)?;
        let proof =
            crate::audit::check::prove(self.log.backend().as_ref(), self.log.suite(), r.seq)
                .await
                .map_err(to_status)?;
        Ok(Response::new(GetInclusionProofResponse {
            seq: proof.seq,
            leaf_hash: hex::encode(proof.leaf_hash),
            checkpoint: Some(Checkpoint {
                tree_size: proof.checkpoint.tree_size,
                root: hex::encode(&proof.checkpoint.root),
                time: Some(timestamp(proof.checkpoint.time_ms)),
                suite: self.log.suite().name().into(),
                signing_key: proof.checkpoint.key,
                signature: hex::encode(&proof.checkpoint.signature),
            }),
            path: proof.path.iter().map(hex::encode).collect(),
        }))
    }

    async fn get_subject_access_history(
        &self,
        request: Request<GetSubjectAccessHistoryRequest>,
    ) -> Result<Response<GetSubjectAccessHistoryResponse>, Status> {
        let r = request.get_ref().clone();
        check_id("requester_id", &r.requester_id).map_err(to_status)?;
        if r.subject_id.is_empty() {
            return Err(to_status(invalid("subject_id", "is required")));
        }
        let subject = subject_of(&self.log, "subject_id", &r.subject_id).map_err(to_status)?;
        let (size, before) = page(r.page_size, &r.page_token).map_err(to_status)?;
        self.record_query(
            &request,
            &r.requester_id,
            format!("subject access subject={}", &subject[..16]),
            Some(subject.clone()),
        )
        .await
        .map_err(to_status)?;
        // Auditors' queries are not shown to the household (an inspection
        // may not be revealed to whom it concerns), so a page is filled
        // from as many store pages as it takes to find `size` accesses
        // the household may see, and the next page starts after the last
        // one shown.
        let mut shown = Vec::new();
        let mut cursor = before;
        let mut more = false;
        loop {
            let rows = self
                .log
                .backend()
                .query(&Filter {
                    subject: Some(subject.clone()),
                    before_seq: cursor,
                    limit: size,
                    ..Filter::default()
                })
                .await
                .map_err(to_status)?;
            let exhausted = rows.len() < size as usize;
            let mut rows = rows.into_iter();
            for row in rows.by_ref() {
                cursor = Some(row.seq);
                if row.kind != Kind::AuditQuery.name() {
                    shown.push(row);
                    if shown.len() == size as usize {
                        break;
                    }
                }
            }
            if shown.len() == size as usize {
                // Rows left unread in this store page, or a full store
                // page, may hold more.
                more = rows.next().is_some() || !exhausted;
                break;
            }
            if exhausted || cursor == Some(0) {
                break;
            }
        }
        let view = &self.log.config().subject_view;
        let accesses = shown
            .iter()
            .map(|row| {
                let r = record_of(row);
                SubjectAccess {
                    time: r.time,
                    kind: r.kind,
                    purpose: r.purpose,
                    client: if view.client { r.client } else { String::new() },
                    operator_id: if view.operator {
                        r.operator_id
                    } else {
                        String::new()
                    },
                    consent_reference: if view.consent_reference {
                        r.consent_reference
                    } else {
                        String::new()
                    },
                    source_ids: r.sources.into_iter().map(|s| s.source_id).collect(),
                    outcome: r.outcome,
                }
            })
            .collect();
        let next_page_token = match shown.last() {
            Some(last) if more && last.seq > 0 => last.seq.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(GetSubjectAccessHistoryResponse {
            accesses,
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_as_rfc4180_says() {
        let mut out = String::new();
        csv_field(&mut out, "plain");
        out.push(',');
        csv_field(&mut out, "a,b \"c\"\nd");
        assert_eq!(out, "plain,\"a,b \"\"c\"\"\nd\"");
    }

    #[test]
    fn pages_are_bounded_and_tokens_checked() {
        assert_eq!(page(0, "").unwrap(), (DEFAULT_PAGE, None));
        assert_eq!(page(10, "42").unwrap(), (10, Some(42)));
        let e = page(MAX_PAGE + 1, "").unwrap_err();
        assert!(e.to_string().starts_with("page_size"), "{e}");
        let e = page(10, "abc").unwrap_err();
        assert!(e.to_string().starts_with("page_token"), "{e}");
        let e = page(10, &u64::MAX.to_string()).unwrap_err();
        assert!(e.to_string().starts_with("page_token"), "{e}");
        assert_eq!(
            page(10, &i64::MAX.to_string()).unwrap(),
            (10, Some(i64::MAX as u64))
        );
        assert!(check_id("auditor_id", " ").is_err());
        assert!(check_id("auditor_id", "a\u{7}").is_err());
        assert!(check_id("auditor_id", "inspector-1").is_ok());
    }

    #[test]
    fn filter_times_out_of_range_are_refused_not_a_panic() {
        let t = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(millis("f", &t(1, 500_000_000)).unwrap(), 1500);
        assert_eq!(millis("f", &t(-1, 0)).unwrap(), -1000);
        for bad in [
            t(i64::MAX, 0),
            t(i64::MIN, 0),
            t(0, -1),
            t(0, 1_000_000_000),
        ] {
            let e = millis("filter.from_time", &bad).unwrap_err();
            assert!(e.to_string().starts_with("filter.from_time"), "{e}");
        }
    }

    #[test]
    fn every_store_failure_is_unavailable_without_internals() {
        let s = to_status(AuditError::Corrupt("audit_head".into()));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(!s.message().contains("audit_head"));
        let s = to_status(invalid("filter.kind", "7 is not a known kind"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().starts_with("filter.kind"));
    }
}
