//! Tasks, as the WebUI knows them, derived from the declared state, the run history and
//! what the reconciler is doing now.
//!
//! A task id names a declaration: `reconcile-<name>` (create), `reconcile-delete-<name>`,
//! `reconcile-start-<name>`, `reconcile-stop-<name>`. A task follows whatever the
//! reconciler does for that declaration, whichever action that is (a start of a cluster
//! whose create failed runs a create), and says what is happening now:
//!
//! | the declaration ([`Stage`])                          | status    | message                              |
//! |------------------------------------------------------|-----------|--------------------------------------|
//! | reached: settled, gone, or its own action succeeded  | completed |                                      |
//! | replaced by another before reached                   | failed    | superseded: now declared …           |
//! | an action runs for the cluster                       | running   | which action, which attempt          |
//! | its last attempt failed: retried after the backoff   | pending   | the failure, and when kindler retries |
//! | its last attempt did not finish: redone              | pending   | why it stopped; kindler redoes it    |
//! | nothing runs yet                                     | pending   | what runs next and why it waits: backoff, no free slot, kindler degraded |
//!
//! The stage is read with the state machine's own rules (`reconciler::machine`): whether
//! the cluster is settled, what a run's end leaves for its declaration, whether that run
//! was for the declaration in force, and what the machine runs next. kindler retries a
//! failure until the declaration is reached or replaced, so a failure is not the end of a
//! task: it stays pending with `error` set to the last failure.

use std::time::SystemTime;

use super::views::{TaskState, TaskStatus};
use crate::model::{Action, ClusterName, DesiredState, RunOutcome};
use crate::reconciler::machine::{self, Aftermath, Decision, Policy};
use crate::store::clusters::ClusterRecord;
use crate::store::runs::RunRecord;
use crate::store::time::Timestamp;
use crate::store::{Store, StoreResult, TaskLookup};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Create,
    Delete,
    Start,
    Stop,
}

impl TaskKind {
    const PREFIXED: [(TaskKind, &'static str); 3] = [
        (TaskKind::Delete, "reconcile-delete-"),
        (TaskKind::Start, "reconcile-start-"),
        (TaskKind::Stop, "reconcile-stop-"),
    ];

    pub fn id(self, name: &ClusterName) -> String {
        match self {
            TaskKind::Create => format!("reconcile-{name}"),
            TaskKind::Delete => format!("reconcile-delete-{name}"),
            TaskKind::Start => format!("reconcile-start-{name}"),
            TaskKind::Stop => format!("reconcile-stop-{name}"),
        }
    }

    fn action(self) -> Action {
        match self {
            TaskKind::Create => Action::Create,
            TaskKind::Delete => Action::Delete,
            TaskKind::Start => Action::Start,
            TaskKind::Stop => Action::Stop,
        }
    }

    fn goal(self) -> DesiredState {
        self.action().goal()
    }

    /// The cluster is where the task wanted it.
    fn reached(self, row: &ClusterRecord) -> bool {
        row.desired == self.goal() && machine::settled(row.desired, row.actual)
    }
}

/// Verb forms for messages: (infinitive, progressive, past).
fn verbs(action: Action) -> (&'static str, &'static str, &'static str) {
    match action {
        Action::Create => ("create", "Creating", "created"),
        Action::Delete => ("delete", "Deleting", "deleted"),
        Action::Start => ("start", "Starting", "started"),
        Action::Stop => ("stop", "Stopping", "stopped"),
        Action::Probe => ("verify", "Verifying", "verified"),
    }
}

/// The readings of a task id, most specific first: `reconcile-delete-x` is the delete of
/// `x`, or the create of a cluster named `delete-x`.
fn readings(task_id: &str) -> Vec<(TaskKind, ClusterName)> {
    let mut found = Vec::new();
    for (kind, prefix) in TaskKind::PREFIXED {
        if let Some(name) = task_id
            .strip_prefix(prefix)
            .and_then(|n| ClusterName::parse(n).ok())
        {
            found.push((kind, name));
        }
    }
    if let Some(name) = task_id
        .strip_prefix("reconcile-")
        .and_then(|n| ClusterName::parse(n).ok())
    {
        found.push((TaskKind::Create, name));
    }
    found
}

/// What the store knows about one reading of a task id.
#[derive(Debug, Clone)]
pub struct Facts {
    kind: TaskKind,
    name: ClusterName,
    row: Option<ClusterRecord>,
    /// The newest run of the task's own action.
    own: Option<RunRecord>,
    /// The newest run of the cluster, whatever its action.
    latest: Option<RunRecord>,
}

impl Facts {
    /// The declaration this reading stands for is the one in force (a cluster whose row
    /// is gone is absent, as its delete declared).
    fn in_force(&self) -> bool {
        match &self.row {
            Some(r) => r.desired == self.kind.goal(),
            None => self.kind == TaskKind::Delete,
        }
    }

