//! The `reconcile_runs` table: one row per action run, kept within the retention limits.

use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::clusters::{id_for_insert, text_of, timestamp_of};
use super::{time, StoreResult};
use crate::model::{Action, RunOutcome};

/// A run as the history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: i64,
    pub cluster_id: i64,
    pub cluster_name: String,
    pub action: Action,
    pub generation: i64,
    pub attempt: u32,
    pub outcome: RunOutcome,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub output_tail: Vec<String>,
}

const COLUMNS: &str = "id, cluster_id, cluster_name, action, generation, attempt, outcome, \
     started_at, ended_at, duration_ms, exit_code, signal, error, output_tail";

/// Reads a run as another program may have left it. The history is kindler's own table,
/// but `sqlite3` can write anything into it, and one odd value made a cluster's whole
/// history and its tasks unreadable (503), and an unfinished run with one made the start-up
/// recovery skip every unfinished run, leaving a dead daemon's processes running. Text
/// columns take any value; a number that is none reads as none (or 0).
fn from_row(r: &Row) -> rusqlite::Result<RunRecord> {
    let action = text_of(r, 3)?.unwrap_or_default();
    let outcome = text_of(r, 6)?.unwrap_or_default();
    let tail = text_of(r, 13)?;
    Ok(RunRecord {
        id: r.get(0)?,
        cluster_id: integer_of(r, 1)?.unwrap_or(0),
        cluster_name: text_of(r, 2)?.unwrap_or_default(),
        action: action.parse().unwrap_or(Action::Probe),
        generation: integer_of(r, 4)?.unwrap_or(0),
        attempt: integer_of(r, 5)?.map_or(0, |a| a.clamp(0, u32::MAX as i64) as u32),
        outcome: outcome.parse().unwrap_or(RunOutcome::Interrupted),
        started_at: timestamp_of(r, 7)?.unwrap_or_default(),
        ended_at: timestamp_of(r, 8)?,
        duration_ms: integer_of(r, 9)?,
        exit_code: integer_of(r, 10)?.and_then(|c| i32::try_from(c).ok()),
        signal: integer_of(r, 11)?.and_then(|s| i32::try_from(s).ok()),
        error: text_of(r, 12)?,
        output_tail: tail
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

/// An integer column, whatever was written there: a whole number, or a real or text
/// holding one; anything else is none.
fn integer_of(r: &Row, idx: usize) -> rusqlite::Result<Option<i64>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(idx)? {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Some(f as i64),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|t| t.trim().parse().ok()),
        _ => None,
    })
}

pub struct NewRun<'a> {
    pub cluster_id: i64,
    pub cluster_name: &'a str,
    pub action: Action,
    pub generation: i64,
    pub attempt: u32,
    pub started_at: SystemTime,
    pub process_tag: &'a str,
}

pub fn insert(tx: &Transaction, run: &NewRun) -> StoreResult<i64> {
    let id = id_for_insert(tx, "reconcile_runs")?;
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
        time::text(run.started_at),
        run.process_tag,
        id,
    ])?;
    Ok(tx.last_insert_rowid())
}

pub struct RunEnd<'a> {
    pub outcome: RunOutcome,
    pub ended_at: SystemTime,
    pub duration: Duration,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<&'a str>,
    pub output_tail: &'a [String],
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
        time::text(end.ended_at),
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
    /// None when the row holds no number there (another program wrote it).
    pub cluster_id: Option<i64>,
    pub cluster_name: String,
    pub action: Option<Action>,
    pub process_tag: Option<String>,
}

pub fn unfinished(conn: &Connection) -> StoreResult<Vec<Unfinished>> {
    let mut stmt = conn.prepare(
        "SELECT id, cluster_id, cluster_name, action, process_tag
           FROM reconcile_runs WHERE ended_at IS NULL ORDER BY id",
    )?;
    let runs = stmt
        .query_map([], |r| {
            // Read leniently (see `from_row`): every unfinished run is recovered.
            Ok(Unfinished {
                id: r.get(0)?,
                cluster_id: integer_of(r, 1)?,
                cluster_name: text_of(r, 2)?.unwrap_or_default(),
                action: text_of(r, 3)?.and_then(|a| a.parse().ok()),
                process_tag: text_of(r, 4)?,
            })
        })?
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
    .execute(params![run_id, time::now_text(), error])?;
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
    let cutoff = time::text(SystemTime::now() - max_age);
    Ok(tx
        .prepare_cached("DELETE FROM reconcile_runs WHERE ended_at IS NOT NULL AND ended_at < ?1")?
        .execute([cutoff])?)
}
