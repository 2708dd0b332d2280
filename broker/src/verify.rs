//! One verification, end to end: validate the request, resolve the household
//! through the household-registration source, ask every other source at
//! once under the request's deadline, fold the answers into the report,
//! record the access in the audit log, store the report, return it.
//!
//! The path is the same for `Verify` and `StreamVerify`; the streaming
//! caller also gets an event per source as its answer lands.
//!
//! The audit log comes first and last: no source is called unless the log
//! can take records ([`crate::audit::AuditLog::ready`]), and no report
//! leaves before its record is committed. Refused requests are recorded
//! too ([`Verifier::deny`]).
//!
//! When the configuration requires registered consent (`[consent]`), the
//! authorization letter the request names is checked right after the audit
//! log is known to be ready and before any source is asked; the members
//! household registration finds are checked before any other source is
//! asked ([`crate::consent`]).

use std::{
    collections::HashSet,
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime},
};

use futures::{StreamExt, stream::FuturesUnordered};
use hedui_adapters::{Adapter, AdapterError, LookupContext, catalog::HOUSEHOLD_SOURCE};
use hedui_proto::{
    resident_id,
    v1::{
        HouseholdResolved, LookupRequest, Purpose, Report, SourceResult, SourceStatus,
        StreamVerifyResponse, VerificationRequest, stream_verify_response::Event,
    },
};
use prost::Message;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, warn};

use crate::{
    audit::{AuditError, AuditLog, Entry, Kind, SourceEntry},
    guard::{AnswerCache, GuardError, Served, SourceGuard, config::GuardSettings},
    report::{
        disclosure::{self, Disclosure, ShortNames},
        fold::{FoldInput, fold},
        household::{SourceOutcome, resolve_household},
        policy::PolicySet,
    },
    store::{ReportStore, StoreError, StoredReport},
    time::{china_today, timestamp},
};

/// Longest consent reference accepted, in characters.
pub const MAX_CONSENT_REFERENCE: usize = 128;
/// Longest operator id accepted, in characters.
pub const MAX_OPERATOR_ID: usize = 64;
/// Most declared members accepted.
pub const MAX_DECLARED_MEMBERS: usize = 30;

/// Why a verification could not be done. Each variant maps to one gRPC code
/// in [`crate::server`].
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The request is wrong; `field` names what.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field, as named in the proto.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The report could not be stored; nothing was returned.
    #[error("report store unavailable")]
    StoreUnavailable(#[source] crate::store::StoreError),
    /// The audit log cannot take the record: no source was called, or the
    /// report was not returned.
    #[error("audit log unavailable")]
    AuditUnavailable(#[source] AuditError),
    /// The caller may not do this: a purpose its certificate is not given,
    /// or an authorization letter that does not cover the request
    /// (`[consent] required`). The message names what is wrong; no source
    /// other than household registration was asked.
    #[error("{message}")]
    PermissionDenied {
        /// What is wrong, e.g. `consent_reference: letter SQ-1 does not
        /// cover purpose medical_assistance`.
        message: String,
    },
}

impl VerifyError {
    /// The outcome a refusal with this error is recorded with in the audit
    /// log: the gRPC code's name, as [`crate::server::to_status`] maps it.
    pub fn outcome(&self) -> &'static str {
        match self {
            VerifyError::InvalidArgument { .. } => "invalid_argument",
            VerifyError::PermissionDenied { .. } => "permission_denied",
            VerifyError::StoreUnavailable(_) | VerifyError::AuditUnavailable(_) => "unavailable",
        }
    }
}

/// Who calls: the identity recorded in the audit log, its roles and, for
/// a platform, the purposes it may use. With mTLS the identity is the
/// client certificate's (`crate::security`); in the plaintext development
/// mode it is the peer address with every role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The client identity.
    pub identity: String,
    /// What the client may do.
    pub roles: crate::security::Roles,
    /// The purposes (proto numbers) a platform may verify for; `None` for
    /// any.
    pub purposes: Option<std::collections::BTreeSet<i32>>,
    /// The quota slot this caller's verification holds, released when the
    /// last clone is dropped.
    pub slot: Option<crate::security::quota::Slot>,
    /// The client whose case this is when the broker acts for it
    /// (re-verifying a household it enrolled); `None`: the caller itself.
    pub on_behalf_of: Option<String>,
}

impl Caller {
    /// A caller with this identity and every role, for any purpose: the
    /// plaintext development mode and the broker's own work (re-verifying
    /// watched households, benchmarks).
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            roles: crate::security::Roles::all(),
            purposes: None,
            slot: None,
            on_behalf_of: None,
        }
    }

    /// A caller with one role, as a client certificate maps to.
    pub fn with_role(
        identity: impl Into<String>,
        role: crate::security::Role,
        purposes: Option<std::collections::BTreeSet<i32>>,
    ) -> Self {
        Self {
            identity: identity.into(),
            roles: crate::security::Roles::one(role),
            purposes,
            slot: None,
            on_behalf_of: None,
        }
    }

    /// The platform whose letters cover this caller's verifications: the
    /// client whose case it is ([`Caller::owner`]).
    pub fn consent_owner(&self) -> &str {
        self.owner()
    }
}

impl Caller {
    /// The broker's own work for `client` (re-verifying a household it
    /// enrolled): every role, and the reports are `client`'s.
    pub fn acting_for(client: &str) -> Self {
        Self {
            on_behalf_of: Some(client.to_owned()),
            ..Self::new(format!("watch:{client}"))
        }
    }

    /// The client whose reports this caller's verifications are.
    pub fn owner(&self) -> &str {
        self.on_behalf_of.as_deref().unwrap_or(&self.identity)
    }

    /// Whether this caller may read a report stored for `owner`: its own,
    /// or (plaintext mode, every role) one stored before reports had
    /// owners.
    pub fn may_read(&self, owner: &str) -> bool {
        owner == self.owner() || (owner.is_empty() && self.roles == crate::security::Roles::all())
    }
}

/// The name of a purpose as the audit log writes it, e.g.
/// `dibao_application`.
pub fn purpose_name(purpose: i32) -> String {
    static NAMES: LazyLock<ShortNames> =
        LazyLock::new(|| ShortNames::of("PURPOSE_", Purpose::as_str_name));
    NAMES.name(purpose)
}

/// The name of a source status as the audit log writes it, e.g. `ok`.
pub fn status_name(status: i32) -> String {
    static NAMES: LazyLock<ShortNames> =
        LazyLock::new(|| ShortNames::of("SOURCE_STATUS_", SourceStatus::as_str_name));
    NAMES.name(status)
}

/// Caller text as the audit log keeps it: at most `max` characters, runs
/// of six or more digits masked (a refused field may hold part of an
/// identity number).
fn scrub(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 6 {
            out.push_str(&"#".repeat(digits.len()));
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in text.chars().take(max) {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(if c.is_control() { ' ' } else { c });
        }
    }
    flush(&mut digits, &mut out);
    out
}

fn invalid(field: &'static str, message: impl Into<String>) -> VerifyError {
    VerifyError::InvalidArgument {
        field,
        message: message.into(),
    }
}

/// A source the broker asks, behind its cache and protections.
#[derive(Debug, Clone)]
pub struct SourceHandle {
    /// What the source is (shared with every outcome of the source).
    pub spec: Arc<hedui_adapters::catalog::SourceSpec>,
    /// How it is asked: its adapter behind cache, breaker, rate limit,
    /// bulkhead and retries.
    pub guard: Arc<SourceGuard>,
}

impl SourceHandle {
    /// `adapter` of `spec` behind the guard `settings` describe.
    pub fn new(
        spec: hedui_adapters::catalog::SourceSpec,
        adapter: Arc<dyn Adapter>,
        settings: GuardSettings,
        cache: Option<AnswerCache>,
    ) -> Self {
        Self {
            guard: Arc::new(SourceGuard::new(spec.clone(), adapter, settings, cache)),
            spec: Arc::new(spec),
        }
    }

    /// `adapter` of `spec` with no cache and no limits.
    pub fn unguarded(spec: hedui_adapters::catalog::SourceSpec, adapter: Arc<dyn Adapter>) -> Self {
        Self::new(spec, adapter, GuardSettings::unguarded(), None)
    }
}

/// Deadlines applied to requests.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Used when the request sets none.
    pub default: Duration,
    /// The longest a request may set.
    pub max: Duration,
}

/// Runs verifications. Shared by every request in flight.
#[derive(Debug)]
pub struct Verifier {
    /// What a configuration reload replaces; each verification works with
    /// the one current when it started, to its end (late answers too).
    setup: std::sync::RwLock<Arc<Setup>>,
    store: ReportStore,
    audit: AuditLog,
    deadlines: Deadlines,
    watchers: Watchers,
    /// The registered authorization letters.
    consents: crate::consent::Consents,
}

/// What a verification is done with that configuration may change while
/// the broker runs (`SIGHUP`): the sources, the policies, what each
/// purpose may see, whether consent is required.
#[derive(Debug)]
pub struct Setup {
    /// The sources asked, in order.
    pub sources: Vec<SourceHandle>,
    household: usize,
    /// The income and asset policies.
    pub policies: PolicySet,
    /// Per purpose number, what it may see (`[purposes]`); absent: every
    /// source and every fact kind.
    pub disclosures: std::collections::BTreeMap<i32, Arc<Disclosure>>,
    /// Whether a verification needs a registered letter that covers it
    /// (`[consent] required`).
    pub consent_required: bool,
}

impl Setup {
    /// A setup over `sources` (which must include the household source).
    ///
    /// # Panics
    /// If no source has the id [`HOUSEHOLD_SOURCE`]; configuration checks
    /// this before.
    pub fn new(
        sources: Vec<SourceHandle>,
        policies: PolicySet,
        disclosures: std::collections::BTreeMap<i32, Disclosure>,
        consent_required: bool,
    ) -> Self {
        let household = sources
            .iter()
            .position(|s| s.spec.id == HOUSEHOLD_SOURCE)
            .expect("the household source is configured");
        Self {
            sources,
            household,
            policies,
            disclosures: disclosures
                .into_iter()
                .map(|(k, d)| (k, Arc::new(d)))
                .collect(),
            consent_required,
        }
    }

