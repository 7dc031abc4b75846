//! The SQLite store: desired state, observed state and the history of reconcile runs.
//!
//! One writer connection (SQLite allows one writer at a time anyway), on a thread of its
//! own that commits waiting writes together, and a few reader connections; WAL lets the
//! readers go on while the writer commits. Reads run inside `block_in_place`, so a slow
//! disk never stalls the threads that serve HTTP.

pub mod clusters;
mod identity;
mod migrate;
mod row;
pub mod runs;
#[cfg(test)]
mod tests;
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
    /// A file-system call about the database's files failed.
    #[error("cannot {doing} {}: {source}", .path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
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

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
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
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                doing: "create",
                path: dir.to_owned(),
                source,
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
            return Err(StoreError::ReadOnly);
        }
        writer.pragma_update(None, "page_size", 1024)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        let applied = migrate::run(&mut writer)?;
        let version = data_version(&writer)?;
        let identity = Arc::new(
            identity::Identity::of(path).map_err(|source| StoreError::Io {
                doing: "look at",
                path: path.to_owned(),
                source,
            })?,
        );
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
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get("data_version"))?)
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
