//! The `clusters` table: declared spec, desired state and what the reconciler observed.

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::{time, StoreResult};
use crate::model::{
    defaults, Action, ActualState, AddOnStatus, ClusterName, ClusterSpec, DesiredState,
    ProbeReport, Provider,
};

/// One row of `clusters`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRecord {
    pub id: i64,
    pub spec: ClusterSpec,
    pub desired: DesiredState,
    pub actual: ActualState,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub last_reconciled_at: Option<String>,
    pub last_transition_at: Option<String>,
    pub next_attempt_at: Option<String>,
    pub reconcile_error: Option<String>,
    pub generation: i64,
    pub observed_generation: i64,
    pub attempts: u32,
    pub last_action: Option<Action>,
    pub nodes_ready: Option<i64>,
    pub nodes_total: Option<i64>,
    /// As the last successful probe reported them.
    pub add_ons: AddOnStatus,
}

/// A row another program wrote that kindler cannot act on; it is reported and left as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidRow {
    pub id: i64,
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for InvalidRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "row {} ({:?}) is ignored: {}",
            self.id, self.name, self.reason
        )
    }
}

pub type Parsed = Result<ClusterRecord, InvalidRow>;

const COLUMNS: &str = "id, name, provider, subnet, node_port, pf_port, http_port, https_port, \
     register_portainer, haproxy_route, register_argocd, desired_state, actual_state, \
     created_at, updated_at, last_reconciled_at, last_transition_at, next_attempt_at, \
     reconcile_error, generation, observed_generation, attempts, last_action, \
     nodes_ready, nodes_total, portainer_status, argocd_status";

/// Parses a row. Other programs write this table with the `sqlite3` command, and SQLite
/// keeps whatever type they wrote (`pf_port = ''`, `created_at = strftime('%s')`): such a
/// row becomes an [`InvalidRow`] (or, for a timestamp, is read as Unix seconds) rather
/// than an error that would fail every query touching the table.
fn from_row(row: &Row) -> rusqlite::Result<Parsed> {
    use rusqlite::Error as E;
    match parse_row(row) {
        Err(
            e @ (E::InvalidColumnType(..)
            | E::FromSqlConversionFailure(..)
            | E::IntegralValueOutOfRange(..)),
        ) => Ok(Err(InvalidRow {
            id: row.get(0)?,
            name: text_of(row, 1)?.unwrap_or_default(),
            reason: unreadable(&e),
        })),
        parsed => parsed,
    }
}

fn unreadable(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::InvalidColumnType(_, column, ty) => {
            format!("column {column} holds a value of type {ty}, which kindler cannot read")
        }
        other => other.to_string(),
    }
}

/// A text column, whatever storage class the value has (numbers are written out).
pub(super) fn text_of(row: &Row, idx: usize) -> rusqlite::Result<Option<String>> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(idx)? {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    })
}

/// A timestamp column: SQLite's text form, or Unix seconds as `strftime('%s')` writes them.
/// A number that is no such time is passed on as text (the API shows it as it is).
pub(super) fn timestamp_of(row: &Row, idx: usize) -> rusqlite::Result<Option<String>> {
    use rusqlite::types::ValueRef;
    let seconds = match row.get_ref(idx)? {
        ValueRef::Integer(i) => i as f64,
        ValueRef::Real(f) => f,
        _ => return text_of(row, idx),
    };
    match time::text_of_unix_seconds(seconds) {
        Some(text) => Ok(Some(text)),
        None => text_of(row, idx),
    }
}

/// A boolean column: 0/1 as kindler writes it, or `true`/`false` as a script might.
fn flag_of(row: &Row, idx: usize) -> rusqlite::Result<bool> {
    match text_of(row, idx)?.as_deref() {
        Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") | None => Ok(true),
        Some(_) => row.get(idx),
    }
}

