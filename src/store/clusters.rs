//! The `clusters` table: declared spec, desired state and what the reconciler observed.

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::row::{self, RowReader, Unreadable};
use super::time::Timestamp;
use super::StoreResult;
use crate::model::{
    defaults, is_ipv4_cidr, Action, ActualState, AddOnStatus, ClusterName, ClusterSpec,
    DesiredState, ProbeReport, Provider,
};

/// One row of `clusters`, parsed.
///
/// A timestamp column whose value is no time at all (text like `'soon'`, a number beyond
/// year 9999 such as 1e300 or microseconds) is read as `None`: the row stays valid, the
/// API shows `null`, and the reconciler treats it as unset (no backoff to wait for, no
/// resync done). kindler writes its own times over such values as it acts.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRecord {
    pub id: i64,
    pub spec: ClusterSpec,
    pub desired: DesiredState,
    pub actual: ActualState,
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    pub last_reconciled_at: Option<Timestamp>,
    pub last_transition_at: Option<Timestamp>,
    pub next_attempt_at: Option<Timestamp>,
    pub reconcile_error: Option<String>,
    pub generation: i64,
    pub observed_generation: i64,
    pub attempts: u32,
    pub last_action: Option<Action>,
    pub nodes_ready: Option<i64>,
    pub nodes_total: Option<i64>,
    /// As the last successful probe reported them.
    pub add_ons: AddOnStatus,
    /// The host the cluster lives on, in a fleet sharing PostgreSQL; `None` in an embedded
    /// store, whose clusters are all on the host kindler runs on.
    pub host: Option<FleetHost>,
}

/// A cluster's host in a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetHost {
    pub name: String,
    /// Its agent holds the host's lease: it acts on the cluster. When false nobody does
    /// (local clusters cannot move) until the agent is back.
    pub reachable: bool,
}

