//! The settings against fixture files in a temporary directory. Flags are handed to clap
//! as an argument list; variables use a prefix of their own (`args(prefix)`), so that no
//! test sees a variable another test sets, nor a real `KINDLER_*` one.

use std::time::Duration;

use clap::FromArgMatches;
use tempfile::TempDir;

use super::*;

/// The prefix of the variables the tests read; only one test sets any of them.
const TEST_PREFIX: &str = "KINDLER_UNIT_TEST_";

/// A configuration file in a directory of its own.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new(toml: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kindler.toml"), toml).unwrap();
        Fixture { dir }
    }

    fn file(&self) -> String {
        self.dir.path().join("kindler.toml").display().to_string()
    }

    /// Loads the file under `flags`, reading variables with `env_prefix`; a refusal by
    /// clap or by the loader becomes its message.
    fn load_with(&self, env_prefix: &str, flags: &[&str]) -> Result<Settings, String> {
        let file = self.file();
        let argv = ["kindler", "--config", &file]
            .into_iter()
            .chain(flags.iter().copied());
        let matches = clap::Command::new("kindler")
            .args(args(env_prefix))
            .args_override_self(true)
            .try_get_matches_from(argv)
            .map_err(|e| e.to_string())?;
        let args = SettingArgs::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        Loader::new(args).load().map_err(|e| e.to_string())
    }

    fn load(&self, flags: &[&str]) -> Result<Settings, String> {
        self.load_with(TEST_PREFIX, flags)
    }
}

fn load(toml: &str, flags: &[&str]) -> Result<Settings, String> {
    Fixture::new(toml).load(flags)
}

