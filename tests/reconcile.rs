//! The reconciler through the real binary: scripts run in process groups, failures back
//! off, timeouts and cancellations end whole groups, and stops and crashes lose nothing.

mod common;

use std::time::{Duration, Instant};

use common::{alive, eventually, Env};

const SEC: Duration = Duration::from_secs(1);

fn declare(env: &Env, name: &str, provider: &str) {
    let r = env.post(
        "/api/clusters",
        &format!(r#"{{"name":"{name}","provider":"{provider}"}}"#),
    );
    assert_eq!(r.status, 202, "{r:?}");
}

#[test]
fn create_runs_the_script_with_the_contract_argv_then_delete_removes_the_row() {
    let env = Env::new();
    let _d = env.start(&[]);
    let r = env.post(
        "/api/clusters",
        r#"{"name":"dev","provider":"k3d","node_port":30081,"pf_port":19500,"http_port":18100,"https_port":18500,
            "cluster_subnet":"10.42.0.0/16","register_portainer":false,"haproxy_route":true,"register_argocd":false}"#,
    );
    assert_eq!(r.status, 202, "{r:?}");
    let body = r.json();
    assert_eq!(body["task_id"], "reconcile-dev");
    assert_eq!(body["status"], "pending");
    assert!(body["message"].as_str().unwrap().contains("dev"));

    let c = env.await_state("dev", "running", 10 * SEC);
    assert_eq!(c["status"], "running");
    assert_eq!(c["reconcile_error"], serde_json::Value::Null);
    assert_eq!(c["observed_generation"], c["generation"]);
    assert_eq!(
        env.argv("create-dev"),
        [
            "-n",
            "dev",
            "-p",
            "k3d",
            "--node-port",
            "30081",
            "--pf-port",
            "19500",
            "--no-register-portainer",
            "--haproxy-route",
            "--no-register-argocd"
        ]
    );
    // Creating is verified by the probe.
    assert_eq!(env.argv("probe-dev"), ["-n", "dev", "-p", "k3d"]);
    let script_env = env.script_env("create-dev");
    assert_eq!(script_env["KINDLER_CLUSTER"], "dev");
    assert_eq!(script_env["KINDLER_HTTP_PORT"], "18100");
    assert_eq!(script_env["KINDLER_CLUSTER_SUBNET"], "10.42.0.0/16");
    assert_eq!(script_env["KINDLER_REGISTER_PORTAINER"], "0");
    assert_eq!(script_env["KINDLER_CONTEXT"], "k3d-dev");

    let task = env.get("/api/tasks/reconcile-dev").json();
    assert_eq!(task["status"], "completed");
    assert_eq!(task["progress"], 100);
    assert!(task["logs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l.as_str().unwrap().contains("step 2/2")));

    // Declaring the same cluster again changes nothing.
    assert_eq!(
        env.post("/api/clusters", r#"{"name":"dev","provider":"k3d"}"#)
            .status,
        409
    );

    let r = env.request("DELETE", "/api/clusters/dev", None);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["task_id"], "reconcile-delete-dev");
    env.await_gone("dev", 10 * SEC);
    assert_eq!(env.argv("delete-dev"), ["-n", "dev", "-p", "k3d"]);
    let task = env.get("/api/tasks/reconcile-delete-dev").json();
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(env.starts("create", "dev").len(), 1, "create ran once");
}

#[test]
fn declarations_after_a_delete_are_not_missed() {
    // The delete removes the row holding the newest change number; changes after it must
    // still be seen as new (they were once numbered below the reconciler's cursor).
    let env = Env::new();
    let _d = env.start(&[]);
    declare(&env, "first", "k3d");
    env.await_state("first", "running", 10 * SEC);
    let body = r#"{"name":"second","provider":"k3d","pf_port":19100}"#;
    assert_eq!(env.post("/api/clusters", body).status, 202);
    env.await_state("second", "running", 10 * SEC);
    assert_eq!(
        env.request("DELETE", "/api/clusters/second", None).status,
        202
    );
    env.await_gone("second", 10 * SEC);

    let body = r#"{"name":"third","provider":"kind","pf_port":19200}"#;
    assert_eq!(env.post("/api/clusters", body).status, 202);
    env.await_state("third", "running", 10 * SEC);
    env.sqlite("INSERT INTO clusters (name, provider, pf_port) VALUES ('fourth', 'k3d', 19300)");
    env.await_state("fourth", "running", 10 * SEC);
    assert_eq!(env.post("/api/clusters/first/stop", "").status, 202);
    env.await_state("first", "stopped", 10 * SEC);
}

#[test]
fn stop_and_start_are_declarative() {
    let env = Env::new();
    let _d = env.start(&[]);
    declare(&env, "pw", "kind");
    env.await_state("pw", "running", 10 * SEC);

    let r = env.post("/api/clusters/pw/stop", "");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["task_id"], "reconcile-stop-pw");
    let c = env.await_state("pw", "stopped", 10 * SEC);
    assert_eq!(c["desired_state"], "stopped");
    assert_eq!(env.argv("stop-pw"), ["-n", "pw", "-p", "kind"]);
    assert_eq!(
        env.get("/api/tasks/reconcile-stop-pw").json()["status"],
        "completed"
    );

    let r = env.post("/api/clusters/pw/start", "");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["task_id"], "reconcile-start-pw");
    let c = env.await_state("pw", "running", 10 * SEC);
    assert_eq!(c["desired_state"], "present");
    assert_eq!(env.argv("start-pw"), ["-n", "pw", "-p", "kind"]);
    assert_eq!(env.starts("stop", "pw").len(), 1);
    assert_eq!(env.starts("start", "pw").len(), 1);
    assert_eq!(
        env.starts("create", "pw").len(),
        1,
        "start and stop never recreate"
    );
}

