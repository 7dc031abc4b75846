//! Settings: embedded defaults, then the TOML file, then `KINDLER_*` variables, then flags.
//!
//! Every setting is one row of the table below: its help (the doc comment), its key, its
//! type and a [`Spec`] with its default, the rule its values must follow and whether it
//! needs a restart. The macro derives from the rows the `Settings` struct, the flag
//! `--KEY` and variable `KINDLER_KEY`, the file's key, the precedence and the reload rule;
//! a value is checked by the same code, with the same reason, whichever layer gave it.
//! SIGHUP re-reads the file and layers it again under the same flags and variables.

mod spec;
mod values;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::FileType;
use std::io::Read;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use clap::{Arg, ArgMatches};
use toml::Spanned;

pub use crate::log::{LogLevel, LogTarget};
pub use crate::model::PortRange;
use crate::store::Database;
use spec::{
    assignments, at_least, default, host_name, longer_than_zero, none, variable_names, within, Spec,
};
pub use values::CommandLine;

/// Declares the settings; see the module's documentation and the table below.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])+ $key:ident: $ty:ty = $spec:expr; )+) => {
        /// The resolved settings the daemon runs with.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            /// The configuration file read, if any.
            pub config_file: Option<PathBuf>,
            $( $(#[doc = $doc])+ pub $key: $ty, )+
        }

        /// The rows of the table, built once.
        struct Specs {
            $( $key: Spec<$ty>, )+
        }

        static SPECS: LazyLock<Specs> = LazyLock::new(|| Specs {
            $( $key: $spec.describe(stringify!($key), &[$($doc),+]), )+
        });

        /// The settings one layer gives: the file, or the flags and variables.
        #[derive(Debug, Clone, Default)]
        struct Layer {
            $( $key: Option<$ty>, )+
        }

        impl Layer {
            /// The flags given and variables set; clap lets a flag beat its variable.
            fn given(matches: &ArgMatches) -> Layer {
                Layer { $( $key: SPECS.$key.given(matches), )+ }
            }

            /// Takes the file's `key`; `None` when no setting has that key.
            fn read(&mut self, key: &str, value: &toml::Value) -> Option<Result<(), String>> {
                $( if key == SPECS.$key.key() {
                    return Some(SPECS.$key.read_toml(value).map(|v| self.$key = Some(v)));
                } )+
                None
            }

            /// Each setting from this layer, else from `under`, else its default.
            fn over(self, under: Layer, config_file: Option<PathBuf>) -> Settings {
                Settings {
                    config_file,
                    $( $key: self.$key.or(under.$key)
                        .unwrap_or_else(|| SPECS.$key.default_value()), )+
                }
            }
        }

        /// A flag (and variable) per setting, in the table's order.
        fn setting_args(env_prefix: &str) -> Vec<Arg> {
            vec![$( SPECS.$key.arg(env_prefix) ),+]
        }

        /// The keys the file may hold.
        const KEYS: &[&str] = &[$( stringify!($key) ),+];

        impl Settings {
            /// Gives the settings that take effect only at start their running values back,
            /// and names those the new configuration would have changed.
            pub fn keep_start_up_values(&mut self, running: &Settings) -> Vec<&'static str> {
                let mut changed = Vec::new();
                $( if SPECS.$key.is_restart_only() {
                    if self.$key != running.$key {
                        changed.push(SPECS.$key.key());
                    }
                    self.$key = running.$key.clone();
                } )+
                changed
            }
        }
    };
}

