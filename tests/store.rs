//! Databases left by the old system open and are upgraded in place with every row kept.

mod common;

use std::time::Duration;

use common::Env;

const SEC: Duration = Duration::from_secs(1);

/// The old backend's table, without the five state columns (the oldest files).
const OLDEST: &str = "
CREATE TABLE clusters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    provider TEXT NOT NULL,
    subnet TEXT,
    node_port INTEGER,
    pf_port INTEGER,
    http_port INTEGER,
    https_port INTEGER,
    server_ip TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO clusters (name, provider, subnet, node_port, pf_port, server_ip, created_at)
    VALUES ('dev', 'kind', '10.101.0.0/16', 30080, 19001, '10.101.0.2', '2025-01-02 03:04:05');
INSERT INTO clusters (name, provider, pf_port) VALUES ('uat', 'k3d', 19002);
";

/// The newer layout with the state columns and the operations table.
const NEWER: &str = "
CREATE TABLE clusters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    provider TEXT NOT NULL,
    subnet TEXT,
    node_port INTEGER,
    pf_port INTEGER,
    http_port INTEGER,
    https_port INTEGER,
    server_ip TEXT,
    status TEXT DEFAULT 'unknown',
    desired_state TEXT DEFAULT 'present',
    actual_state TEXT DEFAULT 'unknown',
    last_reconciled_at TIMESTAMP,
    reconcile_error TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_name TEXT NOT NULL,
    operation TEXT NOT NULL,
    status TEXT NOT NULL,
    log_output TEXT,
    started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    completed_at TIMESTAMP,
    error_message TEXT
);
INSERT INTO clusters (name, provider, pf_port, desired_state, actual_state, status)
    VALUES ('prod', 'k3d', 19003, 'present', 'running', 'running');
INSERT INTO clusters (name, provider, pf_port, desired_state, actual_state)
    VALUES ('gone', 'kind', 19004, 'absent', 'running');
INSERT INTO clusters (name, provider) VALUES ('Bad Name', 'k3d');
INSERT INTO operations (cluster_name, operation, status) VALUES ('prod', 'create', 'completed');
";

#[test]
fn the_oldest_layout_is_upgraded_with_its_rows_kept_and_reconciled() {
    let env = Env::new();
    env.sqlite(OLDEST);
    let _d = env.start(&[]);
    let columns = env.sqlite("SELECT group_concat(name) FROM pragma_table_info('clusters')");
    for c in [
        "status",
        "desired_state",
        "actual_state",
        "last_reconciled_at",
        "reconcile_error",
        "generation",
    ] {
        assert!(columns.split(',').any(|x| x == c), "{c} added: {columns}");
    }
    let dev = env.cluster("dev").expect("dev kept");
    assert_eq!(dev["provider"], "kind");
    assert_eq!(dev["cluster_subnet"], "10.101.0.0/16");
    assert_eq!(dev["pf_port"], 19001);
    assert_eq!(dev["desired_state"], "present");
    assert_eq!(dev["created_at"], "2025-01-02T03:04:05.000Z");
    let uat = env.cluster("uat").expect("uat kept");
    assert_eq!(
        uat["node_port"], 30080,
        "NULL ports read as the contract's defaults"
    );
    assert_eq!(
        env.sqlite("SELECT server_ip FROM clusters WHERE name = 'dev'"),
        "10.101.0.2"
    );
    // Present and unknown: the reconciler creates them.
    env.await_state("dev", "running", 10 * SEC);
    env.await_state("uat", "running", 10 * SEC);
    assert_eq!(
        env.sqlite("SELECT group_concat(version) FROM schema_migrations"),
        "1,2,3,4,5,6"
    );
    assert_eq!(
        env.sqlite("SELECT COUNT(*) FROM operations"),
        "0",
        "the missing table was created"
    );
}

#[test]
fn the_newer_layout_keeps_its_states_and_a_second_start_changes_nothing() {
    let env = Env::new();
    env.sqlite(NEWER);
    let d = env.start(&[]);
    // running stays running (verified by a probe, not recreated); absent is deleted.
    env.await_gone("gone", 10 * SEC);
    let prod = env.await_state("prod", "running", 10 * SEC);
    assert_eq!(prod["desired_state"], "present");
    assert!(
        env.starts("create", "prod").is_empty(),
        "a running cluster is not created again"
    );
    assert_eq!(env.sqlite("SELECT COUNT(*) FROM operations"), "1");
    // The row another tool wrote with an invalid name is kept, reported and left alone.
    assert_eq!(
        env.sqlite("SELECT COUNT(*) FROM clusters WHERE name = 'Bad Name'"),
        "1"
    );
    common::eventually(5 * SEC, "the invalid row to be reported", || {
        d.log_text()
            .contains("\"Bad Name\") is ignored")
            .then_some(())
    });
    drop(d);
    let _d = env.start(&[]);
    assert_eq!(
        env.sqlite("SELECT group_concat(version) FROM schema_migrations"),
        "1,2,3,4,5,6"
    );
    assert_eq!(env.sqlite("SELECT COUNT(*) FROM clusters"), "2");
}

