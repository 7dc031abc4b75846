//! Tasks, as the WebUI knows them, derived from the declared state, the run history and
//! what the reconciler is doing now.
//!
//! A task id names a declaration: `reconcile-<name>` (create), `reconcile-delete-<name>`,
//! `reconcile-start-<name>`, `reconcile-stop-<name>`. A task follows whatever the
//! reconciler does for that declaration, whichever action that is (a start of a cluster
//! whose create failed runs a create), and says what is happening now:
//!
//! | the declaration                     | status    | message                              |
//! |-------------------------------------|-----------|--------------------------------------|
//! | reached (running, stopped, gone)    | completed |                                      |
//! | replaced by another before reached  | failed    | superseded: now declared …           |
//! | an action runs for the cluster      | running   | which action, which attempt          |
//! | its last attempt failed             | pending   | the failure, and when kindler retries |
//! | nothing runs yet                    | pending   | why it waits: backoff, no free slot, kindler degraded |
//!
//! kindler retries a failure until the declaration is reached or replaced, so a failure
//! is not the end of a task: it stays pending with `error` set to the last failure.

use super::views::TaskStatus;
use crate::model::{Action, ClusterName, DesiredState, RunOutcome};
use crate::reconciler::machine::{self, Decision};
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

    /// When this reading's declaration was last acted on or made.
    fn last_seen(&self) -> Option<Timestamp> {
        let run = self.own.as_ref().and_then(|r| r.started_at);
        let declared = self.row.as_ref().and_then(|r| match self.kind {
            TaskKind::Create => r.created_at,
            _ => r.updated_at,
        });
        run.max(declared)
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
    /// Actions running now, and how many may run at once.
    pub running: usize,
    pub capacity: usize,
    /// Why kindler cannot act now, if it cannot.
    pub degraded: Option<String>,
    /// Output so far of the run in progress (see [`Facts::running_run`]).
    pub live_lines: Option<Vec<String>>,
    /// The reconciler's timers, to tell what it runs next.
    pub policy: machine::Policy,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            running: 0,
            capacity: 0,
            degraded: None,
            live_lines: None,
            policy: machine::Policy {
                resync: std::time::Duration::from_secs(300),
                honour_timers: true,
            },
        }
    }
}

/// The task's status. Pure: every case is covered by the unit tests below.
pub fn describe(task_id: &str, f: &Facts, now: &Activity) -> TaskStatus {
    let (verb, _, _) = verbs(f.kind.action());
    let declared_at = f.row.as_ref().and_then(|r| match f.kind {
        TaskKind::Create => r.created_at,
        _ => r.updated_at,
    });
    let mut task = TaskStatus {
        task_id: task_id.to_owned(),
        status: "pending",
        progress: 0,
        message: format!("Waiting to {verb} cluster {}", f.name),
        logs: Vec::new(),
        error: None,
        created_at: declared_at.map(Timestamp::iso),
        updated_at: f
            .row
            .as_ref()
            .and_then(|r| r.updated_at)
            .map(Timestamp::iso),
        completed_at: None,
    };
    match &f.row {
        None if f.kind == TaskKind::Delete || succeeded(&f.own) => completed(&mut task, f),
        None => superseded(&mut task, f, "no longer exists".into()),
        Some(row) if row.desired != f.kind.goal() => {
            if succeeded(&f.own) {
                completed(&mut task, f)
            } else {
                superseded(&mut task, f, format!("is now declared {}", row.desired))
            }
        }
        Some(row) if f.kind.reached(row) => completed(&mut task, f),
        Some(row) => in_progress(&mut task, f, row, now),
    }
    task
}

fn succeeded(run: &Option<RunRecord>) -> bool {
    run.as_ref()
        .is_some_and(|r| r.outcome == RunOutcome::Succeeded)
}

fn completed(task: &mut TaskStatus, f: &Facts) {
    let (_, _, done) = verbs(f.kind.action());
    task.status = "completed";
    task.progress = 100;
    task.message = format!("Cluster {} {done}", f.name);
    if let Some(run) = &f.own {
        task.logs = run.output_tail.clone();
        if let Some(moved) = run.last_moved() {
            task.updated_at = Some(moved.iso());
        }
    }
    task.completed_at = task.updated_at.clone();
}