fn parse_row(row: &Row) -> rusqlite::Result<Parsed> {
    let id: i64 = row.get(0)?;
    let raw_name = text_of(row, 1)?.unwrap_or_default();
    let invalid = |reason: String| InvalidRow {
        id,
        name: raw_name.clone(),
        reason,
    };
    let name = match ClusterName::parse(&raw_name) {
        Ok(n) => n,
        Err(e) => return Ok(Err(invalid(e.to_string()))),
    };
    let provider_text = text_of(row, 2)?.unwrap_or_default();
    let provider = match provider_text.parse::<Provider>() {
        Ok(p) => p,
        Err(e) => return Ok(Err(invalid(format!("provider {e}")))),
    };
    let mut ports = [0u16; 4];
    let port_defaults = [
        defaults::NODE_PORT,
        defaults::PF_PORT,
        defaults::HTTP_PORT,
        defaults::HTTPS_PORT,
    ];
    for (i, slot) in ports.iter_mut().enumerate() {
        // An empty value (a shell variable that was not set) means the default port.
        let text = text_of(row, 4 + i)?.filter(|t| !t.trim().is_empty());
        *slot = match text {
            None => port_defaults[i],
            Some(t) => match t.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Ok(Err(invalid(format!("{t:?} is not a port (1–65535)")))),
            },
        };
    }
    let desired_text = text_of(row, 11)?;
    let desired = match desired_text.as_deref() {
        None => DesiredState::Present,
        Some(t) => match t.parse() {
            Ok(d) => d,
            Err(e) => return Ok(Err(invalid(format!("desired_state {e}")))),
        },
    };
    // The subnet goes to every script as KINDLER_CLUSTER_SUBNET; a value with a NUL byte
    // (a blob another program wrote) cannot be put into an environment, so every command
    // of the cluster failed to start, blaming the command.
    let subnet = text_of(row, 3)?.filter(|s| !s.is_empty());
    if let Some(s) = subnet.as_deref().filter(|s| s.contains('\0')) {
        return Ok(Err(invalid(format!(
            "subnet {s:?} holds a NUL byte, which cannot be passed to a script"
        ))));
    }
    let actual_text = text_of(row, 12)?;
    let last_action = text_of(row, 22)?;
    Ok(Ok(ClusterRecord {
        id,
        spec: ClusterSpec {
            name,
            provider,
            node_port: ports[0],
            pf_port: ports[1],
            http_port: ports[2],
            https_port: ports[3],
            cluster_subnet: subnet,
            register_portainer: flag_of(row, 8)?,
            haproxy_route: flag_of(row, 9)?,
            register_argocd: flag_of(row, 10)?,
        },
        desired,
        actual: ActualState::from_stored(actual_text.as_deref()),
        created_at: timestamp_of(row, 13)?,
        updated_at: timestamp_of(row, 14)?,
        last_reconciled_at: timestamp_of(row, 15)?,
        last_transition_at: timestamp_of(row, 16)?,
        next_attempt_at: timestamp_of(row, 17)?,
        reconcile_error: text_of(row, 18)?,
        generation: row.get(19)?,
        observed_generation: row.get(20)?,
        attempts: row.get::<_, i64>(21)?.clamp(0, u32::MAX as i64) as u32,
        last_action: last_action.and_then(|a| a.parse().ok()),
        nodes_ready: row.get(23)?,
        nodes_total: row.get(24)?,
        add_ons: AddOnStatus::from_stored(
            text_of(row, 25)?.as_deref(),
            text_of(row, 26)?.as_deref(),
        ),
    }))
}

/// Every row, newest first.
pub fn list(conn: &Connection) -> StoreResult<Vec<Parsed>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM clusters ORDER BY created_at DESC, id DESC"
    ))?;
    let rows = stmt.query_map([], from_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn by_name(conn: &Connection, name: &ClusterName) -> StoreResult<Option<Parsed>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM clusters WHERE name = ?1"))?;
    Ok(stmt.query_row([name.as_str()], from_row).optional()?)
}

pub fn by_id(conn: &Connection, id: i64) -> StoreResult<Option<Parsed>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM clusters WHERE id = ?1"))?;
    Ok(stmt.query_row([id], from_row).optional()?)
}

/// Is the store readable at all? (The health check.)
pub fn ping(conn: &Connection) -> StoreResult<()> {
    conn.prepare_cached("SELECT id FROM clusters LIMIT 1")?
        .query_row([], |_| Ok(()))
        .optional()?;
    Ok(())
}

