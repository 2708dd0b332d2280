//! Authorization letters (授权书): the consent a household signs, under the
//! Personal Information Protection Law, before its economic status is
//! verified. A letter names the persons it covers, the purposes it allows,
//! the days it is valid and the case worker who took it.
//!
//! A platform registers the letters it took (`hedui.v1.ConsentService`,
//! [`service`]); a letter belongs to that platform (the client identity
//! that may use it), and its reference is unique per platform. An admin may
//! register, read and revoke a letter on a platform's behalf, naming it.
//!
//! With `[consent] required = true` a verification must name a letter of
//! the caller's platform that is registered, not revoked, valid today
//! (China date), and that covers its purpose, its applicant and every
//! declared member ([`check_request`], before any source is asked), and
//! every active member household registration finds ([`check_members`],
//! before any other source is asked about them: when the request declares
//! its members, the other sources are asked about those, whom the letter
//! covers, while registration is asked). A request it does not cover is
//! refused with `PERMISSION_DENIED` and recorded as a `denied` audit record
//! (`crate::verify::Verifier::run`).
//!
//! Letters live in the report store's SQLite database (table `consents`);
//! registering and revoking are recorded in the audit log (kinds
//! `consent_registered`, `consent_revoked`) before the answer leaves, and a
//! change whose record cannot be committed is rolled back.

pub mod cli;
pub mod service;
#[cfg(test)]
mod tests;

use std::time::SystemTime;

use chrono::{Datelike, NaiveDate};
use hedui_proto::{
    resident_id,
    v1::{CivilDate, Consent, Purpose, VerificationRequest},
};
use prost::Message;
use sqlx::SqlitePool;
use tracing::{info, warn};

use crate::{
    audit::{AuditError, AuditLog, Entry, Kind},
    report::household::Household,
    store::StoreError,
    verify::{
        Caller, MAX_CONSENT_REFERENCE, MAX_DECLARED_MEMBERS, MAX_OPERATOR_ID, VerifyError,
        check_text, purpose_name,
    },
};

/// Most persons a letter covers: the applicant and as many members as a
/// request may declare.
pub const MAX_CONSENT_PERSONS: usize = MAX_DECLARED_MEMBERS + 1;
/// Longest platform identity accepted, in characters.
pub const MAX_PLATFORM_ID: usize = 256;

/// The `[consent]` section of the configuration.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// Whether every verification needs a registered letter of the
    /// caller's platform that covers it. Off by default: the reference is
    /// then only checked as text and recorded.
    #[serde(default)]
    pub required: bool,
}

/// Why a consent operation failed. Each variant maps to one gRPC code in
/// [`service`].
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// The request is wrong; `field` names what.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field, as named in the proto.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The reference is registered already with other content, or was
    /// revoked.
    #[error("{0}")]
    AlreadyExists(String),
    /// No such letter for this platform.
    #[error("{0}")]
    NotFound(String),
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log cannot take the record; nothing was changed.
    #[error("audit log unavailable")]
    AuditUnavailable(#[source] AuditError),
}

