//! The state machine: every rule of what kindler does about a cluster, in one place and
//! pure (no I/O, no clock, no randomness), so that each transition is a row of the tables
//! in the unit tests below.
//!
//! Two things happen to a cluster: kindler **looks** at it (it is due: something was
//! declared, a timer fired) and decides what to run, and a run **ends** and changes its row.
//!
//! Looking ([`look`]), by what is declared and what was last observed:
//!
//! | desired   | actual                                    | action                    |
//! |-----------|-------------------------------------------|---------------------------|
//! | absent    | anything                                  | delete, then drop the row |
//! | present   | running                                   | probe, every resync       |
//! | present   | stopped, starting, stopping               | start                     |
//! | present   | failed after a stop, or after < 2 starts  | start                     |
//! | present   | failed after 2 starts in a row            | create (containers gone?) |
//! | present   | unknown, creating, deleting, failed       | create                    |
//! | stopped   | stopped                                   | nothing                   |
//! | stopped   | running, starting, stopping, failed stop/start | stop                 |
//! | stopped   | unknown, creating, deleting, failed create | create (then stop)       |
//!
//! A transitional state (`creating`, ...) found while no action runs means the daemon
//! stopped in the middle of that action; the table redoes it. A failure waits for its
//! backoff (`next_attempt_at`) first.
//!
//! A run ending ([`ended`]), by how it ended:
//!
//! | verdict                 | the row                                                     |
//! |-------------------------|-------------------------------------------------------------|
//! | succeeded, delete       | removed (unless declared again meanwhile: `unknown`)        |
//! | succeeded, other        | the action's success state, error and backoff cleared       |
//! | failed, timed out       | `failed` with the error; backoff grows, unless redeclared   |
//! | cancelled, interrupted  | stays in its in-progress state (redone), with the reason    |
//!
//! So a run's end leaves its declaration ([`aftermath`]) reached, retried after the backoff,
//! or redone; only an end of the declaration in force ([`in_force`]) counts toward its
//! backoff. The task endpoint (`api/tasks.rs`) reads a task's status from these same rules.
//!
//! And while a run goes on, a new declaration cancels it unless the run still serves it
//! ([`keeps_running`]).

use std::time::{Duration, SystemTime};

use crate::model::{Action, ActualState as A, DesiredState as D, ProbeReport, RunOutcome};
use crate::runner::Ending;
use crate::store::clusters::ClusterRecord;

/// After this many failed starts in a row kindler creates the cluster instead: its
/// containers may be gone (removed while it was stopped), and a create script copes with a
/// cluster that exists (the default one starts it).
pub const STARTS_BEFORE_CREATE: u32 = 2;

/// Output lines quoted in a cluster's `reconcile_error`.
const ERROR_LINES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run this action now.
    Act(Action),
    /// Nothing to do before this time.
    At(SystemTime),
    /// Converged; nothing to do until the declaration changes.
    Idle,
}

/// How strictly timers are honoured: the daemon waits for backoff and resync; a one-off
/// `reconcile --once` pass acts on everything at once.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub resync: Duration,
    pub honour_timers: bool,
}

/// What to do about a cluster now.
pub fn look(c: &ClusterRecord, now: SystemTime, policy: Policy) -> Decision {
    if policy.honour_timers {
        if let Some(due) = c.next_attempt_at.map(SystemTime::from) {
            if due > now {
                return Decision::At(due);
            }
        }
    }
    let after_power_action = matches!(c.last_action, Some(Action::Start | Action::Stop));
    let starts_failed = c.last_action == Some(Action::Start) && c.attempts >= STARTS_BEFORE_CREATE;
    let action = match (c.desired, c.actual) {
        (D::Absent, _) => Action::Delete,
        (D::Present, A::Running) => return resync(c, now, policy),
        (D::Present, A::Stopped | A::Starting | A::Stopping) => Action::Start,
        (D::Present, A::Failed) if starts_failed => Action::Create,
        (D::Present, A::Failed) if after_power_action => Action::Start,
        (D::Present, A::Unknown | A::Creating | A::Deleting | A::Failed) => Action::Create,
        (D::Stopped, A::Stopped) => return Decision::Idle,
        (D::Stopped, A::Running | A::Starting | A::Stopping) => Action::Stop,
        (D::Stopped, A::Failed) if after_power_action => Action::Stop,
        (D::Stopped, A::Unknown | A::Creating | A::Deleting | A::Failed) => Action::Create,
    };
    Decision::Act(action)
}