    /// What the purpose (a proto number) may see; `None` when it is not
    /// restricted.
    pub fn disclosure(&self, purpose: i32) -> Option<Arc<Disclosure>> {
        self.disclosures.get(&purpose).cloned()
    }
}

/// The sources of the current setup, as a slice.
#[derive(Debug, Clone)]
pub struct Sources(Arc<Setup>);

impl std::ops::Deref for Sources {
    type Target = [SourceHandle];

    fn deref(&self) -> &[SourceHandle] {
        &self.0.sources
    }
}

/// A request that passed validation, with its effective deadline.
///
/// The request is boxed: a verification's futures hold this (the task's,
/// the traced run's, the run's own), and are held for as long as the
/// verification waits on its sources (docs/benchmarks.md, S5).
#[derive(Debug, Clone)]
pub struct ValidRequest {
    request: Box<VerificationRequest>,
    timeout: Duration,
    max_age: Option<Duration>,
}

impl ValidRequest {
    /// How long the verification may take: the shortest of the caller's
    /// deadline, the request's and the broker's.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Verifier {
    /// A verifier over `sources` (which must include the household source).
    ///
    /// # Panics
    /// If no source has the id [`HOUSEHOLD_SOURCE`]; configuration checks
    /// this before.
    pub fn new(
        sources: Vec<SourceHandle>,
        policies: PolicySet,
        store: ReportStore,
        audit: AuditLog,
        deadlines: Deadlines,
    ) -> Self {
        let consents = crate::consent::Consents::new(store.pool().clone(), audit.clone());
        Self {
            setup: std::sync::RwLock::new(Arc::new(Setup::new(
                sources,
                policies,
                std::collections::BTreeMap::new(),
                false,
            ))),
            store,
            audit,
            deadlines,
            watchers: Watchers::default(),
            consents,
        }
    }