    /// When this reading's declaration was made (a create's with its row).
    fn declared_at(&self) -> Option<Timestamp> {
        self.row.as_ref().and_then(|r| match self.kind {
            TaskKind::Create => r.created_at,
            _ => r.updated_at,
        })
    }

    /// When this reading's declaration was last acted on or made.
    fn last_seen(&self) -> Option<Timestamp> {
        let run = self.own.as_ref().and_then(|r| r.started_at);
        run.max(self.declared_at())
    }

    /// The run whose output lines are live (it is running now), if any.
    pub fn running_run(&self) -> Option<i64> {
        self.latest
            .as_ref()
            .filter(|r| r.outcome == RunOutcome::Running)
            .map(|r| r.id)
    }
}

/// Reads what the store knows about a task id; `None` when it names nothing known.
pub async fn facts(store: &Store, task_id: &str) -> StoreResult<Option<Facts>> {
    let mut found = facts_of_many(store, vec![task_id.to_owned()]).await?;
    Ok(found.pop().and_then(|(facts, _)| facts))
}

/// [`facts`] of several task ids, read together; each with its id.
pub async fn facts_of_many(
    store: &Store,
    task_ids: Vec<String>,
) -> StoreResult<Vec<(Option<Facts>, String)>> {
    let readings: Vec<Vec<(TaskKind, ClusterName)>> =
        task_ids.iter().map(|id| readings(id)).collect();
    let wanted = readings
        .iter()
        .flatten()
        .map(|(kind, name)| (name.clone(), kind.action()))
        .collect();
    let mut lookups = store.task_lookups(wanted).await?.into_iter();
    Ok(readings
        .into_iter()
        .zip(task_ids)
        .map(|(readings, id)| (pick(readings, &mut lookups), id))
        .collect())
}

/// Of a task id's readings (with what the store found for each, in order), the one meant.
fn pick(
    readings: Vec<(TaskKind, ClusterName)>,
    lookups: &mut impl Iterator<Item = TaskLookup>,
) -> Option<Facts> {
    let mut found = Vec::new();
    for ((kind, name), lookup) in readings.into_iter().zip(lookups) {
        let TaskLookup { row, own, latest } = lookup;
        if row.is_some() || own.is_some() {
            found.push(Facts {
                kind,
                name,
                row,
                own,
                latest,
            });
        }
    }
    // `reconcile-delete-dev` is the delete of dev or the create of delete-dev: the
    // reading whose declaration is in force wins, then the more recent one.
    found
        .into_iter()
        .rev()
        .max_by(|a, b| (a.in_force(), a.last_seen()).cmp(&(b.in_force(), b.last_seen())))
}

/// What the reconciler is doing now, beyond what the store says.
#[derive(Debug, Clone)]
pub struct Activity {
    /// The time the answer is given at (the daemon's clock).
    pub now: SystemTime,
    /// Actions running now, and how many may run at once.
    pub running: usize,
    pub capacity: usize,
    /// Why kindler cannot act now, if it cannot.
    pub degraded: Option<String>,
    /// Output so far of the run in progress (see [`Facts::running_run`]).
    pub live_lines: Option<Vec<String>>,
    /// The reconciler's timers, to tell what it runs next.
    pub policy: Policy,
}

/// Where a task's declaration stands, by the state machine's rules: one row of the table
/// in the module's documentation each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage<'a> {
    /// Reached: settled where the task wanted it (a delete: its row is gone), or its own
    /// action succeeded before another declaration replaced it.
    Reached,
    /// Replaced before it was reached: the cluster is now declared this (`None`: its row
    /// is gone).
    Replaced(Option<DesiredState>),
    /// This run is in progress for the cluster (whichever action the machine chose).
    Running(&'a RunRecord),
    /// This run, for the declaration in force, failed: attempt `attempt` follows at `at`
    /// (`None`: now).
    Retried {
        run: &'a RunRecord,
        attempt: u32,
        at: Option<Timestamp>,
    },
    /// This run, for the declaration in force, did not finish: it is redone.
    Redone(&'a RunRecord),
    /// Nothing runs yet: `next` is what the machine runs, after the backoff (attempt
    /// number, due time) if there is one.
    Waiting {
        next: Action,
        backoff: Option<(u32, Timestamp)>,
    },
}

impl Stage<'_> {
    /// Where a task's declaration stands at `now`. Pure.
    pub fn of(f: &Facts, now: SystemTime, policy: Policy) -> Stage<'_> {
        let own_succeeded = f
            .own
            .as_ref()
            .is_some_and(|r| machine::aftermath(r.outcome) == Aftermath::Done);
        let row = match &f.row {
            // Replaced, unless its own action had succeeded before.
            _ if !f.in_force() && own_succeeded => return Stage::Reached,
            _ if !f.in_force() => return Stage::Replaced(f.row.as_ref().map(|r| r.desired)),
            // In force without a row: a delete, done.
            None => return Stage::Reached,
            Some(row) if f.kind.reached(row) => return Stage::Reached,
            Some(row) => row,
        };
        if let Some(run) = &f.latest {
            if run.outcome == RunOutcome::Running {
                return Stage::Running(run);
            }
            if run.generation.is_some_and(|g| machine::in_force(row, g)) {
                match machine::aftermath(run.outcome) {
                    Aftermath::Retried => {
                        return Stage::Retried {
                            run,
                            attempt: row.attempts.saturating_add(1),
                            at: row.next_attempt_at,
                        }
                    }
                    Aftermath::Redone => return Stage::Redone(run),
                    Aftermath::Done => {}
                }
            }
        }
        // What the machine runs next: a start of a cluster whose create failed is a create.
        // (A settled cluster's resync is `Reached` above: a wait here is a backoff.)
        let (next, due) = match machine::look(row, now, policy) {
            Decision::Act(action) => (action, None),
            Decision::At(due) => (f.kind.action(), Some(due.into())),
            Decision::Idle => (f.kind.action(), None),
        };
        Stage::Waiting {
            next,
            backoff: due.map(|due| (row.attempts.saturating_add(1), due)),
        }
    }

