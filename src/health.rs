//! What keeps kindler from acting on declarations right now, as `/api/health`, the STATUS
//! line of `systemctl status` and the journal report it.
//!
//! Each part of the daemon that notices a problem reports it under its [`Cause`] and
//! resolves it once it is over. A cause is logged when it begins and when it ends (one
//! error event per cause, however often the failing operation is retried), and STATUS is
//! rewritten at both moments. Health 200 means no cause is active: declarations are acted on.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::log::{ids, Event, Priority};
use crate::systemd;

/// Why kindler cannot make progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// The database file at the configured path is no longer the one kindler has open.
    DatabaseFile,
    /// Writes to the store fail: locked by another program, disk full, read-only.
    StoreWrites,
    /// The reconciler cannot read the store.
    StoreReads,
    /// The change feed (new declarations) cannot be read.
    ChangeFeed,
    /// Runs ended whose end could not be recorded yet.
    RunEnds,
    /// This agent does not hold its host's lease (another agent does, or it cannot be
    /// renewed): it does not act on the host's clusters.
    Lease,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::DatabaseFile => "database_file",
            Cause::StoreWrites => "store_writes",
            Cause::StoreReads => "store_reads",
            Cause::ChangeFeed => "change_feed",
            Cause::RunEnds => "run_ends",
            Cause::Lease => "lease",
        }
    }
}

/// An active problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub cause: Cause,
    pub message: String,
    pub since: SystemTime,
}

/// A row of the store kindler cannot act on (written by another program), reported in the
/// journal once and listed by the health endpoint until it is readable again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredRow {
    pub id: i64,
    pub name: String,
    pub reason: String,
}

#[derive(Default)]
pub struct Health {
    problems: Mutex<BTreeMap<Cause, Problem>>,
    ignored: Mutex<BTreeMap<i64, IgnoredRow>>,
    /// Hosts of the fleet whose agent's lease ran out, with their clusters' count.
    unreachable_hosts: Mutex<Vec<(String, i64)>>,
    /// The clusters' summary, the part of STATUS the reconciler keeps current.
    summary: Mutex<String>,
    /// Changes whenever a problem begins or ends.
    changed: tokio::sync::watch::Sender<()>,
}

impl Health {
    /// Reports `cause` as active with `message` (the latest wording replaces an earlier
    /// one). Logged and shown in STATUS only when the cause begins.
    pub fn report(&self, cause: Cause, message: impl Into<String>) {
        let message = message.into();
        let begins = {
            let mut problems = self.problems.lock().unwrap();
            let begins = !problems.contains_key(&cause);
            let since = problems
                .get(&cause)
                .map(|p| p.since)
                .unwrap_or_else(SystemTime::now);
            problems.insert(
                cause,
                Problem {
                    cause,
                    message: message.clone(),
                    since,
                },
            );
            begins
        };
        if begins {
            Event::new(
                Priority::Error,
                format!("kindler cannot act on declarations: {message}"),
            )
            .id(ids::DEGRADED)
            .field("CAUSE", cause.as_str())
            .emit();
            self.publish();
        }
    }

    /// `cause` is over (nothing happens when it was not active).
    pub fn resolve(&self, cause: Cause) {
        let ended = self.problems.lock().unwrap().remove(&cause);
        if let Some(problem) = ended {
            let lasted = problem.since.elapsed().unwrap_or_default();
            Event::new(
                Priority::Notice,
                format!(
                    "recovered after {}: {}",
                    humantime::format_duration(std::time::Duration::from_secs(lasted.as_secs())),
                    problem.message
                ),
            )
            .id(ids::RECOVERED)
            .field("CAUSE", cause.as_str())
            .emit();
            self.publish();
        }
    }

    /// Reports or resolves `cause` by the outcome of an operation.
    pub fn track<T, E: std::fmt::Display>(&self, cause: Cause, result: &Result<T, E>, what: &str) {
        match result {
            Ok(_) => self.resolve(cause),
            Err(e) => self.report(cause, format!("{what}: {e}")),
        }
    }