fn refusal(toml: &str, flags: &[&str]) -> String {
    match load(toml, flags) {
        Ok(s) => panic!("accepted {toml:?} with {flags:?}: {s:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_defaults() {
    let s = load("", &[]).unwrap();
    assert_eq!(s.max_concurrent_actions, 3);
    assert_eq!(s.kill_grace, Duration::from_secs(10));
    assert_eq!(s.history_max_age, Duration::from_secs(30 * 86400));
    assert_eq!(s.listen, Some("127.0.0.1:8765".parse().unwrap()));
    assert_eq!(s.listen_unix, None);
    assert!(
        s.database.to_string().ends_with("kindler.db"),
        "{:?}",
        s.database
    );
    assert_eq!(s.log_level, LogLevel::Info);
    assert_eq!(s.protected_clusters, ["devops"]);
    assert_eq!(s.https_port_range.to_string(), "18443-18999");
    assert!(s.probe_command.program.ends_with("probe-cluster"));
    assert!(s.probe_command.args.is_empty());
}

/// A setting, its value in the file and on the command line, and what each layer yields.
struct Layers {
    key: &'static str,
    in_file: &'static str,
    flag: &'static str,
    shown: fn(&Settings) -> String,
    by_default: &'static str,
    by_file: &'static str,
    by_flag: &'static str,
}

#[test]
fn a_flag_beats_the_file_and_the_file_beats_the_default() {
    let rows = [
        Layers {
            key: "kill_grace",
            in_file: "\"1m\"",
            flag: "1500ms",
            shown: |s| format!("{:?}", s.kill_grace),
            by_default: "10s",
            by_file: "60s",
            by_flag: "1.5s",
        },
        Layers {
            key: "max_concurrent_actions",
            in_file: "7",
            flag: "9",
            shown: |s| s.max_concurrent_actions.to_string(),
            by_default: "3",
            by_file: "7",
            by_flag: "9",
        },
        Layers {
            key: "protected_clusters",
            in_file: "[\"a\", \"b\"]",
            flag: "c, d",
            shown: |s| s.protected_clusters.join("+"),
            by_default: "devops",
            by_file: "a+b",
            by_flag: "c+d",
        },
        Layers {
            key: "database",
            in_file: "\"/from/file.db\"",
            flag: "/from/flag.db",
            shown: |s| s.database.to_string(),
            by_default: "kindler-data/kindler.db",
            by_file: "/from/file.db",
            by_flag: "/from/flag.db",
        },
        Layers {
            key: "log_level",
            in_file: "\"debug\"",
            flag: "warn",
            shown: |s| format!("{:?}", s.log_level),
            by_default: "Info",
            by_file: "Debug",
            by_flag: "Warn",
        },
        Layers {
            key: "pf_port_range",
            in_file: "[20000, 20010]",
            flag: "21000-21001",
            shown: |s| s.pf_port_range.to_string(),
            by_default: "19001-19999",
            by_file: "20000-20010",
            by_flag: "21000-21001",
        },
        Layers {
            key: "create_command",
            in_file: "[\"/bin/make-it\", \"--fast\"]",
            flag: "/bin/other",
            shown: |s| s.create_command.to_string(),
            by_default: concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/create-cluster"),
            by_file: "/bin/make-it --fast",
            by_flag: "/bin/other",
        },
        Layers {
            key: "listen",
            in_file: "\"\"",
            flag: "127.0.0.1:1",
            shown: |s| format!("{:?}", s.listen),
            by_default: "Some(127.0.0.1:8765)",
            by_file: "None",
            by_flag: "Some(127.0.0.1:1)",
        },
        Layers {
            key: "listen_unix",
            in_file: "\"/run/from-file\"",
            flag: "",
            shown: |s| format!("{:?}", s.listen_unix),
            by_default: "None",
            by_file: "Some(\"/run/from-file\")",
            by_flag: "None",
        },
    ];
    let packaged = Path::new(PACKAGED_SCRIPTS).exists();
    let state_directory = std::env::var_os("STATE_DIRECTORY").is_some();
    for row in rows {
        let flag = format!("--{}", row.key.replace('_', "-"));
        let shown = |s: Result<Settings, String>| (row.shown)(&s.unwrap());
        let file = Fixture::new(&format!("{} = {}\n", row.key, row.in_file));
        let machine_dependent =
            (row.key == "create_command" && packaged) || (row.key == "database" && state_directory);
        if !machine_dependent {
            assert_eq!(shown(load("", &[])), row.by_default, "{}", row.key);
        }
        assert_eq!(shown(file.load(&[])), row.by_file, "{}", row.key);
        assert_eq!(
            shown(file.load(&[&flag, row.flag])),
            row.by_flag,
            "{}",
            row.key
        );
    }
}

/// The one test that sets variables; their prefix is its own.
#[test]
fn a_variable_beats_the_file_and_a_flag_beats_the_variable() {
    const PREFIX: &str = "KINDLER_ENV_TEST_";
    let file = Fixture::new("kill_grace = \"1m\"\nbase_domain = \"file\"\n");
    std::env::set_var("KINDLER_ENV_TEST_KILL_GRACE", "3s");
    std::env::set_var("KINDLER_ENV_TEST_BASE_DOMAIN", "variable");
    let by_variable = file.load_with(PREFIX, &[]);
    let by_flag = file.load_with(PREFIX, &["--base-domain", "flag"]);
    let refused = {
        std::env::set_var("KINDLER_ENV_TEST_MAX_CONCURRENT_ACTIONS", "0");
        file.load_with(PREFIX, &[])
    };
    for var in ["KILL_GRACE", "BASE_DOMAIN", "MAX_CONCURRENT_ACTIONS"] {
        std::env::remove_var(format!("{PREFIX}{var}"));
    }
    let by_variable = by_variable.unwrap();
    assert_eq!(by_variable.kill_grace, Duration::from_secs(3));
    assert_eq!(by_variable.base_domain, "variable");
    let by_flag = by_flag.unwrap();
    assert_eq!(by_flag.base_domain, "flag");
    assert_eq!(by_flag.kill_grace, Duration::from_secs(3));
    assert!(refused.unwrap_err().contains("it must be 1–1024"));
}

/// A value refused, as the file writes it and as a flag gives it (`None`: TOML only).
const BAD_VALUES: &[(&str, &str, Option<&str>)] = &[
    ("max_concurrent_actions", "0", Some("0")),
    ("max_concurrent_actions", "-1", None),
    ("max_concurrent_actions", "\"many\"", None),
    ("output_tail_lines", "10001", Some("10001")),
    ("history_per_cluster", "0", Some("0")),
    ("poll_interval", "\"0s\"", Some("0s")),
    ("kill_grace", "\"soon\"", Some("soon")),
    ("kill_grace", "10", None),
    ("pf_port_range", "[9, 1]", Some("9-1")),
    ("pf_port_range", "\"0-5\"", Some("0-5")),
    ("listen", "\"nowhere\"", Some("nowhere")),
    ("log_level", "\"loud\"", Some("loud")),
    ("create_command", "[]", None),
    ("protected_clusters", "[1]", None),
];

#[test]
fn a_bad_value_names_file_line_and_key_and_a_flag_gets_the_same_reason() {
    for &(key, written, flag_value) in BAD_VALUES {
        let fixture = Fixture::new(&format!("# settings\n\n{key} = {written}\n"));
        let err = fixture.load(&[]).unwrap_err();
        let head = format!("{}: line 3: {key} is {written}; it ", fixture.file());
        assert!(err.starts_with(&head), "{err}");
        let reason = &err[head.len() - 3..];
        if let Some(value) = flag_value {
            let flag = format!("--{}", key.replace('_', "-"));
            let err = refusal("", &[&flag, value]);
            assert!(err.contains(&flag) && err.contains(reason), "{err}");
        }
    }
}

#[test]
fn the_reasons_say_what_is_wanted() {
    let says = |toml: &str, words: &str| {
        let err = refusal(toml, &[]);
        assert!(err.contains(words), "{err}");
    };
    says(
        "max_concurrent_actions = 0",
        "max_concurrent_actions is 0; it must be 1–1024",
    );
    says("output_tail_lines = 0", "it must be 1–10000");
    says("history_per_cluster = 0", "it must be at least 1");
    says("resync_interval = \"0s\"", "it must be longer than 0");
    says("max_concurrent_actions = -1", "it must not be negative");
    says("kill_grace = \"soon\"", "it is not a duration like");
    says("kill_grace = 10", "it must be a duration like");
    says(
        "log_target = \"syslog\"",
        "it is not one of auto, journal, stderr",
    );
    says("create_command = [\"\"]", "it must name a program");
}

#[test]
fn unknown_keys_and_broken_files_are_refused_with_their_line() {
    let fixture = Fixture::new("base_domain = \"x\"\nmax_concurent_actions = 3\n");
    let err = fixture.load(&[]).unwrap_err();
    let want = format!(
        "{}: line 2: unknown key max_concurent_actions",
        fixture.file()
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(
        err.contains("max_concurrent_actions"),
        "the keys are listed: {err}"
    );
    assert!(refusal("[server]\nlisten = \"\"\n", &[]).contains("line 1: unknown key server"));
    let err = refusal("kill_grace = \"10s\"\nbase_domain = \n", &[]);
    assert!(err.contains("line 2: "), "{err}");
}

#[test]
fn backoff_initial_may_not_be_longer_than_backoff_max() {
    let fixture = Fixture::new("backoff_initial = \"10m\"\n");
    let err = fixture.load(&[]).unwrap_err();
    assert!(
        err.contains("backoff_initial (10m) is longer than backoff_max (5m)")
            && err.contains(&fixture.file()),
        "{err}"
    );
    let flags = ["--backoff-initial", "2m", "--backoff-max", "1m"];
    assert!(refusal("", &flags).contains("backoff_initial (2m)"));
    assert!(load("backoff_max = \"10m\"", &["--backoff-initial", "10m"]).is_ok());
}

#[test]
fn a_reload_keeps_the_settings_that_need_a_restart() {
    let running = load("", &[]).unwrap();
    let mut same = load("", &[]).unwrap();
    assert!(same.keep_start_up_values(&running).is_empty());
    let mut new = load(
        "database = \"/elsewhere.db\"\nkill_grace = \"1s\"\nlog_level = \"debug\"\n",
        &[
            "--listen",
            "",
            "--listen-unix",
            "/run/k.sock",
            "--log-target",
            "stderr",
        ],
    )
    .unwrap();
    let changed = new.keep_start_up_values(&running);
    assert_eq!(changed, ["database", "listen", "listen_unix", "log_target"]);
    assert_eq!(
        (&new.database, new.listen, &new.listen_unix, new.log_target),
        (
            &running.database,
            running.listen,
            &running.listen_unix,
            running.log_target
        )
    );
    assert_eq!(new.kill_grace, Duration::from_secs(1));
    assert_eq!(new.log_level, LogLevel::Debug);
}

/// What `load` says of the path `make` creates, within a few seconds.
fn load_promptly(make: impl FnOnce(&Path)) -> String {
    let fixture = Fixture::new("");
    let path = fixture.dir.path().join("kindler.toml");
    std::fs::remove_file(&path).unwrap();
    make(&path);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fixture.load(&[]).map(|_| ()));
    });
    let answer = rx.recv_timeout(Duration::from_secs(5));
    let err = answer.expect("load() blocked").unwrap_err();
    assert!(err.contains(&*path.to_string_lossy()), "{err}");
    err
}