    pub fn state(&self) -> TaskState {
        match self {
            Stage::Reached => TaskState::Completed,
            Stage::Replaced(_) => TaskState::Failed,
            Stage::Running(_) => TaskState::Running,
            Stage::Retried { .. } | Stage::Redone(_) | Stage::Waiting { .. } => TaskState::Pending,
        }
    }

    fn progress(&self) -> u8 {
        match self.state() {
            TaskState::Completed | TaskState::Failed => 100,
            TaskState::Running => 50,
            TaskState::Pending => 0,
        }
    }
}

/// The task's status: its [`Stage`] at `activity.now`, in the WebUI's words. Pure: every
/// case is a row of the tables in the unit tests below.
pub fn describe(task_id: &str, f: &Facts, activity: &Activity) -> TaskStatus {
    let stage = Stage::of(f, activity.now, activity.policy);
    let name = &f.name;
    let (verb, _, done) = verbs(f.kind.action());
    let row_updated = f.row.as_ref().and_then(|r| r.updated_at);
    // While the declaration is in force, the task moved when the cluster's last run did.
    let run_moved = || {
        f.latest
            .as_ref()
            .and_then(RunRecord::last_moved)
            .or(row_updated)
    };
    let mut task = TaskStatus {
        task_id: task_id.to_owned(),
        status: stage.state(),
        progress: stage.progress(),
        message: String::new(),
        logs: Vec::new(),
        error: None,
        created_at: f.declared_at().map(Timestamp::iso),
        updated_at: run_moved().map(Timestamp::iso),
        completed_at: None,
    };
    match stage {
        Stage::Reached => {
            task.message = format!("Cluster {name} {done}");
            task.logs = f
                .own
                .as_ref()
                .map(|r| r.output_tail.clone())
                .unwrap_or_default();
            let moved = f.own.as_ref().and_then(RunRecord::last_moved);
            task.updated_at = moved.or(row_updated).map(Timestamp::iso);
            task.completed_at = task.updated_at.clone();
        }
        Stage::Replaced(now_declared) => {
            let why = match now_declared {
                Some(d) => format!("is now declared {d}"),
                None => "no longer exists".into(),
            };
            let error = format!("superseded: cluster {name} {why}");
            task.message = error.clone();
            task.error = Some(error);
            task.updated_at = row_updated.map(Timestamp::iso);
            task.completed_at = task.updated_at.clone();
        }
        Stage::Running(run) => {
            let (_, doing, _) = verbs(run.action);
            task.message = match run.attempt {
                Some(attempt) => format!("{doing} cluster {name} (attempt {attempt})"),
                None => format!("{doing} cluster {name}"),
            };
            if run.action != f.kind.action() && run.action != Action::Probe {
                task.message
                    .push_str(&format!("; then kindler goes on to {verb} it"));
            }
            // Another host's run: the output its agent shared so far (every second).
            task.logs = activity
                .live_lines
                .clone()
                .unwrap_or_else(|| run.output_tail.clone());
        }
        Stage::Retried { run, attempt, at } => {
            task.error = run.error.clone();
            task.logs = run.output_tail.clone();
            task.message = match at {
                Some(at) => format!(
                    "{}; kindler retries at {} (attempt {attempt})",
                    headline(run),
                    at.iso()
                ),
                None => format!("{}; kindler retries now", headline(run)),
            };
        }
        Stage::Redone(run) => {
            task.logs = run.output_tail.clone();
            task.message = format!("{}; kindler redoes it", headline(run));
        }
        Stage::Waiting { next, backoff } => {
            task.message = waiting(name, next, backoff, activity);
        }
    }
    task
}

