//! Hostile clients and least privilege (issue 9): floods cannot lock kindler out, pages of
//! other sites and rebound DNS names cannot drive it, and scripts see only what they need.
//! Through the real binary, real sockets and real processes.

mod common;

use std::time::Duration;

use common::Env;

const SEC: Duration = Duration::from_secs(1);

#[test]
fn scripts_get_an_allow_list_of_the_daemons_environment_and_no_secrets() {
    let env = Env::new();
    let mut cmd = env.command(&[
        "--script-env-pass",
        "STANDIN_DIR,MY_VAR,MY_PREFIX_*",
        "--script-env-set",
        "EXTRA=fixed,LANG=C",
    ]);
    for (k, v) in [
        ("FOO_TOKEN", "secret1"),
        ("AWS_SECRET_ACCESS_KEY", "secret2"),
        ("GITHUB_TOKEN", "secret3"),
        ("DATABASE_URL", "postgres://u:secret4@db/x"),
        ("DOCKER_HOST", "unix:///run/docker.sock"),
        ("KUBECONFIG", "/var/lib/kindler/.kube/config"),
        ("LC_ALL", "C.UTF-8"),
        ("LANG", "de_DE.UTF-8"),
        ("MY_VAR", "mine"),
        ("MY_PREFIX_A", "a"),
        ("MY_OTHER", "not passed"),
    ] {
        cmd.env(k, v);
    }
    let _d = env.spawn(cmd);
    let r = env.post("/api/clusters", r#"{"name":"dev","provider":"k3d"}"#);
    assert_eq!(r.status, 202, "{r:?}");
    env.await_state("dev", "running", 10 * SEC);
    let seen = env.script_env("create-dev");
    for secret in [
        "FOO_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
        "DATABASE_URL",
        "MY_OTHER",
    ] {
        assert!(
            !seen.contains_key(secret),
            "{secret} reached the script: {seen:?}"
        );
    }
    assert!(
        !seen.values().any(|v| v.contains("secret")),
        "no secret value either: {seen:?}"
    );
    for (k, v) in [
        ("DOCKER_HOST", "unix:///run/docker.sock"),
        ("KUBECONFIG", "/var/lib/kindler/.kube/config"),
        ("LC_ALL", "C.UTF-8"),
        ("MY_VAR", "mine"),
        ("MY_PREFIX_A", "a"),
        ("EXTRA", "fixed"),
        ("LANG", "C"),
        ("KINDLER_CLUSTER", "dev"),
    ] {
        assert_eq!(seen.get(k).map(String::as_str), Some(v), "{k}: {seen:?}");
    }
    assert!(seen.contains_key("PATH"));
    // kindler's own settings stay kindler's.
    assert!(!seen.contains_key("KINDLER_CONFIG"), "{seen:?}");
}

#[test]
fn environment_settings_are_checked() {
    let env = Env::new();
    for (flag, value) in [
        ("--script-env-pass", "BAD-NAME"),
        ("--script-env-pass", "KINDLER_CONFIG"),
        ("--script-env-set", "NOEQUALS"),
        ("--script-env-set", "KINDLER_X=1"),
    ] {
        let out = env.command(&[flag, value]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(flag), "{text}");
    }
}

fn health_on_a_new_connection(port: u16) -> Result<common::Response, String> {
    common::try_request(port, "GET", "/api/health", None, 5 * SEC).map_err(|e| e.to_string())
}

#[test]
fn idle_and_slow_connections_cannot_keep_a_new_client_out() {
    use std::io::{Read, Write};
    common::room_for_sockets();
    let env = Env::new();
    let _d = env.start(&[]);
    // 700 idle keep-alive connections (each made one request and keeps the connection),
    // and 600 slowloris ones that send their headers a byte now and then: more than the
    // 1,024 kindler holds.
    let mut idle = Vec::new();
    for _ in 0..700 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
        s.write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        idle.push(s);
    }
    let mut slow: Vec<std::net::TcpStream> = (0..600)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap())
        .collect();
    for s in &mut slow {
        let _ = s.write_all(b"GET /api/health HTTP/1.1\r\nX-Slow: ");
    }
    // A new client is answered now, long before a header timeout (10 s) or an idle
    // connection's end could have made room: the longest-idle connections made room.
    for _ in 0..20 {
        for s in &mut slow {
            let _ = s.write_all(b"y");
        }
        let r = health_on_a_new_connection(env.port).expect("answered while 1,300 are held");
        assert_eq!(r.status, 200, "{r:?}");
    }
    // The ones closed to make room were idle ones (the oldest first): their reads end.
    let closed = idle
        .iter_mut()
        .take(100)
        .filter(|s: &&mut std::net::TcpStream| {
            s.set_read_timeout(Some(5 * SEC)).unwrap();
            let mut buf = vec![0u8; 65536];
            // The answer to its request, then the end of the stream.
            loop {
                match (&**s).read(&mut buf) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .count();
    assert!(
        closed >= 50,
        "only {closed} of the 100 oldest idle connections were closed"
    );
}

#[test]
fn websocket_connections_count_and_make_room_too() {
    use tokio_tungstenite::tungstenite::{
        client::client, protocol::frame::coding::CloseCode, Message,
    };
    common::room_for_sockets();
    let env = Env::new();
    let _d = env.start(&[]);
    let mut sockets = Vec::new();
    for _ in 0..1100 {
        let stream = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
        stream.set_read_timeout(Some(10 * SEC)).unwrap();
        let (ws, _) =
            client(format!("ws://127.0.0.1:{}/ws/tasks", env.port), stream).expect("handshake");
        sockets.push(ws);
    }
    let r = health_on_a_new_connection(env.port).expect("answered while 1,100 WebSockets are held");
    assert_eq!(r.status, 200);
    // The oldest WebSocket made room, with a close frame that says why.
    let first = &mut sockets[0];
    let frame = loop {
        match first.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(frame.unwrap().code, CloseCode::Again);
}

#[test]
fn a_client_that_writes_a_too_large_body_first_reads_the_413() {
    use std::io::{Read, Write};
    let env = Env::new();
    let _d = env.start(&[]);
    // As Python's urllib does: the whole body is written before anything is read.
    for size in [1_100_000usize, 3 * 1024 * 1024, 12 * 1024 * 1024] {
        let body = format!(
            r#"{{"name":"big","provider":"k3d","x":"{}"}}"#,
            "x".repeat(size)
        );
        let head = format!(
            "POST /api/clusters HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut s = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
        s.set_read_timeout(Some(10 * SEC)).unwrap();
        s.set_write_timeout(Some(10 * SEC)).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body.as_bytes())
            .unwrap_or_else(|e| panic!("{size} bytes: the body could not be sent: {e}"));
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("{size} bytes: no answer: {e}"));
        assert!(answer.starts_with("HTTP/1.1 413"), "{size}: {answer}");
        assert!(answer.contains("request body is larger than"), "{answer}");
    }
    assert_eq!(env.sqlite("SELECT COUNT(*) FROM clusters"), "0");
}

#[test]
fn files_kindler_creates_are_not_for_every_user() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let mut cmd = env.command(&[]);
    // Started with the most permissive umask: kindler narrows it itself.
    // SAFETY: umask is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::umask(0);
            Ok(())
        });
    }
    let d = env.spawn(cmd);
    let r = env.post("/api/clusters", r#"{"name":"dev","provider":"k3d"}"#);
    assert_eq!(r.status, 202);
    env.await_state("dev", "running", 10 * SEC);
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut path = env.db().into_os_string();
        path.push(suffix);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o027, 0, "{path:?} is {mode:o}");
    }
    drop(d);
}

