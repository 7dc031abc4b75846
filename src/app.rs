//! What the API, the reconciler and the systemd glue share: the store, the current
//! settings, the wake-up bell, the runs in progress and the liveness heartbeat.

use std::collections::HashMap;

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::health::{Cause, Health};
use crate::output::Tail;
use crate::procs::Target;
use crate::store::{Store, StoreError, StoreResult};

pub type AppRef = Arc<App>;

pub struct App {
    pub store: Store,
    settings: RwLock<Arc<Settings>>,
    /// Rung by API writes so the reconciler acts at once instead of at its next poll.
    pub wake: Notify,
    /// Runs in progress, by run id: their output so far and their processes.
    pub live: Mutex<HashMap<i64, LiveRun>>,
    /// Changes with every output line of a run in progress (watched by the WebSocket).
    pub live_changed: Arc<tokio::sync::watch::Sender<()>>,
    /// The reconciler loop's last turn, for the watchdog.
    pub heartbeat: Heartbeat,
    /// Cancelled when the daemon begins to stop.
    pub shutdown: CancellationToken,
    /// Rendered API answers, current while the store's epoch has not moved.
    pub responses: ResponseCache,
    /// What keeps kindler from acting on declarations, if anything.
    pub health: Health,
    /// Clusters to look at now besides those of the change feed (a forgotten row).
    nudged: Mutex<Vec<i64>>,
}

#[derive(Clone)]
pub struct LiveRun {
    pub tail: Arc<Mutex<Tail>>,
    pub target: Arc<Mutex<Option<Target>>>,
    /// Told of every line added to `tail`.
    pub changed: Arc<tokio::sync::watch::Sender<()>>,
}

impl App {
    pub fn new(store: Store, settings: Settings) -> AppRef {
        Arc::new(App {
            store,
            settings: RwLock::new(Arc::new(settings)),
            wake: Notify::new(),
            live: Mutex::new(HashMap::new()),
            live_changed: Arc::new(tokio::sync::watch::Sender::new(())),
            heartbeat: Heartbeat::new(),
            shutdown: CancellationToken::new(),
            responses: ResponseCache::default(),
            health: Health::default(),
            nudged: Mutex::new(Vec::new()),
        })
    }

    /// Asks the reconciler to look at cluster `id` now.
    pub fn nudge(&self, id: i64) {
        self.nudged.lock().unwrap().push(id);
        self.wake.notify_one();
    }

    pub fn take_nudged(&self) -> Vec<i64> {
        std::mem::take(&mut *self.nudged.lock().unwrap())
    }

    /// Reports a write's outcome to health: a failed write means declarations may not be
    /// stored or acted on; the next write that succeeds ends that.
    pub fn note_write<T>(&self, result: &StoreResult<T>, what: &str) {
        match result {
            Ok(_) => self.health.resolve(Cause::StoreWrites),
            Err(e @ StoreError::FileReplaced(_)) => {
                self.health.report(Cause::DatabaseFile, e.to_string())
            }
            Err(e) => self
                .health
                .report(Cause::StoreWrites, format!("{what} failed: {e}")),
        }
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap().clone()
    }

    pub fn replace_settings(&self, new: Settings) {
        *self.settings.write().unwrap() = Arc::new(new);
    }

    /// Output lines of a run in progress, if it is one.
    pub fn live_lines(&self, run_id: i64) -> Option<Vec<String>> {
        let live = self.live.lock().unwrap();
        live.get(&run_id).map(|r| r.tail.lock().unwrap().lines())
    }

    /// The processes of every run in progress (for the forced stop).
    pub fn live_targets(&self) -> Vec<Target> {
        let live = self.live.lock().unwrap();
        live.values()
            .filter_map(|r| r.target.lock().unwrap().clone())
            .collect()
    }
}

/// JSON bodies of read-only answers, each with the store epoch it was rendered at. The
/// WebUI polls the same few URLs over and over; between changes they are served from here.
#[derive(Default)]
pub struct ResponseCache {
    entries: Mutex<HashMap<String, (u64, Bytes)>>,
}

impl ResponseCache {
    /// Distinct answers kept; past that the cache starts over.
    const CAPACITY: usize = 1024;

    pub fn get(&self, key: &str, epoch: u64) -> Option<Bytes> {
        let entries = self.entries.lock().unwrap();
        match entries.get(key) {
            Some((at, body)) if *at == epoch => Some(body.clone()),
            _ => None,
        }
    }

    pub fn put(&self, key: String, epoch: u64, body: Bytes) {
        let mut entries = self.entries.lock().unwrap();
        if entries.len() >= Self::CAPACITY && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, (epoch, body));
    }
}

/// A timestamp the reconciler loop refreshes on every turn.
pub struct Heartbeat {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Heartbeat {
    fn new() -> Self {
        Heartbeat {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn beat(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}
