//! systemd integration against real systemd components: sockets passed by
//! `systemd-socket-activate`, sd_notify over a datagram socket bound by the test, and a
//! real `systemd-journald` read back with `journalctl -o json`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_port, request, try_request, unix_request, Env, Notifications};
use serde_json::Value;

const SEC: Duration = Duration::from_secs(1);

#[test]
fn socket_activation_serves_tcp_and_unix_side_by_side() {
    let env = Env::new();
    let port = free_port();
    let sock = env.dir.path().join("api.sock");
    let log = env.dir.path().join("activated.log");
    let mut activator = common::Guarded(
        Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-l")
            .arg(&sock)
            .arg("--fdname=http:api")
            .arg("-E")
            .arg("KINDLER_CONFIG=/dev/null")
            .arg("-E")
            .arg("KINDLER_LOG_TARGET=stderr")
            .arg(common::BIN)
            .args([
                "serve",
                "--database",
                env.db().to_str().unwrap(),
                "--listen",
                "127.0.0.1:1",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("systemd-socket-activate (package systemd)"),
    );
    eventually(5 * SEC, "the activator to listen", || {
        sock.exists().then_some(())
    });
    // The first connection starts kindler; the request waits in the socket meanwhile.
    let r = request(port, "GET", "/api/health", None);
    assert_eq!(r.status, 200, "{r:?}");
    let r = unix_request(&sock, "GET", "/api/clusters").expect("unix socket");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text, "[]");
    let r = unix_request(&sock, "GET", "/api/config").unwrap();
    assert_eq!(r.json()["default_provider"], "k3d");
    // The log has its own writer thread: the line may land just after the answers.
    let ready = format!("ready on http://127.0.0.1:{port}, unix:{}", sock.display());
    let found = common::wait_for_file_text(&log, &ready, 5 * SEC);
    assert!(
        found.is_ok(),
        "both passed sockets are served (and --listen is ignored): {}",
        found.unwrap_err()
    );
    unsafe { libc::kill(activator.id() as i32, libc::SIGTERM) };
    let status = activator.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn passed_sockets_with_other_names_are_ignored() {
    let env = Env::new();
    let mut cmd = env.command(&[]);
    let log = env.dir.path().join("named.log");
    cmd.stderr(std::fs::File::create(&log).unwrap());
    common::pass_socket(&mut cmd, &env.listener);
    cmd.env("LISTEN_FDNAMES", "metrics"); // replaces pass_socket's "http"
    let port = free_port();
    cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
    let mut child = common::Guarded(cmd.spawn().unwrap());
    // The unknown socket is left alone and nothing else was passed: kindler binds --listen.
    eventually(10 * SEC, "the fallback listener", || {
        try_request(port, "GET", "/api/health", None, SEC)
            .ok()
            .filter(|r| r.status == 200)
    });
    let found =
        common::wait_for_file_text(&log, "ignoring passed socket 0 named \"metrics\"", 5 * SEC);
    assert!(found.is_ok(), "{}", found.unwrap_err());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn without_passed_sockets_it_binds_tcp_and_unix_itself() {
    let env = Env::new();
    let port = free_port();
    let sock = env.dir.path().join("run/kindler/api.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    // A socket file left behind by a crashed daemon does not stop the next one.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let mut cmd = env.command(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--listen-unix",
        sock.to_str().unwrap(),
    ]);
    cmd.stderr(Stdio::null());
    let mut child = common::Guarded(cmd.spawn().unwrap());
    eventually(10 * SEC, "the TCP listener", || {
        try_request(port, "GET", "/api/health", None, SEC)
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(
        unix_request(&sock, "GET", "/api/health").unwrap().status,
        200
    );
    let mode = std::fs::metadata(&sock).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o660, "the unix socket is group-restricted");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(
        !sock.exists(),
        "the socket file it created is removed on exit"
    );
}

#[test]
fn sd_notify_ready_status_stopping() {
    let env = Env::new();
    let notify = Notifications::bind(env.dir.path());
    let mut cmd = env.command(&[]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut d = env.spawn(cmd);
    let ready = notify.await_line(0, 10 * SEC, "READY=1", |l| l == "READY=1");
    // READY is only sent once the API answers: a request right now is served at once.
    let r = try_request(
        env.port,
        "GET",
        "/api/clusters",
        None,
        Duration::from_millis(500),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let lines = notify.assignments();
    assert_eq!(
        lines[ready + 1].1,
        "STATUS=no clusters declared",
        "{lines:?}"
    );
    assert_eq!(notify.count("READY=1"), 1);

    env.mode("create-bad", "fail");
    let body = r#"{"name":"good","provider":"k3d","pf_port":19600}"#;
    assert_eq!(env.post("/api/clusters", body).status, 202);
    notify.await_line(ready, 10 * SEC, "a status with the running cluster", |l| {
        l == "STATUS=1 cluster: 1 running"
    });
    let body = r#"{"name":"bad","provider":"k3d","pf_port":19601}"#;
    assert_eq!(env.post("/api/clusters", body).status, 202);
    notify.await_line(
        ready,
        10 * SEC,
        "a status with the failure and its retry",
        |l| l.starts_with("STATUS=2 clusters: 1 running, 1 failed; next retry: bad in"),
    );

    // A script is running when the stop begins: kindler asks for its grace (1 s here),
    // the time it keeps trying to record the run's end (3 s) and a margin (5 s) on top of
    // the unit's stop timeout.
    env.mode("create-slow", "hang");
    let body = r#"{"name":"slow","provider":"k3d","pf_port":19602}"#;
    assert_eq!(env.post("/api/clusters", body).status, 202);
    env.await_state("slow", "creating", 10 * SEC);
    let before = notify.assignments().len();
    d.signal(libc::SIGTERM);
    let stopping = notify.await_line(before, 5 * SEC, "STOPPING=1", |l| l == "STOPPING=1");
    notify.await_line(stopping, 5 * SEC, "EXTEND_TIMEOUT_USEC", |l| {
        l == "EXTEND_TIMEOUT_USEC=9000000"
    });
    assert!(d.wait_exit(5 * SEC).expect("exits").success());
}

#[test]
fn sd_notify_watchdog_pings_stop_when_the_reconciler_is_wedged() {
    let env = Env::new();
    let notify = Notifications::bind(env.dir.path());
    let wedge = env.dir.path().join("wedge");
    let mut cmd = env.command(&[]);
    // A watchdog of 2 s: kindler pings every second, which leaves a loaded machine the
    // margin systemd leaves it too (a ping must come within WATCHDOG_USEC, not on the dot).
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "2000000")
        .env("KINDLER_TEST_WEDGE_FILE", &wedge);
    let d = env.spawn(cmd);
    notify.await_line(0, 10 * SEC, "READY=1", |l| l == "READY=1");
    eventually(10 * SEC, "three watchdog pings", || {
        (notify.count("WATCHDOG=1") >= 3).then_some(())
    });
    let pings: Vec<Instant> = notify
        .assignments()
        .into_iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| t)
        .collect();
    // Always within the interval systemd allows, and not a flood: one a second on
    // average (the receiving thread's timestamps can bunch two pings on a loaded machine,
    // so single gaps are not held to the average).
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap < Duration::from_secs(2), "ping gap {gap:?}");
    }
    let span = *pings.last().unwrap() - pings[0];
    let mean = span / (pings.len() as u32 - 1);
    assert!(
        mean >= Duration::from_millis(500),
        "pings every {mean:?} on average"
    );

    std::fs::write(&wedge, "").unwrap();
    // The watchdog task notices the stalled loop and says so; from then on no ping may come
    // for three ping periods, so that systemd would restart kindler.
    eventually(10 * SEC, "the watchdog to notice the stall", || {
        d.log_text()
            .contains("not pinging the watchdog: reconciler loop stalled")
            .then_some(())
    });
    let stopped_at = notify.count("WATCHDOG=1");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        notify.count("WATCHDOG=1"),
        stopped_at,
        "no ping while the reconciler is wedged"
    );
    // The API still answers, and says why kindler is not healthy once the loop has been
    // stuck for long (10 s and two poll intervals).
    let r = eventually(20 * SEC, "health to report the stuck reconciler", || {
        let r = env.get("/api/health");
        (r.status == 503).then_some(r)
    });
    assert!(
        r.text.contains("the reconciler has not turned for"),
        "{r:?}"
    );
}