    pub fn is_active(&self, cause: Cause) -> bool {
        self.problems.lock().unwrap().contains_key(&cause)
    }

    /// The active problems, most fundamental cause first.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems.lock().unwrap().values().cloned().collect()
    }

    /// Notes a row kindler cannot act on; true when it was not noted before.
    pub fn ignore_row(&self, row: IgnoredRow) -> bool {
        let mut ignored = self.ignored.lock().unwrap();
        let new = ignored.get(&row.id) != Some(&row);
        ignored.insert(row.id, row);
        new
    }

    /// The row is readable again, or gone.
    pub fn unignore_row(&self, id: i64) {
        self.ignored.lock().unwrap().remove(&id);
    }

    pub fn ignored_rows(&self) -> Vec<IgnoredRow> {
        self.ignored.lock().unwrap().values().cloned().collect()
    }

    pub fn ignored_ids(&self) -> Vec<i64> {
        self.ignored.lock().unwrap().keys().copied().collect()
    }

    /// Hosts whose lease ran out: nobody acts on their clusters. They do not keep this agent
    /// from acting on its own, so they do not make it unhealthy; health lists them.
    pub fn set_unreachable_hosts(&self, hosts: Vec<(String, i64)>) {
        *self.unreachable_hosts.lock().unwrap() = hosts;
        self.changed.send_replace(());
    }

    pub fn unreachable_hosts(&self) -> Vec<(String, i64)> {
        self.unreachable_hosts.lock().unwrap().clone()
    }

    /// Sets the clusters' summary and sends STATUS.
    pub fn set_summary(&self, summary: String) {
        *self.summary.lock().unwrap() = summary;
        self.publish();
    }

    /// The STATUS line: the problems first, then the clusters' summary.
    pub fn status_line(&self) -> String {
        let summary = self.summary.lock().unwrap().clone();
        let problems = self.problems();
        if problems.is_empty() {
            return summary;
        }
        let reasons: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        format!("DEGRADED: {}; {summary}", reasons.join("; "))
    }

    fn publish(&self) {
        systemd::status(&self.status_line());
        self.changed.send_replace(());
    }

    /// Changes whenever a problem begins or ends (or the summary changes).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_reported_once_and_shown_until_resolved() {
        let h = Health::default();
        h.set_summary("2 clusters: 2 running".into());
        assert_eq!(h.status_line(), "2 clusters: 2 running");
        h.report(Cause::ChangeFeed, "cannot read changes: locked");
        let since = h.problems()[0].since;
        h.report(Cause::ChangeFeed, "cannot read changes: still locked");
        h.report(Cause::DatabaseFile, "the database file was removed");
        let problems = h.problems();
        assert_eq!(problems.len(), 2);
        assert_eq!(
            problems[0].cause,
            Cause::DatabaseFile,
            "most fundamental first"
        );
        assert_eq!(
            problems[1].since, since,
            "a repeated report keeps its start"
        );
        assert_eq!(
            h.status_line(),
            "DEGRADED: the database file was removed; cannot read changes: still locked; \
             2 clusters: 2 running"
        );
        h.resolve(Cause::ChangeFeed);
        h.resolve(Cause::DatabaseFile);
        h.resolve(Cause::DatabaseFile);
        assert!(h.problems().is_empty());
        assert_eq!(h.status_line(), "2 clusters: 2 running");
    }

    #[test]
    fn ignored_rows_are_noted_once_per_reason() {
        let h = Health::default();
        let row = |reason: &str| IgnoredRow {
            id: 7,
            name: "x".into(),
            reason: reason.into(),
        };
        assert!(h.ignore_row(row("bad port")));
        assert!(!h.ignore_row(row("bad port")));
        assert!(h.ignore_row(row("bad provider")));
        assert_eq!(h.ignored_ids(), [7]);
        h.unignore_row(7);
        assert!(h.ignored_rows().is_empty());
    }
}