impl From<sqlx::Error> for ConsentError {
    fn from(e: sqlx::Error) -> Self {
        ConsentError::Store(StoreError::Database(e))
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConsentError {
    ConsentError::InvalidArgument {
        field,
        message: message.into(),
    }
}

/// [`check_text`] with the error a consent call returns.
fn text(field: &'static str, value: &str, max: usize) -> Result<(), ConsentError> {
    check_text(field, value, max).map_err(|e| match e {
        VerifyError::InvalidArgument { field, message } => {
            ConsentError::InvalidArgument { field, message }
        }
        other => invalid(field, other.to_string()),
    })
}

/// A letter that passed [`validate`]: its persons and purposes sorted, its
/// broker-set fields cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidConsent(Consent);

impl ValidConsent {
    /// The letter.
    pub fn get(&self) -> &Consent {
        &self.0
    }
}

/// A civil date as a calendar date, if it is one.
fn civil(d: &CivilDate) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(
        d.year,
        u32::try_from(d.month).ok()?,
        u32::try_from(d.day).ok()?,
    )
}

fn civil_of(d: NaiveDate) -> CivilDate {
    CivilDate::ymd(
        d.year(),
        i32::try_from(d.month()).unwrap_or_default(),
        i32::try_from(d.day()).unwrap_or_default(),
    )
}

fn date(field: &'static str, d: Option<&CivilDate>) -> Result<NaiveDate, ConsentError> {
    let d = d.ok_or_else(|| invalid(field, "is required"))?;
    civil(d).ok_or_else(|| invalid(field, format!("{d} is not a date")))
}

/// Checks a letter to register. `today` (China date) bounds the birth
/// dates of the persons' identity numbers. The `platform` is checked as
/// text when given; who may name it is the service's concern.
///
/// # Errors
/// [`ConsentError::InvalidArgument`] naming the first wrong field.
pub fn validate(consent: Option<Consent>, today: NaiveDate) -> Result<ValidConsent, ConsentError> {
    let mut c = consent.ok_or_else(|| invalid("consent", "is required"))?;
    text("consent.reference", &c.reference, MAX_CONSENT_REFERENCE)?;
    let today = (today.year(), today.month(), today.day());
    if c.person_ids.is_empty() {
        return Err(invalid(
            "consent.person_ids",
            "at least one person is required",
        ));
    }
    if c.person_ids.len() > MAX_CONSENT_PERSONS {
        return Err(invalid(
            "consent.person_ids",
            format!(
                "{} persons, at most {MAX_CONSENT_PERSONS}",
                c.person_ids.len()
            ),
        ));
    }
    for (i, id) in c.person_ids.iter().enumerate() {
        resident_id::validate(id, today)
            .map_err(|e| invalid("consent.person_ids", format!("[{i}]: {e}")))?;
        if c.person_ids[..i].contains(id) {
            return Err(invalid(
                "consent.person_ids",
                format!("[{i}]: appears twice"),
            ));
        }
    }
    if c.purposes.is_empty() {
        return Err(invalid(
            "consent.purposes",
            "at least one purpose is required",
        ));
    }
    for (i, p) in c.purposes.iter().enumerate() {
        match Purpose::try_from(*p) {
            Ok(Purpose::Unspecified) => {
                return Err(invalid(
                    "consent.purposes",
                    format!("[{i}]: PURPOSE_UNSPECIFIED is not a purpose"),
                ));
            }
            Err(_) => {
                return Err(invalid(
                    "consent.purposes",
                    format!("[{i}]: {p} is not a known purpose"),
                ));
            }
            Ok(_) => {}
        }
        if c.purposes[..i].contains(p) {
            return Err(invalid("consent.purposes", format!("[{i}]: appears twice")));
        }
    }
    let from = date("consent.valid_from", c.valid_from.as_ref())?;
    let until = date("consent.valid_until", c.valid_until.as_ref())?;
    if from > until {
        return Err(invalid(
            "consent.valid_until",
            format!("{until} is before valid_from {from}"),
        ));
    }
    text("consent.operator_id", &c.operator_id, MAX_OPERATOR_ID)?;
    if !c.platform.is_empty() {
        text("consent.platform", &c.platform, MAX_PLATFORM_ID)?;
    }
    c.person_ids.sort();
    c.purposes.sort_unstable();
    c.valid_from = Some(civil_of(from));
    c.valid_until = Some(civil_of(until));
    c.registered_at = None;
    c.revoked_at = None;
    Ok(ValidConsent(c))
}

/// Whether two letters say the same: everything but when the broker
/// registered or revoked them.
fn same_content(a: &Consent, b: &Consent) -> bool {
    let strip = |c: &Consent| Consent {
        registered_at: None,
        revoked_at: None,
        ..c.clone()
    };
    strip(a) == strip(b)
}

/// The China date of a timestamp.
fn china_day(t: &prost_types::Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.seconds, 0).map_or_else(
        || "an unknown date".to_owned(),
        |d| {
            d.with_timezone(&crate::time::china())
                .date_naive()
                .to_string()
        },
    )
}

fn covers(letter: &Consent, person_id: &str) -> bool {
    letter.person_ids.iter().any(|p| p == person_id)
}

