//! The `kindler` command: its subcommands and their exit statuses. Everything else is in
//! the library (src/lib.rs).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use kindler::cli::{self, ServerArg};
use kindler::config::{self, Loader, MigrateSettingArgs, PassSettingArgs, SettingArgs};
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
    long_about = "kindler keeps the local Kubernetes clusters (k3d or kind) you declare: \
                  `kindler serve` is the daemon (the package runs it as kindler.service); \
                  the other commands talk to it over its API: declare clusters, watch \
                  them, read their history.",
    after_help = TOP_NOTES,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the clusters: state, age, ports, the next retry or the last error.
    #[command(visible_alias = "list", after_help = CLIENT_NOTES)]
    Ls {
        #[command(flatten)]
        args: cli::ListArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show one cluster: every field, its last runs and, if it failed, why.
    #[command(after_help = CLIENT_NOTES)]
    Get {
        #[command(flatten)]
        args: cli::GetArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Declare a new cluster; kindler creates it (--wait follows the create live).
    #[command(after_help = WAIT_NOTES)]
    Create {
        #[command(flatten)]
        args: cli::CreateArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Declare a cluster absent; kindler deletes it (protected clusters are refused).
    #[command(after_help = WAIT_NOTES)]
    Delete {
        #[command(flatten)]
        args: cli::NameWaitArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Declare a stopped cluster running again; kindler starts it.
    #[command(after_help = WAIT_NOTES)]
    Start {
        #[command(flatten)]
        args: cli::NameWaitArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Declare a cluster stopped; kindler stops it (it keeps existing).
    #[command(after_help = WAIT_NOTES)]
    Stop {
        #[command(flatten)]
        args: cli::NameWaitArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print a run's output (the latest run by default; the last lines kindler keeps).
    #[command(after_help = CLIENT_NOTES)]
    Logs {
        #[command(flatten)]
        args: cli::LogsArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List a cluster's runs: action, outcome, exit status, duration, when.
    #[command(after_help = CLIENT_NOTES)]
    History {
        #[command(flatten)]
        args: cli::HistoryArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show the daemon: version, database, sockets, clusters by state, the next retry
    /// (exit 1 while it is degraded).
    #[command(after_help = CLIENT_NOTES)]
    Status {
        #[command(flatten)]
        args: cli::StatusArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Run the daemon: serve the API and reconcile continuously.
    #[command(after_help = SERVE_NOTES)]
    Serve {
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// Make one reconcile pass over the store and exit (1 if an action failed).
    #[command(after_help = PASS_NOTES)]
    Reconcile {
        /// Required: act on every cluster once, ignoring backoff timers, then exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        settings: PassSettingArgs,
    },
    /// Create or upgrade the database schema, then exit; with --to, copy an SQLite
    /// database into PostgreSQL.
    #[command(after_help = MIGRATE_NOTES)]
    Migrate {
        /// Copy the SQLite database (--database) into this PostgreSQL database, as the
        /// clusters of --host: their states, history and times, in one transaction.
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        #[command(flatten)]
        settings: MigrateSettingArgs,
    },
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    #[command(after_help = COMPLETION_NOTES)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (kindler.8 and one per command) into DIR.
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

const TOP_NOTES: &str = "\
Clients (ls, get, create, delete, start, stop, logs, history, status) reach kindler at
--server URL or KINDLER_SERVER; otherwise the unix socket /run/kindler/api.sock when it
exists and can be opened, else http://127.0.0.1:8765.

Exit status of the clients: 0 done; 1 kindler refused the request, or the action failed;
2 a usage error; 3 kindler cannot be reached, or --wait timed out.
See kindler(8), `kindler COMMAND --help`, and /usr/share/doc/kindler/README.Debian.";

const CLIENT_NOTES: &str = "\
Exit status: 0 done; 1 kindler refused the request; 2 a usage error (a bad name is caught
before anything is sent); 3 kindler cannot be reached (systemctl status kindler).
Colour only on a terminal, and never when NO_COLOR is set.";

const WAIT_NOTES: &str = "\
Without --wait the command returns once kindler stored the declaration; kindler acts on it
by itself (kindler get NAME shows how far it is). With --wait it follows the action: the
script's output as it comes, a progress line on a terminal, then the outcome.

kindler retries a failed action by itself, with backoff, until it succeeds. --wait stops at
the first failed attempt (exit 1, with the error); --keep-waiting waits through the retries.

Exit status: 0 the cluster is as declared; 1 kindler refused the request, or an attempt
failed; 2 a usage error; 3 --timeout passed, or kindler cannot be reached.";

const SERVE_NOTES: &str = "\
Sockets: under systemd socket activation kindler serves the passed sockets (a TCP one named
\"http\", a unix one named \"api\"); otherwise it binds --listen and --listen-unix.
Every socket serves the API, /metrics (Prometheus) and /ws/tasks.

Signals: SIGTERM or SIGINT stop gracefully (running scripts are ended and redone at the next
start; a second signal stops at once). SIGHUP reloads the configuration.

Exit status: 0 after a stop; 1 on errors (also after a second stop signal); 2 for a usage
error; 78 when the configuration cannot be used (systemd does not restart on it).

Logs go to the journal under systemd (journalctl -u kindler), else to stderr.";

const PASS_NOTES: &str = "\
Only one kindler works on a database at a time: this refuses to run beside a running
daemon. On a packaged host run it as the service's user: sudo -u kindler kindler ...
Settings the command does not use (ports, sockets) may still be in the file; they are read
and checked, and ignored.

Exit status: 0 done; 1 an action failed, or another kindler holds the database; 2 for a
usage error; 78 when the configuration cannot be used.";

const MIGRATE_NOTES: &str = "\
Only one kindler works on a database at a time: this refuses to run beside a running
daemon. On a packaged host run it as the service's user: sudo -u kindler kindler ...

Moving a host to a fleet's PostgreSQL database: stop kindler, then
  sudo -u kindler kindler migrate --to postgres://kindler@db.example/kindler
(the password from --database-password-file or the kindler-db-password credential), set
database = \"postgres://...\" in kindler.toml and start kindler again. The copy is refused,
with nothing written, when a row of the file cannot be read or the PostgreSQL database
already holds this host's clusters or clusters of the same names. The file is left as it was.

Exit status: 0 done; 1 the copy or migration failed, or another kindler holds the database;
2 for a usage error; 78 when the configuration cannot be used.";

const COMPLETION_NOTES: &str = "\
The package installs them; by hand:
  kindler completions bash > ~/.local/share/bash-completion/completions/kindler
  kindler completions zsh  > ~/.zfunc/_kindler        (with fpath+=~/.zfunc)
  kindler completions fish > ~/.config/fish/completions/kindler.fish";

/// The command line with its runtime adjustments (a setting given twice takes the last
/// value, as users of flags expect).
fn command() -> clap::Command {
    Cli::command().mut_subcommands(|sub| sub.args_override_self(true))
}

fn main() {
    private_files();
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let status = match cli.command {
        Command::Serve { settings } => serve(Loader::new(settings)),
        Command::Reconcile { once, settings } => reconcile(once, Loader::new(settings.0)),
        Command::Migrate { to, settings } => migrate(to, Loader::new(settings.0)),
        Command::Ls { args, server } => cli::run(&server, cli::Request::List(args)),
        Command::Get { args, server } => cli::run(&server, cli::Request::Get(args)),
        Command::Create { args, server } => cli::run(&server, cli::Request::Create(args)),
        Command::Delete { args, server } => cli::run(&server, cli::Request::Delete(args)),
        Command::Start { args, server } => cli::run(&server, cli::Request::Start(args)),
        Command::Stop { args, server } => cli::run(&server, cli::Request::Stop(args)),
        Command::Logs { args, server } => cli::run(&server, cli::Request::Logs(args)),
        Command::History { args, server } => cli::run(&server, cli::Request::History(args)),
        Command::Status { args, server } => cli::run(&server, cli::Request::Status(args)),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "kindler", &mut std::io::stdout());
            0
        }
        Command::Manpages { dir } => match cli::manpages::write_all(command(), &dir) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!(
                    "kindler: cannot write the man pages into {}: {e}",
                    dir.display()
                );
                1
            }
        },
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

fn migrate(to: Option<String>, loader: Loader) -> i32 {
    report((|| {
        let settings = load(&loader)?;
        log::init(config::LogTarget::Stderr, settings.log_level);
        if let Some(url) = to {
            let copied = runtime().block_on(daemon::copy_to_postgres(&settings, &url))?;
            log::info(&format!(
                "copied {} clusters and {} runs from {} into {} as host {}",
                copied.clusters,
                copied.runs,
                settings.database,
                kindler::store::Database::parse(&url),
                settings.host
            ));
            return Ok(0);
        }
        // Not under a running daemon (open_store locks a file): a newer schema would change
        // its tables beneath it. PostgreSQL's migrations take an advisory lock instead.
        runtime().block_on(daemon::open_store(&settings, None))?;
        log::info(&format!("database {} is up to date", settings.database));
        Ok(0)
    })())
}
