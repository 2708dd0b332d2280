//! Households under management: moving review "from request-based to
//! real-time". A platform enrols a household (purpose Dibao review, under
//! its consent); the broker verifies it at once (the baseline) and keeps the
//! persons of the household. When a source publishes a change about one of
//! them ([`feed`]: an in-process channel from simulated sources, or NATS
//! JetStream), the broker drops what it has cached about the household,
//! verifies it again, and compares with the last report: when an indicator
//! or the verdict changed it raises an [`Alert`], stored durably before the
//! event is acknowledged, and delivered (`StreamAlerts`) until the platform
//! acknowledges it, across restarts. An event is handled once, even when
//! delivered twice.

pub mod bench;
pub mod feed;
pub mod review;
pub mod service;

use std::{sync::Arc, time::SystemTime};

use hedui_proto::v1::{
    Alert, ChangeEvent, ChangeKind, IndicatorChange, Outcome, Purpose, Report, VerificationRequest,
};
use prost::Message;
use sqlx::SqlitePool;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::{
    store::StoreError,
    time::timestamp,
    verify::{Caller, Verifier, VerifyError},
};

/// Why a watch operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The verification failed or was refused.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The request is wrong; `field` names what.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No such enrolment or alert for this caller.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error("watch store: {0}")]
    Store(#[from] sqlx::Error),
    /// A bug: a task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for WatchError {
    fn from(e: StoreError) -> Self {
        WatchError::Verify(VerifyError::StoreUnavailable(e))
    }
}

/// An alert with the platform it is for.
#[derive(Debug, Clone)]
pub struct Raised {
    /// The enrolling platform's identity.
    pub client: String,
    /// The alert.
    pub alert: Alert,
}

/// An enrolled household, as stored.
#[derive(Debug, Clone)]
struct Enrolled {
    enrolment_id: String,
    client: String,
    request: VerificationRequest,
    last_report_id: String,
}

impl Enrolled {
    fn from_row(
        (enrolment_id, client, request, last_report_id): (String, String, Vec<u8>, String),
    ) -> Result<Self, WatchError> {
        let request = VerificationRequest::decode(request.as_slice()).map_err(|_| {
            WatchError::Verify(VerifyError::StoreUnavailable(StoreError::Corrupt(
                enrolment_id.clone(),
            )))
        })?;
        Ok(Self {
            enrolment_id,
            client,
            request,
            last_report_id,
        })
    }
}

/// The result of verifying an enrolled household again: its new baseline
/// and persons, and the alert due, if any.
#[derive(Debug)]
struct Update {
    enrolment_id: String,
    client: String,
    persons: Vec<String>,
    /// Whether `persons` differ from those stored (a birth, a death, a
    /// move): only then are they rewritten.
    persons_changed: bool,
    report: Report,
    alert: Option<Alert>,
    /// Source answers served from the cache, of all source answers.
    cache_hits: u32,
    answers: u32,
}

impl Update {
    /// Writes the new baseline, persons and alert in `tx`.
    async fn apply(&self, tx: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE enrolments SET last_report_id = ? WHERE enrolment_id = ?")
            .bind(&self.report.report_id)
            .bind(&self.enrolment_id)
            .execute(&mut *tx)
            .await?;
        if !self.persons_changed {
            return self.insert_alert(tx).await;
        }
        sqlx::query("DELETE FROM enrolment_members WHERE enrolment_id = ?")
            .bind(&self.enrolment_id)
            .execute(&mut *tx)
            .await?;
        for p in &self.persons {
            sqlx::query("INSERT INTO enrolment_members (person_id, enrolment_id) VALUES (?, ?)")
                .bind(p)
                .bind(&self.enrolment_id)
                .execute(&mut *tx)
                .await?;
        }
        self.insert_alert(tx).await
    }