/// Whether `letter` (the caller's platform's letter with the request's
/// reference, `None` when there is none) covers `request` on `today`
/// (China date): registered, not revoked, valid today, for its purpose,
/// its applicant and every declared member.
///
/// # Errors
/// What is wrong, naming `consent_reference` and never a person's
/// identity number.
pub fn check_request(
    letter: Option<&Consent>,
    request: &VerificationRequest,
    today: NaiveDate,
) -> Result<(), String> {
    let reference = &request.consent_reference;
    let Some(letter) = letter else {
        return Err(format!(
            "consent_reference: no letter {reference} is registered for this platform"
        ));
    };
    if let Some(t) = &letter.revoked_at {
        return Err(format!(
            "consent_reference: letter {reference} was revoked on {}",
            china_day(t)
        ));
    }
    let (Some(from), Some(until)) = (
        letter.valid_from.as_ref().and_then(civil),
        letter.valid_until.as_ref().and_then(civil),
    ) else {
        return Err(format!(
            "consent_reference: letter {reference} has no valid dates"
        ));
    };
    if today < from {
        return Err(format!(
            "consent_reference: letter {reference} is valid from {from}, not yet today ({today})"
        ));
    }
    if today > until {
        return Err(format!(
            "consent_reference: letter {reference} expired: it was valid until {until} (today is {today})"
        ));
    }
    if !letter.purposes.contains(&request.purpose) {
        return Err(format!(
            "consent_reference: letter {reference} does not cover purpose {}",
            purpose_name(request.purpose)
        ));
    }
    if !covers(letter, &request.applicant_id) {
        return Err(format!(
            "consent_reference: letter {reference} does not cover the applicant (applicant_id)"
        ));
    }
    if let Some(i) = request
        .declared_member_ids
        .iter()
        .position(|id| !covers(letter, id))
    {
        return Err(format!(
            "consent_reference: letter {reference} does not cover declared_member_ids[{i}]"
        ));
    }
    Ok(())
}

/// Whether `letter` covers every active member of `household` (each is
/// asked about by every other source).
///
/// # Errors
/// What is wrong, naming the member by its index in the register, never by
/// its identity number.
pub fn check_members(letter: &Consent, household: &Household) -> Result<(), String> {
    match household
        .members
        .iter()
        .position(|m| household.is_active(&m.person_id) && !covers(letter, &m.person_id))
    {
        None => Ok(()),
        Some(i) => Err(format!(
            "consent_reference: letter {} does not cover household member {} of {} \
             as household registration lists them (an active member)",
            letter.reference,
            i + 1,
            household.members.len()
        )),
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or_default(),
    }
}

/// A stored letter: its body with the revocation from its column.
fn decode(body: &[u8], revoked_at: Option<i64>, key: &str) -> Result<Consent, StoreError> {
    let mut c = Consent::decode(body).map_err(|_| StoreError::Corrupt(key.to_owned()))?;
    c.revoked_at = revoked_at.map(timestamp_ms);
    Ok(c)
}

/// The registered letters, in the report store's database, and the audit
/// log their changes are recorded in.
#[derive(Debug, Clone)]
pub struct Consents {
    pool: SqlitePool,
    audit: AuditLog,
}

impl Consents {
    /// Letters in `pool` (the report store's), changes recorded in
    /// `audit`.
    pub fn new(pool: SqlitePool, audit: AuditLog) -> Self {
        Self { pool, audit }
    }