    /// The setup verifications start with now.
    pub fn setup(&self) -> Arc<Setup> {
        self.setup
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the setup: verifications from now on use `setup`; those
    /// under way finish with theirs.
    pub fn replace_setup(&self, setup: Setup) {
        *self
            .setup
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(setup);
    }

    fn update_setup(mut self, change: impl FnOnce(&mut Setup)) -> Self {
        let setup = self
            .setup
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(Arc::get_mut(setup).expect("not shared while the verifier is built"));
        self
    }

    /// Restricts purposes: per purpose number, the sources it may ask and
    /// the fact kinds it may see (`[purposes]`); a purpose not in
    /// `disclosures` asks every source and sees every kind.
    #[must_use]
    pub fn with_purposes(self, disclosures: std::collections::BTreeMap<i32, Disclosure>) -> Self {
        self.update_setup(|s| {
            s.disclosures = disclosures
                .into_iter()
                .map(|(k, d)| (k, Arc::new(d)))
                .collect();
        })
    }

    /// What the purpose (a proto number) may see now; `None` when it is
    /// not restricted.
    pub fn disclosure(&self, purpose: i32) -> Option<Arc<Disclosure>> {
        self.setup().disclosure(purpose)
    }

    /// Requires (or not) a registered authorization letter that covers
    /// every verification (`[consent] required`).
    #[must_use]
    pub fn with_consent_required(self, required: bool) -> Self {
        self.update_setup(|s| s.consent_required = required)
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The registered authorization letters.
    pub fn consents(&self) -> &crate::consent::Consents {
        &self.consents
    }

    /// Records a refused request and gives back the error to return: the
    /// refusal, or [`VerifyError::AuditUnavailable`] when it could not be
    /// recorded. The applicant is recorded (as its keyed hash) only when
    /// its id is well formed; no field is kept as given.
    pub async fn deny(
        &self,
        caller: &Caller,
        request: Option<&VerificationRequest>,
        error: VerifyError,
    ) -> VerifyError {
        let entry = self.denied_entry(caller, request, &error);
        self.record_denial(entry, error).await
    }

    /// Records the refusal `entry`; gives back `error`, or
    /// [`VerifyError::AuditUnavailable`] when it could not be recorded.
    async fn record_denial(&self, entry: Entry, error: VerifyError) -> VerifyError {
        match self.audit.record(entry).await {
            Ok(_) => error,
            Err(e) => {
                warn!(error = %e, "refused request not recorded; answering unavailable");
                VerifyError::AuditUnavailable(e)
            }
        }
    }

    /// The audit entry of a refused request (see [`Verifier::deny`]).
    fn denied_entry(
        &self,
        caller: &Caller,
        request: Option<&VerificationRequest>,
        error: &VerifyError,
    ) -> Entry {
        let mut entry = Entry::new(Kind::Denied);
        entry.request_id = uuid::Uuid::new_v4().to_string();
        entry.client = caller.identity.clone();
        entry.outcome = error.outcome().into();
        entry.detail = scrub(&error.to_string(), 200);
        if let Some(r) = request {
            let today = china_today();
            if resident_id::validate(&r.applicant_id, (today.0, today.1, today.2)).is_ok() {
                entry
                    .subjects
                    .push(self.audit.subject_key().subject(&r.applicant_id));
            }
            entry.operator = scrub(&r.operator_id, MAX_OPERATOR_ID);
            entry.consent_reference = scrub(&r.consent_reference, MAX_CONSENT_REFERENCE);
            entry.purpose = purpose_name(r.purpose);
        }
        entry
    }

    /// Refuses a request whose authorization letter does not cover a
    /// member household registration found: recorded as a refusal that
    /// lists the household source, the sources `asked` about the declared
    /// members meanwhile (none when the request declared none) and every
    /// person concerned.
    async fn deny_member(
        &self,
        caller: &Caller,
        request: &VerificationRequest,
        household_outcome: &SourceOutcome,
        household: &crate::report::household::Household,
        asked: Vec<SourceEntry>,
        error: VerifyError,
    ) -> VerifyError {
        let mut entry = self.denied_entry(caller, Some(request), &error);
        let key = self.audit.subject_key();
        let mut ids: Vec<&String> = std::iter::once(&request.applicant_id)
            .chain(household.members.iter().map(|m| &m.person_id))
            .chain(request.declared_member_ids.iter())
            .collect();
        ids.sort();
        ids.dedup();
        entry.subjects = ids.into_iter().map(|id| key.subject(id)).collect();
        let r = &household_outcome.result;
        entry.sources = vec![SourceEntry {
            id: r.source_id.clone(),
            status: status_name(r.status),
            cache_hit: r.from_cache,
            facts: r.fact_count,
        }];
        entry.sources.extend(asked);
        self.record_denial(entry, error).await
    }

    /// The longest deadline a request may set.
    pub fn max_deadline(&self) -> Duration {
        self.deadlines.max
    }

    /// The sources asked now, in order.
    pub fn sources(&self) -> Sources {
        Sources(self.setup())
    }

    /// The report store.
    pub fn store(&self) -> &ReportStore {
        &self.store
    }

    /// Checks a request. `call_timeout` is the caller's gRPC deadline, if
    /// any; the effective deadline is the shortest of it, the request's and
    /// the broker's maximum.
    ///
    /// # Errors
    /// [`VerifyError::InvalidArgument`] naming the first wrong field.
    pub fn validate(
        &self,
        request: Option<VerificationRequest>,
        call_timeout: Option<Duration>,
    ) -> Result<ValidRequest, VerifyError> {
        let today = china_today();
        validate_request(
            request,
            call_timeout,
            self.deadlines,
            (today.0, today.1, today.2),
        )
    }

    /// Runs a validated verification to its report, sending events to
    /// `events` when given (a closed receiver does not stop the
    /// verification: the report is still stored).
    ///
    /// # Errors
    /// [`VerifyError::AuditUnavailable`] when the audit log cannot take the
    /// record (before any source is called when it is down already);
    /// [`VerifyError::PermissionDenied`] when consent is required and the
    /// letter does not cover the request (before any source is called) or
    /// a member household registration found (before any other source is
    /// called), recorded as a refusal;
    /// [`VerifyError::StoreUnavailable`] when the report cannot be stored
    /// (or the letter cannot be read: no source is called then).
    pub async fn run(
        self: &Arc<Self>,
        valid: ValidRequest,
        caller: &Caller,
        events: Option<mpsc::Sender<Box<StreamVerifyResponse>>>,
    ) -> Result<Report, VerifyError> {
        self.run_encoded(valid, caller, events)
            .await
            .map(|(report, _)| report)
    }

    /// [`Self::run`], with the report's protobuf encoding (the one its
    /// audit record's digest and the report store were given), for a
    /// caller that sends the report on as it is: `Verify`'s response copies
    /// it instead of encoding the report again.
    ///
    /// # Errors
    /// As [`Self::run`].
    pub async fn run_encoded(
        self: &Arc<Self>,
        valid: ValidRequest,
        caller: &Caller,
        events: Option<mpsc::Sender<Box<StreamVerifyResponse>>>,
    ) -> Result<(Report, bytes::Bytes), VerifyError> {
        use tracing::Instrument;
        /// Counts a verification in flight until dropped.
        struct InFlight;
        impl Drop for InFlight {
            fn drop(&mut self) {
                crate::telemetry::metrics().in_flight.add(-1, &[]);
            }
        }
        let metrics = crate::telemetry::metrics();
        metrics.in_flight.add(1, &[]);
        let _in_flight = InFlight;
        let purpose = purpose_name(valid.request.purpose);
        // One trace per verification; no field names a person.
        let span = tracing::info_span!(
            "verification",
            purpose = %purpose,
            report_id = tracing::field::Empty,
            verdict = tracing::field::Empty,
        );
        // Pinned where it is made, and the span read back from it: the
        // verification's future holds one span, not two.
        let mut traced = std::pin::pin!(self.run_untraced(valid, caller, events).instrument(span));
        let result = traced.as_mut().await;
        let span = traced.span();
        let verdict = match &result {
            Ok((report, _)) => {
                span.record("report_id", report.report_id.as_str());
                hedui_proto::v1::Outcome::try_from(report.verdict)
                    .map_or("unknown", |o| o.as_str_name())
                    .trim_start_matches("OUTCOME_")
                    .to_ascii_lowercase()
            }
            Err(e) => e.outcome().to_owned(),
        };
        span.record("verdict", verdict.as_str());
        metrics.verifications.add(
            1,
            &[
                opentelemetry::KeyValue::new("purpose", purpose),
                opentelemetry::KeyValue::new("verdict", verdict),
            ],
        );
        result
    }

    async fn run_untraced(
        self: &Arc<Self>,
        valid: ValidRequest,
        caller: &Caller,
        events: Option<mpsc::Sender<Box<StreamVerifyResponse>>>,
    ) -> Result<(Report, bytes::Bytes), VerifyError> {
        // This verification works with the setup current now, to its end.
        let setup = self.setup();
        let ValidRequest {
            request,
            timeout,
            max_age,
        } = valid;
        if let Some(allowed) = &caller.purposes
            && !allowed.contains(&request.purpose)
        {
            let e = VerifyError::PermissionDenied {
                message: format!(
                    "purpose: client {} may not verify for {}",
                    caller.identity,
                    purpose_name(request.purpose)
                ),
            };
            return Err(Box::pin(self.deny(caller, Some(&request), e)).await);
        }
        let requested_at = SystemTime::now();
        let started = Instant::now();
        // 0. Fail closed: no source is asked unless the access can be
        // recorded.
        //
        // The steps this future takes briefly (this one, the letter, the
        // refusals, the audit records, the store) are boxed: a future is as
        // large as its largest state, and this one is held for as long as
        // the verification waits on its sources (docs/benchmarks.md, S5).
        Box::pin(self.audit.ready()).await.map_err(|e| {
            warn!(error = %e, "audit log unavailable; no source is called");
            VerifyError::AuditUnavailable(e)
        })?;
        // 0b. The authorization letter, when one is required: no source is
        // asked for a request it does not cover.
        let letter = if setup.consent_required {
            let owner = caller.consent_owner();
            let letter = Box::pin(self.consents.get(owner, &request.consent_reference))
                .await
                .map_err(|e| {
                    warn!(error = %e, "consent store unavailable; no source is called");
                    VerifyError::StoreUnavailable(e)
                })?;
            if let Err(message) =
                crate::consent::check_request(letter.as_ref(), &request, crate::time::china_date())
            {
                let e = VerifyError::PermissionDenied { message };
                return Err(Box::pin(self.deny(caller, Some(&request), e)).await);
            }
            letter
        } else {
            None
        };
        let deadline = Instant::now() + timeout;
        let report_id = new_report_id();
        let purpose = request.purpose();
        // Events are built only for a streaming caller: a unary call does
        // not pay for copies it would throw away.
        let send = |event: &dyn Fn() -> Event| {
            if let Some(tx) = &events {
                // A caller that went away does not stop the verification.
                let _ = tx.try_send(Box::new(StreamVerifyResponse {
                    event: Some(event()),
                }));
            }
        };

        // 1. The household, through household registration. When the
        // platform declares the members, every other source is asked about
        // them (and the applicant) at once, while registration is asked:
        // registration then only confirms whom those answers are about
        // (see `FanOut`), and a verification takes as long as its slowest
        // source, not registration plus the slowest source after it.
        let household_source = &setup.sources[setup.household];
        let limits = Limits {
            purpose,
            deadline,
            max_age,
        };
        let disclosure = setup.disclosure(request.purpose);
        let plan = Plan {
            setup: &setup,
            disclosure: &disclosure,
            report_id: &report_id,
            request: &request,
            started,
            deadline,
            limits,
        };
        let mut speculative = declared_persons(&request).map(|ids| plan.launch(ids));
        let household_asked = narrowed(disclosure.as_deref(), household_source);
        // Boxed: `drive_until` takes it by value and pins it, so inline
        // it would be held twice.
        let household_request = lookup_request(
            &household_asked,
            &report_id,
            vec![request.applicant_id.clone()],
            &request,
            limits.purpose,
        );
        let household_lookup = Box::pin(ask(&household_asked, &household_request, &limits));
        let household_outcome = match speculative.as_mut() {
            Some(fan) => {
                fan.drive_until(household_lookup, &setup, disclosure.as_deref())
                    .await
            }
            None => household_lookup.await,
        };
        let household_outcome =
            restricted(disclosure.as_deref(), household_source, household_outcome);
        let household = resolve_household(&request.applicant_id, &household_outcome);
        // Every active member is asked about from here on: each must be
        // covered by the letter too.
        if let Some(letter) = &letter
            && let Err(message) = crate::consent::check_members(letter, &household)
        {
            let asked = speculative.map(|fan| fan.abandon(&setup));
            let message = match &asked {
                None => format!("{message}; only household registration was asked"),
                Some(_) => format!(
                    "{message}; the other sources were asked about the applicant and the \
                     declared members only, and their answers were dropped"
                ),
            };
            let e = VerifyError::PermissionDenied { message };
            return Err(Box::pin(self.deny_member(
                caller,
                &request,
                &household_outcome,
                &household,
                asked.unwrap_or_default(),
                e,
            ))
            .await);
        }
        // A streaming caller learns the members and each source's outcome
        // before the report: the access is recorded before any of it
        // leaves. Unary callers get everything at once, after the
        // verification record.
        if events.is_some() {
            let entry = self.started_entry(&report_id, &request, &household, caller);
            Box::pin(self.audit.record(entry)).await.map_err(|e| {
                warn!(error = %e, "stream opening not recorded; nothing leaves");
                VerifyError::AuditUnavailable(e)
            })?;
        }
        send(&|| {
            Event::HouseholdResolved(HouseholdResolved {
                report_id: report_id.clone(),
                members: household.members.clone(),
                source_ids: setup.sources.iter().map(|s| s.spec.id.clone()).collect(),
            })
        });
        send(&|| Event::SourceResult(household_outcome.result.clone()));

        // 2. Every other source at once, about the active members: the
        // answers asked for already when registration confirms the
        // declared members, asked now otherwise. A source the broker may
        // wait longer for (`late_deadline_ms`) runs as its own task, so
        // that it can outlive this request.
        let mut redone = false;
        let fan = match speculative {
            Some(fan) if fan.asks_about(&household.active_ids) => fan,
            other => {
                if let Some(fan) = other {
                    // Registration lists other active members: those
                    // answers are dropped unread, and the sources asked
                    // again about the members it lists.
                    debug!("declared members differ from registration; asking again");
                    fan.abandon(&setup);
                    redone = true;
                }
                plan.launch(household.active_ids.clone())
            }
        };
        for &i in &fan.landed {
            if let Some(outcome) = &fan.outcomes[i] {
                send(&|| Event::SourceResult(outcome.result.clone()));
            }
        }
        let FanOut {
            mut regular,
            mut late,
            mut outcomes,
            pending_until,
            ..
        } = fan;
        outcomes[setup.household] = Some(Box::new(household_outcome));
        let request_deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(request_deadline);
        loop {
            if regular.is_empty() && late.is_empty() {
                break;
            }
            tokio::select! {
                Some((i, outcome)) = regular.next() => {
                    send(&|| Event::SourceResult(outcome.result.clone()));
                    outcomes[i] = Some(Box::new(outcome));
                }
                Some((i, joined)) = late.next() => {
                    let outcome =
                        joined_outcome(disclosure.as_deref(), &setup.sources[i], joined);
                    send(&|| Event::SourceResult(outcome.result.clone()));
                    outcomes[i] = Some(Box::new(outcome));
                }
                // Sources without a late deadline end by the deadline on
                // their own; the others are left pending.
                () = &mut request_deadline, if regular.is_empty() => break,
            }
        }
        drop(regular);
        let pending_until = requested_at + (pending_until - started);
        // The outcomes stay with the completion when late answers are
        // awaited; otherwise they are folded as they are.
        let mut returned = if late.is_empty() {
            std::mem::take(&mut outcomes)
        } else {
            outcomes.clone()
        };
        for (i, o) in returned.iter_mut().enumerate() {
            if o.is_none() {
                let source = &setup.sources[i];
                let outcome = restricted(
                    disclosure.as_deref(),
                    source,
                    pending_outcome(source, pending_until),
                );
                send(&|| Event::SourceResult(outcome.result.clone()));
                *o = Some(Box::new(outcome));
            }
        }
        let returned = landed(returned);

        // 3. Fold, in catalog order.
        let today = crate::time::china_date();
        let policy = setup.policies.select(&household.region_code, today);
        let mut report = fold(FoldInput {
            report_id: report_id.clone(),
            request: &request,
            requested_at,
            completed_at: SystemTime::now(),
            today,
            policy,
            household: &household,
            outcomes: &returned,
        });
        if !late.is_empty() {
            report.pending = true;
            report.pending_until = Some(timestamp(pending_until));
        }

        // 4. Recorded, then stored, before it leaves. One encoding serves
        // the record's digest, the store and `Verify`'s response.
        let encoded = bytes::Bytes::from(report.encode_to_vec());
        let mut entry = self.access_entry(&report, &encoded, caller, started.elapsed());
        record_disclosure(&mut entry, &report, returned.iter());
        if redone {
            entry.detail = "the sources were asked first about the applicant and the declared \
                            members; household registration lists other active members, so \
                            those answers were dropped unread and the sources asked again"
                .into();
        }
        if report.pending {
            // Watchers subscribe before they read the store: registered
            // before the report is stored, none misses the completion.
            self.watchers.register(&report_id, report.clone());
        }
        // The record and the report are written at once, the report hidden
        // until the record has committed; in a task of their own, so that
        // a caller who goes away cannot leave the report hidden.
        let written = tokio::spawn(record_and_store(
            self.audit.clone(),
            self.store.clone(),
            entry,
            StoredReport::new(&report, encoded.clone(), caller.owner()),
        ))
        .await
        .unwrap_or_else(|e| match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(VerifyError::StoreUnavailable(StoreError::Write(
                "the broker is stopping".to_owned(),
            ))),
        });
        if let Err(e) = written {
            self.watchers.remove(&report_id);
            return Err(e);
        }
        if report.pending {
            let completion = Completion {
                setup: setup.clone(),
                report_id,
                request: *request,
                requested_at,
                today,
                household,
                caller: caller.clone(),
                outcomes,
            };
            let this = self.clone();
            tokio::spawn(async move { this.complete(completion, late).await });
        }
        send(&|| Event::Report(report.clone()));
        Ok((report, encoded))
    }

    /// Drops every cached answer about `person_id` (a change event about
    /// them arrived).
    pub fn invalidate_person(&self, person_id: &str) {
        // The sources share one cache (a source with it off holds none):
        // the first guard that has it drops the person once for all.
        if let Some(cache) = self.setup().sources.iter().find_map(|s| s.guard.cache()) {
            cache.invalidate_person(person_id);
        }
    }

    /// A subscription to the revisions of report `report_id`, while it
    /// waits for late answers; `None` when nothing is awaited for it.
    pub fn watch(&self, report_id: &str) -> Option<watch::Receiver<Report>> {
        self.watchers.subscribe(report_id)
    }

    /// Waits for the late answers of a report returned with pending
    /// sources, then folds, records, stores and publishes the completed
    /// report.
    async fn complete(self: Arc<Self>, c: Completion, mut late: LateAnswers) {
        let Completion {
            setup,
            report_id,
            request,
            requested_at,
            today,
            household,
            caller,
            mut outcomes,
        } = c;
        let mut late_ids = Vec::new();
        let disclosure = setup.disclosure(request.purpose);
        while let Some((i, joined)) = late.next().await {
            late_ids.push(i);
            let source = &setup.sources[i];
            outcomes[i] = Some(Box::new(joined_outcome(
                disclosure.as_deref(),
                source,
                joined,
            )));
        }
        let outcomes = landed(outcomes);
        let policy = setup.policies.select(&household.region_code, today);
        let mut report = fold(FoldInput {
            report_id: report_id.clone(),
            request: &request,
            requested_at,
            completed_at: SystemTime::now(),
            today,
            policy,
            household: &household,
            outcomes: &outcomes,
        });
        report.revision = 1;
        late_ids.sort_unstable();
        let late_sources: Vec<&SourceResult> = late_ids
            .iter()
            .filter_map(|i| report.sources.get(*i))
            .collect();
        let encoded = report.encode_to_vec();
        let mut entry = self.completed_entry(&report, &encoded, &caller, &late_sources);
        record_disclosure(
            &mut entry,
            &report,
            late_ids.iter().filter_map(|i| outcomes.get(*i)),
        );
        if let Err(e) = self.audit.record(entry).await {
            // Left pending: the next start of the broker closes it.
            tracing::error!(error = %e, report = %report_id, "completion not recorded; the report stays pending");
            self.watchers.remove(&report_id);
            return;
        }
        if let Err(e) = self.store.put_encoded(&report, encoded, "").await {
            tracing::error!(error = %e, report = %report_id, "completed report not stored");
            self.watchers.remove(&report_id);
            return;
        }
        debug!(report = %report_id, "report completed after late answers");
        self.watchers.complete(&report_id, report);
    }

    /// Settles the reports an earlier run of the broker wrote ahead of
    /// their access record and stopped before it knew the outcome
    /// ([`crate::store`]): a report is kept when the audit log holds its
    /// record, deleted when it does not (it never left). How many were
    /// deleted. [`Verifier::close_abandoned`] does this first.
    ///
    /// # Errors
    /// When the store or the audit log fails; nothing is changed then.
    pub async fn settle_unrecorded(&self) -> Result<usize, VerifyError> {
        let unrecorded = self
            .store
            .unrecorded()
            .await
            .map_err(VerifyError::StoreUnavailable)?;
        let Some(first) = unrecorded.iter().map(|(_, ms)| *ms).min() else {
            return Ok(0);
        };
        let mut wanted: HashSet<&str> = unrecorded.iter().map(|(id, _)| id.as_str()).collect();
        let mut recorded = HashSet::new();
        // A record is made after its report is completed, on the same
        // clock; the margin allows for the clock being set back.
        let mut filter = crate::audit::store::Filter {
            kind: Some(Kind::Verification.name().to_owned()),
            from_ms: Some(first.saturating_sub(SETTLE_MARGIN_MS)),
            limit: SETTLE_PAGE,
            ..Default::default()
        };
        while !wanted.is_empty() {
            let rows = self
                .audit
                .backend()
                .query(&filter)
                .await
                .map_err(VerifyError::AuditUnavailable)?;
            for row in &rows {
                if wanted.remove(row.request_id.as_str()) {
                    recorded.insert(row.request_id.clone());
                }
            }
            match rows.last() {
                Some(last) if rows.len() == SETTLE_PAGE as usize => {
                    filter.before_seq = Some(last.seq);
                }
                _ => break,
            }
        }
        let deleted = self
            .store
            .settle(&unrecorded, &recorded)
            .await
            .map_err(VerifyError::StoreUnavailable)?;
        if deleted > 0 {
            warn!(
                reports = deleted,
                "deleted reports an earlier run stored whose access record never committed"
            );
        }
        Ok(deleted)
    }

    /// Closes reports left pending by an earlier run of the broker (it
    /// stopped before their late answers arrived): their pending sources
    /// become `TIMEOUT`, recorded as a completion. What depended on them
    /// was already inconclusive and stays so.
    ///
    /// # Errors
    /// When the store or the audit log fails.
    pub async fn close_abandoned(&self) -> Result<usize, VerifyError> {
        self.settle_unrecorded().await?;
        let abandoned = self
            .store
            .pending()
            .await
            .map_err(VerifyError::StoreUnavailable)?;
        let n = abandoned.len();
        for mut report in abandoned {
            for s in &mut report.sources {
                if s.status == SourceStatus::Pending as i32 {
                    s.status = SourceStatus::Timeout as i32;
                    s.detail =
                        "no answer: the broker stopped while it waited for this source".into();
                }
            }
            report.pending = false;
            report.pending_until = None;
            report.revision += 1;
            report.completed_at = Some(timestamp(SystemTime::now()));
            let closed: Vec<&SourceResult> = report
                .sources
                .iter()
                .filter(|s| s.detail.starts_with("no answer: the broker stopped"))
                .collect();
            let encoded = report.encode_to_vec();
            let entry = self.completed_entry(&report, &encoded, &Caller::new("hedui"), &closed);
            self.audit
                .record(entry)
                .await
                .map_err(VerifyError::AuditUnavailable)?;
            self.store
                .put_encoded(&report, encoded, "")
                .await
                .map_err(VerifyError::StoreUnavailable)?;
        }
        if n > 0 {
            warn!(reports = n, "closed reports left pending by an earlier run");
        }
        Ok(n)
    }
}

/// What every fan-out of one verification shares.
struct Plan<'a> {
    setup: &'a Arc<Setup>,
    disclosure: &'a Option<Arc<Disclosure>>,
    report_id: &'a str,
    request: &'a VerificationRequest,
    started: Instant,
    deadline: Instant,
    limits: Limits,
}