/// Another live cluster that holds `port`: its name and the field it holds it in.
/// Node ports are cluster-internal (each cluster has its own NodePort space), so a node
/// port only conflicts with another cluster's host ports, not with its node port.
pub fn port_holder(
    conn: &Connection,
    port: u16,
    is_node_port: bool,
) -> StoreResult<Option<(String, &'static str)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name,
                CASE WHEN pf_port = ?1 THEN 'pf_port'
                     WHEN http_port = ?1 THEN 'http_port'
                     WHEN https_port = ?1 THEN 'https_port'
                     ELSE 'node_port' END
           FROM clusters
          WHERE desired_state IS NOT 'absent'
            AND (pf_port = ?1 OR http_port = ?1 OR https_port = ?1
                 OR (?2 = 0 AND node_port = ?1))
          LIMIT 1",
    )?;
    let found = stmt
        .query_row(params![port, is_node_port], |r| {
            Ok((text_of(r, 0)?.unwrap_or_default(), r.get::<_, String>(1)?))
        })
        .optional()?;
    Ok(found.map(|(name, field)| {
        let field = match field.as_str() {
            "pf_port" => "pf_port",
            "http_port" => "http_port",
            "https_port" => "https_port",
            _ => "node_port",
        };
        (name, field)
    }))
}

/// Ports between `first` and `last` that some live cluster holds, in any field.
pub fn ports_in_use(conn: &Connection, first: u16, last: u16) -> StoreResult<Vec<u16>> {
    let mut stmt = conn.prepare_cached(
        "SELECT pf_port FROM clusters WHERE desired_state IS NOT 'absent' AND pf_port BETWEEN ?1 AND ?2
         UNION SELECT http_port FROM clusters WHERE desired_state IS NOT 'absent' AND http_port BETWEEN ?1 AND ?2
         UNION SELECT https_port FROM clusters WHERE desired_state IS NOT 'absent' AND https_port BETWEEN ?1 AND ?2
         UNION SELECT node_port FROM clusters WHERE desired_state IS NOT 'absent' AND node_port BETWEEN ?1 AND ?2",
    )?;
    let ports = stmt
        .query_map(params![first, last], |r| r.get::<_, i64>(0))?
        .filter_map(|p| p.ok().and_then(|p| u16::try_from(p).ok()))
        .collect();
    Ok(ports)
}

pub fn insert(tx: &Transaction, spec: &ClusterSpec) -> StoreResult<i64> {
    let now = time::now_text();
    // The change number is taken here rather than by the insert trigger, which would
    // rewrite the new row right after inserting it (the trigger leaves a row alone whose
    // number is the counter's).
    let seq = next_change_seq(tx)?;
    let id = id_for_insert(tx, "clusters")?;
    tx.prepare_cached(
        "INSERT INTO clusters (name, provider, subnet, node_port, pf_port, http_port, https_port,
                               register_portainer, haproxy_route, register_argocd,
                               status, desired_state, actual_state, created_at, updated_at,
                               last_transition_at, change_seq, id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'unknown', 'present', 'unknown', ?11, ?11, ?11, ?12, ?13)",
    )?
    .execute(params![
        spec.name.as_str(),
        spec.provider.as_str(),
        spec.cluster_subnet,
        spec.node_port,
        spec.pf_port,
        spec.http_port,
        spec.https_port,
        spec.register_portainer,
        spec.haproxy_route,
        spec.register_argocd,
        now,
        seq,
        id,
    ])?;
    Ok(tx.last_insert_rowid())
}

/// The id for a new row of `table`: none (AUTOINCREMENT numbers it), unless a row holds
/// the largest id SQLite allows (another program moved it there). AUTOINCREMENT then has no
/// id left, and every insert failed with SQLITE_FULL, reported as "the disk is full", while
/// health stayed 200. The id AUTOINCREMENT would have given had that row not been moved is
/// taken instead: above every id it ever handed out (so no old run of a deleted cluster is
/// taken for the new one's) and every other row's. A look-up by id, cheap enough for every
/// insert.
pub(super) fn id_for_insert(tx: &Transaction, table: &'static str) -> StoreResult<Option<i64>> {
    let exhausted = tx
        .prepare_cached(&format!(
            "SELECT 1 FROM {table} WHERE id = 9223372036854775807"
        ))?
        .exists([])?;
    if !exhausted {
        return Ok(None);
    }
    let next: i64 = tx
        .prepare_cached(&format!(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0),
                        COALESCE((SELECT MAX(id) FROM {table} WHERE id < 9223372036854775807), 0))"
        ))?
        .query_row([], |r| r.get(0))?;
    // None when the ids below are used up as well: SQLite's own error stands then.
    Ok(next.checked_add(1).filter(|id| *id < i64::MAX))
}