/// A running cluster is probed once per resync period.
fn resync(c: &ClusterRecord, now: SystemTime, policy: Policy) -> Decision {
    if !policy.honour_timers {
        return Decision::Act(Action::Probe);
    }
    match c.last_reconciled_at.map(SystemTime::from) {
        Some(last) if last + policy.resync > now => Decision::At(last + policy.resync),
        _ => Decision::Act(Action::Probe),
    }
}

/// Is the cluster where its declaration wants it? (An absent cluster is there once its row
/// is gone.)
pub fn settled(desired: D, actual: A) -> bool {
    matches!(
        (desired, actual),
        (D::Present, A::Running) | (D::Stopped, A::Stopped)
    )
}

/// What an ended run leaves for the declaration it ran for (the verdict column of the
/// table of endings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aftermath {
    /// Done: the action's success state (a deleted cluster's row goes).
    Done,
    /// Failed: the cluster is `failed` and the declaration is tried again after its backoff.
    Retried,
    /// Not finished: the cluster keeps its in-progress state and the action is redone.
    Redone,
}

/// What a run that ended with `outcome` leaves for its declaration. (A run still recorded
/// as running did not finish.)
pub fn aftermath(outcome: RunOutcome) -> Aftermath {
    match outcome {
        RunOutcome::Succeeded => Aftermath::Done,
        RunOutcome::Failed | RunOutcome::TimedOut => Aftermath::Retried,
        RunOutcome::Cancelled | RunOutcome::Interrupted | RunOutcome::Running => Aftermath::Redone,
    }
}

/// Did a run for declaration `generation` run for the one in force in `current`? A failure
/// of an older declaration does not count against the new one.
pub fn in_force(current: &ClusterRecord, generation: i64) -> bool {
    current.generation == generation
}

/// Why a running action was cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReason {
    /// The declared state moved away from what the action works toward (`None`: the row
    /// was removed, or forgotten).
    Redeclared(Option<D>),
    /// The daemon is stopping.
    Shutdown,
}

/// Does a running `action` go on once `desired` is declared (`None`: the row is gone)?
/// A create serves `stopped` too: the cluster has to exist before it can be stopped, so a
/// create that is half done when the user declares "stopped" carries on.
pub fn keeps_running(action: Action, desired: Option<D>) -> bool {
    desired.is_some_and(|d| action.serves(d))
}

/// What an ended run means for the history and for the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: RunOutcome,
    /// The one-line reason of a failure, cancellation or interruption.
    pub headline: Option<String>,
}

impl Verdict {
    /// Judges how `action` ended: `ending` of its command `step` (a create ends with its
    /// probe when the probe fails), and why it was cancelled, if it was.
    pub fn of(
        action: Action,
        step: Action,
        ending: &Ending,
        reason: Option<&CancelReason>,
        timeout: Duration,
    ) -> Verdict {
        let failed = |h: String| (RunOutcome::Failed, Some(h));
        let (outcome, headline) = match (ending, reason) {
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
            (Ending::Exited(e), _) if step != action => failed(format!(
                "{action} finished, but the {step} check failed ({e})"
            )),
            (Ending::Exited(e), _) => failed(format!("{action} failed ({e})")),
            (Ending::TimedOut(_), _) => (
                RunOutcome::TimedOut,
                Some(format!(
                    "{action} timed out after {}; its processes were ended",
                    humantime::format_duration(timeout)
                )),
            ),
            (Ending::SpawnFailed(msg), _) => failed(format!("{action} failed: {msg}")),
            (Ending::Cancelled(_), _) => {
                (RunOutcome::Cancelled, Some(format!("{action} was cancelled")))
            }
        };
        Verdict { outcome, headline }
    }

    /// The cluster's `reconcile_error`: the headline on the first line, then the last
    /// output lines (blank ones left out) of a failure.
    pub fn error_text(&self, tail: &[String]) -> Option<String> {
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

/// A run that ended: what it was for and how it went.
#[derive(Debug, Clone)]
pub struct RunEnd<'a> {
    pub action: Action,
    /// The declaration it ran for.
    pub generation: i64,
    pub attempt: u32,
    pub verdict: &'a Verdict,
    pub tail: &'a [String],
    /// What its probe reported, if it ran one.
    pub probe: Option<ProbeReport>,
}

/// What a run's end does to the cluster's row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    /// The cluster is deleted: the row goes.
    Remove,
    /// The action is over, for good or ill.
    Settle {
        actual: A,
        error: Option<String>,
        /// Consecutive failures of the declaration in force, and when the next try is due.
        attempts: u32,
        next_attempt_at: Option<SystemTime>,
        /// The declaration the action ran for.
        observed_generation: i64,
        /// What the probe reported (kept only when it succeeded).
        probe: Option<ProbeReport>,
    },
    /// The action did not finish: the row keeps its in-progress state, so that it is redone,
    /// and says why.
    Interrupted { in_progress: A, note: String },
    /// Nothing to record on the row (a probe that was cancelled).
    Keep,
}

