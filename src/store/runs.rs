//! The `reconcile_runs` table: one row per action run, kept within the retention limits.

use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::row::{self, RowReader};
use super::time::Timestamp;
use super::StoreResult;
use crate::model::{Action, RunOutcome};

/// A run as the history keeps it.
///
/// kindler writes every run row itself, but other programs can write the table too; a
/// value that cannot be read is `None` (or, for the action and outcome, as said below), so
/// one odd row never fails the history, the tasks or the recovery at start-up. A
/// timestamp that is no time is `None` as well.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: i64,
    pub cluster_id: Option<i64>,
    pub cluster_name: String,
    /// An action kindler does not know reads as a probe, which changes nothing.
    pub action: Action,
    pub generation: Option<i64>,
    pub attempt: Option<u32>,
    /// An outcome kindler does not know reads as interrupted.
    pub outcome: RunOutcome,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub output_tail: Vec<String>,
}

impl RunRecord {
    /// When the run last changed: its end, or its start while it runs.
    pub fn last_moved(&self) -> Option<Timestamp> {
        self.ended_at.or(self.started_at)
    }
}

pub(super) const COLUMNS: &str =
    "id, cluster_id, cluster_name, action, generation, attempt, outcome, \
     started_at, ended_at, duration_ms, exit_code, signal, error, output_tail";

fn from_row(row: &Row) -> rusqlite::Result<RunRecord> {
    row::read(row, run)
}

/// Reads a row of `reconcile_runs` (selected with [`COLUMNS`]).
pub(super) fn run(r: &RowReader) -> RunRecord {
    let integer = |column| r.integer(column).ok().flatten();
    RunRecord {
        id: r.key("id"),
        cluster_id: integer("cluster_id"),
        cluster_name: r.text("cluster_name").unwrap_or_default(),
        action: (r.text("action").and_then(|a| a.parse().ok())).unwrap_or(Action::Probe),
        generation: integer("generation"),
        attempt: narrow(integer("attempt")),
        outcome: (r.text("outcome").and_then(|o| o.parse().ok()))
            .unwrap_or(RunOutcome::Interrupted),
        started_at: r.timestamp("started_at").ok().flatten(),
        ended_at: r.timestamp("ended_at").ok().flatten(),
        duration_ms: integer("duration_ms"),
        exit_code: narrow(integer("exit_code")),
        signal: narrow(integer("signal")),
        error: r.text("error"),
        output_tail: r
            .text("output_tail")
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

/// A number in a narrower type, `None` when it does not fit.
fn narrow<T: TryFrom<i64>>(n: Option<i64>) -> Option<T> {
    n.and_then(|n| n.try_into().ok())
}

/// A run that begins.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub cluster_id: i64,
    pub cluster_name: String,
    pub action: Action,
    pub generation: i64,
    pub attempt: u32,
    pub started_at: SystemTime,
    pub process_tag: String,
}

pub fn insert(tx: &Transaction, run: &NewRun) -> StoreResult<i64> {
    let id = super::clusters::id_for_insert(tx, "reconcile_runs")?;
    tx.prepare_cached(
        "INSERT INTO reconcile_runs (cluster_id, cluster_name, action, generation, attempt, started_at,
                                     process_tag, id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        run.cluster_id,
        run.cluster_name,
        run.action.as_str(),
        run.generation,
        run.attempt,
        Timestamp::from(run.started_at),
        run.process_tag,
        id,
    ])?;
    Ok(tx.last_insert_rowid())
}

/// How a run ended, as its history row keeps it.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub outcome: RunOutcome,
    pub ended_at: SystemTime,
    pub duration: Duration,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub output_tail: Vec<String>,
    pub pgid: Option<i32>,
}

pub fn finish(tx: &Transaction, run_id: i64, end: &RunEnd) -> StoreResult<()> {
    tx.prepare_cached(
        "UPDATE reconcile_runs SET outcome = ?2, ended_at = ?3, duration_ms = ?4, exit_code = ?5,
                signal = ?6, error = ?7, output_tail = ?8, pgid = ?9
          WHERE id = ?1",
    )?
    .execute(params![
        run_id,
        end.outcome.as_str(),
        Timestamp::from(end.ended_at),
        end.duration.as_millis() as i64,
        end.exit_code,
        end.signal,
        end.error,
        end.output_tail.join("\n"),
        end.pgid,
    ])?;
    Ok(())
}

