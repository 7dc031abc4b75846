//! The store: desired state, observed state and the history of reconcile runs.
//!
//! [`Store`] is the boundary the API and the reconciler use: the operations the daemon
//! performs (create a cluster, declare, begin a run, record its end, read the change feed,
//! ...), each one transaction. Behind it is a backend: SQLite (`sqlite.rs`, the embedded
//! default, with the statements in `clusters.rs` and `runs.rs`), or PostgreSQL
//! (`postgres/`), which several agents share, one per host, each holding its host's
//! lease.

pub mod clusters;
pub mod copy;
mod identity;
mod migrate;
pub mod ports;
pub mod postgres;
mod row;
pub mod runs;
pub mod sqlite;
#[cfg(test)]
mod tests;
pub mod time;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Action, ActualState, ClusterName, ClusterSpec, DesiredState};
use clusters::{ClusterRecord, Parsed, RowUpdate, ScheduleRow, Summary};
pub use migrate::Migration;
pub use postgres::Postgres;
use runs::{NewRun, RunEnd, RunRecord, Unfinished};
pub use sqlite::Sqlite;
use sqlite::BUSY_TIMEOUT;

/// Why the store could not do what it was asked. Each variant's text is meant for the
/// user (the API answers it, health and the journal show it); the underlying error is its
/// `source()`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement, a transaction or a commit failed. Shared (`Arc`): a failed group commit
    /// answers every write of the group with it (see `writer.rs`).
    #[error("{}", describe_sqlite(.0))]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// The file at the database's path is no longer the one kindler has open (see
    /// [`identity`]): what kindler wrote now would not be found by its next start.
    #[error(
        "{0}; kindler no longer writes to its database, because its next start would not \
         find what it wrote: put the file back, or restart kindler to use the file now at \
         that path"
    )]
    FileReplaced(String),
    /// A migration's SQL failed; its transaction was rolled back, the file is unchanged.
    #[error("migration {version:04}_{name} failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        source: rusqlite::Error,
    },
    /// The file's schema was written by a newer kindler.
    #[error(
        "the database schema is at version {found}, newer than this kindler knows ({known}); \
         install a newer kindler"
    )]
    NewerSchema { found: i64, known: i64 },
    /// A file of the old backend whose `clusters` table lacks a column kindler needs.
    #[error(
        "the existing clusters table has no column {missing}; kindler cannot adopt it \
         (columns: {})",
        .columns.join(", ")
    )]
    NotAdoptable {
        missing: &'static str,
        columns: Vec<String>,
    },
    /// SQLite opened the file read-only (it does so without a word when it may not write).
    #[error("the database is read-only (check the permissions of the file and its directory)")]
    ReadOnly,
    /// The writer thread is gone (it panicked); no write can be made until a restart.
    #[error("the database writer has stopped")]
    WriterGone,
    /// The writer thread could not be started.
    #[error("cannot start the database writer thread: {0}")]
    WriterStart(#[source] std::io::Error),
    /// PostgreSQL refused a statement, or the connection to it broke.
    #[error("{}", describe_postgres(.0))]
    Postgres(#[source] Arc<tokio_postgres::Error>),
    /// No connection to PostgreSQL could be had: the server is down or cannot be reached.
    #[error("the database cannot be reached: {0}")]
    Unreachable(String),
    /// The `database` URL or the password cannot be used.
    #[error("{0}")]
    Config(String),
    /// This agent no longer holds its host's lease (another agent took it over): it may
    /// not record anything about the host's clusters.
    #[error(
        "this agent no longer holds the lease of host {host} (its fence number {held}, \
         the lease's now {}): another agent took over, and this one's writes are refused",
        .current.map(|c| c.to_string()).unwrap_or_else(|| "none".into())
    )]
    Fenced {
        host: String,
        held: i64,
        current: Option<i64>,
    },
    /// A file-system call about the database's files failed.
    #[error("cannot {doing} {}: {source}", .path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StoreError {
    /// The database could not be reached (rather than refusing what was asked): worth
    /// waiting for.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Unreachable(_) => true,
            StoreError::Postgres(e) => match e.as_db_error() {
                // The server is starting up, shutting down or out of connections.
                Some(db) => matches!(db.code().code(), "57P03" | "57P01" | "53300"),
                None => true,
            },
            _ => false,
        }
    }
}