#[test]
fn the_status_endpoint_serves_what_the_probe_reported() {
    let env = Env::new();
    env.mode("probe", "report");
    let _d = env.start(&[]);
    declare(&env, "seen", "k3d");
    env.await_state("seen", "running", 10 * SEC);
    let s = env.get("/api/clusters/seen/status").json();
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(
        (s["nodes_ready"].as_i64(), s["nodes_total"].as_i64()),
        (Some(2), Some(3)),
        "{s}"
    );
    assert_eq!(s["portainer_status"], "online", "{s}");
    assert_eq!(s["argocd_status"], "degraded", "{s}");

    // A stopped cluster's add-ons are not known to be up; the next probe after the start
    // reports them again, and a probe that no longer mentions them makes them unknown.
    assert_eq!(env.post("/api/clusters/seen/stop", "").status, 202);
    env.await_state("seen", "stopped", 10 * SEC);
    let s = env.get("/api/clusters/seen/status").json();
    assert_eq!(
        (&s["portainer_status"], &s["argocd_status"]),
        (&"unknown".into(), &"unknown".into()),
        "{s}"
    );
    assert_eq!(
        (&s["nodes_ready"], &s["nodes_total"]),
        (&0.into(), &0.into()),
        "{s}"
    );
    env.mode("probe", "ok");
    assert_eq!(env.post("/api/clusters/seen/start", "").status, 202);
    env.await_state("seen", "running", 10 * SEC);
    let s = env.get("/api/clusters/seen/status").json();
    assert_eq!(s["portainer_status"], "unknown", "{s}");
    assert_eq!(
        s["nodes_total"], 3,
        "node counts stay until a probe prints nodes again: {s}"
    );
}