settings! {
    /// Where the desired and observed state is kept: an SQLite file, or a postgres:// URL
    /// of a database the kindler agents of several hosts share (without a password in it).
    /// Default: $STATE_DIRECTORY/kindler.db under systemd, else ./kindler-data/kindler.db.
    database: Database =
        default(default_database()).hide_default().restart_only();

    /// File holding the PostgreSQL password (a trailing newline is ignored). Default: the
    /// systemd credential kindler-db-password (LoadCredential=), when there is one.
    database_password_file: Option<PathBuf> = none().restart_only();

    /// This host's name in a fleet sharing PostgreSQL: the agent acts on the clusters of
    /// this host only, and holds its lease. Default: the machine's hostname.
    host: String = default(crate::store::local_host_name()).hide_default().value_name("NAME")
        .must_be(host_name()).restart_only();

    /// How long a host's lease lasts unless its agent renews it (every third of it); after
    /// that the host shows as unreachable, and another agent may take the host's name.
    lease_ttl: Duration = default("15s").must_be(longer_than_zero()).restart_only();

    /// TCP address for the HTTP API when no socket is passed by systemd; "" for none.
    listen: Option<SocketAddr> = default("127.0.0.1:8765").restart_only();

    /// Unix socket path for the HTTP API when no socket is passed by systemd.
    listen_unix: Option<PathBuf> = none().restart_only();

    /// Command that creates a cluster: a program path, or in the file an array [program,
    /// args...]. It gets -n NAME -p PROVIDER --node-port N --pf-port N
    /// --[no-]register-portainer --[no-]haproxy-route --[no-]register-argocd, and the
    /// cluster's fields as KINDLER_* variables.
    create_command: CommandLine = script("create-cluster");

    /// Command that deletes a cluster (-n NAME -p PROVIDER).
    delete_command: CommandLine = script("delete-cluster");

    /// Command that starts a stopped cluster (-n NAME -p PROVIDER).
    start_command: CommandLine = script("start-cluster");

    /// Command that stops a running cluster (-n NAME -p PROVIDER).
    stop_command: CommandLine = script("stop-cluster");

    /// Command that checks a cluster answers (-n NAME -p PROVIDER; KINDLER_CONTEXT names the
    /// kubectl context); exit 0 = healthy. It may print `portainer_status=online|offline` and
    /// `argocd_status=healthy|degraded` lines for the status endpoint.
    probe_command: CommandLine = script("probe-cluster");

    /// Variables of kindler's environment that scripts get besides the allow-list (PATH,
    /// HOME, LANG, LC_*, TZ, USER, LOGNAME, TMPDIR and the tools' own: DOCKER_*, KUBECONFIG,
    /// ...): comma-separated names, a name ending in * for every variable with that prefix.
    /// Everything else in kindler's environment (tokens, passwords) stays out of scripts.
    script_env_pass: Vec<String> = default("").value_name("NAMES").must_be(variable_names());

    /// Variables scripts get with a fixed value: comma-separated NAME=value.
    script_env_set: Vec<String> = default("").value_name("NAME=VALUE,...").must_be(assignments());

    /// Most actions (scripts) running at once, over all clusters.
    max_concurrent_actions: usize = default("3").must_be(within(1..=1024));

    /// Longest an action may run before its process group is killed.
    action_timeout: Duration = default("30m").must_be(longer_than_zero());

    /// Time between SIGTERM and SIGKILL when an action's process group is ended.
    kill_grace: Duration = default("10s");

    /// How often running clusters are verified with the probe command.
    resync_interval: Duration = default("5m").must_be(longer_than_zero());

    /// First retry delay after a failure; it doubles on each further failure.
    backoff_initial: Duration = default("5s").must_be(longer_than_zero());

    /// Longest retry delay.
    backoff_max: Duration = default("5m");

    /// How often the database is checked for rows written by other programs.
    poll_interval: Duration = default("500ms").must_be(longer_than_zero());

    /// Reconcile runs kept in the history per cluster and action (create, probe, ...).
    history_per_cluster: u32 = default("50").must_be(at_least(1));

    /// Reconcile runs older than this are dropped from the history.
    history_max_age: Duration = default("30days");

    /// Last output lines of a run kept in its history and shown on failure.
    output_tail_lines: usize = default("40").must_be(within(1..=10_000));

    /// Log verbosity.
    log_level: LogLevel = default("info");

    /// Log destination: the journal's native protocol, plain stderr lines, or auto-detect.
    log_target: LogTarget = default("auto").restart_only();

    /// Clusters the API refuses to delete (comma-separated).
    protected_clusters: Vec<String> = default("devops").value_name("NAMES");

    /// Host names the API answers on TCP besides the loopback names and addresses
    /// (localhost, 127.0.0.1, [::1], with the listening port or none): the name a reverse
    /// proxy passes on, say. NAME answers with any port, NAME:PORT with that one. Requests
    /// naming another host are refused (a page on a rebound DNS name cannot reach the API).
    allowed_hosts: Vec<String> = default("").value_name("HOSTS");

    /// Origins (scheme://host[:port]) whose pages may send changes (POST, DELETE, the
    /// WebSocket) besides the API's own origin.
    allowed_origins: Vec<String> = default("").value_name("ORIGINS");

    /// Base domain reported to the WebUI.
    base_domain: String = default("local").value_name("DOMAIN");

    /// Ports handed out for port-forwards when the WebUI's default is taken.
    pf_port_range: PortRange = default("19001-19999");

    /// HTTP ports handed out when the WebUI's default is taken.
    http_port_range: PortRange = default("18090-18999");

    /// HTTPS ports handed out when the WebUI's default is taken.
    https_port_range: PortRange = default("18443-18999");
}

