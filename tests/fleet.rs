//! Many hosts, one declared state: three kindler agents on one machine stand for three
//! hosts (distinct host names, API sockets and script folders), sharing a real PostgreSQL
//! server started by the test (`testkit::postgres`).

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Daemon, Env};
use kindler::testkit::postgres;

const SEC: Duration = Duration::from_secs(1);
const TTL: &str = "2s";

/// An agent: its world (socket, scripts) and its process.
struct Agent {
    env: Env,
    daemon: Option<Daemon>,
    host: &'static str,
}

impl Agent {
    fn flags<'a>(url: &'a str, host: &'a str) -> Vec<&'a str> {
        vec!["--database", url, "--host", host, "--lease-ttl", TTL]
    }

    fn start(url: &str, host: &'static str) -> Agent {
        let env = Env::new();
        let daemon = env.start(&Agent::flags(url, host));
        Agent {
            env,
            daemon: Some(daemon),
            host,
        }
    }

    /// Starts without waiting for health (a second agent for a held host is not healthy).
    fn spawn(env: Env, url: &str, host: &'static str) -> Agent {
        let cmd = env.command(&Agent::flags(url, host));
        let log = env
            .dir
            .path()
            .join(format!("daemon-{}.log", common::now_ns()));
        let daemon = Daemon::spawn(cmd, &env.listener, log).expect("start kindler");
        Agent {
            env,
            daemon: Some(daemon),
            host,
        }
    }

    fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }
}

fn fleet(n: usize) -> (String, Vec<Agent>) {
    let server = postgres::shared();
    let url = server.url(&server.create_db());
    let agents = ["a", "b", "c"][..n]
        .iter()
        .map(|host| Agent::start(&url, host))
        .collect();
    (url, agents)
}