#[cfg(test)]
impl ClusterRecord {
    /// A cluster `dev` (k3d, the WebUI's ports, generation 1, no times) for the unit tests of
    /// what is decided about rows.
    pub fn sample(desired: DesiredState, actual: ActualState) -> ClusterRecord {
        ClusterRecord {
            id: 1,
            spec: ClusterSpec {
                name: ClusterName::parse("dev").unwrap(),
                provider: Provider::K3d,
                node_port: 30080,
                pf_port: 19001,
                http_port: 18090,
                https_port: 18443,
                cluster_subnet: None,
                register_portainer: true,
                haproxy_route: true,
                register_argocd: true,
            },
            desired,
            actual,
            created_at: None,
            updated_at: None,
            last_reconciled_at: None,
            last_transition_at: None,
            next_attempt_at: None,
            reconcile_error: None,
            generation: 1,
            observed_generation: 0,
            attempts: 0,
            last_action: None,
            nodes_ready: None,
            nodes_total: None,
            add_ons: AddOnStatus::UNKNOWN,
            host: None,
        }
    }
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

fn from_row(row: &Row) -> rusqlite::Result<Parsed> {
    row::read(row, cluster)
}

/// Reads a row of `clusters` (selected with [`COLUMNS`]). Other programs write this table
/// with the `sqlite3` command, and SQLite keeps whatever type they wrote (`pf_port = ''`,
/// `created_at = strftime('%s')`). A value kindler needs and cannot read (a name that is
/// not a name, a port that is not one, a generation that is not a number) makes the row an
/// [`InvalidRow`], reported and left alone, rather than an error that would fail every
/// query touching the table; what is only shown (nodes, add-ons, times) is read as unknown.
pub(super) fn cluster(r: &RowReader) -> Parsed {
    let id = r.key("id");
    let raw_name = r.text("name").unwrap_or_default();
    let invalid = |reason: String| InvalidRow {
        id,
        name: raw_name.clone(),
        reason,
    };
    let unreadable = |e: Unreadable| invalid(e.to_string());
    let name = ClusterName::parse(&raw_name).map_err(|e| invalid(e.to_string()))?;
    let provider = (r.text("provider").unwrap_or_default())
        .parse::<Provider>()
        .map_err(|e| invalid(format!("provider {e}")))?;
    // An empty value (a shell variable that was not set) means the default port.
    let port = |column, default| match r.integer(column) {
        Ok(None) => Ok(default),
        Ok(Some(p)) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(unreadable(r.unreadable(column, "a port (1–65535)"))),
    };
    // An unset flag is on, as the column's default has it.
    let flag = |column| Ok::<_, InvalidRow>(r.flag(column).map_err(unreadable)?.unwrap_or(true));
    let desired = match r.text("desired_state").filter(|t| !t.trim().is_empty()) {
        None => DesiredState::Present,
        Some(t) => t
            .parse()
            .map_err(|e| invalid(format!("desired_state {e}")))?,
    };
    // The subnet goes to every script (KINDLER_CLUSTER_SUBNET): held to the API's rule. (A
    // blob with a NUL byte once made every command of the cluster fail to start.)
    let subnet = r.text("subnet").filter(|s| !s.trim().is_empty());
    if let Some(s) = subnet.as_deref().filter(|s| !is_ipv4_cidr(s)) {
        return Err(invalid(format!(
            "subnet {s:?} is not an IPv4 CIDR like 10.42.0.0/16"
        )));
    }
    let time = |column| r.timestamp(column).ok().flatten();
    let count = |column| r.integer(column).ok().flatten();
    Ok(ClusterRecord {
        id,
        spec: ClusterSpec {
            name,
            provider,
            node_port: port("node_port", defaults::NODE_PORT)?,
            pf_port: port("pf_port", defaults::PF_PORT)?,
            http_port: port("http_port", defaults::HTTP_PORT)?,
            https_port: port("https_port", defaults::HTTPS_PORT)?,
            cluster_subnet: subnet,
            register_portainer: flag("register_portainer")?,
            haproxy_route: flag("haproxy_route")?,
            register_argocd: flag("register_argocd")?,
        },
        desired,
        actual: ActualState::from_stored(r.text("actual_state").as_deref()),
        created_at: time("created_at"),
        updated_at: time("updated_at"),
        last_reconciled_at: time("last_reconciled_at"),
        last_transition_at: time("last_transition_at"),
        next_attempt_at: time("next_attempt_at"),
        reconcile_error: r.text("reconcile_error"),
        generation: r.required_integer("generation").map_err(unreadable)?,
        observed_generation: r
            .required_integer("observed_generation")
            .map_err(unreadable)?,
        // Clamped below u32::MAX: the next attempt's number must still be a number.
        attempts: (r.required_integer("attempts").map_err(unreadable)?)
            .clamp(0, u32::MAX as i64 - 1) as u32,
        last_action: r.text("last_action").and_then(|a| a.parse().ok()),
        nodes_ready: count("nodes_ready"),
        nodes_total: count("nodes_total"),
        add_ons: AddOnStatus::from_stored(
            r.text("portainer_status").as_deref(),
            r.text("argocd_status").as_deref(),
        ),
        host: None,
    })
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
    by_stored_name(conn, name.as_str())
}

/// The row named `name` as it is stored, whether or not it is a valid name (another
/// program may have written `My_Cluster`).
pub fn by_stored_name(conn: &Connection, name: &str) -> StoreResult<Option<Parsed>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM clusters WHERE name = ?1"))?;
    Ok(stmt.query_row([name], from_row).optional()?)
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
                     ELSE 'node_port' END AS field
           FROM clusters
          WHERE desired_state IS NOT 'absent'
            AND (pf_port = ?1 OR http_port = ?1 OR https_port = ?1
                 OR (?2 = 0 AND node_port = ?1))
          LIMIT 1",
    )?;
    let found = stmt
        .query_row(params![port, is_node_port], |r| {
            Ok((
                row::read(r, |r| r.text("name").unwrap_or_default())?,
                r.get::<_, String>("field")?,
            ))
        })
        .optional()?;
    Ok(found.map(|(name, field)| (name, super::ports::field_name(&field))))
}

/// Ports between `first` and `last` that some live cluster holds, in any field.
pub fn ports_in_use(conn: &Connection, first: u16, last: u16) -> StoreResult<Vec<u16>> {
    let mut stmt = conn.prepare_cached(
        "SELECT pf_port AS port FROM clusters WHERE desired_state IS NOT 'absent' AND pf_port BETWEEN ?1 AND ?2
         UNION SELECT http_port FROM clusters WHERE desired_state IS NOT 'absent' AND http_port BETWEEN ?1 AND ?2
         UNION SELECT https_port FROM clusters WHERE desired_state IS NOT 'absent' AND https_port BETWEEN ?1 AND ?2
         UNION SELECT node_port FROM clusters WHERE desired_state IS NOT 'absent' AND node_port BETWEEN ?1 AND ?2",
    )?;
    let ports = stmt
        .query_map(params![first, last], |r| r.get::<_, i64>("port"))?
        .filter_map(|p| p.ok().and_then(|p| u16::try_from(p).ok()))
        .collect();
    Ok(ports)
}

