//! `kindler serve`: wires the store, the API, the reconciler, signals and systemd together,
//! and `kindler reconcile --once`, which shares the start-up.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use nix::fcntl::{Flock, FlockArg};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::api;
use crate::app::{App, AppRef};
use crate::config::{Loader, Settings};
use crate::fleet;
use crate::log::{self, ids, Event, Priority};
use crate::reconciler::{Mode, PassReport, Reconciler};
use crate::store::copy::{self, Copied};
use crate::store::postgres::connect;
use crate::store::{Database, LeaseAttempt, Store, StoreError};
use crate::systemd::{self, Listener};

/// Longest a reload may take to read the configuration.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A start-up failure, with the exit status it maps to.
pub struct Fatal {
    pub status: i32,
    pub message: String,
}

impl Fatal {
    fn new(status: i32, message: impl Into<String>) -> Self {
        Fatal {
            status,
            message: message.into(),
        }
    }
}

/// Holds the database's lock file for as long as it lives: one kindler acts on a
/// database at a time, so a `reconcile --once` cannot race a running daemon.
pub struct DatabaseLock {
    _lock: Flock<File>,
}

pub fn lock_database(db: &Path) -> Result<DatabaseLock, Fatal> {
    let path = lock_path(db);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Fatal::new(1, format!("cannot create {}: {e}", dir.display())))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Fatal::new(1, format!("cannot open {}: {e}", path.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(DatabaseLock { _lock: lock }),
        Err((_, _)) => Err(Fatal::new(
            1,
            format!(
                "another kindler is already working on {} (it holds {}); \
                 a running `kindler serve` reconciles continuously",
                db.display(),
                path.display()
            ),
        )),
    }
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    db.with_file_name(name)
}

/// The store the settings name, and for a file the lock that makes this kindler its only
/// user (a fleet's agents share PostgreSQL; the lease keeps them apart, see `fleet.rs`).
pub struct Opened {
    pub store: Store,
    _lock: Option<DatabaseLock>,
}

/// Opens the store (locking a file first), reporting the migrations applied. With `wait`,
/// a PostgreSQL server that cannot be reached yet is waited for until it is cancelled (the
/// daemon); without, that fails at once (the one-shot commands).
pub async fn open_store(
    settings: &Settings,
    wait: Option<&CancellationToken>,
) -> Result<Opened, Fatal> {
    let failed = |e: StoreError| Fatal::new(1, format!("{}: {e}", settings.database));
    let (store, applied, lock) = match &settings.database {
        Database::Sqlite(path) => {
            let lock = lock_database(path)?;
            let (store, applied) = Store::open_sqlite(path, &settings.host).map_err(failed)?;
            (store, applied, Some(lock))
        }
        Database::Postgres(url) => {
            let password = connect::password(settings.database_password_file.as_deref())
                .map_err(|e| Fatal::new(78, e))?;
            let (store, applied) = match wait {
                Some(stop) => open_postgres(url, password, &settings.host, stop).await,
                None => Store::open_postgres(url, password, &settings.host).await,
            }
            .map_err(failed)?;
            (store, applied, None)
        }
    };
    for m in applied {
        log::info(&format!(
            "database {}: applied migration {:04} ({})",
            settings.database, m.version, m.name
        ));
    }
    Ok(Opened { store, _lock: lock })
}

/// `kindler migrate --to URL`: copies the SQLite database the settings name (clusters and
/// history) into the PostgreSQL database at `url`, as the clusters of host `host`, after
/// bringing both schemas up to date. The file is locked meanwhile: no daemon may change it
/// under the copy. Returns what was copied.
pub async fn copy_to_postgres(settings: &Settings, url: &str) -> Result<Copied, Fatal> {
    let Database::Sqlite(path) = &settings.database else {
        return Err(Fatal::new(
            2,
            "migrate --to copies an SQLite database: set --database to its file, not to a \
             PostgreSQL URL",
        ));
    };
    if !matches!(Database::parse(url), Database::Postgres(_)) {
        return Err(Fatal::new(
            2,
            format!("--to needs a postgres:// URL, not {url:?}"),
        ));
    }
    // A mistyped path must not become an empty database that is copied as "nothing".
    if !path.is_file() {
        return Err(Fatal::new(
            1,
            format!("{}: no such database file to copy", path.display()),
        ));
    }
    let source = open_store(settings, None).await?;
    let password = connect::password(settings.database_password_file.as_deref())
        .map_err(|e| Fatal::new(78, e))?;
    let shown = connect::redact(url);
    let (target, applied) = Store::open_postgres(url, password, &settings.host)
        .await
        .map_err(|e| Fatal::new(1, format!("{shown}: {e}")))?;
    for m in applied {
        log::info(&format!(
            "database {shown}: applied migration {:04} ({})",
            m.version, m.name
        ));
    }
    let (Some(from), Some(to)) = (source.store.sqlite(), target.postgres()) else {
        unreachable!("the source is a file and the target a PostgreSQL database");
    };
    copy::sqlite_to_postgres(from, to, &settings.host)
        .await
        .map_err(|e| {
            Fatal::new(
                1,
                format!("cannot copy {} into {shown}: {e}", path.display()),
            )
        })
}