#[test]
fn a_fifo_in_the_files_place_is_refused_at_once() {
    let err = load_promptly(|p| nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap());
    assert!(
        err.contains("is a FIFO (named pipe), not a regular file"),
        "{err}"
    );
}

#[test]
fn only_a_regular_file_is_read() {
    let err = load_promptly(|p| std::fs::create_dir(p).unwrap());
    assert!(err.contains("is a directory, not a regular file"), "{err}");
    let err = load_promptly(|p| {
        std::os::unix::net::UnixListener::bind(p).unwrap();
    });
    assert!(err.contains("is a socket, not a regular file"), "{err}");
    // Reading /dev/zero would never end.
    let err = load_promptly(|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap());
    assert!(
        err.contains("is a character device, not a regular file"),
        "{err}"
    );
    let err = load_promptly(|_| ());
    assert!(err.contains("configuration file not found"), "{err}");
}

#[test]
fn dev_null_is_an_empty_configuration() {
    let fixture = Fixture::new("");
    let path = fixture.dir.path().join("kindler.toml");
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/null", &path).unwrap();
    let (from_null, from_empty) = (fixture.load(&[]).unwrap(), load("", &[]).unwrap());
    assert_eq!(from_null.config_file, Some(path));
    let without_file = |s: Settings| Settings {
        config_file: None,
        ..s
    };
    assert_eq!(without_file(from_null), without_file(from_empty));
}

#[test]
fn the_help_shows_each_settings_flag_variable_default_and_rule() {
    let help = clap::Command::new("kindler")
        .args(args(ENV_PREFIX))
        .term_width(1000)
        .render_help()
        .to_string();
    for key in KEYS {
        let flag = format!("--{} <", key.replace('_', "-"));
        let var = format!("[env: KINDLER_{}=]", key.to_uppercase());
        assert!(help.contains(&flag) && help.contains(&var), "{key}: {help}");
    }
    for shown in [
        "--kill-grace <DURATION>",
        "--log-level <LOG_LEVEL>",
        "[must be 1–1024]",
        "[default: 30days]",
        "[possible values: error, warn, info, debug]",
        "auto-detect [restart to change]",
    ] {
        assert!(help.contains(shown), "{shown}: {help}");
    }
}
