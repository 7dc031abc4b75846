//! The `kindler` client commands through the real binary, against a real daemon on a real
//! SQLite file: each subcommand, `--wait` on success, failure and timeout, the unix socket
//! and TCP, an unreachable server, colour on a terminal and `NO_COLOR`, plain output off
//! one. Waits are for conditions, with deadlines.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{eventually, free_port, Env, Guarded, BIN};
use serde_json::Value;

const SEC: Duration = Duration::from_secs(1);

/// The client command, reaching `server`, with a clean environment (no colour settings, no
/// KINDLER_* of the machine).
fn client(server: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("KINDLER_") || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("KINDLER_SERVER", server)
        .stdin(Stdio::null());
    cmd
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run(mut cmd: Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run kindler");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn url(env: &Env) -> String {
    format!("http://127.0.0.1:{}", env.port)
}

fn kindler(env: &Env, args: &[&str]) -> Run {
    run(client(&url(env), args))
}

#[test]
fn ls_get_history_logs_and_status() {
    let env = Env::new();
    let _d = env.start(&[]);
    for (name, provider) in [("web", "kind"), ("api", "k3d")] {
        let r = kindler(&env, &["create", name, "--provider", provider]);
        assert_eq!(r.code, Some(0), "{r:?}");
        assert!(
            r.stdout.contains(&format!("Cluster {name} declared")),
            "{r:?}"
        );
    }
    env.await_state("web", "running", 20 * SEC);
    env.await_state("api", "running", 20 * SEC);

    let ls = kindler(&env, &["ls"]);
    assert_eq!(ls.code, Some(0), "{ls:?}");
    let lines: Vec<&str> = ls.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{ls:?}");
    for column in [
        "PROVIDER",
        "DESIRED",
        "ACTUAL",
        "AGE",
        "PORTS",
        "NEXT RETRY",
    ] {
        assert!(lines[0].contains(column), "{column}: {ls:?}");
    }
    assert!(
        lines[1].starts_with("api ") && lines[2].starts_with("web "),
        "sorted by name: {ls:?}"
    );
    assert!(
        lines[1].contains("k3d") && lines[1].contains("running"),
        "{ls:?}"
    );
    assert!(
        !ls.stdout.contains('\x1b'),
        "no colour off a terminal: {ls:?}"
    );
    // (Ages may have moved on meanwhile: the names and states are compared.)
    let names_states = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                format!("{} {}", f[0], f[3])
            })
            .collect()
    };
    let list = run(client(&url(&env), &["list"]));
    assert_eq!(
        names_states(&list.stdout),
        names_states(&ls.stdout),
        "list is ls"
    );

    let json: Value = serde_json::from_str(&kindler(&env, &["ls", "-o", "json"]).stdout).unwrap();
    assert_eq!(
        json,
        env.get("/api/clusters").json(),
        "-o json prints the API's objects"
    );

    let get = kindler(&env, &["get", "web"]);
    assert_eq!(get.code, Some(0), "{get:?}");
    for field in [
        "Name:",
        "Provider:",
        "kind",
        "Actual state:",
        "running",
        "Port-forward port:",
    ] {
        assert!(get.stdout.contains(field), "{field}: {get:?}");
    }
    assert!(get.stdout.contains("Last runs"), "{get:?}");
    let get_json: Value =
        serde_json::from_str(&kindler(&env, &["get", "web", "-o", "json"]).stdout).unwrap();
    assert_eq!(get_json["name"], "web");

    let history = kindler(&env, &["history", "web"]);
    assert_eq!(history.code, Some(0), "{history:?}");
    assert!(
        history.stdout.contains("create") && history.stdout.contains("succeeded"),
        "{history:?}"
    );
    assert!(
        history.stdout.lines().next().unwrap().contains("DURATION"),
        "{history:?}"
    );

    // The latest run is the probe that ended the create; --run picks the create itself.
    let runs = env.get("/api/clusters/web/history").json();
    let create_id = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "create")
        .unwrap()["run_id"]
        .as_i64()
        .unwrap();
    let logs = kindler(&env, &["logs", "web", "--run", &create_id.to_string()]);
    assert_eq!(logs.code, Some(0), "{logs:?}");
    assert!(
        logs.stdout.contains("[create] web: step 1/2 done"),
        "{logs:?}"
    );
    let no_run = kindler(&env, &["logs", "web", "--run", "99999"]);
    assert_eq!(no_run.code, Some(1), "{no_run:?}");
    assert!(no_run.stderr.contains("no run 99999"), "{no_run:?}");

    let status = kindler(&env, &["status"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    for what in [
        env!("CARGO_PKG_VERSION"),
        "healthy",
        env.db().to_str().unwrap(),
        "Sockets:",
        "2 running",
        "Next retry:",
    ] {
        assert!(status.stdout.contains(what), "{what}: {status:?}");
    }
    let s: Value = serde_json::from_str(&kindler(&env, &["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(s["clusters"]["total"], 2);
    assert_eq!(s["clusters"]["by_actual_state"]["running"], 2);

    let missing = kindler(&env, &["get", "nope"]);
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(
        missing.stderr.contains("Cluster nope not found"),
        "{missing:?}"
    );
}

#[test]
fn create_wait_follows_the_script_and_exits_0() {
    let env = Env::new();
    let _d = env.start(&[]);
    env.mode("create", "busy:0.5");
    let r = kindler(
        &env,
        &[
            "create",
            "dev",
            "--provider",
            "k3d",
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    // The script's lines, in order, on stdout; the outcome last.
    let at = |needle: &str| {
        r.stdout
            .find(needle)
            .unwrap_or_else(|| panic!("{needle}: {r:?}"))
    };
    assert!(
        at("[create] dev: starting") < at("pulling layer 1/4"),
        "{r:?}"
    );
    assert!(at("pulling layer 1/4") < at("children done"), "{r:?}");
    assert!(at("children done") < at("Cluster dev created"), "{r:?}");
    // Off a terminal: plain progress lines, no spinner, no colour.
    assert!(r.stderr.contains("... Creating cluster dev"), "{r:?}");
    assert!(
        !r.stderr.contains('\r') && !r.stdout.contains('\x1b') && !r.stderr.contains('\x1b'),
        "{r:?}"
    );
    assert_eq!(env.cluster("dev").unwrap()["actual_state"], "running");
}

#[test]
fn create_wait_exits_1_at_a_failed_attempt_and_keep_waiting_rides_through() {
    let env = Env::new();
    let _d = env.start(&[]);
    env.mode("create-bad", "fail");
    let r = kindler(&env, &["create", "bad", "--provider", "k3d", "--wait"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stdout.contains("ERROR: port 6443 is already allocated"),
        "the script's output: {r:?}"
    );
    assert!(
        r.stderr
            .contains("The create of bad failed: create failed (exit status 3)"),
        "{r:?}"
    );
    assert!(r.stderr.contains("kindler keeps retrying"), "{r:?}");

    // A cluster that fails once, then succeeds: --keep-waiting reports the failure and
    // waits for the retry.
    env.mode("create-flaky", "fail");
    let mut child = Guarded(
        client(
            &url(&env),
            &[
                "create",
                "flaky",
                "--provider",
                "kind",
                "--wait",
                "--keep-waiting",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    eventually(20 * SEC, "the first create of flaky to fail", || {
        let runs = env.get("/api/clusters/flaky/history");
        (runs.status == 200
            && runs
                .json()
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["outcome"] == "failed"))
        .then_some(())
    });
    env.clear_mode("create-flaky");
    let status = eventually(30 * SEC, "the client to exit", || child.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}\n{out}\n{err}");
    assert!(err.contains("The create of flaky failed"), "{err}");
    assert!(out.contains("Cluster flaky created"), "{out}");
}

#[test]
fn create_wait_times_out_with_3_and_kindler_carries_on() {
    let env = Env::new();
    let _d = env.start(&[]);
    env.mode("create", "hang");
    let started = std::time::Instant::now();
    let r = kindler(
        &env,
        &[
            "create",
            "slow",
            "--provider",
            "k3d",
            "--wait",
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(r.code, Some(3), "{r:?}");
    assert!(
        r.stderr
            .contains("timed out after 1s waiting for cluster slow to be created"),
        "{r:?}"
    );
    assert!(started.elapsed() < 15 * SEC, "it gave up near its timeout");
    assert_eq!(
        env.cluster("slow").unwrap()["actual_state"],
        "creating",
        "kindler goes on"
    );
}

#[test]
fn stop_start_and_delete_wait_for_their_state() {
    let env = Env::new();
    let _d = env.start(&[]);
    let ok = |args: &[&str]| {
        let r = kindler(&env, args);
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
        r
    };
    ok(&["create", "dev", "--provider", "k3d", "--wait"]);
    let r = ok(&["stop", "dev", "--wait"]);
    assert!(
        r.stdout.contains("[stop] dev: finished") && r.stdout.contains("Cluster dev stopped"),
        "{r:?}"
    );
    assert_eq!(env.cluster("dev").unwrap()["actual_state"], "stopped");
    ok(&["start", "dev", "--wait"]);
    assert_eq!(env.cluster("dev").unwrap()["actual_state"], "running");
    let r = ok(&["delete", "dev", "--wait"]);
    assert!(r.stdout.contains("Cluster dev deleted"), "{r:?}");
    assert!(env.cluster("dev").is_none());
    // A protected cluster: refused with the API's words, exit 1.
    ok(&["create", "devops", "--provider", "k3d"]);
    let r = kindler(&env, &["delete", "devops"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("Cluster devops is protected"), "{r:?}");
}

#[test]
fn create_flags_reach_the_script() {
    let env = Env::new();
    let _d = env.start(&[]);
    let r = kindler(
        &env,
        &[
            "create",
            "net",
            "--provider",
            "kind",
            "--node-port",
            "30111",
            "--pf-port",
            "19555",
            "--http-port",
            "18555",
            "--https-port",
            "18556",
            "--subnet",
            "10.77.0.0/16",
            "--no-portainer",
            "--no-argocd",
            "--wait",
        ],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let c = env.cluster("net").unwrap();
    assert_eq!(
        (
            c["node_port"].as_u64(),
            c["pf_port"].as_u64(),
            c["http_port"].as_u64(),
            c["https_port"].as_u64()
        ),
        (Some(30111), Some(19555), Some(18555), Some(18556))
    );
    assert_eq!(c["cluster_subnet"], "10.77.0.0/16");
    let argv = env.argv("create-net");
    for arg in [
        "--no-register-portainer",
        "--haproxy-route",
        "--no-register-argocd",
    ] {
        assert!(argv.iter().any(|a| a == arg), "{arg}: {argv:?}");
    }
}

#[test]
fn bad_names_are_refused_before_anything_is_sent_with_the_apis_words() {
    let env = Env::new();
    let _d = env.start(&[]);
    let api = env.post("/api/clusters", r#"{"name":"Bad_Name","provider":"k3d"}"#);
    assert_eq!(api.status, 422);
    let msg = api.json()["detail"][0]["msg"].as_str().unwrap().to_owned();
    // No server at all: a usage error (2), not "unreachable" (3), so nothing was sent.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    for args in [
        &["create", "Bad_Name", "--provider", "k3d"][..],
        &["get", "Bad_Name"],
        &["delete", "Bad_Name"],
        &["logs", "Bad_Name"],
    ] {
        let r = run(client(&nowhere, args));
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(&msg),
            "{args:?} says what the API says ({msg}): {r:?}"
        );
    }
    let r = run(client(
        &nowhere,
        &[
            "create",
            "ok",
            "--provider",
            "k3d",
            "--subnet",
            "10.0.0.300/8",
        ],
    ));
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("not an IPv4 CIDR"), "{r:?}");
    let r = run(client(&nowhere, &["create", "ok", "--provider", "docker"]));
    assert_eq!(r.code, Some(2), "clap refuses the provider: {r:?}");
}

#[test]
fn an_unreachable_server_is_one_line_and_exit_3() {
    let port = free_port();
    for server in [
        format!("http://127.0.0.1:{port}"),
        "unix:/nonexistent/kindler.sock".into(),
    ] {
        let r = run(client(&server, &["ls"]));
        assert_eq!(r.code, Some(3), "{r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "one line: {r:?}");
        let shown = server.trim_start_matches("unix:");
        assert!(r.stderr.contains(shown), "where it tried: {r:?}");
        assert!(
            r.stderr.contains("systemctl status kindler"),
            "what to check: {r:?}"
        );
    }
    let r = run(client("ftp://x", &["ls"]));
    assert_eq!(r.code, Some(2), "a bad --server is a usage error: {r:?}");
}

#[test]
fn the_unix_socket_and_tcp_serve_the_same_and_server_beats_the_variable() {
    let env = Env::new();
    let bound = env.start_listening(&[]);
    let (port, sock) = (bound.port, &bound.sock);
    let unix = format!("unix:{}", sock.display());
    eventually(10 * SEC, "the unix socket", || {
        (run(client(&unix, &["status"])).code == Some(0)).then_some(())
    });
    let r = run(client(
        &unix,
        &["create", "viaunix", "--provider", "k3d", "--wait"],
    ));
    assert_eq!(r.code, Some(0), "--wait over the unix socket: {r:?}");
    let tcp = format!("http://127.0.0.1:{port}");
    let over_tcp = run(client(&tcp, &["ls", "-o", "json"]));
    let over_unix = run(client(&unix, &["ls", "-o", "json"]));
    assert_eq!(over_tcp.stdout, over_unix.stdout);
    assert!(over_unix.stdout.contains("viaunix"));
    // --server wins over KINDLER_SERVER.
    let mut cmd = client("http://127.0.0.1:1", &["ls"]);
    cmd.args(["--server", &unix]);
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "{r:?}");
    let status = run(client(&unix, &["status"]));
    assert!(
        status.stdout.contains(&format!("unix:{}", sock.display())),
        "{status:?}"
    );
}

/// Runs `args` on a pseudo-terminal (util-linux `script`), returning what it printed.
fn on_terminal(env: &Env, args: &str, no_color: bool) -> String {
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &format!("{BIN} {args}"), "/dev/null"])
        .env("KINDLER_SERVER", url(env))
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let out = cmd.output().expect("script (util-linux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colour_on_a_terminal_only_and_never_with_no_color() {
    let env = Env::new();
    let _d = env.start(&[]);
    let r = kindler(&env, &["create", "dev", "--provider", "k3d", "--wait"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let coloured = on_terminal(&env, "ls", false);
    assert!(
        coloured.contains("\x1b[32mrunning"),
        "green on a terminal: {coloured:?}"
    );
    let plain = on_terminal(&env, "ls", true);
    assert!(
        plain.contains("running") && !plain.contains('\x1b'),
        "NO_COLOR: {plain:?}"
    );
    // On a terminal --wait draws a progress line (carriage returns), still without colour
    // under NO_COLOR.
    let waited = on_terminal(&env, "stop dev --wait", true);
    assert!(waited.contains("Cluster dev stopped"), "{waited:?}");
    assert!(
        waited.contains('\r'),
        "a progress line redrawn in place: {waited:?}"
    );
    assert!(!waited.contains("\x1b[3"), "no colour: {waited:?}");
}

#[test]
fn logs_follow_a_run_until_it_ends() {
    let env = Env::new();
    let _d = env.start(&[]);
    env.mode("create", "slow:1");
    assert_eq!(
        kindler(&env, &["create", "dev", "--provider", "k3d"]).code,
        Some(0)
    );
    env.await_state("dev", "creating", 10 * SEC);
    let r = kindler(&env, &["logs", "dev", "-f"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("[create] dev: done after 1s"), "{r:?}");
    assert_eq!(
        r.stdout.matches("[create] dev: starting").count(),
        1,
        "no line twice: {r:?}"
    );
}

#[test]
fn ls_watch_redraws_when_something_changes() {
    let env = Env::new();
    let _d = env.start(&[]);
    let mut child = Guarded(
        client(&url(&env), &["ls", "--watch"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("No clusters declared"), "{first}");
    assert_eq!(
        kindler(&env, &["create", "later", "--provider", "k3d"]).code,
        Some(0)
    );
    let found = (&mut lines)
        .map_while(Result::ok)
        .find(|l| l.starts_with("later "));
    assert!(
        found.is_some(),
        "the new cluster appears in a redrawn table"
    );
}

#[test]
fn help_fits_each_command_and_completions_and_man_pages_are_generated() {
    let help = |args: &[&str]| run(client("http://127.0.0.1:1", args)).stdout;
    let serve = help(&["serve", "--help"]);
    assert!(
        serve.contains("--pf-port-range") && serve.contains("2 for a usage"),
        "{serve}"
    );
    let reconcile = help(&["reconcile", "--help"]);
    assert!(reconcile.contains("--create-command"), "{reconcile}");
    for unused in [
        "--listen",
        "--pf-port-range",
        "--protected-clusters",
        "--allowed-hosts",
    ] {
        assert!(
            !reconcile.contains(unused),
            "reconcile --help offers {unused}"
        );
    }
    let migrate = help(&["migrate", "--help"]);
    assert!(
        migrate.contains("--database") && !migrate.contains("--create-command"),
        "{migrate}"
    );
    assert!(
        !serve.contains("create_env.sh"),
        "no name a new user does not know"
    );
    assert!(help(&["--version"]).contains(env!("CARGO_PKG_VERSION")));
    let create = help(&["create", "--help"]);
    for flag in [
        "--provider",
        "--wait",
        "--timeout",
        "--keep-waiting",
        "--no-haproxy",
        "--server",
    ] {
        assert!(create.contains(flag), "{flag}: {create}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = help(&["completions", shell]);
        assert!(
            script.contains("kindler") && script.contains("keep-waiting"),
            "{shell}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let r = run(client(
        "http://127.0.0.1:1",
        &["manpages", dir.path().to_str().unwrap()],
    ));
    assert_eq!(r.code, Some(0), "{r:?}");
    let main = std::fs::read_to_string(dir.path().join("kindler.8")).unwrap();
    for section in [
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH API",
        "SEE ALSO",
        "EXIT STATUS",
    ] {
        assert!(main.contains(section), "{section}");
    }
    for var in [
        "KINDLER_DATABASE",
        "KINDLER_PF_PORT_RANGE",
        "KINDLER_SERVER",
        "KINDLER_CONFIG",
    ] {
        assert!(main.contains(var), "{var} in ENVIRONMENT");
    }
    for page in [
        "kindler-ls.1",
        "kindler-create.1",
        "kindler-serve.8",
        "kindler-status.1",
    ] {
        let path = dir.path().join(page);
        assert!(path.exists(), "{page}");
        // groff finds no problem in the page (when it is installed; -k reads UTF-8, as man does).
        if let Ok(out) = Command::new("groff")
            .args(["-man", "-ww", "-z"])
            .arg(&path)
            .output()
        {
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(warnings.trim().is_empty(), "{page}: {warnings}");
        }
    }
}

#[test]
fn status_exits_1_and_says_why_while_kindler_is_degraded() {
    let env = Env::new();
    let _d = env.start(&[]);
    assert_eq!(kindler(&env, &["status"]).code, Some(0));
    // The database file removed under the daemon: it refuses writes until it is back.
    let db = env.db();
    std::fs::rename(&db, db.with_extension("moved")).unwrap();
    let r = eventually(10 * SEC, "kindler status to report the problem", || {
        let r = kindler(&env, &["status"]);
        (r.code == Some(1)).then_some(r)
    });
    assert!(r.stdout.contains("degraded"), "{r:?}");
    assert!(r.stdout.contains("database_file"), "{r:?}");
    let json: Value =
        serde_json::from_str(&kindler(&env, &["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(json["status"], "degraded");
    std::fs::rename(db.with_extension("moved"), &db).unwrap();
    eventually(10 * SEC, "kindler status to be healthy again", || {
        (kindler(&env, &["status"]).code == Some(0)).then_some(())
    });
}