impl Plan<'_> {
    /// Asks every source but household registration about `person_ids`,
    /// at once. Nothing is sent to a streaming caller: the outcomes known
    /// so far are in [`FanOut::landed`].
    fn launch(
        &self,
        person_ids: Vec<String>,
    ) -> FanOut<impl std::future::Future<Output = (usize, SourceOutcome)> + Send + use<>> {
        let setup = self.setup;
        let mut fan = FanOut {
            person_ids: Arc::new(person_ids),
            regular: FuturesUnordered::new(),
            late: FuturesUnordered::new(),
            late_tasks: Vec::new(),
            outcomes: vec![None; setup.sources.len()],
            landed: Vec::new(),
            pending_until: self.deadline,
        };
        for (i, source) in setup.sources.iter().enumerate() {
            if i == setup.household {
                continue;
            }
            if let Some(why) = self
                .disclosure
                .as_ref()
                .and_then(|d| d.not_asked(&source.spec))
            {
                // Data minimisation: neither asked nor taken from the
                // cache for this purpose.
                let outcome = unanswered(source, SourceStatus::NotQueried, why);
                let outcome = restricted(self.disclosure.as_deref(), source, outcome);
                fan.land(i, outcome);
                continue;
            }
            let long = self.started + source.guard.late_deadline();
            let limits = Limits {
                deadline: long.max(self.deadline),
                ..self.limits
            };
            // Asked only for the kinds the purpose may see, and the answer
            // (the cache's too) filtered again before anything reads it.
            let asked = narrowed(self.disclosure.as_deref(), source);
            let lookup = lookup_request(
                &asked,
                self.report_id,
                fan.person_ids.to_vec(),
                self.request,
                limits.purpose,
            );
            let (source, disclosure) = (source.clone(), self.disclosure.clone());
            // The source's index is part of this future rather than added
            // by one around it: a future that awaits another it captured
            // holds it twice (the capture and the awaited copy), and 27 of
            // these wait per verification (docs/benchmarks.md, S5).
            let work = async move {
                let outcome = ask(&asked, &lookup, &limits).await;
                (i, restricted(disclosure.as_deref(), &source, outcome))
            };
            if long > self.deadline {
                fan.pending_until = fan.pending_until.max(long);
                let task = tokio::spawn(work);
                fan.late_tasks.push(task.abort_handle());
                fan.late
                    .push(Box::pin(async move { (i, task.await.map(|(_, o)| o)) }));
            } else {
                fan.regular.push(work);
            }
        }
        fan
    }
}

