//! Settings: embedded defaults, then the TOML file, then `KINDLER_*` variables, then flags.
//!
//! Every setting is declared once, as a clap argument with its default and its variable;
//! the file layer is a serde struct with the same keys. A value from the command line or
//! the environment wins; otherwise the file's; otherwise the default. SIGHUP re-reads the
//! file and layers it again under the same command line and environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use serde::Deserialize;

/// Where the packaged configuration lives; read when it exists and no `--config` is given.
pub const SYSTEM_CONFIG: &str = "/etc/kindler/kindler.toml";

/// Where the package installs the default scripts.
const PACKAGED_SCRIPTS: &str = "/usr/lib/kindler";
/// The scripts of the source checkout this binary was built from.
const SOURCE_SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");

/// Where the default scripts are: the installed package's, else the source checkout's
/// (so that `cargo run -- serve` works with no configuration at all).
fn scripts_dir() -> &'static Path {
    if Path::new(PACKAGED_SCRIPTS).join("create-cluster").exists() {
        Path::new(PACKAGED_SCRIPTS)
    } else {
        Path::new(SOURCE_SCRIPTS)
    }
}

/// A duration written the human way: `500ms`, `10s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Span)
            .map_err(|e| format!("{s:?} is not a duration like 10s, 5m or 1h ({e})"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An inclusive port range, `19001-19999` on the command line or `[19001, 19999]` in TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    fn new(first: u16, last: u16) -> Result<Self, String> {
        if first == 0 || first > last {
            return Err(format!("port range {first}-{last} is empty or starts at 0"));
        }
        Ok(PortRange { first, last })
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a port range like 19001-19999"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number"))
        };
        PortRange::new(port(a)?, port(b)?)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Pair([u16; 2]),
            Text(String),
        }
        match Form::deserialize(d)? {
            Form::Pair([a, b]) => PortRange::new(a, b),
            Form::Text(t) => t.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// A command to run: a program and its leading arguments, never a shell line.
/// On the command line it is a program path; in TOML either a path or an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl FromStr for CommandLine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("a command must name a program".into());
        }
        Ok(CommandLine {
            program: PathBuf::from(s),
            args: Vec::new(),
        })
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program.display())?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Path(String),
            Argv(Vec<String>),
        }
        match Form::deserialize(d)? {
            Form::Path(p) => p.parse().map_err(serde::de::Error::custom),
            Form::Argv(mut argv) => {
                if argv.is_empty() || argv[0].trim().is_empty() {
                    return Err(serde::de::Error::custom(
                        "a command array must start with a program",
                    ));
                }
                let program = PathBuf::from(argv.remove(0));
                Ok(CommandLine {
                    program,
                    args: argv,
                })
            }
        }
    }
}

/// How much the daemon logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// Where log records go. `auto` uses the journal's native protocol when stderr is connected
/// to journald (JOURNAL_STREAM), plain lines on stderr otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    Auto,
    Journal,
    Stderr,
}

/// The settings of `kindler serve` (and of `reconcile --once`, which shares them).
/// Each one can be given as a flag, as the `KINDLER_*` variable shown, or as the key of
/// the same name (with `_` for `-`) in the TOML file.
#[derive(Debug, Clone, Args)]
pub struct SettingArgs {
    /// Configuration file (TOML). Default: /etc/kindler/kindler.toml when it exists.
    #[arg(long, env = "KINDLER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// SQLite database holding the desired and observed state.
    /// Default: $STATE_DIRECTORY/kindler.db under systemd, else ./kindler-data/kindler.db.
    #[arg(long, env = "KINDLER_DATABASE", value_name = "FILE")]
    pub database: Option<PathBuf>,

