//! What one audit record says, and its canonical bytes.
//!
//! A record is stored as its canonical bytes: the compact JSON of
//! [`Record`] with the fields in the order declared here. Those bytes are
//! the Merkle leaf and the link of the chain; the columns kept next to them
//! for queries are checked against them by `hedui audit verify`.
//!
//! Identity numbers never appear in a record: members are the keyed hashes
//! of their numbers ([`super::crypto::SubjectKey`]), and free text that
//! came from a caller is passed through [`redact_ids`] first.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::crypto::SubjectKey;

/// Version of the record format, the first field of every record.
pub const FORMAT: u32 = 1;

/// What kind of event a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A verification: sources were asked and a report produced.
    Verification,
    /// A verification refused before any source was asked.
    Denied,
    /// A stored report read again (`GetReport`).
    ReportRead,
    /// An auditor's or a household's query of the audit log.
    AuditQuery,
    /// The broker (re)loaded its configuration.
    Configuration,
    /// Records past retention were purged.
    RetentionPurge,
    /// A streaming verification about to send its first event: the
    /// members and the sources to be asked, committed before anything
    /// leaves. Its [`Kind::Verification`] record follows.
    VerificationStarted,
    /// A lookup served to a peer broker (federation).
    FederationLookup,
    /// A report completed after late answers.
    ReportCompleted,
    /// An authorization letter registered (`ConsentService`).
    ConsentRegistered,
    /// An authorization letter revoked (`ConsentService`).
    ConsentRevoked,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 11] = [
        Kind::Verification,
        Kind::Denied,
        Kind::ReportRead,
        Kind::AuditQuery,
        Kind::Configuration,
        Kind::RetentionPurge,
        Kind::VerificationStarted,
        Kind::FederationLookup,
        Kind::ReportCompleted,
        Kind::ConsentRegistered,
        Kind::ConsentRevoked,
    ];

    /// The kind's name, as stored.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Verification => "verification",
            Kind::Denied => "denied",
            Kind::ReportRead => "report_read",
            Kind::AuditQuery => "audit_query",
            Kind::Configuration => "configuration",
            Kind::RetentionPurge => "retention_purge",
            Kind::VerificationStarted => "verification_started",
            Kind::FederationLookup => "federation_lookup",
            Kind::ReportCompleted => "report_completed",
            Kind::ConsentRegistered => "consent_registered",
            Kind::ConsentRevoked => "consent_revoked",
        }
    }

    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One source contacted for an access. In the canonical bytes it is the
/// array `["id","status",cache_hit,facts]` (28 sources per verification:
/// the compact form halves a record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SourceTuple", into = "SourceTuple")]
pub struct SourceEntry {
    /// The source id, e.g. `traffic-police`.
    pub id: String,
    /// Its outcome: `ok`, `no_record`, `timeout`, `unavailable`, `error`,
    /// `not_queried`; `asked` in a `verification_started` record.
    pub status: String,
    /// Whether the answer came from the broker's cache (a disclosure too).
    pub cache_hit: bool,
    /// Facts received.
    pub facts: u32,
}

type SourceTuple = (String, String, bool, u32);

impl From<SourceTuple> for SourceEntry {
    fn from((id, status, cache_hit, facts): SourceTuple) -> Self {
        Self {
            id,
            status,
            cache_hit,
            facts,
        }
    }
}

impl From<SourceEntry> for SourceTuple {
    fn from(s: SourceEntry) -> Self {
        (s.id, s.status, s.cache_hit, s.facts)
    }
}

/// The fact kinds one source disclosed for an access, as the purpose let
/// them through. In the canonical bytes it is the array
/// `["id",["kind",...]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "DisclosedTuple", into = "DisclosedTuple")]
pub struct Disclosed {
    /// The source id, e.g. `rural-commercial-bank`.
    pub id: String,
    /// The kinds of the facts it disclosed, e.g. `school_enrolment`; a
    /// kind the purpose sees as totals only is written
    /// `financial_account:total`.
    pub kinds: Vec<String>,
}

type DisclosedTuple = (String, Vec<String>);

impl From<DisclosedTuple> for Disclosed {
    fn from((id, kinds): DisclosedTuple) -> Self {
        Self { id, kinds }
    }
}

impl From<Disclosed> for DisclosedTuple {
    fn from(d: Disclosed) -> Self {
        (d.id, d.kinds)
    }
}