#[test]
fn a_failing_script_backs_off_and_recovers_once_fixed() {
    let env = Env::new();
    env.mode("create", "fail");
    let _d = env.start(&["--backoff-initial", "300ms", "--backoff-max", "5s"]);
    declare(&env, "flaky", "k3d");

    let c = env.await_state("flaky", "failed", 10 * SEC);
    let error = c["reconcile_error"].as_str().unwrap();
    assert!(error.contains("create failed (exit status 3)"), "{error}");
    assert!(
        error.contains("ERROR: port 6443 is already allocated"),
        "the last output lines: {error}"
    );
    assert!(c["next_attempt_at"].is_string());

    // Three attempts: the gaps between them grow (300 ms, 600 ms, each within ±20 %).
    eventually(15 * SEC, "three create attempts", || {
        (env.starts("create", "flaky").len() >= 3).then_some(())
    });
    let starts = env.starts("create", "flaky");
    let gap = |i: usize| (starts[i + 1].at_ns - starts[i].at_ns) as f64 / 1e9;
    assert!(
        gap(0) >= 0.24,
        "first retry after at least 0.8 × 300ms: {}",
        gap(0)
    );
    assert!(
        gap(1) >= 0.48,
        "second retry after at least 0.8 × 600ms: {}",
        gap(1)
    );
    assert!(gap(1) > gap(0), "backoff grows: {} then {}", gap(0), gap(1));
    let c = env.cluster("flaky").unwrap();
    assert!(c["attempts"].as_u64().unwrap() >= 2, "{c}");
    // Between attempts the task reports the failure and when kindler retries: it is
    // pending, not failed, since kindler goes on; while a retry runs it says "running".
    let task = eventually(15 * SEC, "the task to report the failed attempt", || {
        let task = env.get("/api/tasks/reconcile-flaky").json();
        (task["status"] == "pending" && task["error"].is_string()).then_some(task)
    });
    assert!(
        task["error"].as_str().unwrap().contains("exit status 3"),
        "{task}"
    );
    let message = task["message"].as_str().unwrap();
    assert!(
        message.starts_with("create failed (exit status 3); kindler retries at "),
        "{task}"
    );

    env.mode("create", "ok");
    let c = env.await_state("flaky", "running", 15 * SEC);
    assert_eq!(c["attempts"], 0, "success resets the backoff");
    assert_eq!(c["reconcile_error"], serde_json::Value::Null);
    assert_eq!(c["next_attempt_at"], serde_json::Value::Null);
}

#[test]
fn a_hanging_script_times_out_and_its_whole_group_is_killed() {
    let env = Env::new();
    env.mode("create", "stubborn");
    let _d = env.start(&[
        "--action-timeout",
        "1500ms",
        "--kill-grace",
        "500ms",
        "--backoff-initial",
        "1h",
        "--backoff-max",
        "2h",
    ]);
    declare(&env, "stuck", "k3d");
    eventually(10 * SEC, "the script and its children to start", || {
        (env.pids("create-stuck").len() >= 4).then_some(())
    });
    let c = env.await_state("stuck", "failed", 10 * SEC);
    let error = c["reconcile_error"].as_str().unwrap();
    assert!(error.contains("create timed out after 1s 500ms"), "{error}");
    assert!(
        env.alive("create-stuck").is_empty(),
        "processes left: {:?}",
        env.alive("create-stuck")
    );
    let history = env.get("/api/clusters/stuck/history").json();
    assert_eq!(history[0]["outcome"], "timed_out", "{history}");
    assert_eq!(
        history[0]["signal"], 9,
        "SIGTERM was ignored, so SIGKILL ended it: {history}"
    );
}

#[test]
fn deleting_while_creating_cancels_the_create_and_deletes() {
    let env = Env::new();
    env.mode("create", "bg");
    let _d = env.start(&[]);
    declare(&env, "short", "k3d");
    env.await_state("short", "creating", 10 * SEC);
    eventually(10 * SEC, "the create's children", || {
        (env.pids("create-short").len() >= 4).then_some(())
    });

    assert_eq!(
        env.request("DELETE", "/api/clusters/short", None).status,
        202
    );
    env.await_gone("short", 10 * SEC);
    assert!(
        env.alive("create-short").is_empty(),
        "create processes left: {:?}",
        env.alive("create-short")
    );
    let calls = env.calls();
    let create_start = calls
        .iter()
        .position(|c| c.action == "create" && c.event == "start")
        .unwrap();
    let delete_start = calls
        .iter()
        .position(|c| c.action == "delete" && c.event == "start")
        .unwrap();
    assert!(delete_start > create_start);
    let history = env.get("/api/clusters/short/history").json();
    let outcomes: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["succeeded", "cancelled"],
        "newest first: {history}"
    );
    assert!(history[1]["error"]
        .as_str()
        .unwrap()
        .contains("desired state changed to absent"));
}