    /// TCP address for the HTTP API when no socket is passed by systemd; "" for none.
    #[arg(
        long,
        env = "KINDLER_LISTEN",
        default_value = "127.0.0.1:8765",
        value_name = "ADDR"
    )]
    pub listen: String,

    /// Unix socket path for the HTTP API when no socket is passed by systemd.
    #[arg(long, env = "KINDLER_LISTEN_UNIX", value_name = "PATH")]
    pub listen_unix: Option<PathBuf>,

    /// Command that creates a cluster (gets create_env.sh's arguments).
    #[arg(long, env = "KINDLER_CREATE_COMMAND", default_value_t = script("create-cluster"), value_name = "PROGRAM")]
    pub create_command: CommandLine,

    /// Command that deletes a cluster (gets delete_env.sh's arguments).
    #[arg(long, env = "KINDLER_DELETE_COMMAND", default_value_t = script("delete-cluster"), value_name = "PROGRAM")]
    pub delete_command: CommandLine,

    /// Command that starts a stopped cluster (-n NAME -p PROVIDER).
    #[arg(long, env = "KINDLER_START_COMMAND", default_value_t = script("start-cluster"), value_name = "PROGRAM")]
    pub start_command: CommandLine,

    /// Command that stops a running cluster (-n NAME -p PROVIDER).
    #[arg(long, env = "KINDLER_STOP_COMMAND", default_value_t = script("stop-cluster"), value_name = "PROGRAM")]
    pub stop_command: CommandLine,

    /// Command that checks a cluster answers (-n NAME -p PROVIDER; KINDLER_CONTEXT names the
    /// kubectl context); exit 0 = healthy. It may print `portainer_status=online|offline` and
    /// `argocd_status=healthy|degraded` lines for the status endpoint.
    #[arg(long, env = "KINDLER_PROBE_COMMAND", default_value_t = script("probe-cluster"), value_name = "PROGRAM")]
    pub probe_command: CommandLine,

    /// Most actions (scripts) running at once, over all clusters.
    #[arg(long, env = "KINDLER_MAX_CONCURRENT_ACTIONS", default_value = "3", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrent_actions: u32,

    /// Longest an action may run before its process group is killed.
    #[arg(
        long,
        env = "KINDLER_ACTION_TIMEOUT",
        default_value = "30m",
        value_name = "DURATION"
    )]
    pub action_timeout: Span,

    /// Time between SIGTERM and SIGKILL when an action's process group is ended.
    #[arg(
        long,
        env = "KINDLER_KILL_GRACE",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub kill_grace: Span,

    /// How often running clusters are verified with the probe command.
    #[arg(
        long,
        env = "KINDLER_RESYNC_INTERVAL",
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub resync_interval: Span,

    /// First retry delay after a failure; it doubles on each further failure.
    #[arg(
        long,
        env = "KINDLER_BACKOFF_INITIAL",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub backoff_initial: Span,

    /// Longest retry delay.
    #[arg(
        long,
        env = "KINDLER_BACKOFF_MAX",
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub backoff_max: Span,

    /// How often the database is checked for rows written by other programs.
    #[arg(
        long,
        env = "KINDLER_POLL_INTERVAL",
        default_value = "500ms",
        value_name = "DURATION"
    )]
    pub poll_interval: Span,

    /// Reconcile runs kept in the history per cluster and action (create, probe, ...).
    #[arg(long, env = "KINDLER_HISTORY_PER_CLUSTER", default_value = "50", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub history_per_cluster: u32,

    /// Reconcile runs older than this are dropped from the history.
    #[arg(
        long,
        env = "KINDLER_HISTORY_MAX_AGE",
        default_value = "30days",
        value_name = "DURATION"
    )]
    pub history_max_age: Span,

    /// Last output lines of a run kept in its history and shown on failure.
    #[arg(long, env = "KINDLER_OUTPUT_TAIL_LINES", default_value = "40", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub output_tail_lines: u32,

    /// Log verbosity.
    #[arg(long, env = "KINDLER_LOG_LEVEL", default_value = "info", value_enum)]
    pub log_level: LogLevel,

    /// Log destination: the journal's native protocol, plain stderr lines, or auto-detect.
    #[arg(long, env = "KINDLER_LOG_TARGET", default_value = "auto", value_enum)]
    pub log_target: LogTarget,

    /// Clusters the API refuses to delete (comma-separated).
    #[arg(
        long,
        env = "KINDLER_PROTECTED_CLUSTERS",
        default_value = "devops",
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    pub protected_clusters: Vec<String>,

    /// Base domain reported to the WebUI.
    #[arg(
        long,
        env = "KINDLER_BASE_DOMAIN",
        default_value = "local",
        value_name = "DOMAIN"
    )]
    pub base_domain: String,

    /// Ports handed out for port-forwards when the WebUI's default is taken.
    #[arg(
        long,
        env = "KINDLER_PF_PORT_RANGE",
        default_value = "19001-19999",
        value_name = "FIRST-LAST"
    )]
    pub pf_port_range: PortRange,

    /// HTTP ports handed out when the WebUI's default is taken.
    #[arg(
        long,
        env = "KINDLER_HTTP_PORT_RANGE",
        default_value = "18090-18999",
        value_name = "FIRST-LAST"
    )]
    pub http_port_range: PortRange,

    /// HTTPS ports handed out when the WebUI's default is taken.
    #[arg(
        long,
        env = "KINDLER_HTTPS_PORT_RANGE",
        default_value = "18443-18999",
        value_name = "FIRST-LAST"
    )]
    pub https_port_range: PortRange,
}