fn superseded(task: &mut TaskStatus, f: &Facts, why: String) {
    let error = format!("superseded: cluster {} {why}", f.name);
    task.status = "failed";
    task.progress = 100;
    task.message = error.clone();
    task.error = Some(error);
    task.completed_at = task.updated_at.clone();
}

/// The declaration is in force and not reached: what runs for it, or why nothing does.
fn in_progress(task: &mut TaskStatus, f: &Facts, row: &ClusterRecord, now: &Activity) {
    let (verb, _, _) = verbs(f.kind.action());
    let name = &f.name;
    let Some(run) = &f.latest else {
        task.message = waiting(f, row, now);
        return;
    };
    if let Some(moved) = run.last_moved() {
        task.updated_at = Some(moved.iso());
    }
    let current = run.generation == Some(row.generation);
    let headline = run
        .error
        .as_deref()
        .and_then(|e| e.lines().next())
        .unwrap_or("failed")
        .to_owned();
    match run.outcome {
        RunOutcome::Running => {
            let (_, doing, _) = verbs(run.action);
            task.status = "running";
            task.progress = 50;
            task.message = match run.attempt {
                Some(attempt) => format!("{doing} cluster {name} (attempt {attempt})"),
                None => format!("{doing} cluster {name}"),
            };
            if run.action != f.kind.action() && run.action != Action::Probe {
                task.message
                    .push_str(&format!("; then kindler goes on to {verb} it"));
            }
            task.logs = now.live_lines.clone().unwrap_or_default();
        }
        RunOutcome::Failed | RunOutcome::TimedOut if current => {
            task.error = run.error.clone();
            task.logs = run.output_tail.clone();
            task.message = match row.next_attempt_at {
                Some(next) => format!(
                    "{headline}; kindler retries at {} (attempt {})",
                    next.iso(),
                    row.attempts.saturating_add(1)
                ),
                None => format!("{headline}; kindler retries now"),
            };
        }
        RunOutcome::Cancelled | RunOutcome::Interrupted if current => {
            task.logs = run.output_tail.clone();
            task.message = format!("{headline}; kindler redoes it");
        }
        _ => task.message = waiting(f, row, now),
    }
}