#[test]
fn script_output_reaches_stderr_lines_with_its_control_characters_escaped() {
    let env = Env::new();
    env.mode("create", "escape");
    let d = env.start(&[]);
    let r = env.post("/api/clusters", r#"{"name":"esc","provider":"k3d"}"#);
    assert_eq!(r.status, 202);
    env.await_state("esc", "running", 10 * SEC);
    common::eventually(5 * SEC, "the escaped line", || {
        d.log_text()
            .contains(r"colour \x1b[31mred\x1b[0m\rover\0nul")
            .then_some(())
    });
    let raw = std::fs::read(&d.log).unwrap();
    for byte in [0x1b_u8, b'\r', 0] {
        assert!(!raw.contains(&byte), "byte {byte:#x} written raw to stderr");
    }
}

#[test]
fn rows_kindler_cannot_act_on_are_listed_and_can_be_removed() {
    let env = Env::new();
    let _d = env.start(&[]);
    env.sqlite("INSERT INTO clusters (name, provider) VALUES ('My_Cluster', 'k3d'), ('okname', 'minikube')");
    let list = common::eventually(5 * SEC, "the rows in the list", || {
        let list = env.get("/api/clusters").json();
        (list.as_array()?.len() == 2).then_some(list)
    });
    for entry in list.as_array().unwrap() {
        assert_eq!(entry["status"], "invalid", "{entry}");
        assert_eq!(entry["invalid"], true, "{entry}");
        let error = entry["reconcile_error"].as_str().unwrap();
        assert!(error.contains("/forget"), "{error}");
    }
    let one = env.get("/api/clusters/My_Cluster");
    assert_eq!(one.status, 200, "{one:?}");
    assert!(
        one.json()["reconcile_error"]
            .as_str()
            .unwrap()
            .contains("name contains"),
        "{one:?}"
    );
    // Nothing can be run for it; forgetting removes it.
    let r = env.request("DELETE", "/api/clusters/My_Cluster", None);
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.text.contains("forget"), "{r:?}");
    assert_eq!(env.post("/api/clusters/okname/stop", "").status, 409);
    assert_eq!(env.post("/api/clusters/My_Cluster/forget", "").status, 200);
    assert_eq!(env.post("/api/clusters/okname/forget", "").status, 200);
    assert_eq!(env.get("/api/clusters").text, "[]");
    // A name that breaks the rules and names no row is still refused as before.
    assert_eq!(env.get("/api/clusters/No_Such").status, 422);
}

#[test]
fn reconcile_once_creates_no_database_at_a_mistyped_path() {
    let env = Env::new();
    let missing = env.dir.path().join("typo/kindler.db");
    let out = std::process::Command::new(common::BIN)
        .args(["reconcile", "--once", "--config", "/dev/null", "--database"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("there is no database at"), "{err}");
    assert!(!missing.exists() && !missing.parent().unwrap().exists());
}
