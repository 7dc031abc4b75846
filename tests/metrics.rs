//! `GET /metrics` through the real binary: the Prometheus text format as promtool reads it,
//! on every socket; exactly the counters a failed create should move; and the alert rules
//! the README offers, tested on recorded series with `promtool test rules`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, unix_request, Env};

const SEC: Duration = Duration::from_secs(1);

/// promtool, from Debian's prometheus package (tests/run-all.sh and .ci/run install it).
fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "these tests need promtool: apt-get install prometheus"
    );
    Command::new("promtool")
}

/// `promtool check metrics` on `text`: its verdict and what it said.
fn check_metrics(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The samples: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn scrape(env: &Env) -> String {
    let r = env.get("/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    r.text
}

#[test]
fn every_socket_serves_metrics_that_promtool_accepts() {
    let env = Env::new();
    let bound = env.start_listening(&[]);
    let (port, sock) = (bound.port, &bound.sock);
    // A second scrape: the first request is counted in it.
    let over_tcp = common::try_request(port, "GET", "/metrics", None, 5 * SEC).unwrap();
    let over_unix = unix_request(sock, "GET", "/metrics").unwrap();
    assert_eq!(over_unix.status, 200);
    for text in [&over_tcp.text, &over_unix.text] {
        let (ok, said) = check_metrics(text);
        assert!(ok, "promtool check metrics: {said}\n{text}");
        for family in [
            "kindler_clusters_backoff",
            "kindler_reconcile_total",
            "kindler_reconcile_errors_total",
            "kindler_actions_running",
            "kindler_actions_waiting_oldest_seconds",
            "kindler_http_requests_total",
            "kindler_websocket_connections",
            "kindler_store_write_seconds",
            "kindler_store_commit_jobs",
            "kindler_change_feed_lag_seconds",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
            "kindler_build_info",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{text}"
            );
        }
    }
}

#[test]
fn one_failed_create_moves_exactly_the_counters_it_should() {
    let env = Env::new();
    // No retry during the test: the failure stays one failure.
    let _d = env.start(&["--backoff-initial", "1h", "--backoff-max", "1h"]);
    env.mode("create-bad", "fail");
    let before = samples(&scrape(&env));
    assert_eq!(
        env.post("/api/clusters", r#"{"name":"bad","provider":"k3d"}"#)
            .status,
        202
    );
    env.await_state("bad", "failed", 20 * SEC);
    let text = scrape(&env);
    let after = samples(&text);
    let moved: BTreeMap<&str, f64> = after
        .iter()
        .filter(|(k, _)| k.starts_with("kindler_reconcile_"))
        .filter_map(|(k, v)| {
            let delta = v - before.get(k).copied().unwrap_or(0.0);
            (delta != 0.0).then_some((k.as_str(), delta))
        })
        .collect();
    let count = |k: &str| moved.get(k).copied();
    assert_eq!(
        count(r#"kindler_reconcile_total{action="create",result="error"}"#),
        Some(1.0),
        "{moved:#?}"
    );
    assert_eq!(
        count(r#"kindler_reconcile_errors_total{action="create"}"#),
        Some(1.0),
        "{moved:#?}"
    );
    assert_eq!(
        count(r#"kindler_reconcile_time_seconds_count{action="create"}"#),
        Some(1.0),
        "{moved:#?}"
    );
    assert_eq!(
        count(r#"kindler_reconcile_time_seconds_bucket{action="create",le="+Inf"}"#),
        Some(1.0)
    );
    for (series, delta) in &moved {
        let expected = series.contains(r#"action="create""#)
            && (series.starts_with("kindler_reconcile_time_seconds")
                || series.contains(r#"result="error""#)
                || series.starts_with("kindler_reconcile_errors_total"));
        assert!(
            expected,
            "{series} moved by {delta}, and should not have:\n{moved:#?}"
        );
    }
    // The counts by state may be one change behind in a scrape (they are counted again in
    // the background): the next scrape has them.
    let failed = r#"kindler_clusters{actual_state="failed",desired_state="present"}"#;
    let after = eventually(10 * SEC, "the failed cluster in the counts", || {
        let now = samples(&scrape(&env));
        (now.get(failed) == Some(&1.0)).then_some(now)
    });
    let gauge = |k: &str| after.get(k).copied();
    assert_eq!(
        gauge(r#"kindler_clusters{actual_state="failed",desired_state="present"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(gauge("kindler_clusters_failing"), Some(1.0));
    assert_eq!(gauge("kindler_clusters_backoff"), Some(1.0));
    assert_eq!(gauge("kindler_actions_running"), Some(0.0));
    assert_eq!(gauge("kindler_change_feed_behind"), Some(0.0));
    let posts = r#"kindler_http_requests_total{code="202",method="POST",route="/api/clusters"}"#;
    assert_eq!(gauge(posts), Some(1.0), "the declaration's request: {text}");
}

#[test]
fn the_alert_rules_fire_on_recorded_series() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus");
    let check = promtool()
        .arg("check")
        .arg("rules")
        .arg(dir.join("kindler-alerts.yml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = promtool()
        .current_dir(&dir)
        .args(["test", "rules", "kindler-alerts.test.yml"])
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}
