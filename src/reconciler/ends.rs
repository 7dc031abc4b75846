//! Recording how runs ended. A run's end is written once its task reports it; when the
//! store does not take the write (another program holds its lock, the disk is full), the
//! end is kept and the write retried with backoff until it succeeds, and the cluster stays
//! busy meanwhile, so its action is not run twice.

use std::time::Duration;

use tokio::time::Instant;

use super::machine::Verdict;
use super::outcome::{log_end, record_end, EndRecord};
use super::{Done, Mode, Reconciler};
use crate::health::Cause;
use crate::log;
use crate::model::RunOutcome;
use crate::store::StoreResult;

/// Retries of recording a run's end: the first after this, doubling up to the maximum.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a stop keeps trying to record ends that could not be recorded; what is left is
/// found by the next start (the run has no end, so it is redone).
pub(super) const RETRY_AT_STOP: Duration = Duration::from_secs(3);

/// A finished run whose end is not recorded yet.
pub(super) struct PendingEnd {
    done: Done,
    verdict: Verdict,
    tries: u32,
    next_try: Instant,
}

impl Reconciler {
    /// A run's task reported its end: its slot is free; its end is recorded now, or later.
    pub(super) async fn finish(&mut self, done: Done) {
        let id = done.plan.record.id;
        self.schedule.end(id);
        self.status_dirty = true;
        let verdict = Verdict::of(
            done.plan.action,
            done.finished.step,
            &done.finished.ending,
            done.reason.as_ref(),
            self.app.settings().action_timeout,
        );
        self.pending.insert(
            id,
            PendingEnd {
                done,
                verdict,
                tries: 0,
                next_try: Instant::now(),
            },
        );
        self.record_end_of(id).await;
    }

    /// Records the ends whose retry is due.
    pub(super) async fn record_due_ends(&mut self) {
        let now = Instant::now();
        let due: Vec<i64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next_try <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.record_end_of(id).await;
        }
    }

    /// Records how a run ended (its history row, and what it does to the cluster's row), or
    /// keeps it for a retry when the store does not take the write.
    async fn record_end_of(&mut self, id: i64) {
        let Some(mut pending) = self.pending.remove(&id) else {
            return;
        };
        let recorded = self.write_end(&pending).await;
        self.app
            .note_write(&recorded, "recording the end of an action");
        let (plan, finished) = (&pending.done.plan, &pending.done.finished);
        match recorded {
            Ok(end) => {
                crate::metrics::METRICS.reconcile_ended(
                    plan.action,
                    pending.verdict.outcome,
                    finished.duration,
                );
                self.app.runs.remove(plan.run_id);
                log_end(plan, finished, &pending.verdict, &end);
                self.schedule.recorded(id, Instant::now());
                if self.mode == Mode::OnePass {
                    match pending.verdict.outcome {
                        RunOutcome::Succeeded => self.report.succeeded += 1,
                        _ => self.report.failed += 1,
                    }
                }
            }
            Err(e) => {
                pending.tries += 1;
                let wait = RETRY_FIRST
                    .saturating_mul(1 << pending.tries.min(10))
                    .min(RETRY_MAX);
                pending.next_try = Instant::now() + wait;
                self.app.health.report(
                    Cause::RunEnds,
                    format!(
                        "the end of run {} ({} of {}) cannot be recorded: {e}; kindler keeps trying",
                        plan.run_id, plan.action, plan.record.spec.name
                    ),
                );
                self.pending.insert(id, pending);
            }
        }
        if self.pending.is_empty() {
            self.app.health.resolve(Cause::RunEnds);
        }
    }

    async fn write_end(&self, pending: &PendingEnd) -> StoreResult<EndRecord> {
        let settings = self.app.settings();
        let keep = settings.history_per_cluster;
        let backoff = (settings.backoff_initial, settings.backoff_max);
        let plan = pending.done.plan.clone();
        let finished = pending.done.finished.clone();
        let verdict = pending.verdict.clone();
        let now = self.app.clock.now();
        record_end(
            &self.app.store,
            &plan,
            &finished,
            &verdict,
            keep,
            backoff,
            now,
        )
        .await
    }

    pub(super) fn next_end_retry(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next_try).min()
    }

    /// At a stop: keeps trying for a while to record the ends not recorded yet.
    pub(super) async fn record_ends_before_stopping(&mut self) {
        let give_up = Instant::now() + RETRY_AT_STOP;
        while let Some(next) = self.next_end_retry() {
            if next > give_up {
                break;
            }
            tokio::time::sleep_until(next).await;
            self.record_due_ends().await;
        }
        if !self.pending.is_empty() {
            log::error(&format!(
                "stopping with {} runs whose end could not be recorded; the next start redoes them",
                self.pending.len()
            ));
        }
    }
}
