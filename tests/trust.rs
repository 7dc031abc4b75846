//! "A declaration answered 202 is acted on, or the API says why not": what other programs
//! write into the store, a database file removed under the daemon, runs whose end cannot be
//! recorded, tasks that follow what the reconciler really does, and health that tells the
//! truth. Everything through the real binary, a real SQLite file and real processes.

mod common;

use std::time::Duration;

use common::{eventually, Env};

const SEC: Duration = Duration::from_secs(1);

fn declare(env: &Env, name: &str) {
    let r = env.post(
        "/api/clusters",
        &format!(r#"{{"name":"{name}","provider":"k3d"}}"#),
    );
    assert_eq!(r.status, 202, "POST {name}: {r:?}");
}

#[test]
fn odd_values_in_the_change_feed_stop_no_declaration() {
    let env = Env::new();
    let mut d = env.start(&[]);
    declare(&env, "s1");
    declare(&env, "s2");
    env.await_state("s1", "running", 10 * SEC);
    env.await_state("s2", "running", 10 * SEC);

    // Another program writes what kindler never would into its change numbers.
    env.sqlite("UPDATE clusters SET change_seq = 'abc' WHERE name = 's1'");
    declare(&env, "s3");
    env.await_state("s3", "running", 10 * SEC);
    assert_eq!(env.post("/api/clusters/s2/stop", "").status, 202);
    env.await_state("s2", "stopped", 10 * SEC);

    // A number far above any kindler handed out must not hide the next ones either.
    env.sqlite("UPDATE clusters SET change_seq = 9000000000000000000 WHERE name = 's2'");
    declare(&env, "s4");
    env.await_state("s4", "running", 10 * SEC);
    assert_eq!(env.request("DELETE", "/api/clusters/s3", None).status, 202);
    env.await_gone("s3", 10 * SEC);
    assert_eq!(env.get("/api/health").status, 200);

    // The same after a restart, when the feed is read from the store's own numbers.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(10 * SEC).expect("stops").success());
    let _d = env.start(&[]);
    declare(&env, "s5");
    env.await_state("s5", "running", 10 * SEC);
    assert_eq!(env.post("/api/clusters/s2/start", "").status, 202);
    env.await_state("s2", "running", 10 * SEC);
    let log = _d.log_text();
    assert!(!log.contains("cannot read changes"), "{log}");
    eventually(5 * SEC, "s1 still running", || {
        (env.cluster("s1")?["actual_state"] == "running").then_some(())
    });
}

fn detail(r: &common::Response) -> String {
    r.json()["detail"].to_string()
}

#[test]
fn a_database_file_removed_under_the_daemon_is_noticed_and_no_write_is_acknowledged() {
    let env = Env::new();
    let notify = common::Notifications::bind(env.dir.path());
    let mut cmd = env.command(&[]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut d = env.spawn(cmd);
    declare(&env, "kept");
    env.await_state("kept", "running", 10 * SEC);
    assert_eq!(env.get("/api/health").status, 200);

    for suffix in ["", "-wal", "-shm"] {
        let mut path = env.db().into_os_string();
        path.push(suffix);
        std::fs::remove_file(path).unwrap();
    }
    let health = eventually(5 * SEC, "health to say the file is gone", || {
        let r = env.get("/api/health");
        (r.status == 503).then_some(r)
    });
    let body = health.json();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["problems"][0]["cause"], "database_file", "{body}");
    assert!(detail(&health).contains("was removed"), "{body}");
    notify.await_line(0, 5 * SEC, "STATUS saying why", |l| {
        l.starts_with("STATUS=DEGRADED: the database file") && l.contains("was removed")
    });

    // Declarations are refused with the reason, however many come.
    for i in 0..5 {
        let r = env.post(
            "/api/clusters",
            &format!(r#"{{"name":"lost{i}","provider":"k3d"}}"#),
        );
        assert_eq!(r.status, 503, "{r:?}");
        assert!(detail(&r).contains("was removed"), "{r:?}");
    }
    let r = env.post("/api/clusters/kept/stop", "");
    assert_eq!(r.status, 503, "{r:?}");
    let log = d.log_text();
    let reports = log
        .matches("cannot act on declarations: the database file")
        .count();
    assert_eq!(
        reports, 1,
        "one error event for the cause, not one per write:\n{log}"
    );

    // The next start finds no declaration it was told about: none was acknowledged.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(10 * SEC).expect("stops").success());
    let _d = env.start(&[]);
    let list = env.get("/api/clusters").json();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
}

#[test]
fn a_database_file_replaced_under_the_daemon_is_noticed() {
    let env = Env::new();
    let _d = env.start(&[]);
    declare(&env, "a");
    env.await_state("a", "running", 10 * SEC);
    // Another database moved onto the path (a restore gone wrong, say).
    let other = env.dir.path().join("other.db");
    let out = std::process::Command::new("sqlite3")
        .arg(&other)
        .arg("CREATE TABLE t (x)")
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::rename(&other, env.db()).unwrap();
    let health = eventually(5 * SEC, "health to say the file was replaced", || {
        let r = env.get("/api/health");
        (r.status == 503).then_some(r)
    });
    assert!(detail(&health).contains("replaced"), "{health:?}");
    let r = env.post("/api/clusters", r#"{"name":"b","provider":"k3d"}"#);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(detail(&r).contains("replaced"), "{r:?}");
}

#[test]
fn a_run_whose_end_cannot_be_recorded_is_recorded_once_the_store_takes_writes() {
    let env = Env::new();
    env.mode("create", "slow:1");
    let mut d = env.start(&[]);
    declare(&env, "locked");
    env.await_state("locked", "creating", 10 * SEC);

    // Another program takes the database's write lock while the create runs, and holds it
    // past the create's end and kindler's busy timeout (5 s).
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    eventually(10 * SEC, "the create to end", || {
        env.calls()
            .iter()
            .any(|c| c.event == "end" && c.action == "probe" && c.cluster == "locked")
            .then_some(())
    });
    let health = eventually(15 * SEC, "health to report the unrecorded end", || {
        let r = env.get("/api/health");
        (r.status == 503 && r.text.contains("run_ends")).then_some(r)
    });
    assert!(
        detail(&health).contains("locked by another program"),
        "{health:?}"
    );
    // Reads go on; declarations are refused with the reason.
    assert_eq!(env.get("/api/clusters/locked").status, 200);
    let r = env.post("/api/clusters", r#"{"name":"other","provider":"k3d"}"#);
    assert_eq!(r.status, 503, "{r:?}");
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);

    let c = env.await_state("locked", "running", 15 * SEC);
    assert_eq!(c["reconcile_error"], serde_json::Value::Null, "{c}");
    eventually(10 * SEC, "health to recover", || {
        (env.get("/api/health").status == 200).then_some(())
    });
    let history = env.get("/api/clusters/locked/history").json();
    let runs = history.as_array().unwrap();
    assert_eq!(
        runs.len(),
        1,
        "the create was recorded, not redone: {history}"
    );
    assert_eq!(runs[0]["outcome"], "succeeded", "{history}");
    assert_eq!(env.starts("create", "locked").len(), 1, "create ran once");
    let task = env.get("/api/tasks/reconcile-locked").json();
    assert_eq!(task["status"], "completed", "{task}");

    // A restart finds nothing unfinished and puts no error on the running cluster.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(10 * SEC).expect("stops").success());
    let d2 = env.start(&[]);
    let c = env.await_state("locked", "running", 10 * SEC);
    assert_eq!(c["reconcile_error"], serde_json::Value::Null, "{c}");
    let log = d2.log_text();
    assert!(!log.contains("interrupted"), "{log}");
}

#[test]
fn a_cluster_whose_delete_never_succeeds_can_be_forgotten() {
    let env = Env::new();
    env.mode("delete", "fail");
    let d = env.start(&[]);
    declare(&env, "dev");
    env.await_state("dev", "running", 10 * SEC);
    assert_eq!(env.request("DELETE", "/api/clusters/dev", None).status, 202);
    eventually(10 * SEC, "the delete to fail", || {
        let c = env.cluster("dev")?;
        (c["attempts"].as_u64()? >= 1).then_some(())
    });
    assert_eq!(
        env.post("/api/clusters", r#"{"name":"dev","provider":"k3d"}"#)
            .status,
        409
    );

    let r = env.post("/api/clusters/dev/forget", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "forgotten");
    assert!(env.cluster("dev").is_none());
    // An explicit, logged operation: the journal says who did what.
    eventually(5 * SEC, "the forget in the journal", || {
        d.log_text()
            .lines()
            .any(|l| l.contains("forgotten") && l.contains("[cluster=dev"))
            .then_some(())
    });
    let history = env.get("/api/clusters/dev/history").json();
    assert!(
        !history.as_array().unwrap().is_empty(),
        "the history is kept: {history}"
    );
    // The name is free again, and the new cluster is created.
    declare(&env, "dev");
    env.await_state("dev", "running", 10 * SEC);

    assert_eq!(env.post("/api/clusters/nobody/forget", "").status, 404);
    assert_eq!(env.post("/api/clusters/devops/forget", "").status, 403);
    assert_eq!(env.get("/api/clusters/dev/forget").status, 405);
}

#[test]
fn forgetting_a_cluster_ends_its_running_action() {
    let env = Env::new();
    env.mode("delete", "bg");
    let _d = env.start(&[]);
    declare(&env, "stuck");
    env.await_state("stuck", "running", 10 * SEC);
    assert_eq!(
        env.request("DELETE", "/api/clusters/stuck", None).status,
        202
    );
    eventually(10 * SEC, "the delete's children", || {
        (env.pids("delete-stuck").len() >= 4).then_some(())
    });
    assert_eq!(env.post("/api/clusters/stuck/forget", "").status, 200);
    eventually(10 * SEC, "the delete's processes to end", || {
        env.alive("delete-stuck").is_empty().then_some(())
    });
    eventually(10 * SEC, "the delete to be recorded as cancelled", || {
        let history = env.get("/api/clusters/stuck/history").json();
        (history[0]["outcome"] == "cancelled").then_some(())
    });
}

#[test]
fn start_on_a_failed_create_follows_the_create_and_brings_the_retry_forward() {
    let env = Env::new();
    env.mode("create", "fail");
    // A long backoff: only a new declaration can bring the next attempt this soon.
    let _d = env.start(&["--backoff-initial", "60s", "--backoff-max", "5m"]);
    declare(&env, "dev");
    let task = eventually(10 * SEC, "the create's failure in its task", || {
        let t = env.get("/api/tasks/reconcile-dev").json();
        t["error"].is_string().then_some(t)
    });
    assert_eq!(task["status"], "pending", "kindler retries: {task}");
    assert_eq!(task["progress"], 0, "{task}");
    let message = task["message"].as_str().unwrap();
    assert!(
        message.starts_with("create failed (exit status 3); kindler retries at "),
        "{task}"
    );
    assert!(!message.contains("last output"), "{task}");
    assert!(
        task["logs"]
            .to_string()
            .contains("port 6443 is already allocated"),
        "{task}"
    );

    // 启动 (start) in the WebUI: the retry comes now, and it is a create.
    assert_eq!(env.post("/api/clusters/dev/start", "").status, 202);
    eventually(
        10 * SEC,
        "a second create attempt, long before the backoff",
        || (env.starts("create", "dev").len() >= 2).then_some(()),
    );
    let task = eventually(
        10 * SEC,
        "the start task to show the create's failure",
        || {
            let t = env.get("/api/tasks/reconcile-start-dev").json();
            (t["error"].is_string() && t["message"].as_str()?.starts_with("create failed"))
                .then_some(t)
        },
    );
    assert_eq!(task["status"], "pending", "{task}");

    env.mode("create", "ok");
    assert_eq!(env.post("/api/clusters/dev/start", "").status, 202);
    env.await_state("dev", "running", 10 * SEC);
    let task = env.get("/api/tasks/reconcile-start-dev").json();
    assert_eq!(task["status"], "completed", "{task}");
    // Declaring what is already reached changes nothing.
    let runs_before = env.get("/api/clusters/dev/history").json();
    assert_eq!(env.post("/api/clusters/dev/start", "").status, 202);
    assert_eq!(
        env.get("/api/tasks/reconcile-start-dev").json()["status"],
        "completed"
    );
    let calls_before = env.calls().len();
    assert_eq!(env.post("/api/clusters/dev/start", "").status, 202);
    env.await_state("dev", "running", 10 * SEC);
    assert_eq!(env.get("/api/clusters/dev/history").json(), runs_before);
    assert_eq!(env.calls().len(), calls_before);
}

#[test]
fn failed_starts_fall_back_to_create() {
    let env = Env::new();
    let _d = env.start(&[]);
    declare(&env, "gone");
    env.await_state("gone", "running", 10 * SEC);
    assert_eq!(env.post("/api/clusters/gone/stop", "").status, 202);
    env.await_state("gone", "stopped", 10 * SEC);
    // Its containers vanished while it was stopped: every start fails.
    env.mode("start", "fail");
    assert_eq!(env.post("/api/clusters/gone/start", "").status, 202);
    env.await_state("gone", "running", 15 * SEC);
    assert_eq!(env.starts("start", "gone").len(), 2, "two starts failed");
    assert_eq!(env.starts("create", "gone").len(), 2, "then a create");
    let task = env.get("/api/tasks/reconcile-start-gone").json();
    assert_eq!(task["status"], "completed", "{task}");
}

#[test]
fn websocket_clients_get_a_close_frame_and_the_daemon_exits_cleanly_at_a_stop() {
    use tokio_tungstenite::tungstenite::{
        client::client, protocol::frame::coding::CloseCode, Message,
    };
    let env = Env::new();
    for round in 0..3 {
        let mut d = env.start(&[]);
        let mut clients = Vec::new();
        for c in 0..12 {
            let stream = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
            stream.set_read_timeout(Some(10 * SEC)).unwrap();
            let (mut ws, _) =
                client(format!("ws://127.0.0.1:{}/ws/tasks", env.port), stream).expect("handshake");
            // 64 subscriptions are allowed per connection; the 65th is refused.
            for i in 0..65 {
                let id = format!("reconcile-nothing-{c}-{i}");
                ws.send(Message::text(format!(
                    r#"{{"type":"subscribe","task_id":"{id}"}}"#
                )))
                .unwrap();
            }
            // The pong says every subscription before it was read.
            ws.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
            let mut refused = 0;
            loop {
                let msg = ws.read().expect("pong");
                let text = msg.to_text().unwrap_or("");
                refused += text.contains("at most 64 subscriptions") as usize;
                if text.contains("pong") {
                    break;
                }
            }
            assert_eq!(refused, 1, "client {c}");
            clients.push(ws);
        }
        d.signal(libc::SIGTERM);
        let status = d.wait_exit(15 * SEC).expect("the daemon exits");
        assert!(
            status.success(),
            "round {round}: {status:?}\n{}",
            d.log_text()
        );
        for (i, mut ws) in clients.into_iter().enumerate() {
            let frame = loop {
                match ws.read() {
                    Ok(Message::Close(frame)) => break frame,
                    Ok(_) => continue,
                    Err(e) => panic!("round {round}, client {i}: no close frame: {e}"),
                }
            };
            let frame = frame.expect("a close frame with a code");
            assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
        }
    }
}

#[test]
fn connections_accepted_before_a_stop_get_their_answer() {
    use std::io::{Read, Write};
    let env = Env::new();
    let mut d = env.start(&[]);
    let mut conns: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap())
        .collect();
    // A request on a later connection is answered only after the accept loop took the
    // earlier ones: all 20 are now the daemon's, none has sent anything yet.
    assert_eq!(env.get("/api/health").status, 200);
    d.signal(libc::SIGTERM);
    for c in &mut conns {
        c.set_read_timeout(Some(20 * SEC)).unwrap();
        c.write_all(b"GET /api/config HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
    }
    assert!(d.wait_exit(10 * SEC).expect("stops").success());
    // systemd keeps the socket; the next kindler answers what the old one did not accept.
    let _d2 = env.start(&[]);
    for (i, c) in conns.iter_mut().enumerate() {
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "connection {i} got {answer:?} instead of its answer"
        );
    }
}

#[test]
fn sighup_with_a_fifo_at_the_configuration_path_blocks_nothing() {
    let env = Env::new();
    let path = env.dir.path().join("kindler.toml");
    std::fs::write(&path, "base_domain = \"before\"\n").unwrap();
    let cmd = env.command(&["--config", path.to_str().unwrap()]);
    let mut d = env.spawn(cmd);
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    d.signal(libc::SIGHUP);
    // The API keeps answering while (and after) the reload looks at the FIFO: a blocked
    // runtime would leave it silent for the reload's whole 10 s timeout, or for good.
    for _ in 0..10 {
        let r = common::try_request(env.port, "GET", "/api/config", None, 5 * SEC)
            .expect("an answer within 5 s");
        assert_eq!(r.status, 200);
    }
    eventually(15 * SEC, "the reload to be refused", || {
        d.log_text()
            .contains("the new configuration is refused, the old one stays")
            .then_some(())
    });
    assert_eq!(env.get("/api/config").json()["base_domain"], "before");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(5 * SEC).expect("stops promptly").success());
}

#[test]
fn a_change_feed_that_cannot_be_read_makes_health_503_until_it_can() {
    let env = Env::new();
    let d = env.start(&[]);
    declare(&env, "before");
    env.await_state("before", "running", 10 * SEC);
    // Another program breaks the table the feed is read from.
    env.sqlite("ALTER TABLE clusters RENAME COLUMN change_seq TO change_seq_moved");
    let health = eventually(10 * SEC, "health to say the feed cannot be read", || {
        let r = env.get("/api/health");
        (r.status == 503 && r.text.contains("change_feed")).then_some(r)
    });
    assert!(
        detail(&health).contains("cannot read new declarations"),
        "{health:?}"
    );
    // One error event for the cause, not one per poll.
    std::thread::sleep(SEC);
    let events = d
        .log_text()
        .lines()
        .filter(|l| l.contains("cannot read new declarations"))
        .count();
    assert_eq!(events, 1, "{}", d.log_text());

    env.sqlite("ALTER TABLE clusters RENAME COLUMN change_seq_moved TO change_seq");
    eventually(10 * SEC, "health to recover", || {
        (env.get("/api/health").status == 200).then_some(())
    });
    declare(&env, "after");
    env.await_state("after", "running", 10 * SEC);
}
