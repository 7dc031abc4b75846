//! Tasks, as the WebUI knows them, read from the declared state and the run history.
//!
//! A task id names a declaration: `reconcile-<name>` (create), `reconcile-delete-<name>`,
//! `reconcile-start-<name>`, `reconcile-stop-<name>`. Its status is that of the newest run
//! of that action for the cluster, unless the cluster already is where the task wanted it
//! (completed) or the run belongs to an older declaration (pending again).

use rusqlite::Connection;

use super::views::TaskStatus;
use crate::app::AppRef;
use crate::model::{Action, ActualState, ClusterName, DesiredState, RunOutcome};
use crate::store::clusters::{self, ClusterRecord};
use crate::store::runs::{self, RunRecord};
use crate::store::{time, StoreResult};

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

    /// Verb forms for messages: (infinitive, progressive, past).
    fn verbs(self) -> (&'static str, &'static str, &'static str) {
        match self {
            TaskKind::Create => ("create", "Creating", "created"),
            TaskKind::Delete => ("delete", "Deleting", "deleted"),
            TaskKind::Start => ("start", "Starting", "started"),
            TaskKind::Stop => ("stop", "Stopping", "stopped"),
        }
    }

    /// The cluster is where the task wanted it.
    fn reached(self, row: &ClusterRecord) -> bool {
        row.desired == self.goal()
            && match self {
                TaskKind::Create | TaskKind::Start => row.actual == ActualState::Running,
                TaskKind::Stop => row.actual == ActualState::Stopped,
                TaskKind::Delete => false,
            }
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

/// One reading of a task id, with what the store knows about it.
struct Reading {
    kind: TaskKind,
    name: ClusterName,
    row: Option<ClusterRecord>,
    run: Option<RunRecord>,
}

impl Reading {
    /// The declaration this reading stands for is the one in force (a cluster whose row
    /// is gone is absent, as its delete declared).
    fn in_force(&self) -> bool {
        match &self.row {
            Some(r) => r.desired == self.kind.goal(),
            None => self.kind == TaskKind::Delete,
        }
    }

    /// When this reading's declaration was last acted on or made (text timestamps sort).
    fn latest(&self) -> Option<&str> {
        let run = self.run.as_ref().map(|r| r.started_at.as_str());
        let declared = self.row.as_ref().and_then(|r| match self.kind {
            TaskKind::Create => r.created_at.as_deref(),
            _ => r.updated_at.as_deref(),
        });
        run.max(declared)
    }
}

pub fn status(conn: &Connection, app: &AppRef, task_id: &str) -> StoreResult<Option<TaskStatus>> {
    let mut found = Vec::new();
    for (kind, name) in readings(task_id) {
        let row = match clusters::by_name(conn, &name)? {
            Some(Ok(row)) => Some(row),
            _ => None,
        };
        let run = match &row {
            Some(r) => runs::latest_for_cluster(conn, r.id, &[kind.action()])?,
            None => runs::latest_for_name(conn, name.as_str(), &[kind.action()])?,
        };
        if row.is_some() || run.is_some() {
            found.push(Reading {
                kind,
                name,
                row,
                run,
            });
        }
    }
    // `reconcile-delete-dev` is the delete of dev or the create of delete-dev: the
    // reading whose declaration is in force wins, then the more recent one.
    let best = found
        .into_iter()
        .rev()
        .max_by(|a, b| (a.in_force(), a.latest()).cmp(&(b.in_force(), b.latest())));
    Ok(best.map(|r| {
        describe(
            app,
            task_id,
            r.kind,
            &r.name,
            r.row.as_ref(),
            r.run.as_ref(),
        )
    }))
}

fn describe(
    app: &AppRef,
    task_id: &str,
    kind: TaskKind,
    name: &ClusterName,
    row: Option<&ClusterRecord>,
    run: Option<&RunRecord>,
) -> TaskStatus {
    let (verb, doing, done) = kind.verbs();
    let mut task = TaskStatus {
        task_id: task_id.to_owned(),
        status: "pending",
        progress: 0,
        message: format!("Waiting to {verb} cluster {name}"),
        logs: Vec::new(),
        error: None,
        created_at: row.and_then(|r| r.updated_at.as_deref()).map(time::iso),
        updated_at: row.and_then(|r| r.updated_at.as_deref()).map(time::iso),
        completed_at: None,
    };
    if let Some(run) = run {
        task.created_at = Some(time::iso(&run.started_at));
        task.updated_at = Some(time::iso(
            run.ended_at.as_deref().unwrap_or(&run.started_at),
        ));
        task.logs = match run.outcome {
            RunOutcome::Running => app.live_lines(run.id).unwrap_or_default(),
            _ => run.output_tail.clone(),
        };
    }
    let completed = |task: &mut TaskStatus| {
        task.status = "completed";
        task.progress = 100;
        task.message = format!("Cluster {name} {done}");
        task.completed_at = task.updated_at.clone();
    };
    if let Some(row) = row {
        if kind.reached(row) {
            completed(&mut task);
            return task;
        }
        let wanted = row.desired == kind.goal();
        let older =
            run.is_some_and(|r| r.generation < row.generation && r.outcome != RunOutcome::Running);
        if !wanted && run.is_none() {
            task.status = "failed";
            task.progress = 100;
            task.error = Some(format!(
                "superseded: cluster {name} is now declared {}",
                row.desired
            ));
            task.message = task.error.clone().unwrap_or_default();
            task.completed_at = task.updated_at.clone();
            return task;
        }
        if wanted && (run.is_none() || older) {
            if let Some(next) = &row.next_attempt_at {
                task.message = format!(
                    "Waiting to {verb} cluster {name}: attempt {} at {}",
                    row.attempts + 1,
                    time::iso(next)
                );
            }
            return task;
        }
    }
    let Some(run) = run else { return task };
    let wanted_again = row.is_some_and(|r| r.desired == kind.goal());
    match run.outcome {
        RunOutcome::Running => {
            task.status = "running";
            task.progress = 50;
            task.message = format!("{doing} cluster {name}");
        }
        RunOutcome::Succeeded => completed(&mut task),
        RunOutcome::Cancelled | RunOutcome::Interrupted if wanted_again => {
            task.message = run
                .error
                .clone()
                .unwrap_or_else(|| format!("Waiting to {verb} cluster {name}"));
        }
        RunOutcome::Failed
        | RunOutcome::TimedOut
        | RunOutcome::Cancelled
        | RunOutcome::Interrupted => {
            task.status = "failed";
            task.progress = 100;
            task.error = run.error.clone();
            let headline = run
                .error
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or("failed");
            task.message = match row.and_then(|r| r.next_attempt_at.as_deref()) {
                Some(next) if wanted_again => {
                    format!("{headline}; kindler retries at {}", time::iso(next))
                }
                _ => headline.to_owned(),
            };
            task.completed_at = task.updated_at.clone();
        }
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_read_both_ways() {
        let dev = ClusterName::parse("dev").unwrap();
        assert_eq!(TaskKind::Delete.id(&dev), "reconcile-delete-dev");
        let r = readings("reconcile-delete-dev");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (TaskKind::Delete, dev.clone()));
        assert_eq!(
            r[1],
            (TaskKind::Create, ClusterName::parse("delete-dev").unwrap())
        );
        assert_eq!(readings("reconcile-dev"), [(TaskKind::Create, dev)]);
        assert!(readings("something-else").is_empty());
        assert!(readings("reconcile-Bad Name").is_empty());
    }
}
