//! The SQLite store: desired state, observed state and the history of reconcile runs.
//!
//! One writer connection (SQLite allows one writer at a time anyway), on a thread of its
//! own that commits waiting writes together, and a few reader connections; WAL lets the
//! readers go on while the writer commits. Reads run inside `block_in_place`, so a slow
//! disk never stalls the threads that serve HTTP.

pub mod clusters;
mod identity;
mod migrate;
pub mod runs;
pub mod time;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use migrate::Migration;

/// How long a statement waits for another writer (a `sqlite3` user, say) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections kept open; more readers wait for one to come back.
const READERS: usize = 4;

#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    /// The file at the database's path is no longer the one kindler has open (see
    /// [`identity`]): what kindler wrote now would not be found by its next start.
    FileReplaced(String),
    /// The blocking task could not run (the runtime is shutting down).
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Sqlite(e) => match e.sqlite_error_code() {
                Some(C::DatabaseBusy | C::DatabaseLocked) => write!(
                    f,
                    "the database is locked by another program (kindler waited {}s)",
                    BUSY_TIMEOUT.as_secs()
                ),
                Some(C::DiskFull) => write!(f, "the disk is full ({e})"),
                Some(C::ReadOnly) => write!(f, "the database cannot be written ({e})"),
                _ => write!(f, "database error: {e}"),
            },
            StoreError::FileReplaced(what) => write!(
                f,
                "{what}; kindler no longer writes to its database, because its next start \
                 would not find what it wrote: put the file back, or restart kindler to use \
                 the file now at that path"
            ),
            StoreError::Unavailable(e) => write!(f, "database unavailable: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: writer::Writer,
    readers: Mutex<Vec<Connection>>,
    /// Last `PRAGMA data_version` seen on the writer connection (see `external_change`).
    data_version: Mutex<i64>,
    epoch: Arc<Epoch>,
    /// The files kindler opened, to notice when they are removed or replaced.
    identity: Arc<identity::Identity>,
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    /// Returns the store and the migrations that were applied now.
    pub fn open(path: &Path) -> StoreResult<(Store, Vec<Migration>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut writer = connect(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        // Small pages for a new file (an existing one keeps its own): rows are small and
        // are updated one at a time, and every changed page is written whole to the log.
        // SQLite opens a file it may not write read-only, without a word; kindler would then
        // answer reads and fail every declaration.
        if writer.is_readonly("main")? {
            return Err(StoreError::Unavailable(
                "the database is read-only (check the permissions of the file and its directory)"
                    .into(),
            ));
        }
        writer.pragma_update(None, "page_size", 1024)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        let applied = migrate::run(&mut writer)?;
        let version = data_version(&writer)?;
        let identity = Arc::new(identity::Identity::of(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot look at {}: {e}", path.display()))
        })?);
        let epoch = Arc::new(Epoch::default());
        let store = Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: writer::Writer::start(writer, epoch.clone(), identity.clone())?,
                readers: Mutex::new(Vec::new()),
                data_version: Mutex::new(version),
                epoch,
                identity,
            }),
        };
        Ok((store, applied))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The store's epoch (see [`Inner::epoch`]).
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.get()
    }

    /// Changes whenever the epoch moves, for watchers that sleep until the store changes.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<()> {
        self.inner.epoch.watch()
    }

    /// Runs `f` on a reader connection, off the async worker threads.
    pub async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let store = self.clone();
        blocking(move || store.read_blocking(f)).await
    }

    /// Runs `f` in a write transaction on the writer thread (see `writer.rs`): its changes
    /// are committed, or none of them is.
    pub async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction) -> StoreResult<T> + Send + 'static,
    {
        self.inner.writer.write(f).await
    }

    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let pooled = self.inner.readers.lock().unwrap().pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                // A new connection opens whatever is at the path now: not a stranger's file.
                self.check_file()?;
                let c = connect(&self.inner.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                // Readers see little of the file at once; keep their caches small.
                c.pragma_update(None, "cache_size", -512)?;
                c
            }
        };
        let result = f(&conn);
        let mut readers = self.inner.readers.lock().unwrap();
        if readers.len() < READERS {
            readers.push(conn);
        }
        result
    }

    /// Is the file at the database's path still the one kindler has open?
    pub fn check_file(&self) -> StoreResult<()> {
        self.inner
            .identity
            .check()
            .map_err(StoreError::FileReplaced)
    }

    /// True when another program committed to the database since the last call.
    ///
    /// `PRAGMA data_version` changes only for commits made by *other* connections; all of
    /// kindler's own writes go through the connection asked here, so they do not count.
    pub async fn external_change(&self) -> StoreResult<bool> {
        let now = self.inner.writer.data_version().await?;
        let mut seen = self.inner.data_version.lock().unwrap();
        let changed = now != *seen;
        *seen = now;
        if changed {
            self.inner.epoch.bump();
        }
        Ok(changed)
    }
}

/// Bumped after every commit kindler makes and whenever another program's commit is
/// noticed: anything derived from the store at one epoch is current until it moves.
#[derive(Default)]
pub(crate) struct Epoch {
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

fn connect(path: &Path, flags: OpenFlags) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL makes NORMAL durable against crashes of the process; only power loss can undo
    // the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn data_version(conn: &Connection) -> StoreResult<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

async fn blocking<T, F>(f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    // block_in_place needs the multi-threaded runtime (the daemon's). On a current-thread
    // runtime (tests with a paused clock) there is no other worker to hand tasks to: the
    // read simply runs here.
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