#[test]
fn creates_are_placed_across_hosts_and_a_declaration_on_one_wakes_another_at_once() {
    let (_url, agents) = fleet(3);
    // Every agent must see every live host before placing: wait for the leases.
    eventually(10 * SEC, "three live hosts", || {
        let health = agents[0].env.get("/api/health");
        (health.status == 200).then_some(())
    });
    let mut hosts = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let answer = agents[0].env.post(
            "/api/clusters",
            &format!(r#"{{"name":"{name}","provider":"k3d"}}"#),
        );
        assert_eq!(answer.status, 202, "{answer:?}");
        hosts.push(answer.json()["host"].as_str().unwrap().to_owned());
    }
    hosts.sort();
    assert_eq!(hosts, ["a", "b", "c"], "the fewest clusters first");
    for agent in &agents {
        for name in ["p1", "p2", "p3"] {
            agent.env.await_state(name, "running", 20 * SEC);
        }
    }
    // Ports are per host: the same pf_port on two hosts is fine when named explicitly.
    let b = agents[1].host;
    let answer = agents[0].env.post(
        "/api/clusters",
        &format!(r#"{{"name":"x1","provider":"k3d","host":"{b}","pf_port":19555}}"#),
    );
    assert_eq!(answer.status, 202, "{answer:?}");
    let answer = agents[0].env.post(
        "/api/clusters",
        r#"{"name":"x2","provider":"k3d","host":"c","pf_port":19555}"#,
    );
    assert_eq!(answer.status, 202, "{answer:?}");
    let answer = agents[2].env.post(
        "/api/clusters",
        r#"{"name":"x3","provider":"k3d","host":"c","pf_port":19555}"#,
    );
    assert_eq!(answer.status, 409, "{answer:?}");

    // Declared through a's API, stopped by b's agent: the script starts at once. The feed
    // is also read every 2 s anyway (the safety net), so one quick start proves little: ten
    // in a row, each within 1.5 s, would happen by the safety net alone once in 18 tries.
    agents[1].env.await_state("x1", "running", 20 * SEC);
    let mut latencies = Vec::new();
    for i in 0..10 {
        let name = format!("w{i}");
        let declared = Instant::now();
        let answer = agents[0].env.post(
            "/api/clusters",
            &format!(r#"{{"name":"{name}","provider":"k3d","host":"b"}}"#),
        );
        assert_eq!(answer.status, 202, "{answer:?}");
        eventually(10 * SEC, "b's agent to run the create", || {
            (!agents[1].env.starts("create", &name).is_empty()).then_some(())
        });
        latencies.push(declared.elapsed());
    }
    eprintln!("declared on a, the script started on b after {latencies:?}");
    assert!(
        latencies.iter().all(|l| *l < SEC * 3 / 2),
        "the notification, not the periodic resync, woke b: {latencies:?}"
    );
    let before = agents[1].env.starts("stop", "x1").len();
    let answer = agents[0].env.post("/api/clusters/x1/stop", "");
    assert_eq!(answer.status, 202, "{answer:?}");
    eventually(10 * SEC, "b's agent to run the stop", || {
        (agents[1].env.starts("stop", "x1").len() > before).then_some(())
    });
    let list = agents[2].env.get("/api/clusters").json();
    let x1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "x1")
        .unwrap();
    assert_eq!(
        (x1["host"].as_str(), x1["host_reachable"].as_bool()),
        (Some("b"), Some(true))
    );

    // A task running on c, asked about on a: its output so far, while it runs.
    agents[2].env.mode("create-chatty", "busy:4");
    let answer = agents[0].env.post(
        "/api/clusters",
        r#"{"name":"chatty","provider":"k3d","host":"c"}"#,
    );
    assert_eq!(answer.status, 202, "{answer:?}");
    let task = eventually(
        10 * SEC,
        "a to show c's output of the running create",
        || {
            let task = agents[0].env.get("/api/tasks/reconcile-chatty").json();
            let logs = task["logs"].as_array()?.iter().filter_map(|l| l.as_str());
            let seen = logs.clone().any(|l| l.contains("pulling layer"));
            (task["status"] == "running" && seen).then_some(task)
        },
    );
    assert!(
        task["message"].as_str().unwrap().contains("chatty"),
        "{task}"
    );
}

#[test]
fn a_second_agent_for_a_host_waits_and_a_killed_agent_s_host_shows_unreachable_until_it_is_back() {
    let (url, mut agents) = fleet(2);
    let answer = agents[0].env.post(
        "/api/clusters",
        r#"{"name":"k1","provider":"k3d","host":"b"}"#,
    );
    assert_eq!(answer.status, 202, "{answer:?}");
    agents[0].env.await_state("k1", "running", 20 * SEC);

    // A second agent with b's name waits, and says so.
    let twin = Agent::spawn(Env::new(), &url, "b");
    eventually(10 * SEC, "the twin to say it waits", || {
        let health = twin.env.get("/api/health");
        let text = health.text.clone();
        (health.status == 503 && text.contains("\"lease\"") && text.contains("waits")).then_some(())
    });
    drop(twin);

    // b is killed: once its lease runs out, its clusters show the host unreachable.
    let b = &mut agents[1];
    b.daemon.as_ref().unwrap().signal(libc::SIGKILL);
    b.daemon.take().unwrap().wait_exit(5 * SEC);
    eventually(15 * SEC, "k1's host to show unreachable", || {
        let c = agents[0].env.cluster("k1")?;
        (c["host_reachable"] == false).then_some(())
    });
    eventually(10 * SEC, "a's health to list b", || {
        let text = agents[0].env.get("/api/health").text;
        text.contains("unreachable_hosts").then_some(())
    });
    eventually(10 * SEC, "a's /metrics to show b unreachable", || {
        let text = agents[0].env.get("/metrics").text;
        text.contains("kindler_fleet_host_reachable{host=\"b\"} 0")
            .then_some(())
    });
    assert!(
        agents[0].log().contains("host b is unreachable"),
        "{}",
        agents[0].log()
    );

    // b comes back and resumes: it owns k1 again and acts on a new declaration.
    let b = &mut agents[1];
    let daemon = b.env.start(&Agent::flags(&url, "b"));
    b.daemon = Some(daemon);
    eventually(15 * SEC, "k1's host to be back", || {
        let c = agents[0].env.cluster("k1")?;
        (c["host_reachable"] == true).then_some(())
    });
    eventually(10 * SEC, "a's /metrics to show b back", || {
        let text = agents[0].env.get("/metrics").text;
        text.contains("kindler_fleet_host_reachable{host=\"b\"} 1")
            .then_some(())
    });
    let answer = agents[0].env.post("/api/clusters/k1/stop", "");
    assert_eq!(answer.status, 202, "{answer:?}");
    agents[1].env.await_state("k1", "stopped", 20 * SEC);
}

/// `kindler migrate --file … --to postgres://…` with the file's arguments.
fn copy(env: &Env, url: &str, host: &str) -> std::process::Output {
    std::process::Command::new(common::BIN)
        .args(["migrate", "--database", env.db().to_str().unwrap()])
        .args(["--to", url, "--host", host])
        .env("KINDLER_CONFIG", "/dev/null")
        .output()
        .expect("kindler migrate")
}

#[test]
fn a_host_s_sqlite_database_is_copied_into_postgres_and_its_agent_carries_on() {
    // A single host on SQLite: one cluster running, one stopped, one whose create fails.
    let env = Env::new();
    env.mode("create-broken", "fail");
    let mut daemon = env.start(&[]);
    for name in ["run1", "stop1", "broken"] {
        let answer = env.post(
            "/api/clusters",
            &format!(r#"{{"name":"{name}","provider":"k3d"}}"#),
        );
        assert_eq!(answer.status, 202, "{answer:?}");
    }
    env.await_state("run1", "running", 20 * SEC);
    env.await_state("stop1", "running", 20 * SEC);
    assert_eq!(env.post("/api/clusters/stop1/stop", "").status, 202);
    env.await_state("stop1", "stopped", 20 * SEC);
    env.await_state("broken", "failed", 20 * SEC);
    let before = env.get("/api/clusters/run1/history").json();

    // The copy is refused beside a running daemon, and nothing is written.
    let server = postgres::shared();
    let db = server.create_db();
    let url = server.url(&db);
    let refused = copy(&env, &url, "old");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("another kindler"),
        "{refused:?}"
    );
    daemon.stop(10 * SEC).expect("a clean stop");
    env.clear_mode("create-broken");

    let copied = copy(&env, &url, "old");
    let said = String::from_utf8_lossy(&copied.stderr).into_owned();
    assert_eq!(copied.status.code(), Some(0), "{said}");
    assert!(said.contains("copied 3 clusters"), "{said}");
    // A second copy of the same host is refused whole.
    let again = copy(&env, &url, "old");
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds 3 cluster(s) of host old"),
        "{again:?}"
    );
    assert_eq!(
        server.psql(&db, "SELECT count(*) FROM clusters").unwrap(),
        "3"
    );

    // The host's agent on PostgreSQL carries on: the running and stopped clusters are not
    // created again, the history came along, and the failed create is retried.
    let creates_before = env.starts("create", "run1").len();
    let agent = Agent::spawn(env, &url, "old");
    agent.env.await_state("broken", "running", 30 * SEC);
    let run1 = agent.env.cluster("run1").unwrap();
    assert_eq!(
        (run1["actual_state"].as_str(), run1["host"].as_str()),
        (Some("running"), Some("old")),
        "{run1}"
    );
    assert_eq!(
        agent.env.cluster("stop1").unwrap()["actual_state"],
        "stopped"
    );
    assert_eq!(
        agent.env.starts("create", "run1").len(),
        creates_before,
        "run1 was not created again"
    );
    let after = agent.env.get("/api/clusters/run1/history").json();
    let outcomes = |h: &serde_json::Value| -> Vec<String> {
        h.as_array()
            .map(|runs| {
                runs.iter()
                    .map(|r| format!("{} {}", r["action"], r["outcome"]))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(!outcomes(&before).is_empty(), "{before}");
    assert!(
        outcomes(&after).ends_with(&outcomes(&before)),
        "the history came along: {after} / {before}"
    );
    // And it acts on new declarations.
    assert_eq!(agent.env.post("/api/clusters/stop1/start", "").status, 202);
    agent.env.await_state("stop1", "running", 20 * SEC);
}

#[test]
fn a_copy_with_a_row_kindler_cannot_read_is_refused_and_writes_nothing() {
    let env = Env::new();
    let mut daemon = env.start(&[]);
    let answer = env.post("/api/clusters", r#"{"name":"good","provider":"k3d"}"#);
    assert_eq!(answer.status, 202, "{answer:?}");
    env.await_state("good", "running", 20 * SEC);
    daemon.stop(10 * SEC).expect("a clean stop");
    env.sqlite("INSERT INTO clusters (name, provider) VALUES ('My_Cluster', 'k3d')");
    let server = postgres::shared();
    let db = server.create_db();
    let out = copy(&env, &server.url(&db), "h");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("My_Cluster") && said.contains("cannot be read"),
        "{said}"
    );
    assert_eq!(
        server.psql(&db, "SELECT count(*) FROM clusters").unwrap(),
        "0"
    );
    // A mistyped file is no empty database to copy.
    let missing = Env::new();
    let out = copy(&missing, &server.url(&db), "h");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        !missing.db().exists(),
        "no database was created at a mistyped path"
    );
}

/// A PostgreSQL server of the test's own, which it may stop.
fn own_server() -> postgres::PgServer {
    postgres::PgServer::start(false).unwrap_or_else(|e| panic!("PostgreSQL: {e}"))
}

#[test]
fn an_agent_started_while_postgres_is_down_waits_for_it_and_says_so() {
    let server = own_server();
    let url = server.url(&server.create_db());
    server.stop();
    let mut agent = Agent::spawn(Env::new(), &url, "early");
    let daemon = agent.daemon.as_mut().unwrap();
    eventually(
        20 * SEC,
        "the agent to say it waits for the database",
        || {
            daemon
                .log_text()
                .contains("waiting for the database")
                .then_some(())
        },
    );
    assert!(
        daemon.wait_exit(Duration::from_millis(1)).is_none(),
        "it waits instead of exiting: {}",
        daemon.log_text()
    );
    server.resume().expect("PostgreSQL back");
    daemon
        .wait_healthy(30 * SEC)
        .expect("healthy once the database is back");
    let answer = agent
        .env
        .post("/api/clusters", r#"{"name":"w1","provider":"k3d"}"#);
    assert_eq!(answer.status, 202, "{answer:?}");
    agent.env.await_state("w1", "running", 20 * SEC);
    // A stop while it waits is a clean stop.
    server.stop();
    let mut late = Agent::spawn(Env::new(), &url, "late");
    let daemon = late.daemon.as_mut().unwrap();
    eventually(20 * SEC, "the second agent to wait", || {
        daemon
            .log_text()
            .contains("waiting for the database")
            .then_some(())
    });
    let (_, status) = daemon.stop(10 * SEC).expect("a stop while waiting");
    assert!(status.success(), "{status:?}: {}", daemon.log_text());
}

#[test]
fn postgres_stopped_for_10_s_during_a_stream_of_declarations_loses_nothing_and_runs_nothing_twice()
{
    let server = own_server();
    let db = server.create_db();
    let url = server.url(&db);
    let agents: Vec<Agent> = ["a", "b"].iter().map(|h| Agent::start(&url, h)).collect();
    eventually(10 * SEC, "both hosts live", || {
        let text = agents[0].env.get("/api/health").text;
        (agents[0].env.get("/api/health").status == 200 && !text.contains("unreachable"))
            .then_some(())
    });
    // Creates that take a while are running when the database goes away.
    for agent in &agents {
        agent.env.mode("create", "slow:2");
    }
    let stream = |seconds: u64| -> Vec<(String, u16)> {
        let mut answers = Vec::new();
        let t0 = Instant::now();
        let mut i = 0;
        while t0.elapsed() < Duration::from_secs(seconds) {
            let name = format!("s{i}");
            let via = &agents[i % 2].env;
            let body = format!(r#"{{"name":"{name}","provider":"k3d"}}"#);
            let status =
                common::try_request(via.port, "POST", "/api/clusters", Some(&body), 10 * SEC)
                    .map(|r| r.status)
                    .unwrap_or(0);
            answers.push((name, status));
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        answers
    };
    let (answers, health_while_down) = std::thread::scope(|s| {
        let declaring = s.spawn(|| stream(16));
        std::thread::sleep(2 * SEC);
        server.stop();
        let down = Instant::now();
        let health = eventually(10 * SEC, "health to say the database is gone", || {
            let h = agents[0].env.get("/api/health");
            (h.status == 503).then_some(h.text)
        });
        // The outage itself is what is tested: ten seconds of it, by the clock.
        std::thread::sleep((10 * SEC).saturating_sub(down.elapsed()));
        server.resume().expect("PostgreSQL back");
        (declaring.join().unwrap(), health)
    });
    assert!(
        health_while_down.contains("database"),
        "health says why: {health_while_down}"
    );
    let accepted: Vec<&String> = answers
        .iter()
        .filter(|(_, s)| *s == 202)
        .map(|(n, _)| n)
        .collect();
    let refused = answers.iter().filter(|(_, s)| *s == 503).count();
    let other: Vec<_> = answers
        .iter()
        .filter(|(_, s)| *s != 202 && *s != 503)
        .collect();
    eprintln!(
        "{} declarations: {} accepted, {refused} refused with 503 while the database was down",
        answers.len(),
        accepted.len()
    );
    assert!(other.is_empty(), "only 202 or 503: {other:?}");
    assert!(refused > 0, "the outage was seen: {answers:?}");
    assert_eq!(
        answers.last().map(|(_, s)| *s),
        Some(202),
        "writes are taken again once the database is back: {answers:?}"
    );
    for agent in &agents {
        agent.env.clear_mode("create");
        agent
            .daemon
            .as_ref()
            .unwrap()
            .wait_healthy(30 * SEC)
            .expect("healthy again");
    }
    assert!(
        agents
            .iter()
            .any(|a| a.log().contains("cannot be recorded")),
        "a create that ended while the database was down had its end recorded later"
    );
    // Nothing lost: every accepted declaration is acted on; nothing doubled: one create each.
    for name in &accepted {
        agents[0].env.await_state(name, "running", 60 * SEC);
        let creates: usize = agents
            .iter()
            .map(|a| a.env.starts("create", name).len())
            .sum();
        assert_eq!(creates, 1, "{name} was created once");
    }
    // A refused declaration left no cluster behind.
    for (name, status) in &answers {
        if *status == 503 {
            assert!(agents[0].env.cluster(name).is_none(), "{name} was refused");
        }
    }
    let runs = server
        .psql(
            &db,
            "SELECT count(*) FROM reconcile_runs WHERE ended_at IS NULL",
        )
        .unwrap();
    assert_eq!(
        runs, "0",
        "every run's end was recorded once the database was back"
    );
}

#[test]
fn a_paused_agent_whose_lease_was_taken_over_cannot_overwrite_what_its_successor_did() {
    let server = postgres::shared();
    let db = server.create_db();
    let url = server.url(&db);
    let mut first = Agent::start(&url, "b");
    first.env.mode("create-s1", "slow:30");
    let answer = first.env.post(
        "/api/clusters",
        r#"{"name":"s1","provider":"k3d","host":"b"}"#,
    );
    assert_eq!(answer.status, 202, "{answer:?}");
    eventually(10 * SEC, "the first agent's create of s1 to start", || {
        (first.env.starts("create", "s1").len() == 1).then_some(())
    });

    // Paused past its lease: a successor for host b takes over, ends what the paused one
    // left running (its recovery) and creates s1 itself.
    first.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    let successor = Agent::spawn(Env::new(), &url, "b");
    successor
        .daemon
        .as_ref()
        .unwrap()
        .wait_healthy(20 * SEC)
        .expect("the successor holds the lease");
    successor.env.await_state("s1", "running", 30 * SEC);
    let fences = server
        .psql(&db, "SELECT fence FROM hosts WHERE name = 'b'")
        .unwrap();
    assert_eq!(fences, "2", "the lease changed hands once");

    // The paused agent resumes: its writes are refused by the fence, it finds its lease
    // gone and exits, and what its successor recorded stands.
    first.daemon.as_ref().unwrap().signal(libc::SIGCONT);
    let status = first
        .daemon
        .as_mut()
        .unwrap()
        .wait_exit(30 * SEC)
        .expect("the paused agent exits once it finds its lease gone");
    assert_eq!(status.code(), Some(1), "{}", first.log());
    assert!(first.log().contains("taken over"), "{}", first.log());
    assert!(
        first.log().contains("writes are refused"),
        "the fence refused its record of the run: {}",
        first.log()
    );
    let creates = server
        .psql(
            &db,
            "SELECT outcome FROM reconcile_runs WHERE cluster_name = 's1' AND action = 'create' \
             ORDER BY id",
        )
        .unwrap();
    assert_eq!(
        creates.lines().collect::<Vec<_>>(),
        ["interrupted", "succeeded"],
        "the paused agent's run stays as its successor recorded it"
    );
    let s1 = successor.env.cluster("s1").unwrap();
    assert_eq!(
        (s1["actual_state"].as_str(), s1["reconcile_error"].as_str()),
        (Some("running"), None),
        "{s1}"
    );
    assert_eq!(successor.env.starts("create", "s1").len(), 1);
}