/// What a caller submits: one access, or one event of the broker.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// When it happened, milliseconds since the Unix epoch (UTC).
    pub time_ms: i64,
    /// What kind of event.
    pub kind: Option<Kind>,
    /// The request id (the report id for a verification).
    pub request_id: String,
    /// Who called: the client identity (certificate identity once mTLS is
    /// on, the peer address before, or `anonymous`).
    pub client: String,
    /// The operator (case worker) the caller says acts.
    pub operator: String,
    /// The purpose, e.g. `dibao_application`.
    pub purpose: String,
    /// The consent (authorization letter) reference.
    pub consent_reference: String,
    /// The persons concerned, as keyed hashes of their identity numbers.
    pub subjects: Vec<String>,
    /// Every source contacted, with its outcome.
    pub sources: Vec<SourceEntry>,
    /// Digest (hex, the suite's hash) of what was returned: the report's
    /// protobuf encoding for a verification.
    pub report_digest: String,
    /// Time from the request to the answer, in milliseconds.
    pub latency_ms: u64,
    /// The outcome: `ok`, or the gRPC code given (`invalid_argument`, ...).
    pub outcome: String,
    /// More about it: why it was refused, what was queried or purged.
    pub detail: String,
    /// What was disclosed: per source whose facts reached the caller, the
    /// fact kinds of those facts. Absent (and not written) when nothing
    /// was disclosed, and in records written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disclosed: Vec<Disclosed>,
    /// Fact kinds the purpose may not see that the sources serve (not
    /// asked for, not disclosed), e.g. `financial_account`. Absent when
    /// none was withheld, and in records written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<String>,
}

impl Entry {
    /// An entry of `kind`, now, with everything else empty.
    pub fn new(kind: Kind) -> Self {
        Self {
            time_ms: now_ms(),
            kind: Some(kind),
            outcome: "ok".into(),
            ..Self::default()
        }
    }

    /// The kind (entries built with [`Entry::new`] always have one).
    pub fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::Verification)
    }

    /// Passes every free-text field through [`redact_ids`], so an identity
    /// number typed into a wrong field never reaches the log. The report
    /// digest is not free text: the broker computes it, and a hex digest
    /// holds a run of 15 digits often enough (about one in sixty) that
    /// redacting it would break the link between a report and its record.
    pub fn redacted(mut self, key: &SubjectKey) -> Self {
        for f in [
            &mut self.request_id,
            &mut self.client,
            &mut self.operator,
            &mut self.purpose,
            &mut self.consent_reference,
            &mut self.outcome,
            &mut self.detail,
        ] {
            redact_in_place(f, key);
        }
        for s in &mut self.sources {
            redact_in_place(&mut s.id, key);
            redact_in_place(&mut s.status, key);
        }
        for d in &mut self.disclosed {
            redact_in_place(&mut d.id, key);
        }
        self
    }
}

/// A record as stored: its place in the log, the leaf hash of the record
/// before it, and the entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Format version, [`FORMAT`].
    pub v: u32,
    /// Index of the record in the log (its leaf index), from 0.
    pub seq: u64,
    /// Leaf hash (hex) of the record before; empty for the first.
    pub prev: String,
    /// What happened.
    pub entry: Entry,
}

/// A record to be written, borrowing its entry: serializes to the same
/// canonical bytes as [`Record`].
#[derive(Debug, Serialize)]
pub struct RecordRef<'a> {
    /// Format version, [`FORMAT`].
    pub v: u32,
    /// Index of the record in the log.
    pub seq: u64,
    /// Leaf hash (hex) of the record before; empty for the first.
    pub prev: &'a str,
    /// What happened.
    pub entry: &'a Entry,
}

impl RecordRef<'_> {
    /// The canonical bytes of the record.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serializes")
    }
}

impl Record {
    /// The canonical bytes of the record.
    pub fn canonical(&self) -> Vec<u8> {
        RecordRef {
            v: self.v,
            seq: self.seq,
            prev: &self.prev,
            entry: &self.entry,
        }
        .canonical()
    }