/// The default command for an action: the script of that name in [`scripts_dir`].
fn script(name: &str) -> CommandLine {
    CommandLine {
        program: scripts_dir().join(name),
        args: Vec::new(),
    }
}

/// The keys the TOML file may hold: the same settings, every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database: Option<PathBuf>,
    listen: Option<String>,
    listen_unix: Option<PathBuf>,
    create_command: Option<CommandLine>,
    delete_command: Option<CommandLine>,
    start_command: Option<CommandLine>,
    stop_command: Option<CommandLine>,
    probe_command: Option<CommandLine>,
    max_concurrent_actions: Option<u32>,
    action_timeout: Option<Span>,
    kill_grace: Option<Span>,
    resync_interval: Option<Span>,
    backoff_initial: Option<Span>,
    backoff_max: Option<Span>,
    poll_interval: Option<Span>,
    history_per_cluster: Option<u32>,
    history_max_age: Option<Span>,
    output_tail_lines: Option<u32>,
    log_level: Option<LogLevel>,
    log_target: Option<LogTarget>,
    protected_clusters: Option<Vec<String>>,
    base_domain: Option<String>,
    pf_port_range: Option<PortRange>,
    http_port_range: Option<PortRange>,
    https_port_range: Option<PortRange>,
}

/// The commands the reconciler runs, one per action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    pub create: CommandLine,
    pub delete: CommandLine,
    pub start: CommandLine,
    pub stop: CommandLine,
    pub probe: CommandLine,
}

impl Commands {
    pub fn for_action(&self, action: crate::model::Action) -> &CommandLine {
        use crate::model::Action;
        match action {
            Action::Create => &self.create,
            Action::Delete => &self.delete,
            Action::Start => &self.start,
            Action::Stop => &self.stop,
            Action::Probe => &self.probe,
        }
    }
}

/// The resolved settings the daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub database: PathBuf,
    pub listen: Option<SocketAddr>,
    pub listen_unix: Option<PathBuf>,
    pub commands: Commands,
    pub max_concurrent_actions: usize,
    pub action_timeout: Duration,
    pub kill_grace: Duration,
    pub resync_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub poll_interval: Duration,
    pub history_per_cluster: u32,
    pub history_max_age: Duration,
    pub output_tail_lines: usize,
    pub log_level: LogLevel,
    pub log_target: LogTarget,
    pub protected_clusters: Vec<String>,
    pub base_domain: String,
    pub pf_port_range: PortRange,
    pub http_port_range: PortRange,
    pub https_port_range: PortRange,
}

/// A configuration that cannot be used; the message names the file, line and key.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Builds [`Settings`] from the parsed command line, reading the file each time it is
/// asked (once at start, again on every SIGHUP).
#[derive(Debug, Clone)]
pub struct Loader {
    args: SettingArgs,
    explicit: Vec<String>,
}