/// Why nothing runs yet for a declaration in force; what runs next is what the state machine
/// decides (a start of a cluster whose create failed waits for a create).
fn waiting(f: &Facts, row: &ClusterRecord, now: &Activity) -> String {
    let next = match machine::look(row, std::time::SystemTime::now(), now.policy) {
        Decision::Act(action) => action,
        _ => f.kind.action(),
    };
    let (verb, _, _) = verbs(next);
    let base = format!("Waiting to {verb} cluster {}", f.name);
    if let Some(why) = &now.degraded {
        return format!("{base}: kindler cannot act now ({why})");
    }
    if let Some(next) = row.next_attempt_at {
        if std::time::SystemTime::from(next) > std::time::SystemTime::now() {
            return format!(
                "{base}: attempt {} at {}",
                row.attempts.saturating_add(1),
                next.iso()
            );
        }
    }
    if now.capacity > 0 && now.running >= now.capacity {
        return format!(
            "{base}: {} of {} actions are running; it starts when one ends",
            now.running, now.capacity
        );
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActualState;

    fn name(n: &str) -> ClusterName {
        ClusterName::parse(n).unwrap()
    }

    fn at(text: &str) -> Option<Timestamp> {
        Some(Timestamp::parse(text).unwrap())
    }

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

    fn row(desired: DesiredState, actual: ActualState, generation: i64) -> ClusterRecord {
        ClusterRecord {
            created_at: at("2026-12-01 10:00:00.000"),
            updated_at: at("2026-12-01 10:00:01.000"),
            generation,
            ..ClusterRecord::sample(desired, actual)
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

    fn status(f: &Facts, now: &Activity) -> (&'static str, String, Option<String>) {
        let t = describe("t", f, now);
        (t.status, t.message, t.error)
    }

    #[test]
    fn a_start_follows_the_create_the_reconciler_runs_for_it() {
        use {ActualState as A, DesiredState as D};
        let idle = Activity {
            capacity: 3,
            ..Activity::default()
        };
        // start of a cluster whose create failed: the retries are creates.
        let mut r = row(D::Present, A::Failed, 1);
        r.attempts = 2;
        r.next_attempt_at = at("2999-01-01 00:00:00.000");
        let failed_create = run(Action::Create, RunOutcome::Failed, 1);
        let f = facts(TaskKind::Start, Some(r.clone()), None, Some(failed_create));
        let (s, message, error) = status(&f, &idle);
        assert_eq!(s, "pending", "kindler retries, so the task is not over");
        assert_eq!(
            message,
            "create failed (exit status 69); kindler retries at 2999-01-01T00:00:00.000Z (attempt 3)"
        );
        assert!(error.unwrap().contains("no docker"));

        let running_create = run(Action::Create, RunOutcome::Running, 1);
        let f = facts(TaskKind::Start, Some(r.clone()), None, Some(running_create));
        let live = Activity {
            live_lines: Some(vec!["pulling".into()]),
            ..idle.clone()
        };
        let t = describe("t", &f, &live);
        assert_eq!(t.status, "running");
        assert_eq!(
            t.message,
            "Creating cluster dev (attempt 2); then kindler goes on to start it"
        );
        assert_eq!(t.logs, ["pulling"]);

        let mut done = r;
        done.actual = A::Running;
        let f = facts(TaskKind::Start, Some(done), None, None);
        assert_eq!(status(&f, &idle).0, "completed");
    }

    #[test]
    fn a_waiting_task_says_why_it_waits() {
        use {ActualState as A, DesiredState as D};
        let r = row(D::Stopped, A::Running, 2);
        let older = run(Action::Create, RunOutcome::Succeeded, 1);
        let f = facts(TaskKind::Stop, Some(r.clone()), None, Some(older));
        let full = Activity {
            running: 3,
            capacity: 3,
            ..Activity::default()
        };
        assert_eq!(
            status(&f, &full).1,
            "Waiting to stop cluster dev: 3 of 3 actions are running; it starts when one ends"
        );
        let degraded = Activity {
            degraded: Some("the database is locked".into()),
            ..full
        };
        let (s, message, _) = status(&f, &degraded);
        assert_eq!(s, "pending");
        assert_eq!(
            message,
            "Waiting to stop cluster dev: kindler cannot act now (the database is locked)"
        );
    }

    #[test]
    fn only_a_replaced_declaration_fails_and_a_reached_one_completes() {
        use {ActualState as A, DesiredState as D};
        let idle = Activity::default();
        // create, then stop declared before the create succeeded: the create task failed.
        let r = row(D::Stopped, A::Creating, 2);
        let f = facts(TaskKind::Create, Some(r.clone()), None, None);
        let (s, message, _) = status(&f, &idle);
        assert_eq!(
            (s, message.as_str()),
            ("failed", "superseded: cluster dev is now declared stopped")
        );
        // ... unless its create had succeeded before the stop was declared.
        let ok = run(Action::Create, RunOutcome::Succeeded, 1);
        let f = facts(TaskKind::Create, Some(r), Some(ok.clone()), Some(ok));
        assert_eq!(status(&f, &idle).0, "completed");
        // a delete whose row is gone is done; a create whose row is gone is not.
        let f = facts(TaskKind::Delete, None, None, None);
        assert_eq!(status(&f, &idle).1, "Cluster dev deleted");
        let failed = run(Action::Create, RunOutcome::Failed, 1);
        let f = facts(TaskKind::Create, None, Some(failed), None);
        assert_eq!(
            status(&f, &idle).1,
            "superseded: cluster dev no longer exists"
        );
        // an interrupted run of the declaration in force is redone.
        let r = row(D::Present, A::Creating, 1);
        let mut cut = run(Action::Create, RunOutcome::Interrupted, 1);
        cut.error = Some("create was interrupted because kindler is stopping".into());
        let f = facts(TaskKind::Create, Some(r), None, Some(cut));
        assert_eq!(
            status(&f, &idle).1,
            "create was interrupted because kindler is stopping; kindler redoes it"
        );
    }
}
