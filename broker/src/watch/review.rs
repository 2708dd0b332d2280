//! Bulk review (`WatchService.Review`, `hedui review`): every household a
//! platform has enrolled is verified again, a number at a time, as a
//! change event would have it (alerts when an outcome changes). The pace is
//! set by the sources' rate limits (`[limits]`): a lookup waits for its
//! source's slot, so no source is asked above its rate, and the review's
//! deadline per household is the broker's longest so that waiting for a
//! slot does not make a source `RATE_LIMITED`. Progress is stored per
//! household: a review cut by a crash is resumed without repeating what
//! was done.

use std::sync::Arc;

use futures::StreamExt;
use hedui_proto::v1::ReviewResponse;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Enrolled, Raised, Watch, WatchError, now_ms};
use crate::verify::Caller;

/// Households committed in one transaction, at most.
const COMMIT_BATCH: usize = 64;
/// Longest a household done waits for its commit.
const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Households verified at once when the request says 0.
pub const DEFAULT_CONCURRENCY: u32 = 32;
/// Most households verified at once.
pub const MAX_CONCURRENCY: u32 = 256;

impl Watch {
    /// Runs (or resumes) `caller`'s review, sending progress to `progress`
    /// (a closed receiver does not stop it). Returns the last progress.
    ///
    /// # Errors
    /// [`WatchError::InvalidArgument`] naming `concurrency`; when the store
    /// fails.
    pub async fn review(
        self: &Arc<Self>,
        caller: &Caller,
        concurrency: u32,
        progress: Option<mpsc::Sender<ReviewResponse>>,
    ) -> Result<ReviewResponse, WatchError> {
        if concurrency > MAX_CONCURRENCY {
            return Err(WatchError::InvalidArgument {
                field: "concurrency",
                message: format!("{concurrency} is more than {MAX_CONCURRENCY}"),
            });
        }
        let concurrency = if concurrency == 0 {
            DEFAULT_CONCURRENCY
        } else {
            concurrency
        };
        let unfinished: Option<(String,)> = sqlx::query_as(
            "SELECT review_id FROM reviews WHERE client = ? AND finished_at IS NULL \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(&caller.identity)
        .fetch_optional(&self.pool)
        .await?;
        let resumed = unfinished.is_some();
        let review_id = match unfinished {
            Some((id,)) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                let mut tx = self.pool.begin().await?;
                sqlx::query("INSERT INTO reviews (review_id, client, created_at) VALUES (?, ?, ?)")
                    .bind(&id)
                    .bind(&caller.identity)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO review_items (review_id, enrolment_id) \
                     SELECT ?, enrolment_id FROM enrolments WHERE client = ? AND active = 1",
                )
                .bind(&id)
                .bind(&caller.identity)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                id
            }
        };
        let (total, done): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(done), 0) FROM review_items WHERE review_id = ?",
        )
        .bind(&review_id)
        .fetch_one(&self.pool)
        .await?;
        let todo: Vec<(String, String, Vec<u8>, String)> = sqlx::query_as(
            "SELECT e.enrolment_id, e.client, e.request, e.last_report_id \
             FROM review_items i JOIN enrolments e ON e.enrolment_id = i.enrolment_id \
             WHERE i.review_id = ? AND i.done = 0 ORDER BY e.enrolment_id",
        )
        .bind(&review_id)
        .fetch_all(&self.pool)
        .await?;
        info!(review = %review_id, total, done, resumed, "review under way");
        let mut state = ReviewResponse {
            review_id: review_id.clone(),
            total: u32::try_from(total).unwrap_or(u32::MAX),
            done: u32::try_from(done).unwrap_or(u32::MAX),
            resumed,
            ..Default::default()
        };
        let send = |state: &ReviewResponse| {
            if let Some(tx) = &progress {
                // A slow or gone reader does not hold the review.
                let _ = tx.try_send(state.clone());
            }
        };
        send(&state);
        let mut results = futures::stream::iter(todo)
            .map(|row| {
                let this = Arc::clone(self);
                // Each household in a task of its own: while this loop
                // commits, the verifications under way keep going (and
                // give back the connections they hold).
                let task = tokio::spawn(async move {
                    let enrolled = Enrolled::from_row(row)?;
                    this.reverify_for_review(&enrolled).await
                });
                async move {
                    task.await.unwrap_or_else(|e| {
                        Err(WatchError::Internal(format!(
                            "the verification task failed: {e}"
                        )))
                    })
                }
            })
            .buffer_unordered(concurrency as usize);
        // Households done are committed in groups (one transaction for
        // many, as the audit log does): SQLite has one writer, and a
        // transaction per household would queue the verifications behind
        // it. A crash loses at most the group not yet committed; those
        // households are verified again on resume.
        let mut batch: Vec<super::Update> = Vec::new();
        let mut last_commit = std::time::Instant::now();
        loop {
            let next = results.next().await;
            match &next {
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    warn!(review = %review_id, error = %e, "household not reviewed; left for a resume");
                    state.failed += 1;
                }
            }
            let finished = next.is_none();
            if let Some(Ok(update)) = next {
                batch.push(update);
            }
            let due = batch.len() >= COMMIT_BATCH
                || (!batch.is_empty() && last_commit.elapsed() >= COMMIT_EVERY)
                || (finished && !batch.is_empty());
            if due {
                self.commit_reviewed(&review_id, &batch).await?;
                for update in batch.drain(..) {
                    state.done += 1;
                    state.alerts += u32::from(update.alert.is_some());
                    state.cache_hits += update.cache_hits;
                    state.source_answers += update.answers;
                    if let Some(alert) = update.alert {
                        let _ = self.raised.send(Raised {
                            client: update.client,
                            alert,
                        });
                    }
                }
                last_commit = std::time::Instant::now();
                send(&state);
            }
            if finished {
                break;
            }
        }
        if state.done == state.total {
            sqlx::query("UPDATE reviews SET finished_at = ? WHERE review_id = ?")
                .bind(now_ms())
                .bind(&review_id)
                .execute(&self.pool)
                .await?;
            state.finished = true;
        }
        info!(review = %review_id, done = state.done, total = state.total, alerts = state.alerts, "review ended");
        if let Some(tx) = &progress {
            // The last word is not dropped: it waits for room.
            let _ = tx.send(state.clone()).await;
        }
        Ok(state)
    }

    /// Commits reviewed households: their baselines, alerts, and their
    /// items marked done, in one transaction.
    async fn commit_reviewed(
        &self,
        review_id: &str,
        batch: &[super::Update],
    ) -> Result<(), WatchError> {
        let mut tx = self.pool.begin().await?;
        for update in batch {
            update.apply(&mut tx).await?;
            sqlx::query(
                "UPDATE review_items SET done = 1 WHERE review_id = ? AND enrolment_id = ?",
            )
            .bind(review_id)
            .bind(&update.enrolment_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