#[test]
fn ending_a_dead_daemons_leftovers_keeps_the_watchdog_fed() {
    // A daemon killed mid-create leaves processes that ignore SIGTERM. The next daemon
    // ends it before its loop first turns, waiting out kill_grace (3 s); the watchdog
    // (2 s: systemd would restart kindler after 2 s without a ping) must not starve meanwhile.
    let env = Env::new();
    env.mode("create", "deaf");
    let mut d = env.start(&[]);
    assert_eq!(
        env.post("/api/clusters", r#"{"name":"orphan","provider":"k3d"}"#)
            .status,
        202
    );
    eventually(10 * SEC, "the create's children", || {
        (env.pids("create-orphan").len() >= 4).then_some(())
    });
    d.signal(libc::SIGKILL);
    d.wait_exit(5 * SEC).expect("killed");

    env.mode("create", "ok");
    let notify = Notifications::bind(env.dir.path());
    let mut cmd = env.command(&["--kill-grace", "3s"]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "2000000");
    let d2 = env.spawn(cmd);
    let t0 = Instant::now();
    env.await_state("orphan", "running", 20 * SEC);
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "the orphans ignored SIGTERM, so recovery waited out the grace: {:?}",
        t0.elapsed()
    );
    let log = d2.log_text();
    assert!(!log.contains("not pinging the watchdog"), "{log}");
    let pings: Vec<Instant> = notify
        .assignments()
        .into_iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| t)
        .collect();
    assert!(pings.len() >= 2, "pings all along: {}", pings.len());
    for pair in pings.windows(2) {
        assert!(pair[1] - pair[0] < 2 * SEC, "a gap systemd would not allow");
    }
}