#[test]
fn stopping_while_creating_lets_the_create_finish_then_stops() {
    let env = Env::new();
    env.mode("create", "slow:1.5");
    let _d = env.start(&[]);
    declare(&env, "later", "kind");
    env.await_state("later", "creating", 10 * SEC);
    assert_eq!(env.post("/api/clusters/later/stop", "").status, 202);
    let c = env.await_state("later", "stopped", 15 * SEC);
    assert_eq!(c["desired_state"], "stopped");
    assert_eq!(
        env.starts("create", "later").len(),
        1,
        "the create was not redone"
    );
    assert_eq!(env.starts("stop", "later").len(), 1);
    let history = env.get("/api/clusters/later/history").json();
    let runs: Vec<(&str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [("stop", "succeeded"), ("create", "succeeded")],
        "newest first: {history}"
    );
}

#[test]
fn sigterm_ends_the_script_group_within_the_grace_and_the_next_start_completes_it() {
    let env = Env::new();
    env.mode("create", "stubborn");
    let mut d = env.start(&["--kill-grace", "1s"]);
    declare(&env, "halt", "k3d");
    eventually(10 * SEC, "the create's children", || {
        (env.pids("create-halt").len() >= 4).then_some(())
    });

    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(5 * SEC).expect("the daemon exits");
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status:?}");
    // The stubborn script got its grace, then SIGKILL: kindler did not wait for it longer.
    assert!(
        took >= SEC && took < 4 * SEC,
        "kill grace 1 s, then SIGKILL: took {took:?}"
    );
    assert!(
        env.alive("create-halt").is_empty(),
        "left: {:?}",
        env.alive("create-halt")
    );
    let row = env.sqlite("SELECT actual_state, reconcile_error FROM clusters WHERE name = 'halt'");
    assert!(
        row.starts_with("creating|create was interrupted because kindler is stopping"),
        "{row}"
    );
    let run = env.sqlite("SELECT outcome FROM reconcile_runs WHERE cluster_name = 'halt'");
    assert_eq!(run, "interrupted");

    env.mode("create", "ok");
    let _d = env.start(&[]);
    env.await_state("halt", "running", 10 * SEC);
    assert_eq!(env.starts("create", "halt").len(), 2);
}

#[test]
fn a_sigkilled_daemon_leaves_nothing_stuck() {
    let env = Env::new();
    env.mode("create", "bg");
    let mut d = env.start(&[]);
    declare(&env, "crash", "kind");
    eventually(10 * SEC, "the create's children", || {
        (env.pids("create-crash").len() >= 4).then_some(())
    });
    d.signal(libc::SIGKILL);
    d.wait_exit(5 * SEC).expect("killed");
    let orphans = env.alive("create-crash");
    assert!(
        orphans.len() >= 4,
        "the dead daemon's script lives on: {orphans:?}"
    );

    env.mode("create", "ok");
    let d2 = env.start(&[]);
    let c = env.await_state("crash", "running", 10 * SEC);
    assert_eq!(
        c["reconcile_error"],
        serde_json::Value::Null,
        "the redo that succeeded cleared the interruption's error: {c}"
    );
    eventually(5 * SEC, "the orphans to be ended", || {
        env.alive("create-crash").is_empty().then_some(())
    });
    for pid in orphans {
        assert!(!alive(pid), "orphan {pid} survived");
    }
    let history = env.get("/api/clusters/crash/history").json();
    assert_eq!(history[1]["outcome"], "interrupted", "{history}");
    let reported = eventually(5 * SEC, "the report of the ended orphans", || {
        d2.log_text().lines().find_map(|l| {
            l.split("ended ")
                .nth(1)?
                .strip_suffix(
                    "leftover processes of run 1 (create of crash) [cluster=crash run_id=1]",
                )
                .map(str::to_owned)
        })
    });
    let n: usize = reported.trim().parse().unwrap();
    assert!(n >= 4, "the script and its children were found: {n}");
}