/// While PostgreSQL cannot be reached, another try after this, doubling up to the most.
const DATABASE_RETRY_FIRST: Duration = Duration::from_millis(250);
const DATABASE_RETRY_MOST: Duration = Duration::from_secs(10);

/// Connects to PostgreSQL, waiting for a server that cannot be reached (not started yet
/// at boot, restarting, failing over) rather than exiting into systemd's restart limit:
/// the wait is in STATUS and once in the journal, and systemd's start timeout is extended
/// while it lasts. Refusals (a wrong password, a missing database) end it at once.
async fn open_postgres(
    url: &str,
    password: Option<String>,
    host: &str,
    stop: &CancellationToken,
) -> Result<(Store, Vec<crate::store::Migration>), StoreError> {
    let mut retry = DATABASE_RETRY_FIRST;
    let mut said = false;
    loop {
        let error = match Store::open_postgres(url, password.clone(), host).await {
            Err(e) if e.is_unreachable() => e,
            done => {
                if said && done.is_ok() {
                    log::info(&format!("database {}: reached", connect::redact(url)));
                }
                return done;
            }
        };
        let why = format!(
            "waiting for the database {}: {error}; trying again in {}",
            connect::redact(url),
            humantime::format_duration(retry)
        );
        systemd::status(&why);
        systemd::extend_timeout(retry + Duration::from_secs(30));
        if !said {
            Event::new(Priority::Warning, why).emit();
            said = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(error),
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(DATABASE_RETRY_MOST);
    }
}

/// Runs the daemon until SIGTERM or SIGINT. `activated` are the sockets systemd passed.
pub async fn serve(
    loader: Loader,
    settings: Settings,
    activated: Vec<Listener>,
) -> Result<(), Fatal> {
    // Signals are caught from the start: a SIGTERM that arrives while the first request is
    // served must stop kindler the orderly way, not kill it.
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Fatal::new(1, format!("cannot handle signals: {e}")))?;
    let Some(opened) = open_store_or_stop(&settings, &mut signals).await? else {
        log::info("stopped while waiting for the database; kindler stopped");
        return Ok(());
    };
    let listeners = if activated.is_empty() {
        systemd::bind(settings.listen, settings.listen_unix.as_deref())
            .map_err(|e| Fatal::new(1, e.to_string()))?
    } else {
        activated
    };
    if listeners.is_empty() {
        return Err(Fatal::new(
            78,
            "nothing to listen on: no socket was passed and listen and listen_unix are empty",
        ));
    }
    let endpoints: Vec<String> = listeners.iter().map(Listener::describe).collect();
    warn_about_commands(&settings);
    let app = App::new(opened.store.clone(), settings);
    let _ = app.endpoints.set(endpoints.clone());

    let shutdown = app.shutdown.clone();
    let signals = tokio::spawn(handle_signals(
        signals,
        app.clone(),
        loader,
        shutdown.clone(),
    ));
    let api = tokio::spawn(api::serve(app.clone(), listeners, shutdown.clone()));
    let reconciler = tokio::spawn(Reconciler::new(app.clone(), Mode::Daemon).run(shutdown.clone()));
    let lease = tokio::spawn(fleet::hold_lease(app.clone(), shutdown.clone()));

    // The sockets are listening and the accept loops run; READY=1 once the API can also
    // read the store.
    if let Err(e) = api::health(&app).await {
        return Err(Fatal::new(1, format!("the store cannot be read: {e}")));
    }
    let summary = match app.store.summary().await {
        Ok(s) => systemd::status_line(&s, std::time::SystemTime::now()),
        Err(_) => "ready".into(),
    };
    app.health.set_summary(summary);
    systemd::ready(&app.health.status_line());
    Event::new(
        Priority::Notice,
        format!(
            "kindler {} ready on {}; database {}",
            env!("CARGO_PKG_VERSION"),
            endpoints.join(", "),
            app.store.describe()
        ),
    )
    .id(ids::DAEMON_READY)
    .emit();
    let watchdog =
        systemd::watchdog_interval().map(|every| tokio::spawn(watchdog(app.clone(), every)));

    shutdown.cancelled().await;
    let _ = api.await;
    let _ = reconciler.await;
    // The runs' ends are recorded (with this agent's fence): a successor may take over now.
    let lease_lost = lease.await.ok().and_then(Result::err);
    if lease_lost.is_none() {
        if let Err(e) = app.store.release_lease().await {
            log::warn(&format!("cannot give the host's lease up: {e}"));
        }
    }
    // Nothing of kindler's may still run when the runtime shuts down.
    for task in std::iter::once(signals).chain(watchdog) {
        task.abort();
        let _ = task.await;
    }
    if let Some(lost) = lease_lost {
        return Err(Fatal::new(1, lost));
    }
    log::info("kindler stopped");
    Ok(())
}

