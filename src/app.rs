//! What the API, the reconciler and the systemd glue share: the store, the current
//! settings, the wake-up bell, the runs in progress (through the narrow
//! handle of `live`), health, the clock and the liveness heartbeat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Settings;
use crate::health::{Cause, Health};
use crate::live::LiveRuns;
use crate::store::{Store, StoreError, StoreResult};

pub type AppRef = Arc<App>;

pub struct App {
    pub store: Store,
    settings: RwLock<Arc<Settings>>,
    /// Rung by API writes so the reconciler acts at once instead of at its next poll.
    pub wake: Notify,
    /// The runs in progress (the reconciler adds them; the API shows their output).
    pub runs: LiveRuns,
    /// The reconciler loop's last turn, for the watchdog.
    pub heartbeat: Heartbeat,
    /// Cancelled when the daemon begins to stop.
    pub shutdown: CancellationToken,
    /// What keeps kindler from acting on declarations, if anything.
    pub health: Health,
    /// Wall-clock time as decisions see it.
    pub clock: Clock,
    /// Clusters to look at now besides those of the change feed (a forgotten row).
    nudged: Mutex<Vec<i64>>,
    /// When this daemon started, and the sockets it serves (set once listening), for
    /// `GET /api/status`.
    pub started_at: std::time::SystemTime,
    pub endpoints: std::sync::OnceLock<Vec<String>>,
}

impl App {
    pub fn new(store: Store, settings: Settings) -> AppRef {
        App::with_clock(store, settings, Clock::System)
    }

    /// An App whose decisions read `clock` (tests let it follow a paused tokio clock).
    pub fn with_clock(store: Store, settings: Settings, clock: Clock) -> AppRef {
        Arc::new(App {
            store,
            settings: RwLock::new(Arc::new(settings)),
            wake: Notify::new(),
            runs: LiveRuns::default(),
            heartbeat: Heartbeat::new(),
            shutdown: CancellationToken::new(),
            health: Health::default(),
            clock,
            nudged: Mutex::new(Vec::new()),
            started_at: std::time::SystemTime::now(),
            endpoints: std::sync::OnceLock::new(),
        })
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap().clone()
    }

    pub fn replace_settings(&self, new: Settings) {
        *self.settings.write().unwrap() = Arc::new(new);
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