    /// The audit log changes are recorded in.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The letter `reference` of `platform`, revoked or not.
    ///
    /// # Errors
    /// When the store cannot be read or the letter does not decode.
    pub async fn get(
        &self,
        platform: &str,
        reference: &str,
    ) -> Result<Option<Consent>, StoreError> {
        let row: Option<(Vec<u8>, Option<i64>)> = sqlx::query_as(
            "SELECT body, revoked_at FROM consents WHERE platform = ? AND reference = ?",
        )
        .bind(platform)
        .bind(reference)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(body, revoked)| decode(&body, revoked, reference))
            .transpose()
    }

    /// Registers `letter` for `platform`, recorded as done by `caller`.
    /// The same letter registered again is returned as it was registered.
    ///
    /// # Errors
    /// [`ConsentError::AlreadyExists`] when the reference is registered for
    /// `platform` with other content or was revoked;
    /// [`ConsentError::AuditUnavailable`] or [`ConsentError::Store`] when
    /// it cannot be recorded or stored (nothing is registered then).
    pub async fn register(
        &self,
        caller: &Caller,
        letter: ValidConsent,
        platform: &str,
    ) -> Result<Consent, ConsentError> {
        // Fail closed before anything is written.
        self.audit
            .ready()
            .await
            .map_err(ConsentError::AuditUnavailable)?;
        let mut letter = letter.0;
        letter.platform = platform.to_owned();
        let now = now_ms();
        letter.registered_at = Some(timestamp_ms(now));
        let mut tx = self.pool.begin().await?;
        // The insert takes the write lock first: a concurrent registration
        // of the same reference waits, then sees this one.
        let inserted = sqlx::query(
            "INSERT INTO consents (platform, reference, body, registered_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (platform, reference) DO NOTHING",
        )
        .bind(platform)
        .bind(&letter.reference)
        .bind(letter.encode_to_vec())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            let (body, revoked): (Vec<u8>, Option<i64>) = sqlx::query_as(
                "SELECT body, revoked_at FROM consents WHERE platform = ? AND reference = ?",
            )
            .bind(platform)
            .bind(&letter.reference)
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
            let existing = decode(&body, revoked, &letter.reference)?;
            if let Some(t) = &existing.revoked_at {
                return Err(ConsentError::AlreadyExists(format!(
                    "consent.reference: letter {} was revoked on {}; a new letter needs a new reference",
                    letter.reference,
                    china_day(t)
                )));
            }
            if same_content(&existing, &letter) {
                return Ok(existing);
            }
            return Err(ConsentError::AlreadyExists(format!(
                "consent.reference: letter {} is registered already with other content",
                letter.reference
            )));
        }
        let purposes: Vec<String> = letter.purposes.iter().map(|p| purpose_name(*p)).collect();
        let mut entry = self.entry(Kind::ConsentRegistered, caller, &letter);
        entry.operator = letter.operator_id.clone();
        entry.detail = format!(
            "platform {platform}; purposes {}; valid {} to {}; {} persons",
            purposes.join(", "),
            letter.valid_from.unwrap_or_default(),
            letter.valid_until.unwrap_or_default(),
            letter.person_ids.len()
        );
        // Recorded before it is committed: a registration whose record
        // cannot be written is rolled back (the transaction drops).
        self.audit.record(entry).await.map_err(|e| {
            warn!(error = %e, "consent registration not recorded; not registered");
            ConsentError::AuditUnavailable(e)
        })?;
        tx.commit().await?;
        info!(platform, reference = %letter.reference, "consent registered");
        Ok(letter)
    }

    /// Revokes the letter `reference` of `platform`, recorded as done by
    /// `caller` for `operator_id` (may be empty). A revoked letter is
    /// returned as it is.
    ///
    /// # Errors
    /// [`ConsentError::NotFound`] when `platform` has no such letter;
    /// [`ConsentError::AuditUnavailable`] or [`ConsentError::Store`] when
    /// it cannot be recorded or stored (nothing is revoked then).
    pub async fn revoke(
        &self,
        caller: &Caller,
        platform: &str,
        reference: &str,
        operator_id: &str,
    ) -> Result<Consent, ConsentError> {
        self.audit
            .ready()
            .await
            .map_err(ConsentError::AuditUnavailable)?;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE consents SET revoked_at = ? \
             WHERE platform = ? AND reference = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(platform)
        .bind(reference)
        .execute(&mut *tx)
        .await?;
        let row: Option<(Vec<u8>, Option<i64>)> = sqlx::query_as(
            "SELECT body, revoked_at FROM consents WHERE platform = ? AND reference = ?",
        )
        .bind(platform)
        .bind(reference)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((body, revoked)) = row else {
            tx.rollback().await?;
            return Err(not_found(reference));
        };
        let letter = decode(&body, revoked, reference)?;
        if updated.rows_affected() == 0 {
            // Revoked before: nothing changes.
            tx.rollback().await?;
            return Ok(letter);
        }
        let mut entry = self.entry(Kind::ConsentRevoked, caller, &letter);
        entry.operator = operator_id.to_owned();
        entry.detail = format!("platform {platform}");
        self.audit.record(entry).await.map_err(|e| {
            warn!(error = %e, "consent revocation not recorded; not revoked");
            ConsentError::AuditUnavailable(e)
        })?;
        tx.commit().await?;
        info!(platform, reference, "consent revoked");
        Ok(letter)
    }

    /// The audit entry of a change to `letter` by `caller`: the persons it
    /// covers as subjects.
    fn entry(&self, kind: Kind, caller: &Caller, letter: &Consent) -> Entry {
        let key = self.audit.subject_key();
        let mut entry = Entry::new(kind);
        entry.request_id = uuid::Uuid::new_v4().to_string();
        entry.client = caller.identity.clone();
        entry.consent_reference = letter.reference.clone();
        entry.subjects = letter.person_ids.iter().map(|id| key.subject(id)).collect();
        entry
    }
}

/// The answer for a letter that is unknown or another platform's: the same
/// either way.
pub(crate) fn not_found(reference: &str) -> ConsentError {
    ConsentError::NotFound(format!("reference: no letter {reference}"))
}