/// Advances the change counter and returns its new value (see migration 0006).
fn next_change_seq(tx: &Transaction) -> StoreResult<i64> {
    Ok(tx
        .prepare_cached("UPDATE change_counter SET value = value + 1 RETURNING value")?
        .query_row([], |r| r.get(0))?)
}

/// Declares a desired state: the user's word, even when it is the state already declared.
/// The trigger bumps the generation (and resets the backoff) when the state changed; either
/// way a retry that waits for its backoff is brought forward and the row enters the change
/// feed, so the reconciler looks at it now. Returns false when no such cluster exists.
pub fn declare(tx: &Transaction, name: &ClusterName, desired: DesiredState) -> StoreResult<bool> {
    let seq = next_change_seq(tx)?;
    let n = tx
        .prepare_cached(
            "UPDATE clusters SET desired_state = ?2, next_attempt_at = NULL, change_seq = ?3
              WHERE name = ?1",
        )?
        .execute(params![name.as_str(), desired.as_str(), seq])?;
    Ok(n > 0)
}

/// Rows declared since change number `after`: the counter's value now (the next cursor)
/// and the ids of the rows numbered after `after` and up to it. A number the counter never
/// handed out (text, or a value another program wrote) lies above the counter and is
/// never read, so it cannot move the cursor past later declarations.
pub fn changed_since(conn: &Connection, after: i64) -> StoreResult<(i64, Vec<i64>)> {
    let top = change_counter(conn)?;
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM clusters WHERE change_seq > ?1 AND change_seq <= ?2 ORDER BY change_seq",
    )?;
    let ids = stmt
        .query_map([after, top], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok((top, ids))
}

/// The newest change number handed out (the feed's numbers only grow).
pub fn change_counter(conn: &Connection) -> StoreResult<i64> {
    Ok(conn.query_row("SELECT value FROM change_counter", [], |r| r.get(0))?)
}