impl Loader {
    /// `matches` are the matches of the subcommand that holds the [`SettingArgs`].
    pub fn new(args: SettingArgs, matches: &ArgMatches) -> Self {
        let explicit = matches
            .ids()
            .filter(|id| {
                matches!(
                    matches.value_source(id.as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
            .map(|id| id.as_str().to_owned())
            .collect();
        Loader { args, explicit }
    }

    fn config_path(&self) -> Result<Option<PathBuf>, ConfigError> {
        match &self.args.config {
            Some(path) if path.as_os_str().is_empty() => Ok(None),
            Some(path) if !path.exists() => Err(ConfigError(format!(
                "{}: configuration file not found",
                path.display()
            ))),
            Some(path) => Ok(Some(path.clone())),
            None if Path::new(SYSTEM_CONFIG).exists() => Ok(Some(SYSTEM_CONFIG.into())),
            None => Ok(None),
        }
    }

    pub fn load(&self) -> Result<Settings, ConfigError> {
        let config_file = self.config_path()?;
        let file = match &config_file {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let settings = self.merge(config_file, file)?;
        settings.check()?;
        Ok(settings)
    }

    /// A flag or variable the user set beats the file; the file beats the default.
    fn pick<T: Clone>(&self, id: &str, cli: &T, file: Option<T>) -> T {
        if self.explicit.iter().any(|e| e == id) {
            cli.clone()
        } else {
            file.unwrap_or_else(|| cli.clone())
        }
    }

    fn merge(
        &self,
        config_file: Option<PathBuf>,
        f: FileSettings,
    ) -> Result<Settings, ConfigError> {
        let a = &self.args;
        macro_rules! pick {
            ($field:ident) => {
                self.pick(stringify!($field), &a.$field, f.$field)
            };
        }
        let database = match (&a.database, f.database) {
            (Some(cli), _) => cli.clone(),
            (None, Some(file)) => file,
            (None, None) => default_database(),
        };
        let listen_unix = match (&a.listen_unix, f.listen_unix) {
            (Some(cli), _) => Some(cli.clone()),
            (None, file) => file,
        };
        let listen: String = pick!(listen);
        let listen = match listen.trim() {
            "" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError(format!(
                    "listen: {text:?} is not an address like 127.0.0.1:8765 (use \"\" for none)"
                ))
            })?),
        };
        Ok(Settings {
            config_file,
            database,
            listen,
            listen_unix: listen_unix.filter(|p| !p.as_os_str().is_empty()),
            commands: Commands {
                create: pick!(create_command),
                delete: pick!(delete_command),
                start: pick!(start_command),
                stop: pick!(stop_command),
                probe: pick!(probe_command),
            },
            max_concurrent_actions: pick!(max_concurrent_actions) as usize,
            action_timeout: pick!(action_timeout).0,
            kill_grace: pick!(kill_grace).0,
            resync_interval: pick!(resync_interval).0,
            backoff_initial: pick!(backoff_initial).0,
            backoff_max: pick!(backoff_max).0,
            poll_interval: pick!(poll_interval).0,
            history_per_cluster: pick!(history_per_cluster),
            history_max_age: pick!(history_max_age).0,
            output_tail_lines: pick!(output_tail_lines) as usize,
            log_level: pick!(log_level),
            log_target: pick!(log_target),
            protected_clusters: pick!(protected_clusters),
            base_domain: pick!(base_domain),
            pf_port_range: pick!(pf_port_range),
            http_port_range: pick!(http_port_range),
            https_port_range: pick!(https_port_range),
        })
    }
}

impl Settings {
    /// Rules that span several settings.
    fn check(&self) -> Result<(), ConfigError> {
        let origin = match &self.config_file {
            Some(p) => format!(" (after reading {})", p.display()),
            None => String::new(),
        };
        if self.backoff_initial > self.backoff_max {
            return Err(ConfigError(format!(
                "backoff_initial ({}) is longer than backoff_max ({}){origin}",
                Span(self.backoff_initial),
                Span(self.backoff_max)
            )));
        }
        // The command line checks these ranges itself; a config file's values land here.
        for (key, value, low, high) in [
            (
                "max_concurrent_actions",
                self.max_concurrent_actions,
                1,
                1024,
            ),
            (
                "history_per_cluster",
                self.history_per_cluster as usize,
                1,
                usize::MAX,
            ),
            ("output_tail_lines", self.output_tail_lines, 1, 10_000),
        ] {
            if !(low..=high).contains(&value) {
                let range = if high == usize::MAX {
                    format!("at least {low}")
                } else {
                    format!("{low}–{high}")
                };
                return Err(ConfigError(format!(
                    "{key} is {value}; it must be {range}{origin}"
                )));
            }
        }
        for (key, d) in [
            ("action_timeout", self.action_timeout),
            ("resync_interval", self.resync_interval),
            ("poll_interval", self.poll_interval),
            ("backoff_initial", self.backoff_initial),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("{key} must be longer than 0{origin}")));
            }
        }
        Ok(())
    }

    /// Settings that only take effect at start-up; a reload that changes them is logged.
    pub fn restart_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.database != new.database {
            changed.push("database");
        }
        if self.listen != new.listen {
            changed.push("listen");
        }
        if self.listen_unix != new.listen_unix {
            changed.push("listen_unix");
        }
        if self.log_target != new.log_target {
            changed.push("log_target");
        }
        changed
    }
}

fn default_database() -> PathBuf {
    // systemd's StateDirectory= exports the directory (several are ':'-separated).
    match std::env::var_os("STATE_DIRECTORY") {
        Some(dirs) if !dirs.is_empty() => {
            let first = dirs
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned();
            Path::new(&first).join("kindler.db")
        }
        _ => PathBuf::from("kindler-data/kindler.db"),
    }
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}