/// What the end of `run` does to the cluster's row as it is now (`current`: it may have
/// been declared anew while the run went on). `retry_delay` is the backoff before attempt
/// number `attempts + 1` (randomised by the caller).
pub fn ended(
    current: &ClusterRecord,
    run: &RunEnd,
    now: SystemTime,
    retry_delay: impl Fn(u32) -> Duration,
) -> RowChange {
    let error = run.verdict.error_text(run.tail);
    let settle = |actual, error, attempts, next_attempt_at, probe| RowChange::Settle {
        actual,
        error,
        attempts,
        next_attempt_at,
        observed_generation: run.generation,
        probe,
    };
    match aftermath(run.verdict.outcome) {
        Aftermath::Done if run.action == Action::Delete => {
            if current.desired == D::Absent {
                RowChange::Remove
            } else {
                // Declared again while it was being deleted: it is gone, so create anew.
                settle(A::Unknown, None, 0, None, None)
            }
        }
        Aftermath::Done => {
            let state = run.action.success_state().unwrap_or(A::Running);
            settle(state, None, 0, None, run.probe)
        }
        Aftermath::Retried => {
            if in_force(current, run.generation) {
                let next = now + retry_delay(run.attempt);
                settle(A::Failed, error, run.attempt, Some(next), None)
            } else {
                settle(A::Failed, error, 0, None, None)
            }
        }
        Aftermath::Redone => match run.action.in_progress_state() {
            Some(in_progress) => RowChange::Interrupted {
                in_progress,
                note: error.unwrap_or_else(|| "interrupted".into()),
            },
            None => RowChange::Keep,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runner::Exit;

    fn record(desired: D, actual: A, last_action: Option<Action>) -> ClusterRecord {
        ClusterRecord {
            last_action,
            ..ClusterRecord::sample(desired, actual)
        }
    }

    const DAEMON: Policy = Policy {
        resync: Duration::from_secs(300),
        honour_timers: true,
    };

    #[test]
    fn looking_follows_the_table() {
        use Action::*;
        use Decision::{Act, Idle};
        let start_failed = |attempts| {
            let mut c = record(D::Present, A::Failed, Some(Start));
            c.attempts = attempts;
            c
        };
        let cases = [
            (record(D::Present, A::Unknown, None), Act(Create)),
            (record(D::Present, A::Creating, Some(Create)), Act(Create)),
            (record(D::Present, A::Failed, Some(Create)), Act(Create)),
            (record(D::Present, A::Failed, Some(Probe)), Act(Create)),
            (record(D::Present, A::Failed, Some(Start)), Act(Start)),
            (start_failed(1), Act(Start)),
            (start_failed(STARTS_BEFORE_CREATE), Act(Create)),
            (record(D::Present, A::Failed, Some(Stop)), Act(Start)),
            (record(D::Present, A::Stopped, Some(Stop)), Act(Start)),
            (record(D::Present, A::Starting, Some(Start)), Act(Start)),
            (record(D::Present, A::Stopping, Some(Stop)), Act(Start)),
            (record(D::Present, A::Deleting, Some(Delete)), Act(Create)),
            (record(D::Present, A::Running, None), Act(Probe)),
            (record(D::Absent, A::Running, None), Act(Delete)),
            (record(D::Absent, A::Unknown, None), Act(Delete)),
            (record(D::Absent, A::Creating, Some(Create)), Act(Delete)),
            (record(D::Absent, A::Failed, Some(Delete)), Act(Delete)),
            (record(D::Stopped, A::Running, None), Act(Stop)),
            (record(D::Stopped, A::Starting, Some(Start)), Act(Stop)),
            (record(D::Stopped, A::Stopping, Some(Stop)), Act(Stop)),
            (record(D::Stopped, A::Stopped, Some(Stop)), Idle),
            (record(D::Stopped, A::Failed, Some(Stop)), Act(Stop)),
            (record(D::Stopped, A::Failed, Some(Start)), Act(Stop)),
            (record(D::Stopped, A::Failed, Some(Create)), Act(Create)),
            (record(D::Stopped, A::Unknown, None), Act(Create)),
            (record(D::Stopped, A::Creating, Some(Create)), Act(Create)),
            (record(D::Stopped, A::Deleting, Some(Delete)), Act(Create)),
        ];
        for (c, want) in cases {
            let got = look(&c, SystemTime::now(), DAEMON);
            assert_eq!(
                got, want,
                "{} {} after {:?} ({} attempts)",
                c.desired, c.actual, c.last_action, c.attempts
            );
        }
    }

    #[test]
    fn running_clusters_are_probed_once_per_resync() {
        let now = SystemTime::now();
        let mut c = record(D::Present, A::Running, Some(Action::Create));
        c.last_reconciled_at = Some((now - Duration::from_secs(10)).into());
        match look(&c, now, DAEMON) {
            Decision::At(t) => assert!(t > now && t <= now + DAEMON.resync),
            other => panic!("expected a wait, got {other:?}"),
        }
        c.last_reconciled_at = Some((now - Duration::from_secs(301)).into());
        assert_eq!(look(&c, now, DAEMON), Decision::Act(Action::Probe));
    }

    #[test]
    fn backoff_is_honoured_by_the_daemon_but_not_by_a_one_off_pass() {
        let now = SystemTime::now();
        let mut c = record(D::Present, A::Failed, Some(Action::Create));
        c.next_attempt_at = Some((now + Duration::from_secs(60)).into());
        assert!(matches!(look(&c, now, DAEMON), Decision::At(_)));
        let once = Policy {
            honour_timers: false,
            ..DAEMON
        };
        assert_eq!(look(&c, now, once), Decision::Act(Action::Create));
    }

    #[test]
    fn a_new_declaration_cancels_only_what_no_longer_serves_it() {
        use Action::*;
        let cases = [
            (Create, Some(D::Present), true),
            (Create, Some(D::Stopped), true),
            (Create, Some(D::Absent), false),
            (Create, None, false),
            (Start, Some(D::Present), true),
            (Start, Some(D::Stopped), false),
            (Probe, Some(D::Stopped), false),
            (Stop, Some(D::Stopped), true),
            (Stop, Some(D::Present), false),
            (Delete, Some(D::Absent), true),
            (Delete, Some(D::Present), false),
        ];
        for (action, desired, goes_on) in cases {
            assert_eq!(
                keeps_running(action, desired),
                goes_on,
                "{action} {desired:?}"
            );
        }
    }

    #[test]
    fn endings_are_judged() {
        use {Action::*, RunOutcome::*};
        let t = Duration::from_secs(1800);
        let ok = Ending::Exited(Exit::Code(0));
        let three = Ending::Exited(Exit::Code(3));
        let redeclared = CancelReason::Redeclared(Some(D::Absent));
        let cases: [(Action, Ending, Option<CancelReason>, RunOutcome, &str); 9] = [
            (Create, ok.clone(), None, Succeeded, ""),
            (
                Create,
                ok.clone(),
                Some(CancelReason::Shutdown),
                Succeeded,
                "",
            ),
            (
                Create,
                three.clone(),
                None,
                Failed,
                "create failed (exit status 3)",
            ),
            (
                Create,
                Ending::TimedOut(None),
                None,
                TimedOut,
                "create timed out after 30m",
            ),
            (
                Create,
                Ending::Cancelled(None),
                Some(redeclared),
                Cancelled,
                "create was cancelled: the desired state changed to absent",
            ),
            (
                Create,
                Ending::Cancelled(None),
                Some(CancelReason::Redeclared(None)),
                Cancelled,
                "create was cancelled: the cluster's row was removed",
            ),
            (
                Stop,
                Ending::Cancelled(None),
                Some(CancelReason::Shutdown),
                Interrupted,
                "stop was interrupted because kindler is stopping",
            ),
            (
                Stop,
                Ending::SpawnFailed("no such file".into()),
                None,
                Failed,
                "stop failed: no such file",
            ),
            (
                Delete,
                Ending::Cancelled(None),
                None,
                Cancelled,
                "delete was cancelled",
            ),
        ];
        for (action, ending, reason, outcome, headline) in cases {
            let v = Verdict::of(action, action, &ending, reason.as_ref(), t);
            assert_eq!(v.outcome, outcome, "{action} {ending:?} {reason:?}");
            assert!(
                v.headline.as_deref().unwrap_or("").starts_with(headline),
                "{action} {ending:?}: {:?}",
                v.headline
            );
        }
        // A create whose probe failed says so.
        let v = Verdict::of(Create, Probe, &three, None, t);
        assert_eq!(
            v.headline.as_deref(),
            Some("create finished, but the probe check failed (exit status 3)")
        );
        // The error quotes the last non-blank lines of a failure only.
        let tail: Vec<String> = ["", "pulling", "  ", "no docker"].map(String::from).into();
        assert_eq!(
            v.error_text(&tail).unwrap(),
            "create finished, but the probe check failed (exit status 3)\nlast output:\npulling\nno docker"
        );
    }

    #[test]
    fn endings_change_the_row_by_the_table() {
        use {Action::*, RunOutcome::*};
        let now = SystemTime::now();
        let delay = |attempt: u32| Duration::from_secs(5 * attempt as u64);
        let verdict = |outcome, headline: Option<&str>| Verdict {
            outcome,
            headline: headline.map(String::from),
        };
        let succeeded = verdict(Succeeded, None);
        let failed = verdict(Failed, Some("create failed (exit status 3)"));
        let cut = verdict(
            Interrupted,
            Some("create was interrupted because kindler is stopping"),
        );
        let tail = vec!["boom".to_owned()];
        let run = |action, generation, verdict| RunEnd {
            action,
            generation,
            attempt: 2,
            verdict,
            tail: &tail,
            probe: None,
        };
        let settle =
            |actual, error: Option<&str>, attempts, next: Option<SystemTime>| RowChange::Settle {
                actual,
                error: error.map(String::from),
                attempts,
                next_attempt_at: next,
                observed_generation: 1,
                probe: None,
            };
        let present = record(D::Present, A::Creating, Some(Create));
        let mut redeclared = present.clone();
        redeclared.generation = 2;
        let absent = record(D::Absent, A::Deleting, Some(Delete));
        let cases = [
            (&absent, run(Delete, 1, &succeeded), RowChange::Remove),
            (
                &present,
                run(Delete, 1, &succeeded),
                settle(A::Unknown, None, 0, None),
            ),
            (
                &present,
                run(Create, 1, &succeeded),
                settle(A::Running, None, 0, None),
            ),
            (
                &present,
                run(Stop, 1, &succeeded),
                settle(A::Stopped, None, 0, None),
            ),
            (
                &present,
                run(Probe, 1, &succeeded),
                settle(A::Running, None, 0, None),
            ),
            (
                &present,
                run(Create, 1, &failed),
                settle(
                    A::Failed,
                    Some("create failed (exit status 3)\nlast output:\nboom"),
                    2,
                    Some(now + delay(2)),
                ),
            ),
            (
                &redeclared,
                run(Create, 1, &failed),
                settle(
                    A::Failed,
                    Some("create failed (exit status 3)\nlast output:\nboom"),
                    0,
                    None,
                ),
            ),
            (
                &present,
                run(Create, 1, &cut),
                RowChange::Interrupted {
                    in_progress: A::Creating,
                    note: "create was interrupted because kindler is stopping".into(),
                },
            ),
            (&present, run(Probe, 1, &cut), RowChange::Keep),
        ];
        for (current, end, want) in cases {
            let got = ended(current, &end, now, delay);
            assert_eq!(
                got, want,
                "{} {:?} on {} {}",
                end.action, end.verdict.outcome, current.desired, current.actual
            );
        }
    }

    #[test]
    fn every_outcome_leaves_its_declaration_done_retried_or_redone() {
        use {Aftermath::*, RunOutcome::*};
        let cases = [
            (Succeeded, Done),
            (Failed, Retried),
            (TimedOut, Retried),
            (Cancelled, Redone),
            (Interrupted, Redone),
            (Running, Redone),
        ];
        for (outcome, want) in cases {
            assert_eq!(aftermath(outcome), want, "{outcome}");
        }
        let mut c = record(D::Present, A::Failed, Some(Action::Create));
        c.generation = 2;
        assert!(in_force(&c, 2));
        assert!(!in_force(&c, 1), "an older declaration's run");
    }

    #[test]
    fn settled_is_where_the_declaration_wants_the_cluster() {
        assert!(settled(D::Present, A::Running));
        assert!(settled(D::Stopped, A::Stopped));
        assert!(!settled(D::Present, A::Stopped));
        assert!(!settled(D::Absent, A::Running));
    }
}