/// The daemon's store, waited for until a stop signal (`None` then). A SIGHUP meanwhile
/// changes nothing: the settings are read again once the daemon runs.
async fn open_store_or_stop(
    settings: &Settings,
    signals: &mut signal_hook_tokio::Signals,
) -> Result<Option<Opened>, Fatal> {
    let stop = CancellationToken::new();
    let open = open_store(settings, Some(&stop));
    tokio::pin!(open);
    loop {
        tokio::select! {
            opened = &mut open => {
                return match opened {
                    Err(_) if stop.is_cancelled() => Ok(None),
                    opened => opened.map(Some),
                };
            }
            Some(signal) = signals.next() => {
                if signal != SIGHUP {
                    stop.cancel();
                }
            }
        }
    }
}

/// `kindler reconcile --once`: one pass over the store, then exit.
pub async fn reconcile_once(settings: Settings) -> Result<PassReport, Fatal> {
    // Only `serve` and `migrate` create a database: a mistyped path here would otherwise
    // make a new, empty one and report a pass over nothing as a success.
    if settings.database.sqlite_path().is_some_and(|p| !p.exists()) {
        return Err(Fatal::new(
            1,
            format!(
                "there is no database at {}; kindler reconcile works on an existing one \
                 (kindler serve or kindler migrate creates it)",
                settings.database
            ),
        ));
    }
    let opened = open_store(&settings, None).await?;
    let ttl = settings.lease_ttl;
    let host = settings.host.clone();
    match opened.store.acquire_lease(ttl).await {
        Ok(LeaseAttempt::Acquired { .. }) => {}
        Ok(LeaseAttempt::HeldBy { agent, .. }) => {
            return Err(Fatal::new(
                1,
                format!("host {host} is held by a running kindler agent ({agent}); it reconciles continuously"),
            ))
        }
        Err(e) => return Err(Fatal::new(1, format!("cannot take the lease of host {host}: {e}"))),
    }
    let app = App::new(opened.store.clone(), settings);
    let shutdown = app.shutdown.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut signals) = signal_hook_tokio::Signals::new([SIGTERM, SIGINT]) {
            if signals.next().await.is_some() {
                log::warn("stopping: running actions are being ended");
                stop.cancel();
            }
        }
    });
    let report = Reconciler::new(app.clone(), Mode::OnePass)
        .run_once(shutdown)
        .await;
    let _ = app.store.release_lease().await;
    Ok(report)
}

async fn handle_signals(
    mut signals: signal_hook_tokio::Signals,
    app: AppRef,
    loader: Loader,
    shutdown: CancellationToken,
) {
    // A reload runs beside this loop, so that a stop is heard while it reads the file.
    let mut reloading: Option<AbortOnDropHandle<()>> = None;
    while let Some(signal) = signals.next().await {
        match signal {
            SIGHUP if reloading.as_ref().is_some_and(|r| !r.is_finished()) => log::warn(
                "SIGHUP: the previous reload is still reading the configuration; this one is skipped",
            ),
            SIGHUP => {
                let task = tokio::spawn(reload(app.clone(), loader.clone()));
                reloading = Some(AbortOnDropHandle::new(task));
            }
            _ if shutdown.is_cancelled() => force_stop(&app),
            _ => {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                systemd::stopping();
                Event::new(
                    Priority::Notice,
                    format!("{name} received: stopping (running actions are ended and redone at the next start; a second signal stops at once)"),
                )
                .id(ids::DAEMON_STOPPING)
                .emit();
                shutdown.cancel();
            }
        }
    }
}