/// The first line of a run's error.
fn headline(run: &RunRecord) -> &str {
    run.error
        .as_deref()
        .and_then(|e| e.lines().next())
        .unwrap_or("failed")
}

/// What runs next for a declaration in force, and why it has not started yet.
fn waiting(
    name: &ClusterName,
    next: Action,
    backoff: Option<(u32, Timestamp)>,
    activity: &Activity,
) -> String {
    let (verb, _, _) = verbs(next);
    let base = format!("Waiting to {verb} cluster {name}");
    if let Some(why) = &activity.degraded {
        return format!("{base}: kindler cannot act now ({why})");
    }
    if let Some((attempt, at)) = backoff {
        return format!("{base}: attempt {attempt} at {}", at.iso());
    }
    if activity.capacity > 0 && activity.running >= activity.capacity {
        return format!(
            "{base}: {} of {} actions are running; it starts when one ends",
            activity.running, activity.capacity
        );
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActualState;
    use {ActualState as A, DesiredState as D, RunOutcome as O, TaskState as S};

    fn name(n: &str) -> ClusterName {
        ClusterName::parse(n).unwrap()
    }

    fn at(text: &str) -> Option<Timestamp> {
        Some(Timestamp::parse(text).unwrap())
    }

    /// The time every answer below is given at.
    fn now() -> SystemTime {
        at("2026-12-01 10:00:05.000").unwrap().into()
    }

    const LATER: &str = "2999-01-01 00:00:00.000";
    const EARLIER: &str = "2026-12-01 10:00:04.000";

    #[test]
    fn task_ids_read_both_ways() {
        let dev = name("dev");
        assert_eq!(TaskKind::Delete.id(&dev), "reconcile-delete-dev");
        let r = readings("reconcile-delete-dev");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (TaskKind::Delete, dev.clone()));
        assert_eq!(r[1], (TaskKind::Create, name("delete-dev")));
        assert_eq!(readings("reconcile-dev"), [(TaskKind::Create, dev)]);
        assert!(readings("something-else").is_empty());
        assert!(readings("reconcile-Bad Name").is_empty());
    }

    fn row(desired: D, actual: A, generation: i64) -> ClusterRecord {
        ClusterRecord {
            created_at: at("2026-12-01 10:00:00.000"),
            updated_at: at("2026-12-01 10:00:01.000"),
            generation,
            ..ClusterRecord::sample(desired, actual)
        }
    }

    /// A row whose last attempt (of `last`) failed, `attempts` times in a row, retried at
    /// `next`.
    fn failed(last: Action, attempts: u32, next: Option<&str>) -> ClusterRecord {
        ClusterRecord {
            last_action: Some(last),
            attempts,
            next_attempt_at: next.and_then(at),
            ..row(D::Present, A::Failed, 1)
        }
    }

    fn run(action: Action, outcome: RunOutcome, generation: i64) -> RunRecord {
        RunRecord {
            id: 7,
            cluster_id: Some(1),
            cluster_name: "dev".into(),
            action,
            generation: Some(generation),
            attempt: Some(2),
            outcome,
            started_at: at("2026-12-01 10:00:02.000"),
            ended_at: at("2026-12-01 10:00:03.000").filter(|_| outcome != RunOutcome::Running),
            duration_ms: None,
            exit_code: Some(69),
            signal: None,
            error: (outcome == RunOutcome::Failed)
                .then(|| format!("{action} failed (exit status 69)\nlast output:\nno docker")),
            output_tail: vec!["no docker".into()],
        }
    }

    fn with_error(mut r: RunRecord, error: Option<&str>) -> RunRecord {
        r.error = error.map(String::from);
        r
    }

    fn facts(
        kind: TaskKind,
        row: Option<ClusterRecord>,
        own: Option<RunRecord>,
        latest: Option<RunRecord>,
    ) -> Facts {
        Facts {
            kind,
            name: name("dev"),
            row,
            own,
            latest,
        }
    }

    /// Nothing in the way: three slots, none taken, kindler healthy.
    fn idle() -> Activity {
        Activity {
            now: now(),
            running: 0,
            capacity: 3,
            degraded: None,
            live_lines: None,
            policy: Policy {
                resync: std::time::Duration::from_secs(300),
                honour_timers: true,
            },
        }
    }

    /// Every stage a task can be in, with its status, progress and message: one row each.
    #[test]
    fn every_stage_has_its_status_and_message() {
        use {Action::*, TaskKind as K};
        let idle = idle();
        let full = Activity {
            running: 3,
            ..idle.clone()
        };
        let degraded = Activity {
            degraded: Some("the database is locked".into()),
            ..full.clone()
        };
        // The row and the cluster's newest run; no run of the task's own action.
        let ran = |kind, row, latest| facts(kind, Some(row), None, Some(latest));
        let ok = |action| Some(run(action, O::Succeeded, 1));
        let failed_create = || Some(run(Create, O::Failed, 1));
        let backoff = |attempts| failed(Create, attempts, Some(LATER));
        let retry_error = "create failed (exit status 69)\nlast output:\nno docker";
        let unnumbered = RunRecord {
            attempt: None,
            ..run(Stop, O::Running, 2)
        };
        let timed_out = with_error(
            run(Create, O::TimedOut, 1),
            Some("create timed out after 30m; its processes were ended"),
        );
        let interrupted = with_error(
            run(Create, O::Interrupted, 1),
            Some("create was interrupted because kindler is stopping"),
        );
        let cancelled = with_error(run(Stop, O::Cancelled, 1), None);
        let redeclared = ClusterRecord {
            generation: 2,
            ..failed(Create, 0, None)
        };
        let cases = vec![
            (
                "a create reached",
                facts(K::Create, Some(row(D::Present, A::Running, 1)), ok(Create), ok(Create)),
                &idle,
                S::Completed,
                100,
                "Cluster dev created",
                None,
            ),
            (
                "a stop reached",
                facts(K::Stop, Some(row(D::Stopped, A::Stopped, 2)), None, ok(Stop)),
                &idle,
                S::Completed,
                100,
                "Cluster dev stopped",
                None,
            ),
            (
                "a start reached without a run of its own (a create brought it there)",
                facts(K::Start, Some(row(D::Present, A::Running, 2)), None, ok(Create)),
                &idle,
                S::Completed,
                100,
                "Cluster dev started",
                None,
            ),
            (
                "a delete whose row is gone",
                facts(K::Delete, None, None, None),
                &idle,
                S::Completed,
                100,
                "Cluster dev deleted",
                None,
            ),
            (
                "a create that succeeded, then the row went",
                facts(K::Create, None, ok(Create), None),
                &idle,
                S::Completed,
                100,
                "Cluster dev created",
                None,
            ),
            (
                "a create that succeeded before a stop was declared",
                facts(K::Create, Some(row(D::Stopped, A::Stopping, 2)), ok(Create), None),
                &idle,
                S::Completed,
                100,
                "Cluster dev created",
                None,
            ),
            (
                "a create replaced by a stop before it succeeded",
                facts(K::Create, Some(row(D::Stopped, A::Creating, 2)), None, None),
                &idle,
                S::Failed,
                100,
                "superseded: cluster dev is now declared stopped",
                Some("superseded: cluster dev is now declared stopped"),
            ),
            (
                "a start replaced by a delete",
                facts(K::Start, Some(row(D::Absent, A::Deleting, 3)), None, None),
                &idle,
                S::Failed,
                100,
                "superseded: cluster dev is now declared absent",
                Some("superseded: cluster dev is now declared absent"),
            ),
            (
                "a create whose row is gone before it succeeded",
                facts(K::Create, None, failed_create(), None),
                &idle,
                S::Failed,
                100,
                "superseded: cluster dev no longer exists",
                Some("superseded: cluster dev no longer exists"),
            ),
            (
                "its own action runs",
                ran(K::Create, row(D::Present, A::Creating, 1), run(Create, O::Running, 1)),
                &idle,
                S::Running,
                50,
                "Creating cluster dev (attempt 2)",
                None,
            ),
            (
                "a start whose cluster the machine creates first",
                ran(K::Start, failed(Create, 1, None), run(Create, O::Running, 1)),
                &idle,
                S::Running,
                50,
                "Creating cluster dev (attempt 2); then kindler goes on to start it",
                None,
            ),
            (
                "a probe runs (no action follows it)",
                ran(K::Stop, row(D::Stopped, A::Running, 2), run(Probe, O::Running, 1)),
                &idle,
                S::Running,
                50,
                "Verifying cluster dev (attempt 2)",
                None,
            ),
            (
                "a run without an attempt number",
                ran(K::Stop, row(D::Stopped, A::Stopping, 2), unnumbered),
                &idle,
                S::Running,
                50,
                "Stopping cluster dev",
                None,
            ),
            (
                "its failure, retried after the backoff",
                facts(K::Create, Some(backoff(2)), None, failed_create()),
                &idle,
                S::Pending,
                0,
                "create failed (exit status 69); kindler retries at 2999-01-01T00:00:00.000Z (attempt 3)",
                Some(retry_error),
            ),
            (
                "a start on a failed create follows the create's retries",
                facts(K::Start, Some(backoff(2)), None, failed_create()),
                &idle,
                S::Pending,
                0,
                "create failed (exit status 69); kindler retries at 2999-01-01T00:00:00.000Z (attempt 3)",
                Some(retry_error),
            ),
            (
                "a time-out, retried now",
                ran(K::Create, failed(Create, 1, None), timed_out),
                &idle,
                S::Pending,
                0,
                "create timed out after 30m; its processes were ended; kindler retries now",
                Some("create timed out after 30m; its processes were ended"),
            ),
            (
                "an interrupted run, redone",
                ran(K::Create, row(D::Present, A::Creating, 1), interrupted),
                &idle,
                S::Pending,
                0,
                "create was interrupted because kindler is stopping; kindler redoes it",
                None,
            ),
            (
                "a cancelled run that says nothing, redone",
                ran(K::Stop, row(D::Stopped, A::Stopping, 1), cancelled),
                &idle,
                S::Pending,
                0,
                "failed; kindler redoes it",
                None,
            ),
            (
                "nothing ran yet",
                facts(K::Create, Some(row(D::Present, A::Unknown, 1)), None, None),
                &idle,
                S::Pending,
                0,
                "Waiting to create cluster dev",
                None,
            ),
            (
                "a delete not begun",
                facts(K::Delete, Some(row(D::Absent, A::Running, 2)), None, ok(Create)),
                &idle,
                S::Pending,
                0,
                "Waiting to delete cluster dev",
                None,
            ),
            (
                "a start declared on a failed create: the machine's next run is a create",
                facts(K::Start, Some(redeclared), None, failed_create()),
                &idle,
                S::Pending,
                0,
                "Waiting to create cluster dev",
                None,
            ),
            (
                "no free slot",
                facts(K::Stop, Some(row(D::Stopped, A::Running, 2)), None, ok(Create)),
                &full,
                S::Pending,
                0,
                "Waiting to stop cluster dev: 3 of 3 actions are running; it starts when one ends",
                None,
            ),
            (
                "kindler cannot act",
                facts(K::Stop, Some(row(D::Stopped, A::Running, 2)), None, ok(Create)),
                &degraded,
                S::Pending,
                0,
                "Waiting to stop cluster dev: kindler cannot act now (the database is locked)",
                None,
            ),
            (
                "a backoff another program wrote, not yet over",
                facts(K::Create, Some(failed(Create, 1, Some(LATER))), None, None),
                &idle,
                S::Pending,
                0,
                "Waiting to create cluster dev: attempt 2 at 2999-01-01T00:00:00.000Z",
                None,
            ),
            (
                "a backoff over at the time asked",
                facts(K::Create, Some(failed(Create, 1, Some(EARLIER))), None, None),
                &idle,
                S::Pending,
                0,
                "Waiting to create cluster dev",
                None,
            ),
        ];
        for (what, f, activity, want, progress, message, error) in cases {
            let t = describe("t", &f, activity);
            assert_eq!(
                (t.status, t.progress, t.message.as_str(), t.error.as_deref()),
                (want, progress, message, error),
                "{what}"
            );
            let stage = Stage::of(&f, activity.now, activity.policy);
            assert_eq!(stage.state(), want, "{what}: {stage:?}");
        }
    }

    #[test]
    fn statuses_are_spelled_as_the_webui_reads_them() {
        let cases = [
            (S::Pending, "pending"),
            (S::Running, "running"),
            (S::Completed, "completed"),
            (S::Failed, "failed"),
        ];
        for (state, text) in cases {
            assert_eq!(serde_json::to_value(state).unwrap(), text);
        }
        let f = facts(
            TaskKind::Create,
            Some(row(D::Present, A::Running, 1)),
            None,
            None,
        );
        let json = serde_json::to_value(describe("reconcile-dev", &f, &idle())).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = [
            "task_id",
            "status",
            "progress",
            "message",
            "logs",
            "error",
            "created_at",
            "updated_at",
            "completed_at",
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(json["status"], "completed");
    }

    #[test]
    fn a_task_shows_its_output_and_when_it_moved() {
        let ok = run(Action::Create, O::Succeeded, 1);
        let reached = facts(
            TaskKind::Create,
            Some(row(D::Present, A::Running, 1)),
            Some(ok.clone()),
            Some(ok),
        );
        let t = describe("t", &reached, &idle());
        assert_eq!(t.logs, ["no docker"]);
        assert_eq!(t.created_at.as_deref(), Some("2026-12-01T10:00:00.000Z"));
        assert_eq!(t.updated_at.as_deref(), Some("2026-12-01T10:00:03.000Z"));
        assert_eq!(t.completed_at, t.updated_at);

        // A running task shows the live output, and moved when its run started.
        let running = facts(
            TaskKind::Stop,
            Some(row(D::Stopped, A::Stopping, 2)),
            None,
            Some(run(Action::Stop, O::Running, 2)),
        );
        let live = Activity {
            live_lines: Some(vec!["stopping k3d-dev".into()]),
            ..idle()
        };
        let t = describe("t", &running, &live);
        assert_eq!(t.logs, ["stopping k3d-dev"]);
        assert_eq!(t.created_at.as_deref(), Some("2026-12-01T10:00:01.000Z"));
        assert_eq!(t.updated_at.as_deref(), Some("2026-12-01T10:00:02.000Z"));
        assert_eq!(t.completed_at, None);

        // A replaced one ended when the row last changed; a delete whose row is gone has
        // no times.
        let replaced = facts(
            TaskKind::Create,
            Some(row(D::Absent, A::Creating, 2)),
            None,
            None,
        );
        let t = describe("t", &replaced, &idle());
        assert_eq!(t.completed_at.as_deref(), Some("2026-12-01T10:00:01.000Z"));
        assert!(t.logs.is_empty());
        let t = describe("t", &facts(TaskKind::Delete, None, None, None), &idle());
        assert_eq!(
            (t.created_at, t.updated_at, t.completed_at),
            (None, None, None)
        );
    }

    #[test]
    fn the_reading_in_force_wins_then_the_newer() {
        let lookup = |desired: D, created: &str| TaskLookup {
            row: Some(ClusterRecord {
                created_at: at(created),
                updated_at: at(created),
                ..row(desired, A::Running, 1)
            }),
            own: None,
            latest: None,
        };
        let both = || readings("reconcile-delete-dev");
        let meant = |delete: TaskLookup, create: TaskLookup| {
            let found = pick(both(), &mut [delete, create].into_iter()).unwrap();
            (found.kind, found.name.to_string())
        };
        let (earlier, later) = ("2026-12-01 10:00:00", "2026-12-01 11:00:00");
        // delete-dev is now declared stopped: the task is dev's delete, however old.
        assert_eq!(
            meant(lookup(D::Absent, earlier), lookup(D::Stopped, later)),
            (TaskKind::Delete, "dev".into())
        );
        // Both in force: the newer declaration.
        assert_eq!(
            meant(lookup(D::Absent, earlier), lookup(D::Present, later)),
            (TaskKind::Create, "delete-dev".into())
        );
        assert_eq!(
            meant(lookup(D::Absent, later), lookup(D::Present, earlier)),
            (TaskKind::Delete, "dev".into())
        );
        // Nothing known of either reading.
        let nothing = || TaskLookup {
            row: None,
            own: None,
            latest: None,
        };
        assert!(pick(both(), &mut [nothing(), nothing()].into_iter()).is_none());
    }
}