/// The newest run of one of `actions` for a cluster row.
pub fn latest_for_cluster(
    conn: &Connection,
    cluster_id: i64,
    actions: &[Action],
) -> StoreResult<Option<RunRecord>> {
    latest(conn, "cluster_id = ?1", cluster_id.to_string(), actions)
}

/// The newest run of one of `actions` for a cluster name (its row may be gone).
pub fn latest_for_name(
    conn: &Connection,
    name: &str,
    actions: &[Action],
) -> StoreResult<Option<RunRecord>> {
    latest(conn, "cluster_name = ?1", name.to_owned(), actions)
}

fn latest(
    conn: &Connection,
    filter: &str,
    key: String,
    actions: &[Action],
) -> StoreResult<Option<RunRecord>> {
    let list = actions
        .iter()
        .map(|a| format!("'{}'", a.as_str()))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT {COLUMNS} FROM reconcile_runs WHERE {filter} AND action IN ({list}) ORDER BY id DESC LIMIT 1"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([key], from_row)
        .optional()?)
}

/// The newest runs of a cluster, newest first.
pub fn recent_for_name(conn: &Connection, name: &str, limit: u32) -> StoreResult<Vec<RunRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM reconcile_runs WHERE cluster_name = ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    let runs = stmt
        .query_map(params![name, limit], from_row)?
        .collect::<Result<_, _>>()?;
    Ok(runs)
}

/// A run that never recorded its end: its daemon died or was stopped mid-action.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub id: i64,
    /// `None` when the row's value is no number (another program wrote it).
    pub cluster_id: Option<i64>,
    pub cluster_name: String,
    pub action: Option<Action>,
    pub process_tag: Option<String>,
}

/// Reads a row of unfinished runs (`id, cluster_id, cluster_name, action, process_tag`).
pub(super) fn unfinished_run(r: &RowReader) -> Unfinished {
    Unfinished {
        id: r.key("id"),
        cluster_id: r.integer("cluster_id").ok().flatten(),
        cluster_name: r.text("cluster_name").unwrap_or_default(),
        action: r.text("action").and_then(|a| a.parse().ok()),
        process_tag: r.text("process_tag").filter(|t| !t.is_empty()),
    }
}

pub fn unfinished(conn: &Connection) -> StoreResult<Vec<Unfinished>> {
    let mut stmt = conn.prepare(
        "SELECT id, cluster_id, cluster_name, action, process_tag
           FROM reconcile_runs WHERE ended_at IS NULL ORDER BY id",
    )?;
    let runs = stmt
        .query_map([], |r| row::read(r, unfinished_run))?
        .collect::<Result<_, _>>()?;
    Ok(runs)
}

pub fn mark_interrupted(tx: &Transaction, run_id: i64, error: &str) -> StoreResult<()> {
    tx.prepare_cached(
        "UPDATE reconcile_runs
            SET outcome = 'interrupted', ended_at = ?2, error = ?3,
                duration_ms = CAST((julianday(?2) - julianday(started_at)) * 86400000 AS INTEGER)
          WHERE id = ?1",
    )?
    .execute(params![run_id, Timestamp::now(), error])?;
    Ok(())
}

/// Keeps the newest `keep` runs of each action of a cluster. Counted per action, so that the
/// probes of every resync do not push the create, with its output, out of the history.
pub fn prune_cluster(
    tx: &Transaction,
    cluster_id: i64,
    action: Action,
    keep: u32,
) -> StoreResult<usize> {
    Ok(tx
        .prepare_cached(
            "DELETE FROM reconcile_runs
              WHERE cluster_id = ?1 AND action = ?2 AND ended_at IS NOT NULL AND id NOT IN
                    (SELECT id FROM reconcile_runs WHERE cluster_id = ?1 AND action = ?2
                      ORDER BY id DESC LIMIT ?3)",
        )?
        .execute(params![cluster_id, action.as_str(), keep])?)
}

/// Drops runs that ended longer than `max_age` ago (run now and then, not per action).
pub fn prune_old(tx: &Transaction, max_age: Duration) -> StoreResult<usize> {
    let cutoff = Timestamp::from(SystemTime::now() - max_age);
    Ok(tx
        .prepare_cached("DELETE FROM reconcile_runs WHERE ended_at IS NOT NULL AND ended_at < ?1")?
        .execute([cutoff])?)
}