#[test]
fn a_database_from_a_newer_kindler_is_refused_untouched() {
    let env = Env::new();
    env.sqlite(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMP NOT NULL);
         INSERT INTO schema_migrations VALUES (99, 'future', '2030-01-01');",
    );
    let out = env.command(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("newer than this kindler knows"), "{err}");
}

#[test]
fn a_bad_config_file_names_the_file_line_and_key() {
    let env = Env::new();
    let path = env.dir.path().join("kindler.toml");
    std::fs::write(&path, "max_concurrent_actions = 3\nkill_grace = \"soon\"\n").unwrap();
    let out = env
        .command(&["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("kill_grace"), "{err}");

    std::fs::write(&path, "max_concurent_actions = 3\n").unwrap();
    let out = env
        .command(&["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        err.contains("line 1") && err.contains("max_concurent_actions"),
        "{err}"
    );

    // Out of range in the file, as on the command line: 0 would make kindler do nothing.
    std::fs::write(&path, "max_concurrent_actions = 0\n").unwrap();
    let out = env
        .command(&["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        err.contains("max_concurrent_actions is 0; it must be 1–1024"),
        "{err}"
    );
}

#[test]
fn file_then_environment_then_flags() {
    let env = Env::new();
    let path = env.dir.path().join("kindler.toml");
    std::fs::write(
        &path,
        "base_domain = \"from-file\"\nmax_concurrent_actions = 7\n",
    )
    .unwrap();
    let mut cmd = env.command(&["--config", path.to_str().unwrap()]);
    cmd.env("KINDLER_BASE_DOMAIN", "from-env");
    let _d = env.spawn(cmd);
    assert_eq!(env.get("/api/config").json()["base_domain"], "from-env");
    drop(_d);
    let _d = env.start(&["--config", path.to_str().unwrap()]);
    assert_eq!(env.get("/api/config").json()["base_domain"], "from-file");
    drop(_d);
    let mut cmd = env.command(&[
        "--config",
        path.to_str().unwrap(),
        "--base-domain",
        "from-flag",
    ]);
    cmd.env("KINDLER_BASE_DOMAIN", "from-env");
    let _d = env.spawn(cmd);
    assert_eq!(env.get("/api/config").json()["base_domain"], "from-flag");
}

#[test]
fn rows_other_tools_write_with_odd_types_do_not_break_the_api() {
    // SQLite keeps whatever type a `sqlite3` command wrote: an unset shell variable makes
    // '' of a port, strftime('%s') makes an integer of a timestamp.
    let env = Env::new();
    let _d = env.start(&[]);
    env.sqlite(
        "INSERT INTO clusters (name, provider, pf_port, register_argocd, created_at)
              VALUES ('odd', 'k3d', '', 'false', strftime('%s', 'now'));
         INSERT INTO clusters (name, provider, node_port) VALUES ('broken', 'kind', 'abc');
         INSERT INTO clusters (name, provider, pf_port, updated_at, last_reconciled_at)
              VALUES ('wild', 'kind', 19400, 1e300, 1764129600000000);",
    );
    let odd = env.await_state("odd", "running", 10 * SEC);
    assert_eq!(odd["pf_port"], 19000, "an empty port is the default: {odd}");
    assert_eq!(odd["register_argocd"], false);
    let created = odd["created_at"].as_str().unwrap();
    assert!(
        created.starts_with("20") && created.ends_with('Z'),
        "Unix seconds are read as a time: {created}"
    );
    assert_eq!(
        env.argv("create-odd")[..6],
        ["-n", "odd", "-p", "k3d", "--node-port", "30080"]
    );

    // The unreadable row is left alone and listed as invalid, saying why; the list answers.
    let list = env.get("/api/clusters");
    assert_eq!(list.status, 200, "{list:?}");
    let entries: Vec<(String, String)> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_owned();
            (name, c["status"].as_str().unwrap().to_owned())
        })
        .filter(|(name, _)| name != "odd" && name != "wild")
        .collect();
    assert_eq!(entries, [("broken".to_owned(), "invalid".to_owned())]);
    // Numbers that are no time (1e300, microseconds) are read as none, until kindler
    // writes its own.
    let wild = env.await_state("wild", "running", 10 * SEC);
    assert!(
        wild["created_at"].as_str().unwrap().ends_with('Z'),
        "{wild}"
    );
    assert_eq!(env.get("/api/health").status, 200);
    assert!(env.starts("create", "broken").is_empty());
    assert_eq!(
        env.sqlite("SELECT COUNT(*) FROM clusters WHERE name = 'broken'"),
        "1",
        "nothing stored is lost"
    );
}

#[test]
fn run_rows_other_tools_write_with_odd_values_break_neither_history_tasks_nor_recovery() {
    use serde_json::Value;
    let env = Env::new();
    let d = env.start(&[]);
    let r = env.post("/api/clusters", r#"{"name":"dev","provider":"k3d"}"#);
    assert_eq!(r.status, 202, "{r:?}");
    env.await_state("dev", "running", 10 * SEC);
    // Unfinished runs with odd values, as an operator's script might write them: one of the
    // cluster (so the task reads it), one of no cluster kindler knows.
    env.sqlite(
        "INSERT INTO reconcile_runs (cluster_id, cluster_name, action, generation, attempt,
                                     started_at, outcome, exit_code)
              SELECT id, 'dev', 'create', 'abc', 1e300, 'soon', 'exploded', x'00'
                FROM clusters WHERE name = 'dev';
         INSERT INTO reconcile_runs (cluster_id, cluster_name, action, generation, attempt,
                                     started_at)
              VALUES ('abc', 'dev', 'rebuild', 1, 1, 1764129600);",
    );
    let history = env.get("/api/clusters/dev/history");
    assert_eq!(history.status, 200, "{history:?}");
    let runs = history.json();
    let odd = &runs[1];
    assert_eq!(odd["started_at"], Value::Null, "{runs}");
    assert_eq!(odd["generation"], Value::Null, "{runs}");
    assert_eq!(odd["attempt"], Value::Null, "{runs}");
    assert_eq!(odd["exit_code"], Value::Null, "{runs}");
    assert_eq!(odd["outcome"], "interrupted", "{runs}");
    assert_eq!(runs[0]["started_at"], "2025-11-26T04:00:00.000Z", "{runs}");
    let task = env.get("/api/tasks/reconcile-dev");
    assert_eq!(task.status, 200, "{task:?}");
    assert_eq!(task.json()["status"], "completed", "{task:?}");

    // The next start ends them as interrupted, as any run a dead daemon left.
    drop(d);
    let d = env.start(&[]);
    common::eventually(10 * SEC, "the odd runs to be ended", || {
        (env.sqlite("SELECT COUNT(*) FROM reconcile_runs WHERE ended_at IS NULL") == "0")
            .then_some(())
    });
    assert_eq!(
        env.sqlite(
            "SELECT group_concat(outcome) FROM reconcile_runs
              WHERE cluster_id = 'abc' OR generation = 'abc'"
        ),
        "interrupted,interrupted"
    );
    assert!(
        !d.log_text().contains("cannot read unfinished runs"),
        "{}",
        d.log_text()
    );
    assert_eq!(env.cluster("dev").unwrap()["actual_state"], "running");

    // A time another program stored that is no time is null; the row stays valid.
    env.sqlite("UPDATE clusters SET created_at = 'soon' WHERE name = 'dev'");
    common::eventually(5 * SEC, "the odd created_at to be read", || {
        env.cluster("dev")?["created_at"].is_null().then_some(())
    });
    assert_eq!(env.get("/api/health").status, 200);
}

#[test]
fn a_database_kindler_may_not_write_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let migrate = |env: &Env| {
        std::process::Command::new(common::BIN)
            .args(["migrate", "--database", env.db().to_str().unwrap()])
            .env("KINDLER_CONFIG", "/dev/null")
            .output()
            .unwrap()
    };
    assert!(migrate(&env).status.success());
    // `migrate` does not change the schema under a running daemon.
    let d = env.start(&[]);
    let out = migrate(&env);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another kindler is already working"));
    drop(d);

    // Owned by root, 0444, and kindler runs as nobody: SQLite would open it read-only.
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let db = dir.path().join("kindler.db");
    std::fs::copy(env.db(), &db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--database",
            db.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("KINDLER_CONFIG", "/dev/null")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the database is read-only"), "{err}");
}

#[test]
fn an_old_table_missing_columns_is_completed_or_refused_untouched() {
    let env = Env::new();
    // Hand-built by some tool: no subnet, no ports, no timestamps, no state.
    env.sqlite(
        "CREATE TABLE clusters (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
                                provider TEXT NOT NULL, status TEXT);
         INSERT INTO clusters (name, provider) VALUES ('bare', 'kind');",
    );
    let _d = env.start(&[]);
    let bare = env.await_state("bare", "running", 10 * SEC);
    assert_eq!(bare["pf_port"], 19000, "{bare}");
    drop(_d);

    // Without a name column there is nothing to adopt: refused, nothing changed.
    let other = Env::new();
    other.sqlite("CREATE TABLE clusters (id INTEGER PRIMARY KEY, title TEXT)");
    let out = other.command(&[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("has no column name"), "{err}");
    assert_eq!(
        other.sqlite("SELECT group_concat(name) FROM sqlite_master"),
        "clusters"
    );
}