/// What a failed statement means to the user: a lock held by another program and a full
/// disk are the failures worth telling apart.
fn describe_sqlite(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => format!(
            "the database is locked by another program (kindler waited {}s)",
            BUSY_TIMEOUT.as_secs()
        ),
        Some(C::DiskFull) => format!("the disk is full ({e})"),
        Some(C::ReadOnly) => format!("the database cannot be written ({e})"),
        _ => format!("database error: {e}"),
    }
}

/// What a PostgreSQL error means to the user: a server that cannot be reached is told
/// apart from a statement it refused.
fn describe_postgres(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("database error: {}: {}", db.code().code(), db.message()),
        None if e.is_closed() => "the connection to the database was lost".into(),
        None => format!("the database cannot be reached: {e}"),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres(Arc::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Unreachable(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A cluster to create, as the API checked it.
#[derive(Debug, Clone)]
pub struct NewCluster {
    pub spec: ClusterSpec,
    /// Host port fields the client left out (their defaults may move; see [`ports`]).
    pub omitted: Vec<&'static str>,
    pub ranges: ports::Ranges,
    /// The host the client asked for; `None` leaves the choice to kindler.
    pub host: Option<String>,
}

/// A cluster created: its row, its spec with the ports it got, and its host.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: i64,
    pub spec: ClusterSpec,
    pub host: String,
    pub reassigned: Vec<ports::Reassigned>,
}

/// What a task's status is derived from, for one cluster name and action.
#[derive(Debug, Clone)]
pub struct TaskLookup {
    pub row: Option<ClusterRecord>,
    /// The newest run of the action asked about.
    pub own: Option<RunRecord>,
    /// The newest run of the cluster (by its row), whatever its action.
    pub latest: Option<RunRecord>,
}

/// The end of a run, to be recorded (see [`Store::record_end`]).
#[derive(Debug, Clone)]
pub struct RunEnding {
    pub run_id: i64,
    pub cluster_id: i64,
    pub action: Action,
    /// Runs of this cluster and action kept in the history.
    pub keep: u32,
    pub end: RunEnd,
}

/// What recording a run's end did to the cluster's row.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The row's declared and observed state before the update; `None` when the row is
    /// gone or cannot be read (then nothing was done to it).
    pub before: Option<(DesiredState, ActualState)>,
    /// What was done to the row.
    pub update: Option<RowUpdate>,
    pub removed: bool,
}

impl Recorded {
    fn of(current: &ClusterRecord, update: RowUpdate, removed: bool) -> Recorded {
        Recorded {
            before: Some((current.desired, current.actual)),
            update: Some(update),
            removed,
        }
    }
}

/// A handle to the store, whichever backend holds it; cheap to clone.
///
/// Each operation is one transaction: it happens whole or not at all.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    epoch: Arc<Epoch>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Sqlite),
    Postgres(Postgres),
}

/// Runs `$body` with `$b` bound to the backend.
macro_rules! on_backend {
    ($self:ident, $b:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite($b) => $body,
            Backend::Postgres($b) => $body,
        }
    };
}

/// Where the data is: the `database` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file on this host (the default).
    Sqlite(PathBuf),
    /// A `postgres://` URL: a database shared by the agents of several hosts.
    Postgres(String),
}

impl Database {
    /// A URL with the postgres scheme names a PostgreSQL database; anything else is a file.
    pub fn parse(text: &str) -> Database {
        let text = text.trim();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Database::Postgres(text.to_owned())
        } else {
            Database::Sqlite(PathBuf::from(text))
        }
    }

    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match self {
            Database::Sqlite(path) => Some(path),
            Database::Postgres(_) => None,
        }
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&postgres::connect::redact(url)),
        }
    }
}