/// The sources other than household registration, asked at once about the
/// same persons.
///
/// When the request declares the household's members, the fan-out about
/// them starts while household registration is asked. It is kept when
/// registration lists exactly those persons as the active members (the
/// applicant and the declared members), which is what a verification
/// reports on; otherwise it is abandoned, its answers dropped unread, and
/// the sources asked again about the members registration lists. The
/// declared members are covered by the authorization letter
/// ([`crate::consent::check_request`]) and are subjects of the audit
/// record either way.
struct FanOut<F> {
    /// Whom the sources are asked about.
    person_ids: Arc<Vec<String>>,
    regular: FuturesUnordered<F>,
    late: LateAnswers,
    /// The tasks behind `late`, aborted when the fan-out is abandoned.
    late_tasks: Vec<tokio::task::AbortHandle>,
    /// Per source, its outcome once known.
    outcomes: Slots,
    /// The sources whose outcome is known, in the order it became known.
    landed: Vec<usize>,
    /// The latest a late answer is waited for.
    pending_until: Instant,
}

impl<F: std::future::Future<Output = (usize, SourceOutcome)>> FanOut<F> {
    fn land(&mut self, i: usize, outcome: SourceOutcome) {
        self.outcomes[i] = Some(Box::new(outcome));
        self.landed.push(i);
    }

    /// Awaits `work` while taking in the answers that land meanwhile.
    async fn drive_until<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
        setup: &Setup,
        disclosure: Option<&Disclosure>,
    ) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                done = &mut work => return done,
                Some((i, outcome)) = self.regular.next(), if !self.regular.is_empty() => {
                    self.land(i, outcome);
                }
                Some((i, joined)) = self.late.next(), if !self.late.is_empty() => {
                    let source = &setup.sources[i];
                    let outcome = joined_outcome(disclosure, source, joined);
                    self.land(i, outcome);
                }
            }
        }
    }

    /// Whether these answers are about exactly `active_ids`.
    fn asks_about(&self, active_ids: &[String]) -> bool {
        self.person_ids.len() == active_ids.len()
            && active_ids.iter().all(|id| self.person_ids.contains(id))
    }

    /// Stops asking; what each source asked had come to, for the audit
    /// record: its status when it answered, `abandoned` when it had not.
    fn abandon(self, setup: &Setup) -> Vec<SourceEntry> {
        for task in &self.late_tasks {
            task.abort();
        }
        setup
            .sources
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != setup.household)
            .filter_map(|(i, source)| match &self.outcomes[i] {
                Some(o) if o.result.status == SourceStatus::NotQueried as i32 => None,
                Some(o) => Some(SourceEntry {
                    id: source.spec.id.clone(),
                    status: status_name(o.result.status),
                    cache_hit: o.result.from_cache,
                    facts: o.result.fact_count,
                }),
                None => Some(SourceEntry {
                    id: source.spec.id.clone(),
                    status: "abandoned".into(),
                    cache_hit: false,
                    facts: 0,
                }),
            })
            .collect()
    }
}

/// The persons a fan-out may start on before household registration
/// answers: the applicant and the members the request declares, or `None`
/// when it declares none.
fn declared_persons(request: &VerificationRequest) -> Option<Vec<String>> {
    if request.declared_member_ids.is_empty() {
        return None;
    }
    let mut ids = vec![request.applicant_id.clone()];
    ids.extend(
        request
            .declared_member_ids
            .iter()
            .filter(|id| **id != request.applicant_id)
            .cloned(),
    );
    Some(ids)
}

/// Late answers still out: (source index, its task's result).
type LateAnswers = FuturesUnordered<
    std::pin::Pin<
        Box<
            dyn std::future::Future<Output = (usize, Result<SourceOutcome, tokio::task::JoinError>)>
                + Send,
        >,
    >,
>;

/// Checks a request against `deadlines` on `today` (year, month, day):
/// what [`Verifier::validate`] does, without a verifier (the fuzz target
/// calls it).
///
/// # Errors
/// [`VerifyError::InvalidArgument`] naming the first wrong field.
pub fn validate_request(
    request: Option<VerificationRequest>,
    call_timeout: Option<Duration>,
    deadlines: Deadlines,
    today: (i32, u32, u32),
) -> Result<ValidRequest, VerifyError> {
    let request = request.ok_or_else(|| invalid("request", "is required"))?;
    resident_id::validate(&request.applicant_id, today)
        .map_err(|e| invalid("applicant_id", e.to_string()))?;
    check_text(
        "consent_reference",
        &request.consent_reference,
        MAX_CONSENT_REFERENCE,
    )?;
    match Purpose::try_from(request.purpose) {
        Ok(Purpose::Unspecified) => return Err(invalid("purpose", "is required")),
        Err(_) => {
            return Err(invalid(
                "purpose",
                format!("{} is not a known purpose", request.purpose),
            ));
        }
        Ok(_) => {}
    }
    check_text("operator_id", &request.operator_id, MAX_OPERATOR_ID)?;
    let mut timeout = deadlines.default;
    if let Some(d) = &request.deadline {
        let d = non_negative(d)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| invalid("deadline", "must be positive"))?;
        if d > deadlines.max {
            return Err(invalid(
                "deadline",
                format!("must be at most {} ms", deadlines.max.as_millis()),
            ));
        }
        timeout = d;
    }
    let max_age = match &request.max_age {
        None => None,
        Some(a) => Some(non_negative(a).ok_or_else(|| invalid("max_age", "must not be negative"))?),
    };
    if request.declared_member_ids.len() > MAX_DECLARED_MEMBERS {
        return Err(invalid(
            "declared_member_ids",
            format!("at most {MAX_DECLARED_MEMBERS} members"),
        ));
    }
    for (i, id) in request.declared_member_ids.iter().enumerate() {
        resident_id::validate(id, today)
            .map_err(|e| invalid("declared_member_ids", format!("[{i}]: {e}")))?;
        if request.declared_member_ids[..i].contains(id) {
            return Err(invalid(
                "declared_member_ids",
                format!("[{i}]: appears twice"),
            ));
        }
    }
    if let Some(c) = call_timeout {
        timeout = timeout.min(c);
    }
    Ok(ValidRequest {
        request: Box::new(request),
        timeout,
        max_age,
    })
}

/// What completing a report needs besides the late answers.
#[derive(Debug)]
struct Completion {
    setup: Arc<Setup>,
    report_id: String,
    request: VerificationRequest,
    requested_at: SystemTime,
    today: chrono::NaiveDate,
    household: crate::report::household::Household,
    caller: Caller,
    outcomes: Slots,
}

/// Per source (in catalog order), its outcome once known. Boxed: a slot is
/// a pointer until its source answers, where an outcome inline is 200
/// bytes, 28 of them per verification in flight (docs/benchmarks.md, S5).
type Slots = Vec<Option<Box<SourceOutcome>>>;

/// The outcomes in `slots`, in order, in a vector allocated once (a
/// flattened iterator does not know its length, and collecting it grows
/// the vector, copying the outcomes, as it goes).
fn landed(slots: Slots) -> Vec<SourceOutcome> {
    let mut outcomes = Vec::with_capacity(slots.len());
    outcomes.extend(slots.into_iter().flatten().map(|o| *o));
    outcomes
}

/// Reports waiting for late answers, and their subscribers.
#[derive(Debug, Default)]
struct Watchers {
    map: std::sync::Mutex<std::collections::HashMap<String, watch::Sender<Report>>>,
}

impl Watchers {
    fn register(&self, report_id: &str, report: Report) {
        let (tx, _) = watch::channel(report);
        self.map
            .lock()
            .expect("watchers lock")
            .insert(report_id.to_owned(), tx);
    }

    fn subscribe(&self, report_id: &str) -> Option<watch::Receiver<Report>> {
        self.map
            .lock()
            .expect("watchers lock")
            .get(report_id)
            .map(watch::Sender::subscribe)
    }

    fn remove(&self, report_id: &str) {
        self.map.lock().expect("watchers lock").remove(report_id);
    }

    fn complete(&self, report_id: &str, report: Report) {
        let tx = self.map.lock().expect("watchers lock").remove(report_id);
        if let Some(tx) = tx {
            tx.send_replace(report);
        }
    }
}

/// How far before the first unsettled report [`Verifier::settle_unrecorded`]
/// looks for records, ms.
const SETTLE_MARGIN_MS: i64 = 10 * 60 * 1000;
/// Records read at a time by [`Verifier::settle_unrecorded`].
const SETTLE_PAGE: u32 = 1000;

/// Commits a verification's access record and writes its report at once:
/// one commit wait instead of two. The report stays hidden until the
/// record has committed, and is deleted when the record fails: no report
/// can be read before its record ([`crate::store`]).
async fn record_and_store(
    audit: AuditLog,
    store: ReportStore,
    entry: Entry,
    row: StoredReport,
) -> Result<(), VerifyError> {
    let report_id = row.report_id().to_owned();
    let (recorded, stored) = tokio::join!(audit.record(entry), store.put_unrecorded(row));
    match (recorded, stored) {
        (Ok(_), Ok(())) => {
            store.recorded(report_id).await;
            Ok(())
        }
        (Ok(_), Err(e)) => {
            warn!(error = %e, "report not stored, verification fails");
            Err(VerifyError::StoreUnavailable(e))
        }
        (Err(e), stored) => {
            warn!(error = %e, "access not recorded; the report does not leave");
            if stored.is_ok()
                && let Err(d) = store.discard(report_id).await
            {
                tracing::error!(
                    error = %d,
                    "a report whose access was not recorded could not be deleted; \
                     it stays hidden, and the next start deletes it"
                );
            }
            Err(VerifyError::AuditUnavailable(e))
        }
    }
}

/// A new report's id: a UUID of version 7, whose first 48 bits are the
/// time it was made, so that ids made one after another sort one after
/// another. The report store's key index then grows at its end: a random
/// id (version 4) landed on a page of its own in every commit, one page
/// more to write per report (docs/benchmarks.md, S4).
fn new_report_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The outcome of a source that gave no answer, with its status and why.
fn unanswered(source: &SourceHandle, status: SourceStatus, detail: String) -> SourceOutcome {
    SourceOutcome {
        spec: source.spec.clone(),
        result: SourceResult {
            source_id: source.spec.id.clone(),
            source_name: source.spec.name.clone(),
            status: status as i32,
            detail,
            ..Default::default()
        },
        answers: Arc::default(),
    }
}