#[test]
fn a_row_inserted_with_sqlite3_is_reconciled_without_a_restart() {
    let env = Env::new();
    let _d = env.start(&["--poll-interval", "500ms"]);
    let t0 = Instant::now();
    env.sqlite("INSERT INTO clusters (name, provider, node_port, pf_port) VALUES ('ext', 'kind', 30080, 19777)");
    // Noticed by the poll (every 500 ms), with room for a loaded machine; how soon is a
    // benchmark's business.
    eventually(5 * SEC, "the create for the external row", || {
        (!env.starts("create", "ext").is_empty()).then_some(())
    });
    eprintln!("external row picked up after {:?}", t0.elapsed());
    env.await_state("ext", "running", 10 * SEC);
    assert_eq!(env.argv("create-ext")[..4], ["-n", "ext", "-p", "kind"]);

    // An external change of the desired state is noticed too.
    env.sqlite("UPDATE clusters SET desired_state = 'absent' WHERE name = 'ext'");
    env.await_gone("ext", 5 * SEC);
}

#[test]
fn twenty_clusters_with_a_limit_of_three() {
    let env = Env::new();
    env.mode("create", "slow:0.3");
    let _d = env.start(&["--max-concurrent-actions", "3"]);
    for i in 0..20 {
        let body = format!(
            r#"{{"name":"c{i}","provider":"k3d","pf_port":{},"http_port":{},"https_port":{}}}"#,
            20000 + i,
            21000 + i,
            22000 + i
        );
        assert_eq!(env.post("/api/clusters", &body).status, 202);
    }
    for i in 0..20 {
        env.await_state(&format!("c{i}"), "running", 60 * SEC);
    }
    // Replay the stand-in's start/end log: never more than 3 at once, never two per cluster.
    let mut calls = env.calls();
    calls.sort_by_key(|c| c.at_ns);
    let (mut running, mut most) = (std::collections::HashMap::<String, i32>::new(), 0);
    for c in &calls {
        let n = running.entry(c.cluster.clone()).or_default();
        if c.event == "start" {
            *n += 1;
            assert!(*n <= 1, "two scripts at once for {}", c.cluster);
        } else {
            *n -= 1;
        }
        most = most.max(running.values().sum::<i32>());
    }
    assert!(most <= 3, "{most} scripts ran at once");
    assert_eq!(most, 3, "the limit is used");
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.action == "create" && c.event == "start")
            .count(),
        20
    );
}