/// A second SIGTERM/SIGINT: kill every action's processes outright and exit.
fn force_stop(app: &AppRef) -> ! {
    let targets = app.runs.targets();
    for t in &targets {
        t.signal(nix::sys::signal::Signal::SIGKILL);
    }
    log::warn(&format!(
        "second stop signal: killed the processes of {} running actions and exiting now; they are redone at the next start",
        targets.len()
    ));
    log::flush();
    std::process::exit(1)
}

/// Reads the configuration again (off the async workers, and for a bounded time: the file
/// may sit on a slow or hung file system) and applies it, or keeps the old one.
async fn reload(app: AppRef, loader: Loader) {
    let read = tokio::task::spawn_blocking(move || loader.load());
    let refused = |why: String| {
        Event::new(
            Priority::Error,
            format!("SIGHUP: the new configuration is refused, the old one stays: {why}"),
        )
        .id(ids::CONFIG_REJECTED)
        .emit();
    };
    let new = match tokio::time::timeout(RELOAD_TIMEOUT, read).await {
        Ok(Ok(Ok(settings))) => settings,
        Ok(Ok(Err(e))) => return refused(e.to_string()),
        Ok(Err(e)) => return refused(format!("reading it failed: {e}")),
        Err(_) => {
            return refused(format!(
                "reading it took longer than {}",
                humantime::format_duration(RELOAD_TIMEOUT)
            ))
        }
    };
    systemd::reloading();
    let mut new = new;
    // Settings that only apply at start-up keep their running values.
    for key in new.keep_start_up_values(&app.settings()) {
        log::warn(&format!(
            "{key} changed; this takes effect at the next start"
        ));
    }
    log::set_level(new.log_level);
    warn_about_commands(&new);
    app.replace_settings(new);
    app.wake.notify_one();
    Event::new(Priority::Notice, "configuration reloaded")
        .id(ids::CONFIG_RELOADED)
        .emit();
    systemd::ready(&app.health.status_line());
}

/// Pings systemd's watchdog while the reconciler loop turns and the API reaches the
/// store; a wedged loop stops the pings, and systemd restarts the daemon.
async fn watchdog(app: AppRef, interval: Duration) {
    let every = interval / 2;
    let mut warned = false;
    loop {
        tokio::time::sleep(every).await;
        // An idle loop turns once per poll_interval, which a reload may have changed.
        let tolerance = every.max(app.settings().poll_interval * 2);
        let loop_alive = app.heartbeat.age() <= tolerance;
        let api_alive = matches!(
            tokio::time::timeout(every, api::health(&app)).await,
            Ok(Ok(()))
        );
        if loop_alive && api_alive {
            systemd::watchdog();
            warned = false;
        } else if !warned {
            warned = true;
            log::error(&format!(
                "not pinging the watchdog: reconciler loop {} (last turn {:?} ago), API {}",
                if loop_alive { "alive" } else { "stalled" },
                app.heartbeat.age(),
                if api_alive {
                    "alive"
                } else {
                    "cannot reach the store"
                }
            ));
        }
    }
}

/// Logs commands that cannot be run as configured (they fail at use, but say so early).
fn warn_about_commands(settings: &Settings) {
    use crate::model::Action;
    use std::os::unix::fs::PermissionsExt;
    for action in [
        Action::Create,
        Action::Delete,
        Action::Start,
        Action::Stop,
        Action::Probe,
    ] {
        let cmd = settings.command(action);
        if !cmd.program.is_absolute() {
            continue; // looked up in PATH when run
        }
        match std::fs::metadata(&cmd.program) {
            Ok(m) if m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => log::warn(&format!(
                "{action} command {} is not executable",
                cmd.program.display()
            )),
            Err(e) => log::warn(&format!("{action} command {}: {e}", cmd.program.display())),
        }
    }
}