/// How asking for a host's lease went.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseAttempt {
    /// This agent holds the lease now, with this fence number.
    Acquired { fence: i64 },
    /// Another agent holds it, for at most this long unless it renews it.
    HeldBy { agent: String, expires_in: Duration },
}

/// A host of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    pub name: String,
    /// Its agent holds its lease.
    pub reachable: bool,
    pub agent: String,
    pub fence: i64,
    pub lease_expires_at: Option<std::time::SystemTime>,
    pub clusters: i64,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and brings its schema up to
    /// date. Returns the store and the migrations that were applied now.
    pub fn open(path: &std::path::Path) -> StoreResult<(Store, Vec<Migration>)> {
        Store::open_sqlite(path, &local_host_name())
    }

    /// [`Store::open`], with the clusters shown on host `host`.
    pub fn open_sqlite(path: &std::path::Path, host: &str) -> StoreResult<(Store, Vec<Migration>)> {
        let epoch = Arc::new(Epoch::default());
        let (sqlite, applied) = Sqlite::open(path, host, epoch.clone())?;
        let store = Store {
            backend: Backend::Sqlite(sqlite),
            epoch,
        };
        Ok((store, applied))
    }

    /// Connects to the PostgreSQL database at `url` as the agent of `host`, and brings its
    /// schema up to date. The lease is not taken yet (see [`Store::acquire_lease`]).
    pub async fn open_postgres(
        url: &str,
        password: Option<String>,
        host: &str,
    ) -> StoreResult<(Store, Vec<Migration>)> {
        let epoch = Arc::new(Epoch::default());
        let (pg, applied) = Postgres::open(url, password, host, epoch.clone()).await?;
        let store = Store {
            backend: Backend::Postgres(pg),
            epoch,
        };
        Ok((store, applied))
    }

    /// The SQLite backend, when it is the one (for what only a file has: its path, its
    /// identity, statements of tests).
    pub fn sqlite(&self) -> Option<&Sqlite> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s),
            Backend::Postgres(_) => None,
        }
    }

    /// The PostgreSQL backend, when it is the one.
    pub fn postgres(&self) -> Option<&Postgres> {
        match &self.backend {
            Backend::Postgres(p) => Some(p),
            Backend::Sqlite(_) => None,
        }
    }

    /// True for a store several hosts share.
    pub fn is_fleet(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Where the data is, for messages.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path().display().to_string(),
            Backend::Postgres(p) => p.describe(),
        }
    }

    /// Resolves when this host's part of the change feed moved without a local write (a
    /// notification from another agent's API); never for SQLite, whose writes are all
    /// this daemon's or noticed by [`Store::external_change`].
    pub async fn feed_moved(&self) {
        match &self.backend {
            Backend::Sqlite(_) => std::future::pending().await,
            Backend::Postgres(p) => p.feed_moved().await,
        }
    }

    /// Takes this host's lease if it is free (SQLite: the file lock is the lease; always).
    pub async fn acquire_lease(&self, ttl: Duration) -> StoreResult<LeaseAttempt> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(LeaseAttempt::Acquired { fence: 0 }),
            Backend::Postgres(p) => p.acquire_lease(ttl).await,
        }
    }

    /// Extends this host's lease; false when another agent took it over.
    pub async fn renew_lease(&self, ttl: Duration) -> StoreResult<bool> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(true),
            Backend::Postgres(p) => p.renew_lease(ttl).await,
        }
    }

    /// Gives this host's lease up (a clean stop).
    pub async fn release_lease(&self) -> StoreResult<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(p) => p.release_lease().await,
        }
    }

    /// Resolves once this agent may act on its host's clusters.
    pub async fn until_lease_held(&self) {
        match &self.backend {
            Backend::Sqlite(_) => {}
            Backend::Postgres(p) => p.until_lease_held().await,
        }
    }

    /// The hosts of the fleet (SQLite: none; its one host is implied).
    pub async fn hosts(&self) -> StoreResult<Vec<HostInfo>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(p) => p.hosts().await,
        }
    }

    /// The store's epoch (see [`Epoch`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Moves the epoch: something the answers show changed outside the store's rows (a
    /// host's lease ran out).
    pub fn touch(&self) {
        self.epoch.bump();
    }

    /// Changes whenever the epoch moves, for watchers that sleep until the store changes.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<()> {
        self.epoch.watch()
    }

    /// Is the store where kindler left it? (SQLite: the file at the path is the one kindler
    /// has open.)
    pub fn check_file(&self) -> StoreResult<()> {
        on_backend!(self, b => b.check_file())
    }

    /// True when another program changed the store since the last call.
    pub async fn external_change(&self) -> StoreResult<bool> {
        on_backend!(self, b => b.external_change().await)
    }

    /// Can the store be read at all? (The health check.)
    pub async fn ping(&self) -> StoreResult<()> {
        on_backend!(self, b => b.ping().await)
    }

    /// An empty write: tells when a failing store takes writes again.
    pub async fn probe_write(&self) -> StoreResult<()> {
        on_backend!(self, b => b.probe_write().await)
    }

    /// Every cluster row, newest first.
    pub async fn list(&self) -> StoreResult<Vec<Parsed>> {
        on_backend!(self, b => b.list().await)
    }

    pub async fn by_name(&self, name: &ClusterName) -> StoreResult<Option<Parsed>> {
        self.by_stored_name(name.as_str()).await
    }

    /// The row named `name` as it is stored, whether or not it is a valid name (another
    /// program may have written `My_Cluster`).
    pub async fn by_stored_name(&self, name: &str) -> StoreResult<Option<Parsed>> {
        on_backend!(self, b => b.by_stored_name(name).await)
    }

    pub async fn by_id(&self, id: i64) -> StoreResult<Option<Parsed>> {
        on_backend!(self, b => b.by_id(id).await)
    }

    /// A cluster's row and its newest `limit` runs, newest first (the row may be gone).
    pub async fn history(
        &self,
        name: &ClusterName,
        limit: u32,
    ) -> StoreResult<(Option<Parsed>, Vec<RunRecord>)> {
        on_backend!(self, b => b.history(name, limit).await)
    }

    /// For each (name, action): what a task's status is derived from, read together.
    pub async fn task_lookups(
        &self,
        wanted: Vec<(ClusterName, Action)>,
    ) -> StoreResult<Vec<TaskLookup>> {
        on_backend!(self, b => b.task_lookups(wanted).await)
    }

    /// Inserts a cluster, declared present, after checking its name and claiming its ports
    /// (see [`ports`]); refused when the name or a chosen port is taken.
    pub async fn create_cluster(
        &self,
        new: NewCluster,
    ) -> StoreResult<Result<Created, ports::Refusal>> {
        on_backend!(self, b => b.create_cluster(new).await)
    }

    /// Declares a desired state (see [`clusters::declare`]); false when no such cluster.
    pub async fn declare(&self, name: &ClusterName, desired: DesiredState) -> StoreResult<bool> {
        on_backend!(self, b => b.declare(name, desired).await)
    }

    /// Removes a row by its name as stored, whatever its state; returns its id.
    pub async fn forget(&self, name: &str) -> StoreResult<Option<i64>> {
        on_backend!(self, b => b.forget(name).await)
    }

    /// A run begins: its history row (with the process tag, before any process exists)
    /// and the cluster's in-progress state. Returns the run's id.
    pub async fn begin_run(&self, run: NewRun) -> StoreResult<i64> {
        on_backend!(self, b => b.begin_run(run).await)
    }

    /// Records how a run ended: its history row, pruned to `keep` runs, and what `decide`
    /// (the state machine) makes of the cluster's row as it is now, which it is handed
    /// inside the transaction (it may have been declared anew while the run went on).
    pub async fn record_end<D>(&self, ending: RunEnding, decide: D) -> StoreResult<Recorded>
    where
        D: FnOnce(&ClusterRecord) -> RowUpdate + Send + 'static,
    {
        on_backend!(self, b => b.record_end(ending, decide).await)
    }

    /// A run a previous daemon left without an end: marked interrupted, and its cluster
    /// (when given, and still in the action's in-progress state) says so.
    pub async fn mark_interrupted(
        &self,
        run_id: i64,
        note: String,
        cluster: Option<(i64, ActualState)>,
    ) -> StoreResult<()> {
        on_backend!(self, b => b.mark_interrupted(run_id, note, cluster).await)
    }

    /// The change counter and what the scheduler needs of every row.
    pub async fn schedule(&self) -> StoreResult<(i64, Vec<ScheduleRow>)> {
        on_backend!(self, b => b.schedule().await)
    }

    /// See [`clusters::changed_since`].
    pub async fn changed_since(&self, cursor: i64) -> StoreResult<(i64, Vec<i64>)> {
        on_backend!(self, b => b.changed_since(cursor).await)
    }

    /// See [`clusters::odd_change_numbers`].
    pub async fn odd_change_numbers(&self) -> StoreResult<Vec<(i64, String, String)>> {
        on_backend!(self, b => b.odd_change_numbers().await)
    }

    /// See [`clusters::renumber`].
    pub async fn renumber(&self, id: i64) -> StoreResult<()> {
        on_backend!(self, b => b.renumber(id).await)
    }

    pub async fn summary(&self) -> StoreResult<Summary> {
        on_backend!(self, b => b.summary().await)
    }

    /// Clusters by desired and actual state (for `/metrics` and `/api/status`).
    pub async fn state_counts(&self) -> StoreResult<clusters::StateCounts> {
        on_backend!(self, b => b.state_counts().await)
    }

    /// Clusters whose next attempt lies after `now`.
    pub async fn in_backoff(&self, now: time::Timestamp) -> StoreResult<i64> {
        on_backend!(self, b => b.in_backoff(now).await)
    }

    /// The change feed's newest number.
    pub async fn change_counter(&self) -> StoreResult<i64> {
        on_backend!(self, b => b.change_counter().await)
    }

    /// Runs that never recorded their end: their daemon died or was stopped mid-action.
    pub async fn unfinished_runs(&self) -> StoreResult<Vec<Unfinished>> {
        on_backend!(self, b => b.unfinished_runs().await)
    }

    /// Drops runs that ended longer than `max_age` ago.
    pub async fn prune_old(&self, max_age: Duration) -> StoreResult<usize> {
        on_backend!(self, b => b.prune_old(max_age).await)
    }

    /// Shares a running run's output so far with the fleet, so that other agents' APIs
    /// show it while it runs (PostgreSQL; an SQLite store's one daemon shows its runs from
    /// memory, and this does nothing).
    pub async fn share_output(&self, run_id: i64, lines: &[String]) -> StoreResult<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(p) => p.share_output(run_id, &lines.join("\n")).await,
        }
    }
}

/// The machine's host name: the default `host`.
pub fn local_host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Bumped after every commit kindler makes and whenever another program's commit is
/// noticed: anything derived from the store at one epoch is current until it moves.
#[derive(Default)]
pub struct Epoch {
    value: AtomicU64,
    moved: tokio::sync::watch::Sender<()>,
}

impl Epoch {
    fn get(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    pub(crate) fn bump(&self) {
        self.value.fetch_add(1, Ordering::Release);
        self.moved.send_replace(());
    }

    fn watch(&self) -> tokio::sync::watch::Receiver<()> {
        self.moved.subscribe()
    }
}
