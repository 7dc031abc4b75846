//! How a finished run is judged, recorded and reported: the run's outcome and error
//! text, what it does to the cluster's row (state, backoff, removal), and its journal events.

use std::time::{Duration, SystemTime};

use super::action::{Finished, Plan};
use super::{backoff, CancelReason};
use crate::config::Settings;
use crate::log::{ids, Event, Priority};
use crate::model::{Action, ActualState, DesiredState, ProbeReport, RunOutcome};
use crate::runner::Ending;
use crate::store::clusters::{self, ActionResult, ClusterRecord};
use crate::store::{runs, time, StoreResult};

/// Output lines quoted in a cluster's `reconcile_error`.
const ERROR_LINES: usize = 10;

/// What an ended run means for the history and for the cluster.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub(super) outcome: RunOutcome,
    /// The one-line reason of a failure, cancellation or interruption.
    headline: Option<String>,
}

impl Verdict {
    pub(super) fn of(
        plan: &Plan,
        f: &Finished,
        reason: Option<&CancelReason>,
        s: &Settings,
    ) -> Verdict {
        let action = plan.action;
        let (outcome, headline) = match (&f.ending, reason) {
            // Done is done, even if a stop or a new declaration came just as it ended.
            (Ending::Exited(e), _) if e.success() => (RunOutcome::Succeeded, None),
            (_, Some(CancelReason::Shutdown)) => (
                RunOutcome::Interrupted,
                Some(format!(
                    "{action} was interrupted because kindler is stopping; it is redone at the next start"
                )),
            ),
            (Ending::Cancelled(_), Some(CancelReason::Redeclared(to))) => (
                RunOutcome::Cancelled,
                Some(match to {
                    Some(d) => format!("{action} was cancelled: the desired state changed to {d}"),
                    None => format!("{action} was cancelled: the cluster's row was removed"),
                }),
            ),
            (Ending::Exited(e), _) if f.step != action => (
                RunOutcome::Failed,
                Some(format!("{action} finished, but the {} check failed ({e})", f.step)),
            ),
            (Ending::Exited(e), _) => (RunOutcome::Failed, Some(format!("{action} failed ({e})"))),
            (Ending::TimedOut(_), _) => (
                RunOutcome::TimedOut,
                Some(format!(
                    "{action} timed out after {}; its processes were ended",
                    humantime::format_duration(s.action_timeout)
                )),
            ),
            (Ending::SpawnFailed(msg), _) => (RunOutcome::Failed, Some(format!("{action} failed: {msg}"))),
            (Ending::Cancelled(_), _) => (RunOutcome::Cancelled, Some(format!("{action} was cancelled"))),
        };
        Verdict { outcome, headline }
    }

    /// The cluster's `reconcile_error`: the headline on the first line, then the last
    /// output lines (blank ones left out) of a failure.
    fn error_text(&self, tail: &[String]) -> Option<String> {
        let headline = self.headline.as_ref()?;
        let said: Vec<&str> = tail
            .iter()
            .map(String::as_str)
            .filter(|l| !l.trim().is_empty())
            .collect();
        let lines = &said[said.len().saturating_sub(ERROR_LINES)..];
        if lines.is_empty() || !matches!(self.outcome, RunOutcome::Failed | RunOutcome::TimedOut) {
            return Some(headline.clone());
        }
        Some(format!("{headline}\nlast output:\n{}", lines.join("\n")))
    }
}

/// What `record_end` did to the row, for the log.
#[derive(Debug, Default)]
pub struct EndRecord {
    removed: bool,
    attempts: u32,
    next_attempt_at: Option<String>,
    desired: Option<DesiredState>,
    actual: Option<ActualState>,
}