    /// Parses canonical bytes; `None` unless they parse and are canonical
    /// (re-serializing gives the same bytes).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let record: Record = serde_json::from_slice(bytes).ok()?;
        (record.canonical() == bytes).then_some(record)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Replaces every run of 15 or more digits (with a trailing `X` or `x`,
/// if any) in `text` with `id:` and 16 hex digits of its keyed hash, so
/// free text can be stored: 18-digit resident identity numbers, the older
/// 15-digit ones, and anything that holds one inside a longer number.
pub fn redact_ids<'a>(text: &'a str, key: &SubjectKey) -> Cow<'a, str> {
    let b = text.as_bytes();
    // Most fields hold no identity number: those are not copied.
    let Some(first) = next_id(b, 0) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut found = Some(first);
    while let Some((start, end)) = found {
        out.push_str(&text[copied..start]);
        out.push_str("id:");
        out.push_str(&key.subject(&text[start..end].to_ascii_uppercase())[..16]);
        copied = end;
        found = next_id(b, end);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The first run of 15 or more digits (with a trailing `X` or `x`) in
/// `b` from `i` on: where it starts and ends.
fn next_id(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i < b.len() && (b[i] == b'X' || b[i] == b'x') {
            i += 1;
        }
        if i - start >= 15 {
            return Some((start, i));
        }
    }
    None
}

/// [`redact_ids`] on `text` itself.
fn redact_in_place(text: &mut String, key: &SubjectKey) {
    if let Cow::Owned(redacted) = redact_ids(text, key) {
        *text = redacted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::crypto::Suite;

    #[test]
    fn canonical_bytes_round_trip_and_refuse_other_spellings() {
        let mut entry = Entry::new(Kind::Verification);
        entry.operator = "op \"7\" 核对".into();
        entry.subjects = vec!["ab".into()];
        let r = Record {
            v: FORMAT,
            seq: 3,
            prev: "00".into(),
            entry,
        };
        let bytes = r.canonical();
        assert_eq!(Record::parse(&bytes), Some(r));
        let spaced = String::from_utf8(bytes).unwrap().replacen(':', ": ", 1);
        assert_eq!(Record::parse(spaced.as_bytes()), None);
    }

    /// A record written before `disclosed` and `withheld` existed parses,
    /// stays canonical, and its bytes are what the log chained; a record
    /// with them round-trips.
    #[test]
    fn records_without_the_disclosure_fields_still_parse() {
        let old = br#"{"v":1,"seq":7,"prev":"ab","entry":{"time_ms":1,"kind":"verification","request_id":"r","client":"c","operator":"o","purpose":"dibao_review","consent_reference":"SQ-1","subjects":["s"],"sources":[["public-security","ok",false,1]],"report_digest":"d","latency_ms":3,"outcome":"ok","detail":""}}"#;
        let record = Record::parse(old).expect("an old record parses and is canonical");
        assert!(record.entry.disclosed.is_empty() && record.entry.withheld.is_empty());
        assert_eq!(record.canonical(), old.to_vec());

        let mut entry = record.entry.clone();
        entry.disclosed = vec![Disclosed {
            id: "rural-commercial-bank".into(),
            kinds: vec!["financial_account:total".into()],
        }];
        entry.withheld = vec!["account_outflow".into()];
        let new = Record { entry, ..record };
        let bytes = new.canonical();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.ends_with(r#""detail":"","disclosed":[["rural-commercial-bank",["financial_account:total"]]],"withheld":["account_outflow"]}}"#),
            "{text}"
        );
        assert_eq!(Record::parse(&bytes), Some(new));
    }

    /// A log holding records in the old form (no disclosure fields: what
    /// every record before them was, byte for byte) and records with them
    /// verifies whole.
    #[tokio::test]
    async fn a_log_of_old_and_new_records_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::audit::testkit::TestStore::sqlite(dir.path(), "mixed", Suite::Sha256Ed25519);
        let log = store.open().await.unwrap();
        let key = log.subject_key().clone();
        for i in 0..6 {
            let mut e = crate::audit::testkit::sample_entry(i, &key);
            if i % 2 == 1 {
                e.disclosed = vec![Disclosed {
                    id: "education".into(),
                    kinds: vec!["school_enrolment".into()],
                }];
                e.withheld = vec!["financial_account".into()];
            } else {
                e.disclosed.clear();
                e.withheld.clear();
            }
            log.record(e).await.unwrap();
        }
        log.checkpoint().await.unwrap();
        let public = log.public_key_hex();
        log.close().await;
        let backend = store.backend().await.unwrap();
        let rows = backend
            .query(&crate::audit::store::Filter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let bodies: Vec<&str> = rows.iter().filter_map(|r| r.body.as_deref()).collect();
        assert_eq!(
            bodies
                .iter()
                .filter(|b| b.contains("\"disclosed\""))
                .count(),
            3
        );
        let report =
            crate::audit::check::verify_log(backend.as_ref(), Suite::Sha256Ed25519, &public)
                .await
                .unwrap();
        backend.close().await;
        assert!(report.ok(), "{report}");
        assert_eq!(report.records, 6);
    }

    #[test]
    fn identity_numbers_in_free_text_are_replaced() {
        let key = SubjectKey::new(Suite::Sha256Ed25519, None).unwrap();
        let id = "11010519491231002X";
        let text = format!("asked by {id}, and 1{id}, and {}", &id[..17]);
        let r = redact_ids(&text, &key);
        assert!(!r.contains(&id[..15]), "{r}");
        assert!(r.starts_with("asked by id:"), "{r}");
        assert_eq!(r.matches("id:").count(), 3, "{r}");
        // Short numbers stay.
        assert_eq!(
            redact_ids("case 12345678901234", &key),
            "case 12345678901234"
        );
        assert_eq!(redact_ids("SQ-2026-000123", &key), "SQ-2026-000123");
        // Text without one is not copied; fourteen digits and an X are one.
        assert!(matches!(
            redact_ids("SQ-2026-000123", &key),
            Cow::Borrowed(_)
        ));
        let r = redact_ids("n 12345678901234x.", &key);
        assert!(r.starts_with("n id:") && r.ends_with('.'), "{r}");
        let mut e = Entry::new(Kind::Denied);
        e.consent_reference = id.to_lowercase();
        assert!(
            !e.redacted(&key)
                .consent_reference
                .contains("11010519491231002")
        );
    }

    #[test]
    fn report_digests_are_not_redacted() {
        let key = SubjectKey::new(Suite::Sha256Ed25519, None).unwrap();
        // A digest with a run of 15 digits, as one in about sixty has.
        let digest = "a1234567890123456789bcdef0123456789abcdef0123456789abcdef0123456";
        let mut e = Entry::new(Kind::Verification);
        e.report_digest = digest.into();
        e.detail = digest.into();
        let e = e.redacted(&key);
        assert_eq!(e.report_digest, digest);
        assert_ne!(e.detail, digest, "free text is still redacted");
    }
}