/// Rows whose change number kindler did not hand out (text, NULL, above the counter, and
/// also zero, negative or fractional: kindler's numbers are whole and start at 1): other
/// programs wrote them. Such a row is still reconciled; it is renumbered (see [`renumber`])
/// so that its later changes are seen in order. (A number at or below 0 hid a declaration
/// written with it from the feed until the next rescan.)
pub fn odd_change_numbers(conn: &Connection) -> StoreResult<Vec<(i64, String, String)>> {
    let top = change_counter(conn)?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, change_seq FROM clusters
          WHERE change_seq > ?1 OR change_seq <= 0 OR change_seq IS NULL
             OR typeof(change_seq) <> 'integer'",
    )?;
    let rows = stmt
        .query_map([top], |r| {
            Ok((
                r.get(0)?,
                text_of(r, 1)?.unwrap_or_default(),
                text_of(r, 2)?.unwrap_or_else(|| "NULL".into()),
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Gives a row the next change number (a repair of a value another program wrote).
pub fn renumber(tx: &Transaction, id: i64) -> StoreResult<()> {
    let seq = next_change_seq(tx)?;
    tx.prepare_cached("UPDATE clusters SET change_seq = ?2 WHERE id = ?1")?
        .execute(params![id, seq])?;
    Ok(())
}

/// An action begins: the cluster enters the action's in-progress state.
pub fn begin_action(tx: &Transaction, id: i64, action: Action) -> StoreResult<()> {
    let now = time::now_text();
    match action.in_progress_state() {
        Some(state) => tx
            .prepare_cached(
                "UPDATE clusters SET actual_state = ?2, status = ?2, last_action = ?3,
                        last_transition_at = CASE WHEN actual_state IS ?2 THEN last_transition_at ELSE ?4 END
                  WHERE id = ?1",
            )?
            .execute(params![id, state.as_str(), action.as_str(), now])?,
        None => tx
            .prepare_cached("UPDATE clusters SET last_action = ?2 WHERE id = ?1")?
            .execute(params![id, action.as_str()])?,
    };
    Ok(())
}

/// What an ended action leaves on the cluster's row.
#[derive(Debug, Clone)]
pub struct ActionResult {
    pub actual: ActualState,
    pub error: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub observed_generation: i64,
    /// Set when the action ended with a successful probe; otherwise the row keeps its values.
    pub probe: Option<ProbeReport>,
}

pub fn finish_action(tx: &Transaction, id: i64, r: &ActionResult) -> StoreResult<()> {
    let now = time::now_text();
    let nodes = r.probe.and_then(|p| p.nodes);
    tx.prepare_cached(
        "UPDATE clusters
            SET actual_state = ?2, status = ?2, reconcile_error = ?3, attempts = ?4,
                next_attempt_at = ?5, observed_generation = MAX(observed_generation, ?6),
                last_reconciled_at = ?7,
                last_transition_at = CASE WHEN actual_state IS ?2 THEN last_transition_at ELSE ?7 END,
                nodes_ready = COALESCE(?8, nodes_ready), nodes_total = COALESCE(?9, nodes_total),
                portainer_status = COALESCE(?10, portainer_status),
                argocd_status = COALESCE(?11, argocd_status),
                updated_at = ?7
          WHERE id = ?1",
    )?
    .execute(params![
        id,
        r.actual.as_str(),
        r.error,
        r.attempts,
        r.next_attempt_at,
        r.observed_generation,
        now,
        nodes.map(|n| n.0),
        nodes.map(|n| n.1),
        r.probe.map(|p| p.add_ons.portainer.as_str()),
        r.probe.map(|p| p.add_ons.argocd.as_str()),
    ])?;
    Ok(())
}

/// Removes a row by its name as stored (valid or not), whatever its state; returns its id.
pub fn forget(tx: &Transaction, name: &str) -> StoreResult<Option<i64>> {
    Ok(tx
        .prepare_cached("DELETE FROM clusters WHERE name = ?1 RETURNING id")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

/// Removes a deleted cluster's row, unless it was declared again meanwhile.
pub fn remove_if_absent(tx: &Transaction, id: i64) -> StoreResult<bool> {
    let n = tx
        .prepare_cached("DELETE FROM clusters WHERE id = ?1 AND desired_state = 'absent'")?
        .execute([id])?;
    Ok(n > 0)
}

/// Marks a cluster whose action was interrupted by a stop of the daemon: its state stays
/// in progress, so the next start redoes the action, and the error says what happened.
/// Only while the row still is in the action's state `in_progress`: a cluster that got
/// further since keeps its state and its error.
pub fn mark_interrupted(
    tx: &Transaction,
    id: i64,
    in_progress: ActualState,
    message: &str,
) -> StoreResult<bool> {
    let n = tx
        .prepare_cached(
            "UPDATE clusters SET reconcile_error = ?2, updated_at = ?3
              WHERE id = ?1 AND actual_state = ?4",
        )?
        .execute(params![id, message, time::now_text(), in_progress.as_str()])?;
    Ok(n > 0)
}

/// What the scheduler needs to know of every row at start-up.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub id: i64,
    pub actual: ActualState,
    pub desired: Option<String>,
    pub last_reconciled_at: Option<String>,
}

pub fn schedule_rows(conn: &Connection) -> StoreResult<Vec<ScheduleRow>> {
    let mut stmt =
        conn.prepare("SELECT id, actual_state, desired_state, last_reconciled_at FROM clusters")?;
    let rows = stmt
        .query_map([], |r| {
            Ok(ScheduleRow {
                id: r.get(0)?,
                actual: ActualState::from_stored(text_of(r, 1)?.as_deref()),
                desired: text_of(r, 2)?,
                last_reconciled_at: timestamp_of(r, 3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Counts by actual state and the earliest scheduled retry, for the status line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub by_state: Vec<(String, i64)>,
    pub next_retry: Option<(String, String)>,
}

pub fn summary(conn: &Connection) -> StoreResult<Summary> {
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(actual_state, 'unknown'), COUNT(*) FROM clusters GROUP BY 1 ORDER BY 1",
    )?;
    let by_state = stmt
        .query_map([], |r| Ok((text_of(r, 0)?.unwrap_or_default(), r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let next_retry = conn
        .prepare_cached(
            "SELECT name, next_attempt_at FROM clusters WHERE next_attempt_at IS NOT NULL
              ORDER BY next_attempt_at LIMIT 1",
        )?
        .query_row([], |r| {
            Ok((
                text_of(r, 0)?.unwrap_or_default(),
                timestamp_of(r, 1)?.unwrap_or_default(),
            ))
        })
        .optional()?;
    Ok(Summary {
        by_state,
        next_retry,
    })
}
