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

    // Declared through a's API, stopped by b's agent: the script starts at once.
    agents[1].env.await_state("x1", "running", 20 * SEC);
    let before = agents[1].env.starts("stop", "x1").len();
    let declared = Instant::now();
    let answer = agents[0].env.post("/api/clusters/x1/stop", "");
    assert_eq!(answer.status, 202, "{answer:?}");
    eventually(10 * SEC, "b's agent to run the stop", || {
        (agents[1].env.starts("stop", "x1").len() > before).then_some(())
    });
    let latency = declared.elapsed();
    eprintln!("declared on a, the script started on b after {latency:?}");
    assert!(
        latency < 2 * SEC,
        "the notification, not the periodic resync, woke b: {latency:?}"
    );
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
    let answer = agents[0].env.post("/api/clusters/k1/stop", "");
    assert_eq!(answer.status, 202, "{answer:?}");
    agents[1].env.await_state("k1", "stopped", 20 * SEC);
}