    async fn insert_alert(&self, tx: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
        if let Some(alert) = &self.alert {
            sqlx::query(
                "INSERT INTO alerts (alert_id, enrolment_id, client, body, raised_at) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&alert.alert_id)
            .bind(&self.enrolment_id)
            .bind(&self.client)
            .bind(alert.encode_to_vec())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

/// Households under management and their alerts.
#[derive(Debug)]
pub struct Watch {
    verifier: Arc<Verifier>,
    pool: SqlitePool,
    raised: broadcast::Sender<Raised>,
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

/// The persons an event about whom concerns the household of `report`.
fn persons_of(request: &VerificationRequest, report: &Report) -> Vec<String> {
    let mut ids: Vec<String> = std::iter::once(request.applicant_id.clone())
        .chain(report.members.iter().map(|m| m.person_id.clone()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn outcome_name(o: i32) -> &'static str {
    match Outcome::try_from(o) {
        Ok(Outcome::Pass) => "PASS",
        Ok(Outcome::Fail) => "FAIL",
        Ok(Outcome::Review) => "REVIEW",
        Ok(Outcome::Inconclusive) => "INCONCLUSIVE",
        _ => "-",
    }
}

fn change_name(kind: i32) -> String {
    ChangeKind::try_from(kind).map_or_else(
        |_| format!("change {kind}"),
        |k| {
            k.as_str_name()
                .trim_start_matches("CHANGE_KIND_")
                .to_ascii_lowercase()
                .replace('_', " ")
        },
    )
}

/// What changed between two reports of a household: the indicators whose
/// outcome changed. `None` when neither they nor the verdict changed.
pub fn compare(old: &Report, new: &Report) -> Option<Vec<IndicatorChange>> {
    let changes: Vec<IndicatorChange> = new
        .indicators
        .iter()
        .filter_map(|n| {
            let before = old.indicators.iter().find(|o| o.id == n.id);
            let old_outcome = before.map_or(0, |o| o.outcome);
            (old_outcome != n.outcome).then(|| IndicatorChange {
                indicator_id: n.id.clone(),
                name: n.name.clone(),
                old_outcome,
                new_outcome: n.outcome,
                reason: n.reason.clone(),
            })
        })
        .collect();
    (!changes.is_empty() || old.verdict != new.verdict).then_some(changes)
}

impl Watch {
    /// Households under management on the broker's report store.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        let pool = verifier.store().pool().clone();
        Self {
            verifier,
            pool,
            raised: broadcast::Sender::new(1024),
        }
    }

    /// New alerts as they are raised.
    pub fn subscribe(&self) -> broadcast::Receiver<Raised> {
        self.raised.subscribe()
    }

    /// Enrols the household of `request` for `caller`: verifies it now and
    /// keeps it.
    ///
    /// # Errors
    /// [`WatchError::InvalidArgument`] when the purpose is not Dibao
    /// review; the verification's errors.
    pub async fn enrol(
        &self,
        caller: &Caller,
        request: Option<VerificationRequest>,
    ) -> Result<(String, Report), WatchError> {
        let valid = match self.verifier.validate(request.clone(), None) {
            Ok(v) => v,
            Err(e) => return Err(self.verifier.deny(caller, request.as_ref(), e).await.into()),
        };
        let request = request.unwrap_or_default();
        if request.purpose != Purpose::DibaoReview as i32 {
            let e = VerifyError::InvalidArgument {
                field: "request.purpose",
                message: "households are enrolled for PURPOSE_DIBAO_REVIEW".into(),
            };
            return Err(self.verifier.deny(caller, Some(&request), e).await.into());
        }
        let report = self.verifier.run(valid, caller, None).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO enrolments (enrolment_id, client, request, last_report_id, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&caller.identity)
        .bind(request.encode_to_vec())
        .bind(&report.report_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        for person in persons_of(&request, &report) {
            sqlx::query("INSERT INTO enrolment_members (person_id, enrolment_id) VALUES (?, ?)")
                .bind(person)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        info!(enrolment = %id, "household enrolled");
        Ok((id, report))
    }

    /// Stops watching an enrolment of `caller`.
    ///
    /// # Errors
    /// [`WatchError::NotFound`] when `caller` has no such enrolment.
    pub async fn unenrol(&self, caller: &Caller, enrolment_id: &str) -> Result<(), WatchError> {
        let done = sqlx::query(
            "UPDATE enrolments SET active = 0 WHERE enrolment_id = ? AND client = ? AND active = 1",
        )
        .bind(enrolment_id)
        .bind(&caller.identity)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(WatchError::NotFound(format!(
                "enrolment_id: no enrolment {enrolment_id}"
            )));
        }
        Ok(())
    }

    /// The alerts of `caller` not yet acknowledged, oldest first.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn open_alerts(&self, client: &str) -> Result<Vec<Alert>, WatchError> {
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT alert_id, body FROM alerts WHERE client = ? AND acknowledged = 0 \
             ORDER BY raised_at, alert_id",
        )
        .bind(client)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, body)| {
                Alert::decode(body.as_slice()).map_err(|_| {
                    WatchError::Verify(VerifyError::StoreUnavailable(StoreError::Corrupt(id)))
                })
            })
            .collect()
    }

    /// Acknowledges an alert of `caller`.
    ///
    /// # Errors
    /// [`WatchError::NotFound`] when `caller` has no such alert.
    pub async fn acknowledge(&self, caller: &Caller, alert_id: &str) -> Result<(), WatchError> {
        let done =
            sqlx::query("UPDATE alerts SET acknowledged = 1 WHERE alert_id = ? AND client = ?")
                .bind(alert_id)
                .bind(&caller.identity)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(WatchError::NotFound(format!(
                "alert_id: no alert {alert_id}"
            )));
        }
        Ok(())
    }

    /// Handles a change event: re-verifies every enrolled household with
    /// the person, raises the alerts that are due, and records the event
    /// as handled. Returns the alerts raised. An event handled before is
    /// ignored.
    ///
    /// # Errors
    /// When a verification or the store fails; nothing is recorded as
    /// handled then, so a redelivery tries again.
    pub async fn on_event(&self, event: &ChangeEvent) -> Result<Vec<Alert>, WatchError> {
        if event.event_id.is_empty() {
            return Err(WatchError::InvalidArgument {
                field: "event_id",
                message: "is required".into(),
            });
        }
        let seen: Option<(String,)> =
            sqlx::query_as("SELECT event_id FROM change_events WHERE event_id = ?")
                .bind(&event.event_id)
                .fetch_optional(&self.pool)
                .await?;
        if seen.is_some() {
            return Ok(Vec::new());
        }
        // What the source said before is no longer true.
        self.verifier.invalidate_person(&event.person_id);
        let enrolments: Vec<(String, String, Vec<u8>, String)> = sqlx::query_as(
            "SELECT e.enrolment_id, e.client, e.request, e.last_report_id \
             FROM enrolment_members m JOIN enrolments e ON e.enrolment_id = m.enrolment_id \
             WHERE m.person_id = ? AND e.active = 1",
        )
        .bind(&event.person_id)
        .fetch_all(&self.pool)
        .await?;
        let mut updates = Vec::new();
        for row in enrolments {
            let enrolled = Enrolled::from_row(row)?;
            match self.reverify(&enrolled, Some(event)).await {
                Ok(update) => updates.push(update),
                // The platform's letter no longer covers the household
                // (expired, revoked, a new member): the refusal is in the
                // audit log; the household is not re-verified and this
                // event is handled for the others. Trying again on a
                // redelivery would be refused again.
                Err(WatchError::Verify(VerifyError::PermissionDenied { message })) => {
                    warn!(
                        enrolment = %enrolled.enrolment_id,
                        client = %enrolled.client,
                        reason = %message,
                        "household under management not re-verified: consent refused"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let mut raised = Vec::new();
        // One transaction: the event handled, the alerts, the new
        // baselines. Another handler of the same event (a redelivery, a
        // second broker) that committed first wins; this one then changes
        // nothing.
        let mut tx = self.pool.begin().await?;
        let first =
            sqlx::query("INSERT OR IGNORE INTO change_events (event_id, handled_at) VALUES (?, ?)")
                .bind(&event.event_id)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        if first.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        for update in &updates {
            update.apply(&mut tx).await?;
            if let Some(alert) = &update.alert {
                raised.push(Raised {
                    client: update.client.clone(),
                    alert: alert.clone(),
                });
            }
        }
        tx.commit().await?;
        for r in &raised {
            info!(alert = %r.alert.alert_id, enrolment = %r.alert.enrolment_id, "alert raised");
            // Nobody streaming is fine: the alert waits in the store.
            let _ = self.raised.send(r.clone());
        }
        if updates.is_empty() {
            tracing::debug!(event = %event.event_id, "change about nobody enrolled");
        }
        Ok(raised.into_iter().map(|r| r.alert).collect())
    }

    /// Verifies an enrolled household again, after `event` or for a
    /// periodic review, and works out the alert due.
    async fn reverify(
        &self,
        e: &Enrolled,
        event: Option<&ChangeEvent>,
    ) -> Result<Update, WatchError> {
        let old = self.verifier.store().get(&e.last_report_id).await?;
        if let (Some(old), Some(_)) = (&old, event) {
            // Every member's cached answers: the household source answers
            // under the applicant's id, banks under all.
            for p in persons_of(&e.request, old) {
                self.verifier.invalidate_person(&p);
            }
        }
        let valid = self.verifier.validate(Some(e.request.clone()), None)?;
        let caller = Caller::acting_for(&e.client);
        let report = self.verifier.run(valid, &caller, None).await?;
        let answers = report
            .sources
            .iter()
            .filter(|s| {
                matches!(
                    s.status(),
                    hedui_proto::v1::SourceStatus::Ok | hedui_proto::v1::SourceStatus::NoRecord
                )
            })
            .count();
        let cache_hits = report.sources.iter().filter(|s| s.from_cache).count();
        let alert = old.as_ref().and_then(|old| {
            compare(old, &report).map(|changes| {
                let what = match event {
                    Some(event) => format!(
                        "{} at {} (record {})",
                        change_name(event.kind),
                        event.source_id,
                        event.record_id
                    ),
                    None => "periodic review".to_owned(),
                };
                let reason = format!(
                    "{what}: verdict {} → {}{}",
                    outcome_name(old.verdict),
                    outcome_name(report.verdict),
                    if changes.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; {}",
                            changes
                                .iter()
                                .map(|c| format!(
                                    "{} {} {} → {}",
                                    c.indicator_id,
                                    c.name,
                                    outcome_name(c.old_outcome),
                                    outcome_name(c.new_outcome)
                                ))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
                Alert {
                    alert_id: uuid::Uuid::new_v4().to_string(),
                    enrolment_id: e.enrolment_id.clone(),
                    household_number: report.household_number.clone(),
                    event: event.cloned(),
                    old_verdict: old.verdict,
                    new_verdict: report.verdict,
                    changes,
                    report_id: report.report_id.clone(),
                    raised_at: Some(timestamp(SystemTime::now())),
                    reason,
                }
            })
        });
        let persons = persons_of(&e.request, &report);
        let persons_changed = old
            .as_ref()
            .is_none_or(|old| persons_of(&e.request, old) != persons);
        Ok(Update {
            enrolment_id: e.enrolment_id.clone(),
            client: e.client.clone(),
            persons,
            persons_changed,
            report,
            alert,
            cache_hits: u32::try_from(cache_hits).unwrap_or(u32::MAX),
            answers: u32::try_from(answers).unwrap_or(u32::MAX),
        })
    }

    /// [`Watch::reverify`] for a bulk review: no event, and the broker's
    /// longest deadline, so that waiting for a rate-limited source's slot
    /// does not cost its answer.
    async fn reverify_for_review(&self, e: &Enrolled) -> Result<Update, WatchError> {
        let mut e = e.clone();
        e.request.deadline = prost_types::Duration::try_from(self.verifier.max_deadline()).ok();
        self.reverify(&e, None).await
    }

    /// Handles events from `events` until it closes, logging failures.
    pub async fn run_channel(self: Arc<Self>, mut events: broadcast::Receiver<ChangeEvent>) {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Err(err) = self.on_event(&e).await {
                        warn!(event = %e.event_id, error = %err, "change event not handled");
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(
                        lost = n,
                        "change events lost (the in-process channel overflowed)"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests;
