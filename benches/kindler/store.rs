//! Stores written directly with SQL, as another program (the old tools) would write them,
//! and read back to see what the daemon did.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kindler::testkit::try_poll;

use crate::harness::bin;
use crate::Res;

/// A new database with kindler's schema and no clusters.
pub fn new_store(dir: &Path) -> Res<PathBuf> {
    let db = dir.join("kindler.db");
    migrate(&db)?;
    Ok(db)
}

/// `kindler migrate`: gives `database` (a file, or a postgres:// URL) kindler's schema.
pub fn migrate(database: impl AsRef<OsStr>) -> Res<()> {
    let out = Command::new(bin())
        .args(["migrate", "--config", "/dev/null", "--database"])
        .arg(database)
        .env_remove("KINDLER_DATABASE")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("kindler migrate: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{} migrate ({}): {}",
            bin(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn open(db: &Path) -> Res<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Host ports of the i-th cluster a benchmark declares: unique across clusters.
pub fn ports(i: usize) -> (i64, i64, i64) {
    let i = i as i64;
    (2000 + 3 * i, 2001 + 3 * i, 2002 + 3 * i)
}

/// Inserts `n` clusters named PREFIX{first..} in one transaction, as another program
/// would. `running` rows are converged (reconciled just now); others wait for a create.
pub fn add_clusters(db: &Path, prefix: &str, first: usize, n: usize, actual: &str) -> Res<()> {
    let mut conn = open(db)?;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO clusters (name, provider, pf_port, http_port, https_port,
                                       desired_state, actual_state, status, last_reconciled_at)
                 VALUES (?1, 'k3d', ?2, ?3, ?4, 'present', ?5, ?5,
                         CASE WHEN ?5 = 'running' THEN strftime('%Y-%m-%d %H:%M:%f', 'now') END)",
            )
            .map_err(|e| e.to_string())?;
        for i in first..first + n {
            let (pf, http, https) = ports(i);
            stmt.execute(rusqlite::params![
                format!("{prefix}{i}"),
                pf,
                http,
                https,
                actual
            ])
            .map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

pub fn count(db: &Path, filter: &str) -> Res<i64> {
    let conn = open(db)?;
    conn.query_row(
        &format!("SELECT COUNT(*) FROM clusters WHERE {filter}"),
        [],
        |r| r.get(0),
    )
    .map_err(|e| e.to_string())
}

pub fn state(db: &Path, name: &str) -> Res<Option<String>> {
    use rusqlite::OptionalExtension;
    let conn = open(db)?;
    conn.query_row(
        "SELECT actual_state FROM clusters WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| e.to_string())
    .map(Option::flatten)
}

pub fn await_state(db: &Path, name: &str, want: &str, timeout: Duration) -> Res<()> {
    let mut now = None;
    try_poll(timeout, Duration::from_millis(10), || {
        now = state(db, name)?;
        Ok::<_, String>((now.as_deref() == Some(want)).then_some(()))
    })?
    .ok_or_else(|| format!("cluster {name} is {now:?}, not {want}, after {timeout:?}"))
}

/// When the first action run recorded in the store started, in ms since the epoch.
pub fn first_run_start_ms(db: &Path) -> Res<f64> {
    let conn = open(db)?;
    conn.query_row(
        "SELECT (julianday(MIN(started_at)) - 2440587.5) * 86400000.0 FROM reconcile_runs",
        [],
        |r| r.get(0),
    )
    .map_err(|e| e.to_string())
}
