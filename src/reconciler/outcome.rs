//! Recording and reporting how a run ended: its history row, the change the state machine
//! ([`machine::ended`]) makes to the cluster's row, applied in the same transaction, and
//! the run's journal events.

use std::time::{Duration, SystemTime};

use super::action::{Finished, Plan};
use super::backoff;
use super::machine::{self, RowChange, Verdict};
use crate::log::{ids, Event, Priority};
use crate::model::{Action, ActualState, DesiredState, RunOutcome};
use crate::runner::Exit;
use crate::store::clusters::{ActionResult, ClusterRecord, RowUpdate};
use crate::store::time::Timestamp;
use crate::store::{runs, Recorded, RunEnding, Store, StoreResult};

/// What `record_end` did to the row, for the log.
#[derive(Debug, Default)]
pub struct EndRecord {
    removed: bool,
    attempts: u32,
    next_attempt_at: Option<SystemTime>,
    desired: Option<DesiredState>,
    actual: Option<ActualState>,
}

impl From<Recorded> for EndRecord {
    fn from(r: Recorded) -> Self {
        let mut end = EndRecord {
            removed: r.removed,
            desired: r.before.map(|(d, _)| d),
            actual: r.before.map(|(_, a)| a),
            ..EndRecord::default()
        };
        if let Some(RowUpdate::Settle(result)) = r.update {
            end.actual = Some(result.actual);
            end.attempts = result.attempts;
            end.next_attempt_at = result.next_attempt_at.map(SystemTime::from);
        }
        end
    }
}

/// Writes the run's end into the history and applies what the state machine makes of it to
/// the cluster's row as it is now (it may have been declared anew meanwhile).
pub(super) async fn record_end(
    store: &Store,
    plan: &Plan,
    f: &Finished,
    v: &Verdict,
    keep: u32,
    (backoff_initial, backoff_max): (Duration, Duration),
    now: SystemTime,
) -> StoreResult<EndRecord> {
    let exit = f.ending.exit();
    let ending = RunEnding {
        run_id: plan.run_id,
        cluster_id: plan.record.id,
        action: plan.action,
        keep,
        end: runs::RunEnd {
            outcome: v.outcome,
            ended_at: f.ended_at,
            duration: f.duration,
            exit_code: exit.and_then(|e| match e {
                Exit::Code(c) => Some(c),
                Exit::Signal(_) => None,
            }),
            signal: exit.and_then(|e| match e {
                Exit::Signal(s) => Some(s),
                Exit::Code(_) => None,
            }),
            error: v.error_text(&f.tail),
            output_tail: f.tail.clone(),
            pgid: f.pgid,
        },
    };
    let (action, generation, attempt) = (plan.action, plan.record.generation, plan.attempt);
    let (verdict, tail, probe) = (v.clone(), f.tail.clone(), f.probe);
    let decide = move |current: &ClusterRecord| {
        let run = machine::RunEnd {
            action,
            generation,
            attempt,
            verdict: &verdict,
            tail: &tail,
            probe,
        };
        let change = machine::ended(current, &run, now, |attempt| {
            backoff::delay(attempt, backoff_initial, backoff_max)
        });
        row_update(change)
    };
    Ok(store.record_end(ending, decide).await?.into())
}

/// The state machine's [`RowChange`] as the store carries it out.
fn row_update(change: RowChange) -> RowUpdate {
    match change {
        RowChange::Remove => RowUpdate::Remove,
        RowChange::Settle {
            actual,
            error,
            attempts,
            next_attempt_at,
            observed_generation,
            probe,
        } => RowUpdate::Settle(ActionResult {
            actual,
            error,
            attempts,
            next_attempt_at: next_attempt_at.map(Timestamp::from),
            observed_generation,
            probe,
        }),
        RowChange::Interrupted { in_progress, note } => {
            RowUpdate::Interrupted { in_progress, note }
        }
        RowChange::Keep => RowUpdate::Keep,
    }
}