/// Where the packaged configuration lives; read when it exists and no `--config` is given.
pub const SYSTEM_CONFIG: &str = "/etc/kindler/kindler.toml";

/// The prefix of the variables that set settings.
const ENV_PREFIX: &str = "KINDLER_";

/// Where the package installs the default scripts.
const PACKAGED_SCRIPTS: &str = "/usr/lib/kindler";
/// The scripts of the source checkout this binary was built from.
const SOURCE_SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");

/// The default command for an action: the script of that name in the installed package,
/// else in the source checkout (so that `cargo run -- serve` works with no configuration).
fn script(name: &str) -> Spec<CommandLine> {
    let packaged = Path::new(PACKAGED_SCRIPTS);
    let dir = if packaged.join("create-cluster").exists() {
        packaged
    } else {
        Path::new(SOURCE_SCRIPTS)
    };
    default(dir.join(name).to_string_lossy())
}

fn default_database() -> String {
    // systemd's StateDirectory= exports the directory (several are ':'-separated).
    match std::env::var_os("STATE_DIRECTORY") {
        Some(dirs) if !dirs.is_empty() => {
            let dirs = dirs.to_string_lossy();
            let first = dirs.split(':').next().unwrap_or("");
            Path::new(first)
                .join("kindler.db")
                .to_string_lossy()
                .into_owned()
        }
        _ => "kindler-data/kindler.db".into(),
    }
}

impl Settings {
    /// The command the reconciler runs for `action`.
    pub fn command(&self, action: crate::model::Action) -> &CommandLine {
        use crate::model::Action;
        match action {
            Action::Create => &self.create_command,
            Action::Delete => &self.delete_command,
            Action::Start => &self.start_command,
            Action::Stop => &self.stop_command,
            Action::Probe => &self.probe_command,
        }
    }

    /// Rules that span several settings.
    fn check(&self) -> Result<(), ConfigError> {
        if self.backoff_initial > self.backoff_max {
            let origin = match &self.config_file {
                Some(p) => format!(" (after reading {})", p.display()),
                None => String::new(),
            };
            return Err(ConfigError(format!(
                "backoff_initial ({}) is longer than backoff_max ({}){origin}",
                values::show(self.backoff_initial),
                values::show(self.backoff_max)
            )));
        }
        Ok(())
    }
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

/// The settings part of a subcommand's command line: `--config` and a flag per setting.
#[derive(Debug, Clone)]
pub struct SettingArgs {
    config: Option<PathBuf>,
    given: Layer,
}

/// `--config`, then the settings' flags, each with its variable.
fn args(env_prefix: &str) -> Vec<Arg> {
    let config = Arg::new("config")
        .long("config")
        .env(format!("{env_prefix}CONFIG"))
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help(
            "Configuration file (TOML). Default: /etc/kindler/kindler.toml when it exists; \
             /dev/null for none",
        );
    std::iter::once(config)
        .chain(setting_args(env_prefix))
        .collect()
}

impl clap::FromArgMatches for SettingArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(SettingArgs {
            config: matches.get_one::<PathBuf>("config").cloned(),
            given: Layer::given(matches),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for SettingArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(args(ENV_PREFIX))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// `--config` and the flags of the settings in `keys` only (a subcommand that does not
/// use the others does not offer them; the file may still set them).
fn args_of(keys: &[&str]) -> Vec<Arg> {
    args(ENV_PREFIX)
        .into_iter()
        .filter(|a| a.get_id() == "config" || keys.contains(&a.get_id().as_str()))
        .collect()
}

/// Declares a subcommand's part of the settings: the flags of some of them.
macro_rules! some_settings {
    ($(#[$doc:meta])* $name:ident: $($key:ident),+) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub SettingArgs);

        impl clap::FromArgMatches for $name {
            fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
                SettingArgs::from_arg_matches(matches).map($name)
            }

            fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
                *self = Self::from_arg_matches(matches)?;
                Ok(())
            }
        }

        impl clap::Args for $name {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                cmd.args(args_of(&[$(stringify!($key)),+]))
            }

            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }
    };
}

some_settings! {
    /// What `reconcile --once` uses: the database, the commands and how they run, the
    /// backoff it records and the history it keeps.
    PassSettingArgs: database, create_command, delete_command, start_command, stop_command,
        probe_command, script_env_pass, script_env_set, max_concurrent_actions,
        action_timeout, kill_grace, backoff_initial, backoff_max, history_per_cluster,
        history_max_age, output_tail_lines, log_level
}

some_settings! {
    /// What `migrate` uses: the database (with --to, the host its clusters are copied as,
    /// and the password of the PostgreSQL database they are copied into).
    MigrateSettingArgs: database, database_password_file, host, log_level
}

/// Builds [`Settings`] from the parsed command line, reading the file each time it is
/// asked (once at start, again on every SIGHUP).
#[derive(Debug, Clone)]
pub struct Loader {
    args: SettingArgs,
}

impl Loader {
    pub fn new(args: SettingArgs) -> Self {
        Loader { args }
    }

