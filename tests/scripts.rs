//! kindler's default scripts (scripts/), run for real against stand-ins for docker, k3d,
//! kind and kubectl (tests/fixtures/fake-tools.sh) that record every call. No docker
//! engine runs on the test machines, so the tools themselves are stood in for; what is
//! tested is what the scripts ask of them, and what they tell the operator.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::Env;

const SEC: Duration = Duration::from_secs(1);

/// A directory with the fake tools on PATH and their call log.
struct Tools {
    dir: tempfile::TempDir,
}

impl Tools {
    fn new(tools: &[&str]) -> Tools {
        let dir = tempfile::tempdir().unwrap();
        let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-tools.sh");
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        for tool in tools {
            std::os::unix::fs::symlink(&fake, dir.path().join("bin").join(tool)).unwrap();
        }
        Tools { dir }
    }

    fn path(&self) -> String {
        // Only the fakes and the basics: a real docker or k3d on the machine must not be used.
        format!("{}:/usr/bin:/bin", self.dir.path().join("bin").display())
    }

    fn run(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(script_path(script))
            .args(args)
            .env_clear()
            .env("PATH", self.path())
            .env("FAKE_DIR", self.dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap()
    }
}

fn script_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const CREATE_ARGS: [&str; 10] = [
    "-n",
    "dev",
    "-p",
    "k3d",
    "--node-port",
    "30081",
    "--pf-port",
    "19005",
    "--no-register-portainer",
    "--haproxy-route",
];

#[test]
fn k3d_create_maps_the_ports_and_a_second_create_starts_the_cluster() {
    let t = Tools::new(&["docker", "k3d"]);
    let env = [
        ("KINDLER_HTTP_PORT", "18100"),
        ("KINDLER_HTTPS_PORT", "18500"),
        ("KINDLER_CLUSTER_SUBNET", "10.5.0.0/16"),
    ];
    let out = t.run("create-cluster", &CREATE_ARGS, &env);
    assert!(out.status.success(), "{}", text(&out));
    let create = t
        .calls()
        .into_iter()
        .find(|c| c.starts_with("k3d cluster create"))
        .unwrap_or_else(|| panic!("no create: {:?}", t.calls()));
    assert_eq!(
        create,
        "k3d cluster create dev --wait --timeout 600s -p 19005:30081@server:0 \
         -p 18100:80@loadbalancer -p 18500:443@loadbalancer --subnet 10.5.0.0/16"
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("haproxy-route is not done by the default script"),
        "{said}"
    );
    assert!(!said.contains("register-portainer is not done"), "{said}");

    // The cluster exists now: creating it again (a retry, a failed probe) starts it.
    let out = t.run("create-cluster", &CREATE_ARGS, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already exists; making sure it runs"));
    assert_eq!(
        t.calls()
            .iter()
            .filter(|c| c.starts_with("k3d cluster create"))
            .count(),
        1
    );
    assert!(t.calls().contains(&"k3d cluster start dev".to_owned()));
}

#[test]
fn kind_create_writes_the_port_mappings_into_its_config() {
    let t = Tools::new(&["docker", "kind"]);
    let mut args = CREATE_ARGS;
    args[3] = "kind";
    let out = t.run(
        "create-cluster",
        &args,
        &[("KINDLER_HTTP_PORT", "18100"), ("TMPDIR", "/tmp")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let config = t.file("kind-config-dev.yaml");
    for mapping in [
        "{containerPort: 30081, hostPort: 19005}",
        "{containerPort: 80, hostPort: 18100}",
    ] {
        assert!(config.contains(mapping), "{mapping} in:\n{config}");
    }
    assert!(!config.contains("443"), "no https port given:\n{config}");
    let create = t
        .calls()
        .into_iter()
        .find(|c| c.starts_with("kind create cluster"))
        .unwrap();
    let used = create.split(' ').nth(5).unwrap().to_owned();
    assert!(
        !Path::new(&used).exists(),
        "the temporary config {used} is removed"
    );
}

#[test]
fn probe_counts_ready_nodes_and_fails_without_one() {
    let t = Tools::new(&["docker", "k3d", "kubectl"]);
    assert!(t.run("create-cluster", &CREATE_ARGS, &[]).status.success());
    let out = t.run(
        "probe-cluster",
        &["-n", "dev", "-p", "k3d"],
        &[("FAKE_NODES", "Ready NotReady")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(t
        .calls()
        .iter()
        .any(|c| c.starts_with("kubectl --context k3d-dev get nodes")));

    let out = t.run(
        "probe-cluster",
        &["-n", "dev", "-p", "k3d"],
        &[("FAKE_NODES", "NotReady")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no Ready node"));

    let out = t.run("probe-cluster", &["-n", "gone", "-p", "k3d"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("does not answer on kubectl context k3d-gone"));
}

#[test]
fn missing_tools_are_named_with_where_to_get_them() {
    let t = Tools::new(&[]);
    let out = t.run("create-cluster", &CREATE_ARGS, &[]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("docker is not installed"), "{err}");
    assert!(err.contains("https://docs.docker.com"), "{err}");

    let t = Tools::new(&["docker"]);
    let out = t.run("create-cluster", &CREATE_ARGS, &[]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("k3d is not installed"));

    let out = t.run("create-cluster", &["-n", "dev", "--bogus"], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument '--bogus'"));
}

#[test]
fn delete_stop_and_start_of_a_cluster_that_does_not_exist() {
    let t = Tools::new(&["docker", "kind"]);
    let out = t.run("delete-cluster", &["-n", "dev", "-p", "kind"], &[]);
    assert!(out.status.success(), "absent is deleted: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to delete"));
    for script in ["stop-cluster", "start-cluster"] {
        let out = t.run(script, &["-n", "dev", "-p", "kind"], &[]);
        assert_eq!(out.status.code(), Some(1), "{script}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "kindler: cluster dev (kind) does not exist\n"
        );
    }
}

#[test]
fn the_daemon_on_its_default_scripts_runs_a_cluster_through_its_life() {
    // The daemon as shipped: no commands configured, so the scripts in scripts/.
    let t = Tools::new(&["docker", "k3d", "kubectl"]);
    let env = Env::new();
    let mut cmd = Command::new(common::BIN);
    cmd.args(["serve", "--database", env.db().to_str().unwrap()])
        .args(["--poll-interval", "100ms", "--script-env-pass", "FAKE_DIR"])
        .env("KINDLER_CONFIG", "/dev/null")
        .env("PATH", t.path())
        .env("FAKE_DIR", t.dir.path());
    let _d = env.spawn(cmd);
    let r = env.post(
        "/api/clusters",
        r#"{"name":"dev","provider":"k3d","pf_port":19005}"#,
    );
    assert_eq!(r.status, 202, "{r:?}");
    let c = env.await_state("dev", "running", 10 * SEC);
    assert_eq!(c["reconcile_error"], serde_json::Value::Null);
    let status = env.get("/api/clusters/dev/status").json();
    assert_eq!(
        (
            status["nodes_ready"].as_i64(),
            status["nodes_total"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let task = env.get("/api/tasks/reconcile-dev").json();
    let logs = task["logs"].to_string();
    assert!(
        logs.contains("Cluster 'dev' created successfully"),
        "{task}"
    );

    assert_eq!(env.post("/api/clusters/dev/stop", "").status, 202);
    env.await_state("dev", "stopped", 10 * SEC);
    assert_eq!(env.request("DELETE", "/api/clusters/dev", None).status, 202);
    env.await_gone("dev", 10 * SEC);
    let calls = t.calls();
    for call in [
        "k3d cluster create dev --wait --timeout 600s -p 19005:30080@server:0 -p 18080:80@loadbalancer -p 18443:443@loadbalancer",
        "k3d cluster stop dev",
        "k3d cluster delete dev",
    ] {
        assert!(calls.iter().any(|c| c == call), "{call} in {calls:#?}");
    }
}