pub(super) fn log_end(plan: &Plan, f: &Finished, v: &Verdict, end: &EndRecord) {
    let rec = &plan.record;
    let name = &rec.spec.name;
    let action = plan.action;
    let (priority, id, text) = match v.outcome {
        RunOutcome::Succeeded if action == Action::Probe => (
            Priority::Debug,
            ids::RECONCILE_SUCCEEDED,
            format!("cluster {name} verified: it answers"),
        ),
        RunOutcome::Succeeded => (
            Priority::Notice,
            ids::RECONCILE_SUCCEEDED,
            format!(
                "{action} of cluster {name} succeeded in {}",
                millis(f.duration)
            ),
        ),
        RunOutcome::Failed => (
            Priority::Error,
            ids::RECONCILE_FAILED,
            format!(
                "cluster {name}: {}",
                v.headline.as_deref().unwrap_or("failed")
            ),
        ),
        RunOutcome::TimedOut => (
            Priority::Error,
            ids::RECONCILE_TIMED_OUT,
            format!(
                "cluster {name}: {}",
                v.headline.as_deref().unwrap_or("timed out")
            ),
        ),
        RunOutcome::Cancelled => (
            Priority::Notice,
            ids::RECONCILE_CANCELLED,
            format!(
                "cluster {name}: {}",
                v.headline.as_deref().unwrap_or("cancelled")
            ),
        ),
        RunOutcome::Interrupted | RunOutcome::Running => (
            Priority::Warning,
            ids::ACTION_INTERRUPTED,
            format!(
                "cluster {name}: {}",
                v.headline.as_deref().unwrap_or("interrupted")
            ),
        ),
    };
    let mut event = cluster_event(priority, id, rec, action, plan.run_id, plan.attempt)
        .message_text(text)
        .field("DURATION_MS", f.duration.as_millis())
        .field_opt("EXIT_STATUS", f.ending.exit().map(exit_status))
        .field_opt("ACTUAL_STATE", end.actual);
    if let Some(d) = end.desired {
        event = event.replace_field("DESIRED_STATE", d.to_string());
    }
    if matches!(v.outcome, RunOutcome::Failed | RunOutcome::TimedOut) {
        // The headline and the last output lines, as the cluster's reconcile_error has them.
        event = event.field_opt("ERROR", v.error_text(&f.tail));
    }
    if f.leftovers > 0 {
        event = event.field("LEFTOVER_PROCESSES", f.leftovers);
    }
    if f.killed > 0 {
        event = event.field("KILLED_PROCESSES", f.killed);
    }
    event.emit();
    if end.removed {
        Event::new(
            Priority::Notice,
            format!("cluster {name} deleted and removed from the store"),
        )
        .id(ids::CLUSTER_REMOVED)
        .field("CLUSTER", name)
        .field("PROVIDER", rec.spec.provider)
        .field("RUN_ID", plan.run_id)
        .emit();
    }
    if let Some(next) = end.next_attempt_at {
        let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
        let next = Timestamp::from(next);
        Event::new(
            Priority::Info,
            format!(
                "cluster {name}: retry {} of {action} in {} (at {})",
                end.attempts.saturating_add(1),
                humantime::format_duration(Duration::from_secs(wait.as_secs())),
                next.iso()
            ),
        )
        .id(ids::RETRY_SCHEDULED)
        .field("CLUSTER", name)
        .field("ACTION", action)
        .field("ATTEMPT", end.attempts.saturating_add(1))
        .field("NEXT_ATTEMPT_AT", next.iso())
        .emit();
    }
}

/// `KINDLER_EXIT_STATUS`: the exit code, or the signal's name (as systemd's EXIT_STATUS).
fn exit_status(e: crate::runner::Exit) -> String {
    match e {
        crate::runner::Exit::Code(c) => c.to_string(),
        crate::runner::Exit::Signal(s) => nix::sys::signal::Signal::try_from(s)
            .map(|sig| sig.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {s}")),
    }
}

fn millis(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// An event about one cluster's action, with the fields every such event carries.
pub(super) fn cluster_event(
    priority: Priority,
    id: &'static str,
    rec: &ClusterRecord,
    action: Action,
    run_id: i64,
    attempt: u32,
) -> Event {
    Event::new(priority, "")
        .id(id)
        .field("CLUSTER", &rec.spec.name)
        .field("PROVIDER", rec.spec.provider)
        .field("ACTION", action)
        .field("DESIRED_STATE", rec.desired)
        .field("RUN_ID", run_id)
        .field("ATTEMPT", attempt)
}