// === data minimisation (`crate::report::disclosure`) ===

/// `source` as the purpose may ask it: its spec narrowed to the kinds the
/// purpose may see (what the lookup asks for), behind the same guard.
fn narrowed(disclosure: Option<&Disclosure>, source: &SourceHandle) -> SourceHandle {
    match disclosure {
        Some(d) => SourceHandle {
            spec: d.narrowed(&source.spec),
            guard: source.guard.clone(),
        },
        None => source.clone(),
    }
}

/// The outcome of `source` as the purpose may see it.
fn restricted(
    disclosure: Option<&Disclosure>,
    source: &SourceHandle,
    outcome: SourceOutcome,
) -> SourceOutcome {
    match disclosure {
        Some(d) => d.restrict(&source.spec, outcome),
        None => outcome,
    }
}

/// Writes into a verification's audit entry what `outcomes` disclosed,
/// per source, and the kinds the report says were withheld.
fn record_disclosure<'a>(
    entry: &mut Entry,
    report: &Report,
    outcomes: impl Iterator<Item = &'a SourceOutcome>,
) {
    entry.disclosed = outcomes
        .filter_map(|o| {
            let kinds = disclosure::disclosed_kinds(o);
            (!kinds.is_empty()).then(|| crate::audit::record::Disclosed {
                id: o.spec.id.clone(),
                kinds,
            })
        })
        .collect();
    entry.withheld = report
        .withheld_fact_kinds
        .iter()
        .filter_map(|k| hedui_proto::v1::FactKind::try_from(*k).ok())
        .map(disclosure::kind_name)
        .collect();
}

/// The outcome of a source asked in its own task, as the purpose may see
/// it.
fn joined_outcome(
    disclosure: Option<&Disclosure>,
    source: &SourceHandle,
    joined: Result<SourceOutcome, tokio::task::JoinError>,
) -> SourceOutcome {
    let outcome = joined.unwrap_or_else(|e| {
        tracing::error!(source = %source.spec.id, error = %e, "source task failed");
        unanswered(
            source,
            SourceStatus::Error,
            "internal error while asking this source".into(),
        )
    });
    restricted(disclosure, source, outcome)
}

/// A source still out when the report is returned.
fn pending_outcome(source: &SourceHandle, until: SystemTime) -> SourceOutcome {
    let until = chrono::DateTime::<chrono::Utc>::from(until);
    unanswered(
        source,
        SourceStatus::Pending,
        format!(
            "no answer yet; the broker waits for it until {} and then completes this report",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
}

impl Verifier {
    /// The audit entry opening a streaming verification: who asks, about
    /// which persons, from which sources. No report yet.
    fn started_entry(
        &self,
        report_id: &str,
        request: &VerificationRequest,
        household: &crate::report::household::Household,
        caller: &Caller,
    ) -> Entry {
        let key = self.audit.subject_key();
        let mut entry = Entry::new(Kind::VerificationStarted);
        entry.request_id = report_id.to_owned();
        entry.client = caller.identity.clone();
        entry.operator = request.operator_id.clone();
        entry.purpose = purpose_name(request.purpose);
        entry.consent_reference = request.consent_reference.clone();
        let mut ids: Vec<&String> = std::iter::once(&request.applicant_id)
            .chain(household.members.iter().map(|m| &m.person_id))
            .chain(request.declared_member_ids.iter())
            .collect();
        ids.sort();
        ids.dedup();
        entry.subjects = ids.into_iter().map(|id| key.subject(id)).collect();
        // A source the purpose may not ask is not said to be asked.
        let setup = self.setup();
        let disclosure = setup.disclosure(request.purpose);
        entry.sources = setup
            .sources
            .iter()
            .map(|s| SourceEntry {
                id: s.spec.id.clone(),
                status: if disclosure
                    .as_ref()
                    .is_some_and(|d| d.not_asked(&s.spec).is_some())
                {
                    "not_queried"
                } else {
                    "asked"
                }
                .into(),
                cache_hit: false,
                facts: 0,
            })
            .collect();
        entry.detail = "stream opened; the verification record follows with the report".into();
        entry
    }

    /// The audit entry of a report completed after late answers: the
    /// sources that answered late (or were closed) with their outcomes.
    fn completed_entry(
        &self,
        report: &Report,
        encoded: &[u8],
        caller: &Caller,
        late: &[&SourceResult],
    ) -> Entry {
        let mut entry = self.access_entry(report, encoded, caller, Duration::ZERO);
        entry.kind = Some(Kind::ReportCompleted);
        entry.time_ms = Entry::new(Kind::ReportCompleted).time_ms;
        entry.sources = late
            .iter()
            .map(|s| SourceEntry {
                id: s.source_id.clone(),
                status: status_name(s.status),
                cache_hit: s.from_cache,
                facts: s.fact_count,
            })
            .collect();
        entry.latency_ms = report
            .requested_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        entry.detail = format!("revision {}", report.revision);
        entry
    }

    /// The audit entry of a verification that produced `report`, whose
    /// protobuf encoding is `encoded`.
    fn access_entry(
        &self,
        report: &Report,
        encoded: &[u8],
        caller: &Caller,
        latency: Duration,
    ) -> Entry {
        let key = self.audit.subject_key();
        let request = report.request.clone().unwrap_or_default();
        let mut entry = Entry::new(Kind::Verification);
        entry.request_id = report.report_id.clone();
        entry.client = caller.identity.clone();
        entry.operator = request.operator_id.clone();
        entry.purpose = purpose_name(request.purpose);
        entry.consent_reference = request.consent_reference.clone();
        // Each person hashed once (the applicant is a member, and declared
        // members are too), in the order first named, as `Audit::record`
        // would keep their hashes.
        let mut named = std::collections::HashSet::new();
        entry.subjects = std::iter::once(&request.applicant_id)
            .chain(report.members.iter().map(|m| &m.person_id))
            .chain(request.declared_member_ids.iter())
            .filter(|id| named.insert(*id))
            .map(|id| key.subject(id))
            .collect();
        entry.sources = report
            .sources
            .iter()
            .map(|s| SourceEntry {
                id: s.source_id.clone(),
                status: status_name(s.status),
                cache_hit: s.from_cache,
                facts: s.fact_count,
            })
            .collect();
        entry.report_digest = self.audit.digest(encoded);
        entry.latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        entry
    }
}

/// A protobuf duration as a std one; `None` when it is negative or its
/// nanoseconds are out of range (prost's own conversion negates a negative
/// duration, which overflows at `i64::MIN` seconds).
fn non_negative(d: &prost_types::Duration) -> Option<Duration> {
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return None;
    }
    Duration::try_from(*d).ok()
}

/// Checks required caller text: not blank, at most `max` characters, no
/// control characters; [`VerifyError::InvalidArgument`] naming `field`
/// otherwise.
pub(crate) fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), VerifyError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    let n = value.chars().count();
    if n > max {
        return Err(invalid(field, format!("{n} characters, at most {max}")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// What bounds every source call of one verification.
#[derive(Debug, Clone, Copy)]
struct Limits {
    purpose: Purpose,
    deadline: Instant,
    /// Answers whose as-of time is older than this are not used.
    max_age: Option<Duration>,
}

/// Whether an answer as of `as_of` is older than `max_age`.
fn too_old(as_of: Option<&prost_types::Timestamp>, max_age: Option<Duration>) -> bool {
    let (Some(as_of), Some(max_age)) = (as_of, max_age) else {
        return false;
    };
    let Ok(as_of) = SystemTime::try_from(*as_of) else {
        return true;
    };
    SystemTime::now()
        .duration_since(as_of)
        .is_ok_and(|age| age > max_age)
}

/// What `source` is asked: about `person_ids`, for the kinds of facts it
/// holds (of the source as the purpose may ask it).
fn lookup_request(
    source: &SourceHandle,
    report_id: &str,
    person_ids: Vec<String>,
    request: &VerificationRequest,
    purpose: Purpose,
) -> LookupRequest {
    LookupRequest {
        request_id: report_id.to_owned(),
        source_id: source.spec.id.clone(),
        person_ids,
        fact_kinds: source.spec.fact_kinds.iter().map(|k| *k as i32).collect(),
        purpose: purpose as i32,
        consent_reference: request.consent_reference.clone(),
    }
}

/// Asks one source `lookup` and turns whatever happens into a
/// [`SourceOutcome`]; never takes longer than the deadline (the guard's
/// waits all end by then).
///
/// An `async move` block rather than an `async fn`, which would hold its
/// arguments twice, and the request built by the caller rather than
/// inside: 27 of these wait per verification (docs/benchmarks.md, S5).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice"
)]
fn ask<'a>(
    source: &'a SourceHandle,
    lookup: &'a LookupRequest,
    limits: &'a Limits,
) -> impl std::future::Future<Output = SourceOutcome> + Send + 'a {
    async move {
        let started = Instant::now();
        if started >= limits.deadline {
            // The household took the whole deadline: this source was never
            // asked, which is not the same as not answering.
            return SourceOutcome {
                spec: source.spec.clone(),
                result: SourceResult {
                    source_id: source.spec.id.clone(),
                    source_name: source.spec.name.clone(),
                    status: SourceStatus::NotQueried as i32,
                    latency: prost_types::Duration::try_from(Duration::ZERO).ok(),
                    detail: "not asked: the deadline passed before this source could be asked"
                        .into(),
                    ..Default::default()
                },
                answers: Arc::default(),
            };
        }
        let answer = source
            .guard
            .lookup(
                LookupContext::until(limits.deadline),
                lookup,
                limits.max_age,
            )
            .await;
        // An answer older than the caller accepts is not used: the source is
        // reported as failed, and what depends on it is inconclusive.
        let answer = answer.and_then(|served| {
            if too_old(served.as_of.as_ref(), limits.max_age) {
                Err(GuardError::Source(AdapterError::Malformed(
                    "the answer is older than the max_age asked for".into(),
                )))
            } else {
                Ok(served)
            }
        });
        let latency = started.elapsed();
        let mut result = SourceResult {
            source_id: source.spec.id.clone(),
            source_name: source.spec.name.clone(),
            latency: prost_types::Duration::try_from(latency).ok(),
            ..Default::default()
        };
        let answers = match answer {
            Ok(Served {
                answers,
                as_of,
                cache_hit,
            }) => {
                result.from_cache = cache_hit;
                let facts: usize = answers.iter().map(|a| a.facts.len()).sum();
                result.status = if facts > 0 {
                    SourceStatus::Ok
                } else {
                    SourceStatus::NoRecord
                } as i32;
                result.fact_count = u32::try_from(facts).unwrap_or(u32::MAX);
                result.as_of = as_of.or_else(|| Some(timestamp(SystemTime::now())));
                answers
            }
            Err(e) => {
                result.status = e.status() as i32;
                result.detail = e.to_string();
                debug!(source = %source.spec.id, error = %e, "source gave no usable answer");
                Arc::default()
            }
        };
        SourceOutcome {
            spec: source.spec.clone(),
            result,
            answers,
        }
    }
}