pub fn insert(tx: &Transaction, spec: &ClusterSpec) -> StoreResult<i64> {
    let now = Timestamp::now();
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
///
/// Two statements, not `UPDATE … RETURNING`: SQLite collects RETURNING rows in an
/// ephemeral table whose page cache (128 KiB) is allocated and freed on every call, and the
/// free trims the writer thread's heap, so each declaration paid for page faults; that
/// made POSTs a third slower (BENCHMARKS.md, measurement 2).
fn next_change_seq(tx: &Transaction) -> StoreResult<i64> {
    tx.prepare_cached("UPDATE change_counter SET value = value + 1")?
        .execute([])?;
    Ok(tx
        .prepare_cached("SELECT value FROM change_counter")?
        .query_row([], |r| r.get("value"))?)
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
        .query_map([after, top], |r| r.get("id"))?
        .collect::<Result<_, _>>()?;
    Ok((top, ids))
}

/// The newest change number handed out (the feed's numbers only grow).
pub fn change_counter(conn: &Connection) -> StoreResult<i64> {
    Ok(conn
        .prepare_cached("SELECT value FROM change_counter")?
        .query_row([], |r| r.get("value"))?)
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
            row::read(r, |r| {
                (
                    r.key("id"),
                    r.text("name").unwrap_or_default(),
                    r.text("change_seq").unwrap_or_else(|| "NULL".into()),
                )
            })
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
    let now = Timestamp::now();
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
    pub next_attempt_at: Option<Timestamp>,
    pub observed_generation: i64,
    /// Set when the action ended with a successful probe; otherwise the row keeps its values.
    pub probe: Option<ProbeReport>,
}

pub fn finish_action(tx: &Transaction, id: i64, r: &ActionResult) -> StoreResult<()> {
    let now = Timestamp::now();
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

/// What the end of a run does to its cluster's row, as the state machine decided it on
/// the row as it was then (see `Store::record_end`).
#[derive(Debug, Clone)]
pub enum RowUpdate {
    /// The cluster is deleted: the row goes (unless it was declared again meanwhile).
    Remove,
    /// The action is over, for good or ill.
    Settle(ActionResult),
    /// The action did not finish: the row keeps its in-progress state, so that it is redone,
    /// and says why.
    Interrupted {
        in_progress: ActualState,
        note: String,
    },
    /// Nothing to record on the row.
    Keep,
}

/// Carries a [`RowUpdate`] out on row `id`; true when it removed the row.
pub fn apply(tx: &Transaction, id: i64, update: &RowUpdate) -> StoreResult<bool> {
    match update {
        RowUpdate::Remove => remove_if_absent(tx, id),
        RowUpdate::Settle(result) => finish_action(tx, id, result).map(|()| false),
        RowUpdate::Interrupted { in_progress, note } => {
            mark_interrupted(tx, id, *in_progress, note).map(|_| false)
        }
        RowUpdate::Keep => Ok(false),
    }
}

/// Removes a row by its name as stored (valid or not), whatever its state; returns its id.
pub fn forget(tx: &Transaction, name: &str) -> StoreResult<Option<i64>> {
    Ok(tx
        .prepare_cached("DELETE FROM clusters WHERE name = ?1 RETURNING id")?
        .query_row([name], |r| r.get("id"))
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
        .execute(params![id, message, Timestamp::now(), in_progress.as_str()])?;
    Ok(n > 0)
}

/// What the scheduler needs to know of every row at start-up.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub id: i64,
    pub actual: ActualState,
    /// `None` when the stored value is not a desired state (the row is looked at, and
    /// reported, when it is due).
    pub desired: Option<DesiredState>,
    pub last_reconciled_at: Option<Timestamp>,
}

pub fn schedule_rows(conn: &Connection) -> StoreResult<Vec<ScheduleRow>> {
    let mut stmt =
        conn.prepare("SELECT id, actual_state, desired_state, last_reconciled_at FROM clusters")?;
    let rows = stmt
        .query_map([], |r| row::read(r, schedule_row))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Reads `id, actual_state, desired_state, last_reconciled_at`.
pub(super) fn schedule_row(r: &RowReader) -> ScheduleRow {
    ScheduleRow {
        id: r.key("id"),
        actual: ActualState::from_stored(r.text("actual_state").as_deref()),
        // NULL (or '') is the column's default, as in a full row.
        desired: match r.text("desired_state") {
            None => Some(DesiredState::Present),
            Some(text) => text.parse().ok(),
        },
        last_reconciled_at: r.timestamp("last_reconciled_at").ok().flatten(),
    }
}

/// Counts by actual state and the earliest scheduled retry, for the status line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// In the order of [`ActualState::ALL`]; a value kindler does not know counts as unknown,
    /// as the API shows it.
    pub by_state: Vec<(ActualState, i64)>,
    /// The cluster and its time; `None` when the value there is no time (the retry is due).
    pub next_retry: Option<(String, Option<Timestamp>)>,
}

pub fn summary(conn: &Connection) -> StoreResult<Summary> {
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(actual_state, 'unknown') AS state, COUNT(*) AS n
           FROM clusters GROUP BY 1 ORDER BY 1",
    )?;
    let counts = stmt
        .query_map([], |r| {
            Ok((row::read(r, |r| r.text("state"))?, r.get::<_, i64>("n")?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let next_retry = conn
        .prepare_cached(
            "SELECT name, next_attempt_at FROM clusters WHERE next_attempt_at IS NOT NULL
              ORDER BY next_attempt_at LIMIT 1",
        )?
        .query_row([], |r| {
            row::read(r, |r| {
                (
                    r.text("name").unwrap_or_default(),
                    r.timestamp("next_attempt_at").ok().flatten(),
                )
            })
        })
        .optional()?;
    Ok(Summary::of(counts, next_retry))
}

impl Summary {
    /// From the count of rows by stored actual state, and the earliest retry.
    pub(super) fn of(
        counts: Vec<(Option<String>, i64)>,
        next_retry: Option<(String, Option<Timestamp>)>,
    ) -> Summary {
        let mut by_kind = std::collections::HashMap::new();
        for (state, n) in counts {
            *by_kind
                .entry(ActualState::from_stored(state.as_deref()))
                .or_insert(0) += n;
        }
        let by_state = ActualState::ALL
            .into_iter()
            .filter_map(|s| by_kind.get(&s).map(|n| (s, *n)))
            .collect();
        Summary {
            by_state,
            next_retry,
        }
    }
}

/// Clusters counted by declared and observed state, for the metrics and the status
/// endpoint. A value kindler does not know counts as the API shows it (`unknown`, and
/// `present` for a desired state).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateCounts {
    /// (desired, actual, clusters, of them failing: their last attempt failed).
    pub groups: Vec<(DesiredState, ActualState, i64, i64)>,
}

impl StateCounts {
    pub fn total(&self) -> i64 {
        self.groups.iter().map(|g| g.2).sum()
    }

    pub fn failing(&self) -> i64 {
        self.groups.iter().map(|g| g.3).sum()
    }
}

/// Counts the clusters by state: one pass over the table (about 2 ms for 10,000 rows on the
/// benchmark machine; the API keeps the answer until the store changes).
pub fn state_counts(conn: &Connection) -> StoreResult<StateCounts> {
    let mut stmt = conn.prepare_cached(
        "SELECT desired_state AS d, actual_state AS a, COUNT(*) AS n,
                SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) AS failing
           FROM clusters GROUP BY 1, 2",
    )?;
    let groups = stmt
        .query_map([], |r| {
            let (d, a) = row::read(r, |r| (r.text("d"), r.text("a")))?;
            Ok((
                d,
                a,
                r.get::<_, i64>("n")?,
                r.get::<_, Option<i64>>("failing")?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StateCounts::of(groups))
}

impl StateCounts {
    /// From the stored (desired, actual) pairs as either backend groups them: values
    /// kindler does not know merge into `present` and `unknown`.
    pub fn of(
        stored: impl IntoIterator<Item = (Option<String>, Option<String>, i64, Option<i64>)>,
    ) -> StateCounts {
        let mut groups: Vec<(DesiredState, ActualState, i64, i64)> = Vec::new();
        for (d, a, n, failing) in stored {
            let desired = d
                .and_then(|d| d.parse().ok())
                .unwrap_or(DesiredState::Present);
            let actual = ActualState::from_stored(a.as_deref());
            let failing = failing.unwrap_or(0);
            match groups.iter_mut().find(|g| g.0 == desired && g.1 == actual) {
                Some(g) => {
                    g.2 += n;
                    g.3 += failing;
                }
                None => groups.push((desired, actual, n, failing)),
            }
        }
        StateCounts { groups }
    }
}

/// Clusters whose next attempt lies after `now` (waiting in backoff); uses the index on
/// `next_attempt_at`.
pub fn in_backoff(conn: &Connection, now: Timestamp) -> StoreResult<i64> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*) AS n FROM clusters
              WHERE next_attempt_at IS NOT NULL AND next_attempt_at > ?1",
        )?
        .query_row([now], |r| r.get("n"))?)
}