#[test]
fn reconcile_once_makes_one_pass_and_refuses_to_race_a_daemon() {
    let env = Env::new();
    let s = common::standin();
    let s = s.to_str().unwrap();
    let once = |env: &Env| {
        std::process::Command::new(common::BIN)
            .args([
                "reconcile",
                "--once",
                "--database",
                env.db().to_str().unwrap(),
            ])
            .env("KINDLER_CONFIG", "/dev/null")
            .args([
                "--create-command",
                s,
                "--probe-command",
                s,
                "--delete-command",
                s,
                "--script-env-pass",
                "STANDIN_DIR",
            ])
            .env("STANDIN_DIR", env.standin_dir())
            .output()
            .unwrap()
    };
    // The store is created by migrate; rows come from another tool.
    let out = std::process::Command::new(common::BIN)
        .args(["migrate", "--database", env.db().to_str().unwrap()])
        .env("KINDLER_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.sqlite("INSERT INTO clusters (name, provider) VALUES ('a', 'k3d'), ('b', 'kind')");
    env.mode("create-b", "fail");
    let out = once(&env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one action failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        env.sqlite("SELECT name, actual_state FROM clusters ORDER BY name"),
        "a|running\nb|failed"
    );
    assert_eq!(env.starts("create", "b").len(), 1, "one pass, one attempt");

    let _d = env.start(&["--backoff-initial", "1h", "--backoff-max", "2h"]);
    let out = once(&env);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another kindler is already working on"));
}

#[test]
fn a_second_stop_signal_stops_at_once() {
    let env = Env::new();
    env.mode("create", "stubborn");
    let mut d = env.start(&["--kill-grace", "30s"]);
    declare(&env, "hurry", "k3d");
    eventually(10 * SEC, "the create's children", || {
        (env.pids("create-hurry").len() >= 4).then_some(())
    });
    d.signal(libc::SIGTERM);
    // The first signal waits out the grace for the stubborn script...
    assert!(
        d.wait_exit(Duration::from_millis(500)).is_none(),
        "still in its grace period"
    );
    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(5 * SEC).expect("the second signal ends it");
    // At once: not after the 30 s grace the first signal is waiting out.
    assert!(t0.elapsed() < 5 * SEC, "took {:?}", t0.elapsed());
    assert_eq!(status.code(), Some(1));
    eventually(2 * SEC, "the script's processes to be gone", || {
        env.alive("create-hurry").is_empty().then_some(())
    });

    env.mode("create", "ok");
    let _d = env.start(&[]);
    env.await_state("hurry", "running", 10 * SEC);
}

#[test]
fn background_processes_a_script_leaves_behind_are_ended() {
    let env = Env::new();
    env.mode("create", "leave");
    let d = env.start(&[]);
    declare(&env, "tidy", "k3d");
    env.await_state("tidy", "running", 10 * SEC);
    assert!(
        env.pids("create-tidy").len() >= 5,
        "the script started its children"
    );
    assert!(
        env.alive("create-tidy").is_empty(),
        "left running: {:?}",
        env.alive("create-tidy")
    );
    eventually(5 * SEC, "the leftovers to be reported", || {
        d.log_text().contains("leftover_processes=").then_some(())
    });
}

#[test]
fn a_process_a_script_daemonizes_on_purpose_is_left_running() {
    // setsid and output to /dev/null: it left the group and the pipe, which is how a script
    // says "keep this running" (DESIGN.md). Being tagged, it is still ended when a run is
    // cancelled or times out, and found after a crash.
    let env = Env::new();
    env.mode("create", "detach");
    let _d = env.start(&[]);
    declare(&env, "loner", "k3d");
    env.await_state("loner", "running", 10 * SEC);
    let pids = env.pids("create-loner");
    assert_eq!(
        pids.len(),
        2,
        "the script and its detached helper: {pids:?}"
    );
    let helper = pids[1];
    assert!(alive(helper), "the daemonized helper runs on");
    assert!(!alive(pids[0]));
    unsafe { libc::kill(helper, libc::SIGKILL) };
}

#[test]
fn history_is_kept_per_action_so_probes_do_not_push_out_the_create() {
    let env = Env::new();
    let _d = env.start(&["--history-per-cluster", "2", "--resync-interval", "100ms"]);
    declare(&env, "kept", "k3d");
    env.await_state("kept", "running", 10 * SEC);
    // The create ends with a probe of its own; resyncs add one run each.
    eventually(10 * SEC, "five resync probes", || {
        (env.starts("probe", "kept").len() >= 6).then_some(())
    });
    let history = env.get("/api/clusters/kept/history").json();
    // Pruning happens as a run ends, so a probe running now comes on top.
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ended_at"].is_string())
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "create").count(),
        1,
        "{actions:?}"
    );
    let probes = actions.iter().filter(|a| **a == "probe").count();
    assert!(
        (1..=2).contains(&probes),
        "at most 2 ended probes kept: {actions:?}"
    );
}