/// The report status of an adapter error.
pub fn status_of(e: &AdapterError) -> SourceStatus {
    match e {
        AdapterError::Timeout => SourceStatus::Timeout,
        AdapterError::Unavailable(_) => SourceStatus::Unavailable,
        AdapterError::RateLimited { .. } => SourceStatus::RateLimited,
        AdapterError::Rejected(_) | AdapterError::Malformed(_) | AdapterError::Internal(_) => {
            SourceStatus::Error
        }
    }
}

#[cfg(test)]
mod declared_tests;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use hedui_adapters::catalog::Catalog;
    use hedui_proto::v1::{
        CheckResponse, Fact, HouseholdRegistration, LookupResponse, PersonAnswer, RegisteredPerson,
        RegistrationStatus, fact::Value,
    };

    use super::*;

    const APPLICANT: &str = "11010519491231002X";

    /// A household source that registers the applicant alone, with answers
    /// as of `age` ago.
    #[derive(Debug)]
    struct Register {
        age: Duration,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Adapter for Register {
        fn source_id(&self) -> &str {
            HOUSEHOLD_SOURCE
        }

        async fn lookup(
            &self,
            _ctx: &LookupContext,
            request: &LookupRequest,
        ) -> Result<LookupResponse, AdapterError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let as_of = Some(timestamp(SystemTime::now() - self.age));
            let registration = HouseholdRegistration {
                household_number: "1".into(),
                region_code: "511703".into(),
                hukou_type: 2,
                members: vec![RegisteredPerson {
                    person_id: APPLICANT.into(),
                    relation: 1,
                    status: RegistrationStatus::Active as i32,
                    ..Default::default()
                }],
            };
            Ok(LookupResponse {
                answers: request
                    .person_ids
                    .iter()
                    .map(|id| PersonAnswer {
                        person_id: id.clone(),
                        facts: vec![Fact {
                            record_id: "r".into(),
                            as_of,
                            value: Some(Value::HouseholdRegistration(registration.clone())),
                        }],
                    })
                    .collect(),
                as_of,
            })
        }

        async fn check(&self) -> Result<CheckResponse, AdapterError> {
            Ok(CheckResponse::default())
        }
    }

    async fn verifier(age: Duration) -> (Arc<Verifier>, Arc<Register>) {
        let (v, register) = raw_verifier(age).await;
        (Arc::new(v), register)
    }

    async fn raw_verifier(age: Duration) -> (Verifier, Arc<Register>) {
        let register = Arc::new(Register {
            age,
            calls: AtomicUsize::new(0),
        });
        let spec = Catalog::dachuan().get(HOUSEHOLD_SOURCE).unwrap().clone();
        let store = ReportStore::open(std::path::Path::new(":memory:"))
            .await
            .unwrap();
        let audit = AuditLog::open(&crate::audit::AuditConfig {
            path: Some(":memory:".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        let v = Verifier::new(
            vec![SourceHandle::unguarded(spec, register.clone())],
            PolicySet::embedded(),
            store,
            audit,
            Deadlines {
                default: Duration::from_secs(10),
                max: Duration::from_secs(60),
            },
        );
        (v, register)
    }

    fn request() -> VerificationRequest {
        VerificationRequest {
            applicant_id: APPLICANT.into(),
            consent_reference: "SQ-1".into(),
            purpose: Purpose::DibaoReview as i32,
            operator_id: "op".into(),
            ..Default::default()
        }
    }

    fn caller() -> Caller {
        Caller::new("127.0.0.1")
    }

    fn field_of(e: VerifyError) -> &'static str {
        match e {
            VerifyError::InvalidArgument { field, .. } => field,
            VerifyError::StoreUnavailable(_) => "store",
            VerifyError::AuditUnavailable(_) => "audit",
            VerifyError::PermissionDenied { .. } => "permission",
        }
    }

    #[tokio::test]
    async fn validation_names_the_field() {
        let (v, _) = verifier(Duration::ZERO).await;
        let with = |f: &dyn Fn(&mut VerificationRequest)| {
            let mut r = request();
            f(&mut r);
            v.validate(Some(r), None).map(|_| ()).map_err(field_of)
        };
        assert_eq!(with(&|_| {}), Ok(()));
        assert_eq!(
            v.validate(None, None).map(|_| ()).map_err(field_of),
            Err("request")
        );
        assert_eq!(
            with(&|r| r.deadline = Some(prost_types::Duration::default())),
            Err("deadline")
        );
        assert_eq!(
            with(&|r| r.deadline = Duration::from_secs(61).try_into().ok()),
            Err("deadline")
        );
        assert_eq!(
            with(&|r| r.max_age = Some(prost_types::Duration {
                seconds: -1,
                nanos: 0
            })),
            Err("max_age")
        );
        // Extreme durations are refused, not a panic (prost's conversion
        // negates, which overflows at i64::MIN).
        let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(with(&|r| r.deadline = d(i64::MIN, 0)), Err("deadline"));
        assert_eq!(with(&|r| r.deadline = d(0, -1)), Err("deadline"));
        assert_eq!(with(&|r| r.deadline = d(1, 1_000_000_000)), Err("deadline"));
        assert_eq!(with(&|r| r.deadline = d(i64::MAX, 0)), Err("deadline"));
        assert_eq!(with(&|r| r.max_age = d(i64::MIN, -1)), Err("max_age"));
        assert_eq!(with(&|r| r.max_age = d(0, -5)), Err("max_age"));
        assert_eq!(with(&|r| r.max_age = d(i64::MAX, 999_999_999)), Ok(()));
        assert_eq!(
            with(&|r| r.declared_member_ids = vec![APPLICANT.into(), APPLICANT.into()]),
            Err("declared_member_ids")
        );
        assert_eq!(with(&|r| r.operator_id = "a\nb".into()), Err("operator_id"));
        assert_eq!(
            with(&|r| r.consent_reference = "x".repeat(MAX_CONSENT_REFERENCE + 1)),
            Err("consent_reference")
        );
    }

    #[tokio::test]
    async fn report_ids_sort_in_the_order_the_reports_were_made() {
        let (v, _) = verifier(Duration::ZERO).await;
        let mut ids = Vec::new();
        for _ in 0..5 {
            let report = v
                .run(v.validate(Some(request()), None).unwrap(), &caller(), None)
                .await
                .unwrap();
            let id = uuid::Uuid::parse_str(&report.report_id).unwrap();
            assert_eq!(id.get_version_num(), 7, "{id}");
            ids.push(report.report_id);
        }
        assert!(ids.is_sorted(), "{ids:?}");
        // Many made at once are distinct and in order too.
        let many: Vec<String> = (0..10_000).map(|_| new_report_id()).collect();
        assert!(many.is_sorted());
        assert!(many.windows(2).all(|w| w[0] != w[1]));
    }

    #[tokio::test]
    async fn the_shortest_deadline_wins() {
        let (v, _) = verifier(Duration::ZERO).await;
        let mut r = request();
        r.deadline = Duration::from_secs(5).try_into().ok();
        let valid = v.validate(Some(r.clone()), None).unwrap();
        assert_eq!(valid.timeout, Duration::from_secs(5));
        let valid = v
            .validate(Some(r), Some(Duration::from_millis(300)))
            .unwrap();
        assert_eq!(valid.timeout, Duration::from_millis(300));
    }

    #[tokio::test]
    async fn answers_older_than_max_age_are_not_used() {
        let (v, register) = verifier(Duration::from_secs(3600)).await;
        let report = v
            .run(v.validate(Some(request()), None).unwrap(), &caller(), None)
            .await
            .unwrap();
        assert_eq!(report.sources[0].status, SourceStatus::Ok as i32);

        let mut r = request();
        r.max_age = Duration::from_secs(60).try_into().ok();
        let report = v
            .run(v.validate(Some(r), None).unwrap(), &caller(), None)
            .await
            .unwrap();
        assert_eq!(report.sources[0].status, SourceStatus::Error as i32);
        assert!(report.sources[0].detail.contains("max_age"));
        assert_eq!(register.calls.load(Ordering::SeqCst), 2);
        let r8 = report.indicators.iter().find(|i| i.id == "R8").unwrap();
        assert_eq!(r8.outcome, hedui_proto::v1::Outcome::Inconclusive as i32);
    }

    #[tokio::test]
    async fn no_report_leaves_when_it_cannot_be_stored() {
        let (v, _) = verifier(Duration::ZERO).await;
        v.store().close().await;
        let err = v
            .run(v.validate(Some(request()), None).unwrap(), &caller(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, VerifyError::StoreUnavailable(_)));
    }

    #[tokio::test]
    async fn every_report_is_recorded_before_it_leaves() {
        let (v, _) = verifier(Duration::ZERO).await;
        let report = v
            .run(v.validate(Some(request()), None).unwrap(), &caller(), None)
            .await
            .unwrap();
        let subject = v.audit().subject_key().subject(APPLICANT);
        let rows = v
            .audit()
            .backend()
            .query(&crate::audit::store::Filter {
                subject: Some(subject),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].request_id, report.report_id);
        assert_eq!(rows[0].client, "127.0.0.1");
        assert_eq!(rows[0].purpose, "dibao_review");
        let body = rows[0].body.as_deref().unwrap();
        assert!(!body.contains(APPLICANT), "{body}");
        assert!(body.contains(&v.audit().digest(&report.encode_to_vec())));
    }

    /// A verifier whose audit log is the SQLite file `dir/audit.db`.
    async fn verifier_with_audit_file(
        dir: &std::path::Path,
    ) -> (
        Arc<Verifier>,
        Arc<Register>,
        crate::audit::testkit::TestStore,
    ) {
        let store = crate::audit::testkit::TestStore::sqlite(
            dir,
            "audit",
            crate::audit::crypto::Suite::Sha256Ed25519,
        );
        let (mut v, register) = raw_verifier(Duration::ZERO).await;
        v.audit = store.open().await.unwrap();
        (Arc::new(v), register, store)
    }

    #[tokio::test]
    async fn no_report_leaves_when_its_record_cannot_be_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (v, register, store) = verifier_with_audit_file(dir.path()).await;
        // The store still answers (its head reads), but records cannot be
        // written: sources are asked, the report does not leave.
        store.exec("DROP TABLE audit_records").await.unwrap();
        let err = v
            .run(v.validate(Some(request()), None).unwrap(), &caller(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, VerifyError::AuditUnavailable(_)), "{err}");
        assert_eq!(register.calls.load(Ordering::SeqCst), 1);
        // The report, written while its record was tried, is deleted.
        assert_eq!(stored_reports(&v).await, 0);
        assert_eq!(v.store().unrecorded().await.unwrap(), []);
        // A streaming caller gets not even the household: its opening
        // record could not be committed.
        let (tx, mut rx) = mpsc::channel(64);
        let err = v
            .run(
                v.validate(Some(request()), None).unwrap(),
                &caller(),
                Some(tx),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, VerifyError::AuditUnavailable(_)), "{err}");
        assert!(rx.try_recv().is_err(), "an event left unrecorded");
    }

    async fn stored_reports(v: &Verifier) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM reports")
            .fetch_one(v.store().pool())
            .await
            .unwrap();
        n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_report_stored_before_its_record_commits_is_not_served_until_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _, _store) = verifier_with_audit_file(dir.path()).await;
        // Another connection holds the audit database's write lock: the
        // record waits (up to the log's busy timeout, 5 s).
        use sqlx::Connection as _;
        let mut lock = sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("audit.db")),
        )
        .await
        .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut lock)
            .await
            .unwrap();
        let run = tokio::spawn({
            let v = v.clone();
            async move {
                v.run(v.validate(Some(request()), None).unwrap(), &caller(), None)
                    .await
            }
        });
        let mut id = None;
        for _ in 0..300 {
            let row: Option<(String,)> = sqlx::query_as("SELECT report_id FROM reports")
                .fetch_optional(v.store().pool())
                .await
                .unwrap();
            if let Some((found,)) = row {
                id = Some(found);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let id = id.expect("the report is written while its record waits");
        assert!(!run.is_finished(), "the report left before its record");
        assert_eq!(v.store().get(&id).await.unwrap(), None);
        assert_eq!(v.store().get_owned(&id).await.unwrap(), None);
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.report_id, id);
        assert_eq!(v.store().get(&id).await.unwrap(), Some(report));
    }

    #[tokio::test]
    async fn reports_an_earlier_run_wrote_ahead_of_a_record_it_never_committed_are_deleted_on_start()
     {
        let (v, _) = verifier(Duration::ZERO).await;
        let recorded = v
            .run(v.validate(Some(request()), None).unwrap(), &caller(), None)
            .await
            .unwrap();
        // As if the broker had stopped before it set the report's flag...
        sqlx::query("UPDATE reports SET recorded = 0")
            .execute(v.store().pool())
            .await
            .unwrap();
        // ...and before the record of another report committed.
        let mut lost = recorded.clone();
        lost.report_id = uuid::Uuid::new_v4().to_string();
        let body = lost.encode_to_vec();
        v.store()
            .put_unrecorded(StoredReport::new(&lost, body, "127.0.0.1"))
            .await
            .unwrap();
        assert_eq!(v.store().unrecorded().await.unwrap().len(), 2);
        assert_eq!(v.close_abandoned().await.unwrap(), 0);
        assert_eq!(v.store().unrecorded().await.unwrap(), []);
        assert_eq!(stored_reports(&v).await, 1);
        assert_eq!(
            v.store().get(&recorded.report_id).await.unwrap(),
            Some(recorded)
        );
        assert_eq!(v.settle_unrecorded().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn reports_left_pending_by_an_earlier_run_are_closed_on_start() {
        let (v, _) = verifier(Duration::ZERO).await;
        let mut report = v
            .run(v.validate(Some(request()), None).unwrap(), &caller(), None)
            .await
            .unwrap();
        // As if a late source had been out when the broker stopped.
        report.report_id = uuid::Uuid::new_v4().to_string();
        report.pending = true;
        report.pending_until = Some(timestamp(SystemTime::now()));
        report.sources[0].status = SourceStatus::Pending as i32;
        v.store().put(&report).await.unwrap();
        assert_eq!(v.close_abandoned().await.unwrap(), 1);
        let closed = v.store().get(&report.report_id).await.unwrap().unwrap();
        assert!(!closed.pending);
        assert_eq!(closed.pending_until, None);
        assert_eq!(closed.revision, 1);
        assert_eq!(closed.sources[0].status(), SourceStatus::Timeout);
        assert!(closed.sources[0].detail.contains("broker stopped"));
        let rows = v
            .audit()
            .backend()
            .query(&crate::audit::store::Filter {
                kind: Some(Kind::ReportCompleted.name().to_owned()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].request_id, report.report_id);
        // Nothing is left to close.
        assert_eq!(v.close_abandoned().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn no_source_is_called_when_the_audit_log_is_down() {
        let (v, register) = verifier(Duration::ZERO).await;
        v.audit().backend().close().await;
        let err = v
            .run(v.validate(Some(request()), None).unwrap(), &caller(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, VerifyError::AuditUnavailable(_)), "{err}");
        assert_eq!(register.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn refusals_are_recorded_without_the_input() {
        let (v, _) = verifier(Duration::ZERO).await;
        let mut r = request();
        r.operator_id.clear();
        r.consent_reference = format!("see {APPLICANT}");
        let e = v.validate(Some(r.clone()), None).unwrap_err();
        let e = v.deny(&caller(), Some(&r), e).await;
        assert_eq!(field_of(e), "operator_id");
        // A malformed applicant id is not hashed: nothing of it is kept.
        let mut bad = request();
        bad.applicant_id = format!("{}1", &APPLICANT[..17]);
        let e = v.validate(Some(bad.clone()), None).unwrap_err();
        assert_eq!(
            field_of(v.deny(&caller(), Some(&bad), e).await),
            "applicant_id"
        );
        let rows = v
            .audit()
            .backend()
            .query(&crate::audit::store::Filter {
                kind: Some("denied".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        for row in &rows {
            let body = row.body.as_deref().unwrap();
            assert!(!body.contains(&APPLICANT[..17]), "{body}");
            assert_eq!(row.outcome, "invalid_argument");
        }
        let subject = v.audit().subject_key().subject(APPLICANT);
        assert!(rows[1].body.as_deref().unwrap().contains(&subject));
        let first = rows[0].body.as_deref().unwrap();
        assert!(!first.contains("\"subjects\":[\""), "{first}");
    }

    /// The size of the futures a `FuturesUnordered` holds.
    fn future_size<F>(_: &FuturesUnordered<F>) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every source asked holds its fan-out future while it waits, 27 per
    /// verification in flight (docs/benchmarks.md, S5). A future that
    /// awaits another it captured holds it twice; the fan-out's holds the
    /// source's call once (its `ask` and what the call is asked with), not
    /// twice: 1,640 bytes before that, then 824 (its call 688, with a
    /// timer of its own and the request built inside), now 432 (its call
    /// 208, rustc 1.95). With the 72 bytes of its task in the
    /// `FuturesUnordered`, up to 440 fits jemalloc's 512 class.
    #[tokio::test]
    async fn a_source_s_fan_out_future_holds_its_call_once() {
        let (v, _) = verifier(Duration::ZERO).await;
        let setup = v.setup();
        let request = Arc::new(request());
        let now = Instant::now();
        let plan = Plan {
            setup: &setup,
            disclosure: &None,
            report_id: "r",
            request: &request,
            started: now,
            deadline: now,
            limits: Limits {
                purpose: Purpose::DibaoReview,
                deadline: now,
                max_age: None,
            },
        };
        let fan = plan.launch(vec![APPLICANT.into()]);
        let lookup = LookupRequest::default();
        let ask = ask(&setup.sources[0], &lookup, &plan.limits);
        let (whole, call) = (future_size(&fan.regular), std::mem::size_of_val(&ask));
        println!("a source's fan-out future: {whole} bytes, its call {call}");
        assert!(
            whole < call + 256 && whole <= 440,
            "the fan-out future is {whole} bytes, its call {call}"
        );
    }

    /// A verification's own future is as large as its largest state: the
    /// steps it takes briefly (the audit record, the store, a refusal) are
    /// boxed so that they do not set the size of every verification that
    /// waits on its sources (docs/benchmarks.md, S5). 3,072 bytes (rustc
    /// 1.95); 3,512 with the request inline in [`ValidRequest`] (held by
    /// three futures) and a second span, 5,280 with those steps inline.
    /// With what its task adds (the request, the caller) it stays in
    /// jemalloc's 3,584 class up to about 3,328.
    #[tokio::test]
    async fn a_verification_future_does_not_carry_its_brief_steps_inline() {
        let (v, _) = verifier(Duration::ZERO).await;
        let caller = caller();
        let valid = v.validate(Some(request()), None).unwrap();
        let run = v.run(valid, &caller, None);
        let size = std::mem::size_of_val(&run);
        println!("a verification's future: {size} bytes");
        assert!(size <= 3_328, "a verification's future is {size} bytes");
    }
}
