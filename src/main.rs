//! The `kindler` command: its subcommands and their exit statuses. Everything else is in
//! the library (src/lib.rs).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use kindler::config::{self, Loader, SettingArgs};
use kindler::daemon::{self, Fatal};
use kindler::{log, systemd};

/// Exit status for a configuration that cannot be used (sysexits' EX_CONFIG); the unit
/// file does not restart on it.
const EX_CONFIG: i32 = 78;

#[derive(Parser)]
#[command(
    name = "kindler",
    version,
    about = "Declarative reconciler for local k3d and kind clusters, as a systemd service",
    long_about = "kindler keeps the clusters you declare over its HTTP API in SQLite and makes \
                  them exist by running create/delete/start/stop scripts, retrying failures \
                  with backoff. Settings come from the TOML file, KINDLER_* variables and \
                  flags, in that order of precedence (lowest first)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: serve the API and reconcile continuously.
    #[command(after_help = SERVE_NOTES)]
    Serve {
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// Make one reconcile pass over the store and exit (1 if an action failed).
    Reconcile {
        /// Required: act on every cluster once, ignoring backoff timers, then exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate {
        #[command(flatten)]
        settings: SettingArgs,
    },
}

const SERVE_NOTES: &str = "\
Sockets: under systemd socket activation kindler serves the passed sockets (a TCP one named
\"http\", a unix one named \"api\"); otherwise it binds --listen and --listen-unix.

Signals: SIGTERM or SIGINT stop gracefully (running scripts are ended and redone at the next
start; a second signal stops at once). SIGHUP reloads the configuration.

Exit status: 0 after a stop, 1 on errors, 78 when the configuration cannot be used.

Logs go to the journal under systemd (journalctl -u kindler), else to stderr.";

fn main() {
    private_files();
    // A setting given twice takes the last value, as users of flags expect.
    let matches = Cli::command()
        .mut_subcommands(|sub| sub.args_override_self(true))
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let status = match cli.command {
        Command::Serve { settings } => serve(Loader::new(settings)),
        Command::Reconcile { once, settings } => reconcile(once, Loader::new(settings)),
        Command::Migrate { settings } => migrate(Loader::new(settings)),
    };
    log::flush();
    std::process::exit(status)
}

/// Files kindler creates (the database, its -wal, -shm and lock files) are not for every
/// user of the host: group and others lose write, others lose read, whatever umask kindler
/// was started with (the packaged unit sets the same, UMask=0027).
fn private_files() {
    use nix::sys::stat::{umask, Mode};
    let started_with = umask(Mode::from_bits_truncate(0o077));
    umask(started_with | Mode::from_bits_truncate(0o027));
}

fn load(loader: &Loader) -> Result<config::Settings, Fatal> {
    loader.load().map_err(|e| Fatal {
        status: EX_CONFIG,
        message: format!("configuration error: {e}"),
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_keep_alive(std::time::Duration::from_secs(10))
        .thread_name("kindler")
        .enable_all()
        .build()
        .expect("cannot start the async runtime")
}

fn report(result: Result<i32, Fatal>) -> i32 {
    match result {
        Ok(status) => status,
        Err(fatal) => {
            log::error(&fatal.message);
            fatal.status
        }
    }
}

fn serve(loader: Loader) -> i32 {
    // Sockets are taken (and LISTEN_* removed from the environment) while the process
    // still has a single thread.
    let activated = match systemd::take_activated_sockets() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot use the sockets passed by systemd: {e}");
            return 1;
        }
    };
    systemd::raise_fd_limit();
    report((|| {
        let settings = load(&loader)?;
        log::init(settings.log_target, settings.log_level);
        let runtime = runtime();
        let served = runtime.block_on(daemon::serve(loader, settings, activated));
        // A reload may still wait for a file that does not answer; it does not hold up exit.
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        served?;
        Ok(0)
    })())
}

fn reconcile(once: bool, loader: Loader) -> i32 {
    if !once {
        eprintln!("kindler reconcile needs --once; `kindler serve` reconciles continuously");
        return 2;
    }
    report((|| {
        let settings = load(&loader)?;
        log::init(config::LogTarget::Stderr, settings.log_level);
        let pass = runtime().block_on(daemon::reconcile_once(settings))?;
        log::info(&format!(
            "reconcile pass done: {} actions succeeded, {} failed",
            pass.succeeded, pass.failed
        ));
        Ok(if pass.failed == 0 { 0 } else { 1 })
    })())
}

fn migrate(loader: Loader) -> i32 {
    report((|| {
        let settings = load(&loader)?;
        log::init(config::LogTarget::Stderr, settings.log_level);
        // Not under a running daemon (open_store locks a file): a newer schema would change
        // its tables beneath it. PostgreSQL's migrations take an advisory lock instead.
        runtime().block_on(daemon::open_store(&settings))?;
        log::info(&format!("database {} is up to date", settings.database));
        Ok(0)
    })())
}