    /// Settings from `flags` alone, as `kindler serve FLAGS --config /dev/null` would have
    /// them (the `KINDLER_*` environment still counts): for tests that run the daemon's
    /// parts in-process.
    pub fn from_flags(flags: &[&str]) -> Result<Settings, ConfigError> {
        use clap::{Args, FromArgMatches};
        let command = SettingArgs::augment_args(clap::Command::new("kindler"));
        let argv = ["kindler", "--config", "/dev/null"].iter().chain(flags);
        let matches = command
            .try_get_matches_from(argv)
            .map_err(|e| ConfigError(e.to_string()))?;
        let args =
            SettingArgs::from_arg_matches(&matches).map_err(|e| ConfigError(e.to_string()))?;
        Loader::new(args).load()
    }

    fn config_path(&self) -> Option<PathBuf> {
        match &self.args.config {
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) => Some(path.clone()),
            None if Path::new(SYSTEM_CONFIG).exists() => Some(SYSTEM_CONFIG.into()),
            None => None,
        }
    }

    pub fn load(&self) -> Result<Settings, ConfigError> {
        let config_file = self.config_path();
        let file = match &config_file {
            Some(path) => read_file(path)?,
            None => Layer::default(),
        };
        let settings = self.args.given.clone().over(file, config_file);
        settings.check()?;
        Ok(settings)
    }
}

/// The file's settings; a refusal names the file, the line and the key.
fn read_file(path: &Path) -> Result<Layer, ConfigError> {
    let text = read_regular_file(path)?;
    let at = |span: Range<usize>| {
        let line = text[..span.start].matches('\n').count() + 1;
        format!("{}: line {line}", path.display())
    };
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(&text).map_err(|e| {
            let message = e.message().trim().replace('\n', "; ");
            ConfigError(match e.span() {
                Some(span) => format!("{}: {message}", at(span)),
                None => format!("{}: {message}", path.display()),
            })
        })?;
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    let mut layer = Layer::default();
    for (key, value) in entries {
        let (name, span) = (key.get_ref(), value.span());
        match layer.read(name, value.get_ref()) {
            Some(Ok(())) => {}
            Some(Err(reason)) => {
                let written = &text[span.clone()];
                return Err(ConfigError(format!(
                    "{}: {name} is {written}; {reason}",
                    at(span)
                )));
            }
            None => {
                return Err(ConfigError(format!(
                    "{}: unknown key {name}; the keys are {}",
                    at(key.span()),
                    KEYS.join(", ")
                )))
            }
        }
    }
    Ok(layer)
}

/// The file's text. Only a regular file is read (or `/dev/null`, as empty), and opening
/// never waits: a FIFO put in the file's place would otherwise block until something
/// writes to it.
fn read_regular_file(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |what: String| ConfigError(format!("{}: {what}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match std::fs::metadata(path) {
            Err(_) if e.kind() == std::io::ErrorKind::NotFound => {
                fail("configuration file not found".into())
            }
            Ok(m) if !m.is_file() => not_regular(path, m.file_type()),
            _ => fail(format!("cannot read: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if is_null_device(&meta) {
        return Ok(String::new());
    }
    if !meta.is_file() {
        return Err(not_regular(path, meta.file_type()));
    }
    let mut text = String::new();
    (&file)
        .read_to_string(&mut text)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    Ok(text)
}

/// `/dev/null` (or a link to it) is the usual way to say "no configuration".
fn is_null_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device()
        && std::fs::metadata("/dev/null").is_ok_and(|null| null.rdev() == meta.rdev())
}

fn not_regular(path: &Path, kind: FileType) -> ConfigError {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_char_device() {
        "a character device"
    } else {
        "something else"
    };
    ConfigError(format!(
        "{} is {what}, not a regular file; \
         kindler reads its configuration only from a regular file",
        path.display()
    ))
}