pub(super) fn record_end(
    tx: &rusqlite::Transaction,
    plan: &Plan,
    f: &Finished,
    v: &Verdict,
    keep: u32,
    (backoff_initial, backoff_max): (Duration, Duration),
) -> StoreResult<EndRecord> {
    let id = plan.record.id;
    let error = v.error_text(&f.tail);
    let exit = f.ending.exit();
    runs::finish(
        tx,
        plan.run_id,
        &runs::RunEnd {
            outcome: v.outcome,
            ended_at: SystemTime::now(),
            duration: f.duration,
            exit_code: exit.and_then(|e| match e {
                crate::runner::Exit::Code(c) => Some(c),
                _ => None,
            }),
            signal: exit.and_then(|e| match e {
                crate::runner::Exit::Signal(s) => Some(s),
                _ => None,
            }),
            error: error.as_deref(),
            output_tail: &f.tail,
            pgid: f.pgid,
        },
    )?;
    runs::prune_cluster(tx, id, plan.action, keep)?;
    let current = match clusters::by_id(tx, id)? {
        Some(Ok(c)) => c,
        _ => return Ok(EndRecord::default()),
    };
    let mut end = EndRecord {
        desired: Some(current.desired),
        ..EndRecord::default()
    };
    match v.outcome {
        RunOutcome::Succeeded if plan.action == Action::Delete => {
            end.removed = clusters::remove_if_absent(tx, id)?;
            if !end.removed {
                // Declared again while it was being deleted: it is gone, so create anew.
                finish(
                    tx,
                    id,
                    ActualState::Unknown,
                    None,
                    0,
                    None,
                    plan.record.generation,
                    None,
                )?;
                end.actual = Some(ActualState::Unknown);
            }
        }
        RunOutcome::Succeeded => {
            let state = plan.action.success_state().unwrap_or(ActualState::Running);
            finish(
                tx,
                id,
                state,
                None,
                0,
                None,
                plan.record.generation,
                f.probe,
            )?;
            end.actual = Some(state);
        }
        RunOutcome::Failed | RunOutcome::TimedOut => {
            // A failure of an older declaration does not count against the new one.
            let redeclared = current.generation != plan.record.generation;
            if !redeclared {
                end.attempts = plan.attempt;
                let delay = backoff::delay(plan.attempt, backoff_initial, backoff_max);
                end.next_attempt_at = Some(time::text(SystemTime::now() + delay));
            }
            let next = end.next_attempt_at.clone();
            finish(
                tx,
                id,
                ActualState::Failed,
                error,
                end.attempts,
                next,
                plan.record.generation,
                None,
            )?;
            end.actual = Some(ActualState::Failed);
        }
        RunOutcome::Cancelled | RunOutcome::Interrupted | RunOutcome::Running => {
            // The in-progress state stays, so that the next look redoes or reverses it.
            if let Some(state) = plan.action.in_progress_state() {
                let note = error.as_deref().unwrap_or("interrupted");
                clusters::mark_interrupted(tx, id, state, note)?;
            }
            end.actual = Some(current.actual);
        }
    }
    Ok(end)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    tx: &rusqlite::Transaction,
    id: i64,
    actual: ActualState,
    error: Option<String>,
    attempts: u32,
    next_attempt_at: Option<String>,
    generation: i64,
    probe: Option<ProbeReport>,
) -> StoreResult<()> {
    clusters::finish_action(
        tx,
        id,
        &ActionResult {
            actual,
            error,
            attempts,
            next_attempt_at,
            observed_generation: generation,
            probe,
        },
    )
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
    if let Some(next) = &end.next_attempt_at {
        let wait = time::parse(next)
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        Event::new(
            Priority::Info,
            format!(
                "cluster {name}: retry {} of {action} in {} (at {})",
                end.attempts.saturating_add(1),
                humantime::format_duration(Duration::from_secs(wait.as_secs())),
                time::iso(next)
            ),
        )
        .id(ids::RETRY_SCHEDULED)
        .field("CLUSTER", name)
        .field("ACTION", action)
        .field("ATTEMPT", end.attempts.saturating_add(1))
        .field("NEXT_ATTEMPT_AT", time::iso(next))
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