#[test]
fn sighup_reloads_the_configuration_and_refuses_a_bad_one() {
    let env = Env::new();
    let notify = Notifications::bind(env.dir.path());
    let path = env.dir.path().join("kindler.toml");
    std::fs::write(&path, "base_domain = \"before\"\n").unwrap();
    let mut cmd = env.command(&["--config", path.to_str().unwrap()]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let d = env.spawn(cmd);
    notify.await_line(0, 10 * SEC, "READY=1", |l| l == "READY=1");
    env.mode("create", "slow:1");
    assert_eq!(
        env.post("/api/clusters", r#"{"name":"busy","provider":"k3d"}"#)
            .status,
        202
    );
    env.await_state("busy", "creating", 5 * SEC);

    std::fs::write(
        &path,
        "base_domain = \"after\"\nmax_concurrent_actions = 5\n",
    )
    .unwrap();
    let before = notify.assignments().len();
    d.signal(libc::SIGHUP);
    let reloading = notify.await_line(before, 5 * SEC, "RELOADING=1", |l| l == "RELOADING=1");
    let lines = notify.assignments();
    assert!(
        lines[reloading + 1].1.starts_with("MONOTONIC_USEC="),
        "{lines:?}"
    );
    notify.await_line(reloading, 5 * SEC, "READY=1 after RELOADING=1", |l| {
        l == "READY=1"
    });
    eventually(5 * SEC, "the new setting", || {
        (env.get("/api/config").json()["base_domain"] == "after").then_some(())
    });
    // The running action is not disturbed, and the socket never closed.
    env.await_state("busy", "running", 10 * SEC);
    assert_eq!(env.starts("create", "busy").len(), 1);

    std::fs::write(
        &path,
        "base_domain = \"broken\"\nmax_concurrent_actions = \"many\"\n",
    )
    .unwrap();
    let before = notify.assignments().len();
    d.signal(libc::SIGHUP);
    eventually(5 * SEC, "the refusal in the log", || {
        d.log_text()
            .contains("the new configuration is refused, the old one stays")
            .then_some(())
    });
    assert!(
        d.log_text().contains("max_concurrent_actions"),
        "the key is named"
    );
    assert!(!notify.assignments()[before..]
        .iter()
        .any(|(_, l)| l == "RELOADING=1"));
    assert_eq!(env.get("/api/config").json()["base_domain"], "after");
}

#[test]
fn scripts_see_none_of_systemds_variables() {
    let env = Env::new();
    let notify = Notifications::bind(env.dir.path());
    let mut cmd = env.command(&[]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "10000000")
        .env("WATCHDOG_PID", "1")
        .env("JOURNAL_STREAM", "1:1")
        .env("KINDLER_BASE_DOMAIN", "daemon-setting");
    let _d = env.spawn(cmd); // also passes LISTEN_FDS and LISTEN_FDNAMES
    assert_eq!(
        env.post("/api/clusters", r#"{"name":"clean","provider":"kind"}"#)
            .status,
        202
    );
    env.await_state("clean", "running", 10 * SEC);
    let seen = env.script_env("create-clean");
    for var in [
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "KINDLER_BASE_DOMAIN",
        "KINDLER_CONFIG",
    ] {
        assert!(!seen.contains_key(var), "the script saw {var}");
    }
    assert_eq!(seen["KINDLER_CLUSTER"], "clean");
    assert!(seen.contains_key("KINDLER_PROCESS_TAG"));
    assert!(
        seen.contains_key("STANDIN_DIR"),
        "the rest of the environment is inherited"
    );
}

/// Makes sure a journald listens, starting a standalone one if needed (as root).
fn ensure_journald() {
    let socket = std::path::Path::new("/run/systemd/journal/socket");
    if std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.connect(socket))
        .is_ok()
    {
        return;
    }
    std::fs::create_dir_all("/run/systemd/journal")
        .expect("creating /run/systemd/journal (run as root)");
    let journald = [
        "/lib/systemd/systemd-journald",
        "/usr/lib/systemd/systemd-journald",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("systemd-journald is installed");
    // It keeps running after the test, for the other tests and for whoever reads the
    // journal afterwards; the waiter thread reaps it if it ever exits.
    let mut journald = Command::new(journald)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start systemd-journald");
    std::thread::spawn(move || journald.wait());
    eventually(10 * SEC, "journald's socket", || {
        std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(socket))
            .ok()
    });
}

fn journal(filter: &str) -> Vec<Value> {
    let out = Command::new("journalctl")
        .args(["-o", "json", "--no-pager", filter])
        .output()
        .expect("journalctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn reconcile_events_reach_journald_as_structured_fields() {
    ensure_journald();
    let env = Env::new();
    let name = format!("j{}", common::now_ns() % 1_000_000_000);
    env.mode(&format!("create-{name}"), "fail");
    let mut cmd = env.command(&[
        "--log-target",
        "auto",
        "--backoff-initial",
        "1h",
        "--backoff-max",
        "2h",
    ]);
    // Like systemd: JOURNAL_STREAM names the stream stderr is connected to.
    let log = env.dir.path().join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    cmd.stderr(file);
    common::pass_socket(&mut cmd, &env.listener);
    let mut child = common::Guarded(cmd.spawn().unwrap());
    eventually(10 * SEC, "the daemon", || {
        try_request(env.port, "GET", "/api/health", None, SEC)
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(
        env.post(
            "/api/clusters",
            &format!(r#"{{"name":"{name}","provider":"kind"}}"#)
        )
        .status,
        202
    );
    env.await_state(&name, "failed", 10 * SEC);

    let entries = eventually(10 * SEC, "the failure in the journal", || {
        let e = journal(&format!("KINDLER_CLUSTER={name}"));
        e.iter()
            .any(|e| e["MESSAGE_ID"] == "dd2bb64052f4459489c2b1850ae2678f")
            .then_some(e)
    });
    let by_id = |id: &str| {
        entries
            .iter()
            .find(|e| e["MESSAGE_ID"] == id)
            .unwrap_or_else(|| panic!("{id} in {entries:?}"))
    };
    let started = by_id("5c56fab6401c4283810770711566ceaa");
    assert_eq!(started["KINDLER_ACTION"], "create");
    assert_eq!(started["KINDLER_PROVIDER"], "kind");
    assert_eq!(started["KINDLER_ATTEMPT"], "1");
    let failed = by_id("3b3f55ce48354dda8c7701bd7b06937e");
    println!(
        "captured journal entry of a failed reconcile:\n{}",
        serde_json::to_string_pretty(failed).unwrap()
    );
    assert_eq!(failed["SYSLOG_IDENTIFIER"], "kindler");
    assert_eq!(failed["PRIORITY"], "3");
    assert_eq!(failed["KINDLER_EXIT_STATUS"], "3");
    assert_eq!(failed["KINDLER_DESIRED_STATE"], "present");
    assert_eq!(failed["KINDLER_ACTUAL_STATE"], "failed");
    assert_eq!(failed["KINDLER_RUN_ID"], started["KINDLER_RUN_ID"]);
    assert!(failed["KINDLER_DURATION_MS"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert!(failed["MESSAGE"]
        .as_str()
        .unwrap()
        .contains("create failed (exit status 3)"));
    let error = failed["KINDLER_ERROR"].as_str().unwrap();
    assert!(
        error.starts_with("create failed (exit status 3)\nlast output:\n"),
        "{error}"
    );
    assert!(
        error.contains("ERROR: port 6443 is already allocated"),
        "{error}"
    );
    // The script's own lines, tagged with the cluster and run.
    assert!(entries
        .iter()
        .any(|e| e["MESSAGE_ID"] == "798ce792c45b48f4baa179a34bd51a4c"
            && e["MESSAGE"] == "ERROR: port 6443 is already allocated"
            && e["KINDLER_RUN_ID"] == started["KINDLER_RUN_ID"]));
    let retry = by_id("dd2bb64052f4459489c2b1850ae2678f");
    assert_eq!(retry["KINDLER_ATTEMPT"], "2");

    // The daemon's own events are there too, and nothing went to stderr.
    let pid = child.id();
    let own = journal(&format!("_PID={pid}"));
    assert!(
        own.iter()
            .any(|e| e["MESSAGE_ID"] == "708c5ccd94a3444eae3387f93d1ee423"),
        "ready event"
    );
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let stopping = eventually(5 * SEC, "the stopping event", || {
        journal(&format!("_PID={pid}"))
            .into_iter()
            .find(|e| e["MESSAGE_ID"] == "6b58901958a2451ea351c5e1239deba8")
    });
    assert_eq!(stopping["PRIORITY"], "5");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "",
        "under journald nothing goes to stderr"
    );
}

#[test]
fn without_journald_the_same_facts_go_to_stderr_as_lines() {
    let env = Env::new();
    env.mode("create", "fail");
    let mut cmd = env.command(&[
        "--log-target",
        "auto",
        "--backoff-initial",
        "1h",
        "--backoff-max",
        "2h",
    ]);
    cmd.env_remove("JOURNAL_STREAM");
    let d = env.spawn(cmd);
    assert_eq!(
        env.post("/api/clusters", r#"{"name":"plain","provider":"k3d"}"#)
            .status,
        202
    );
    env.await_state("plain", "failed", 10 * SEC);
    let text = eventually(5 * SEC, "the failure line", || {
        let t = d.log_text();
        t.contains("retry 2 of create").then_some(t)
    });
    let line = text
        .lines()
        .find(|l| l.starts_with("ERROR  cluster plain: create failed (exit status 3)"))
        .unwrap_or_else(|| panic!("{text}"));
    for fact in [
        "cluster=plain",
        "provider=k3d",
        "action=create",
        "run_id=1",
        "attempt=1",
        "exit_status=3",
        "actual_state=failed",
        "duration_ms=",
    ] {
        assert!(line.contains(fact), "{fact} in {line}");
    }
    assert!(
        text.contains("ERROR: port 6443 is already allocated [cluster=plain"),
        "script output is tagged"
    );
}
