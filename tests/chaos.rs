//! Chaos, bounded: the daemon SIGKILLed again and again during a stream of declarations,
//! other programs writing odd values into every column of its tables, and its database file
//! removed or replaced under it. Everything goes through the real binary, a real SQLite file
//! and real processes: the stand-in (tests/fixtures/standin.sh) takes its time, prints
//! progress, starts children of its own, and checks at every start that no process of
//! another run of the same cluster is still alive.
//!
//! `cargo test` runs it in well under a minute on a loaded 2-core machine: the crash loop
//! SIGKILLs the daemon 30 times. For a longer run by hand, `KINDLER_CHAOS_ROUNDS` sets the
//! number of SIGKILLs, and `KINDLER_CHAOS_SEED` replays the random choices of an earlier run
//! (not its timing; the crash loop prints its seed and what it did):
//!
//! ```sh
//! KINDLER_CHAOS_ROUNDS=120 cargo test --test chaos -- --nocapture
//! ```

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, now_ns, try_request, Daemon, Env, Response};
use rusqlite::types::Value as SqlValue;
use serde_json::Value;

const SEC: Duration = Duration::from_secs(1);

/// SIGKILLs of the crash loop.
fn rounds() -> usize {
    match std::env::var("KINDLER_CHAOS_ROUNDS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("KINDLER_CHAOS_ROUNDS={v:?} is not a number")),
        Err(_) => 30,
    }
}

/// xorshift64*: enough to spread kills and choices, and replayable from its seed.
struct Rng(u64);

impl Rng {
    /// The seed of a test's generators: KINDLER_CHAOS_SEED when set, else the clock.
    fn seed(test: &str) -> u64 {
        let seed = match std::env::var("KINDLER_CHAOS_SEED") {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("KINDLER_CHAOS_SEED={v:?} is not a number")),
            Err(_) => (now_ns() as u64) % 1_000_000_007,
        };
        eprintln!("{test}: KINDLER_CHAOS_SEED={seed}");
        seed
    }

    /// Generator number `stream` of the seed.
    fn new(seed: u64, stream: u64) -> Rng {
        Rng((seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// Starts a daemon on the env's socket without waiting for it to be ready: a kill may land
/// during its start-up (migrations, recovery of what the previous one left).
fn spawn_daemon(env: &Env, flags: &[&str]) -> Daemon {
    let log = env.dir.path().join(format!("daemon-{}.log", now_ns()));
    Daemon::spawn(env.command(flags), &env.listener, log).expect("start kindler")
}

/// Live processes the stand-ins of `env` started, children and grandchildren included
/// (whether or not they recorded their pid): every process whose environment carries this
/// env's STANDIN_DIR and a run's process tag. Zombies count as gone.
fn standin_processes(env: &Env) -> Vec<(i32, String)> {
    let dir = format!("STANDIN_DIR={}", env.standin_dir().display());
    let mut found = Vec::new();
    for (pid, vars) in kindler::testkit::processes_with_env(&dir) {
        let var = |key: &str| {
            vars.iter()
                .find_map(|v| v.strip_prefix(format!("{key}=").as_bytes()))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if var("KINDLER_PROCESS_TAG").is_none() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        found.push((
            pid,
            format!(
                "pid {pid} ({} of {}, run {}: {})",
                var("KINDLER_ACTION").unwrap_or_default(),
                var("KINDLER_CLUSTER").unwrap_or_default(),
                var("KINDLER_RUN_ID").unwrap_or_default(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ").trim()
            ),
        ));
    }
    found
}

/// Waits until no process of the env's stand-ins is alive; panics naming those left.
fn await_no_standin_processes(env: &Env, timeout: Duration) {
    let mut left = Vec::new();
    let gone = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(timeout, "the stand-ins' processes to be gone", || {
            left = standin_processes(env);
            left.is_empty().then_some(())
        })
    }));
    let left: Vec<&str> = left.iter().map(|(_, what)| what.as_str()).collect();
    assert!(gone.is_ok(), "left running:\n{}", left.join("\n"));
}

/// Ends every process the env's stand-ins started when a test ends, failed or not (the
/// harness ends the pids they recorded; their grandchildren would sleep for minutes).
/// Declared after the env and before the daemons, so that it runs after the daemons end.
struct Reaper<'a>(&'a Env);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        for (pid, _) in standin_processes(self.0) {
            // SAFETY: kill(2) with a pid found carrying this test's STANDIN_DIR.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// What the stand-in reported: runs that started while another run's processes of the
/// same cluster were alive.
fn overlaps(env: &Env) -> String {
    let text = std::fs::read_to_string(env.standin_dir().join("overlaps.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= 20 {
        return text;
    }
    format!(
        "{}\n... {} lines in all",
        lines[..20].join("\n"),
        lines.len()
    )
}

fn check_overlap(env: &Env) {
    std::fs::write(env.standin_dir().join("check-overlap"), "").unwrap();
}

/// The runs of a cluster's history, oldest first, checked: every run has ended, and each
/// run started only after the one before it ended (a run its daemon died in ends when the
/// next daemon has ended its processes and recorded it as interrupted).
fn check_history(env: &Env, name: &str) -> Result<Vec<Value>, String> {
    let r = env.get(&format!("/api/clusters/{name}/history"));
    if r.status == 404 {
        return Ok(Vec::new());
    }
    if r.status != 200 {
        return Err(format!("{name}: history answered {r:?}"));
    }
    let mut runs = r.json().as_array().cloned().unwrap_or_default();
    runs.sort_by_key(|run| run["run_id"].as_i64());
    let mut previous: Option<&Value> = None;
    for run in &runs {
        if run["ended_at"].is_null() || run["outcome"] == "running" {
            return Err(format!("{name}: run never ended: {run}"));
        }
        if let Some(prev) = previous {
            let (ended, started) = (prev["ended_at"].as_str(), run["started_at"].as_str());
            if started < ended {
                return Err(format!(
                    "{name}: run {} started before run {} ended:\n  {prev}\n  {run}",
                    run["run_id"], prev["run_id"]
                ));
            }
        }
        previous = Some(run);
    }
    Ok(runs)
}

// ---------------------------------------------------------------------------------------
// 1. The crash loop
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Running,
    Stopped,
    Gone,
}

/// One declaration of the client's stream, once the daemon answered it.
#[derive(Debug)]
struct Declaration {
    name: String,
    verb: &'static str,
    want: Want,
    /// 202, or the answer that shows an earlier, unanswered try took effect (409 "exists"
    /// to a POST, 404 to a DELETE).
    status: u16,
    /// Tries it took: a try the daemon died in (or refused with 503) is tried again.
    tries: u32,
}

/// Sends a request until a daemon answers it with anything but 503. A try the daemon died
/// in gets no answer (the connection is reset or closed); while no daemon runs, the
/// connection waits in the socket's backlog for the next one, as with systemd.
fn until_answered(port: u16, method: &str, path: &str, body: Option<&str>) -> (Response, u32) {
    let give_up = Instant::now() + 120 * SEC;
    let mut tries = 0;
    loop {
        tries += 1;
        let sent = Instant::now();
        match try_request(port, method, path, body, 60 * SEC) {
            Ok(r) if r.status != 503 => return (r, tries),
            other => {
                // An unanswered request must not stay in the backlog, to be served later
                // than its retry: a try that waited this long fails the test instead.
                assert!(
                    sent.elapsed() < 50 * SEC,
                    "{method} {path}: no answer for {:?}: {other:?}",
                    sent.elapsed()
                );
                assert!(Instant::now() < give_up, "{method} {path}: {other:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Clusters alive at once in the stream (declared and not deleted).
const MAX_LIVE: usize = 12;

/// The client: new clusters, stops, starts and deletes of earlier ones, one after the
/// other, until `stop`. Every fourth cluster's create leaves background children behind,
/// which kindler must end.
fn declaration_stream(
    port: u16,
    standin: &Path,
    stop: &AtomicBool,
    mut rng: Rng,
) -> Vec<Declaration> {
    let mut live: Vec<String> = Vec::new();
    let mut made = 0;
    let mut sent = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let roll = rng.below(100);
        let (verb, name) = if live.len() < 3 || (roll < 35 && live.len() < MAX_LIVE) {
            made += 1;
            let name = format!("c{made:03}");
            if made % 4 == 0 {
                let mode = standin.join("mode").join(format!("create-{name}"));
                std::fs::write(mode, "leave").unwrap();
            }
            ("POST", name)
        } else {
            let name = live[rng.below(live.len() as u64) as usize].clone();
            let verb = match rng.below(100) {
                0..=39 => "stop",
                40..=79 => "start",
                _ => "DELETE",
            };
            (verb, name)
        };
        let (method, path, body, want) = match verb {
            "POST" => (
                "POST",
                "/api/clusters".to_owned(),
                format!(r#"{{"name":"{name}","provider":"k3d"}}"#),
                Want::Running,
            ),
            "stop" => (
                "POST",
                format!("/api/clusters/{name}/stop"),
                String::new(),
                Want::Stopped,
            ),
            "start" => (
                "POST",
                format!("/api/clusters/{name}/start"),
                String::new(),
                Want::Running,
            ),
            _ => (
                "DELETE",
                format!("/api/clusters/{name}"),
                String::new(),
                Want::Gone,
            ),
        };
        let body = (method == "POST").then_some(body.as_str());
        let (r, tries) = until_answered(port, method, &path, body);
        let took_effect_unanswered = tries > 1
            && match verb {
                "POST" => r.status == 409 && r.text.contains("already exists"),
                "DELETE" => r.status == 404,
                _ => false,
            };
        assert!(
            r.status == 202 || took_effect_unanswered,
            "{verb} {name} (try {tries}): {r:?}"
        );
        match verb {
            "POST" => live.push(name.clone()),
            "DELETE" => live.retain(|n| *n != name),
            _ => {}
        }
        sent.push(Declaration {
            name,
            verb,
            want,
            status: r.status,
            tries,
        });
        // The client's pace, not a wait for anything.
        std::thread::sleep(rng.millis(5, 30));
    }
    sent
}

/// What differs between the clusters the daemon lists and the declared ones.
fn differences(env: &Env, expected: &BTreeMap<String, Want>) -> Vec<String> {
    let r = env.get("/api/clusters");
    if r.status != 200 {
        return vec![format!("GET /api/clusters: {r:?}")];
    }
    let listed: BTreeMap<String, (String, String)> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                (
                    c["desired_state"].as_str().unwrap_or("?").to_owned(),
                    c["actual_state"].as_str().unwrap_or("?").to_owned(),
                ),
            )
        })
        .collect();
    let mut diff = Vec::new();
    for (name, want) in expected {
        let found = listed.get(name).map(|(d, a)| (d.as_str(), a.as_str()));
        match (want, found) {
            (Want::Gone, None)
            | (Want::Running, Some(("present", "running")))
            | (Want::Stopped, Some(("stopped", "stopped"))) => {}
            _ => diff.push(format!("{name}: declared {want:?}, found {found:?}")),
        }
    }
    for name in listed.keys().filter(|n| !expected.contains_key(*n)) {
        diff.push(format!("{name}: never declared, but listed"));
    }
    diff
}

#[test]
fn a_daemon_killed_again_and_again_loses_nothing_doubles_nothing_orphans_nothing() {
    const TEST: &str = "crash loop";
    let rounds = rounds();
    let seed = Rng::seed(TEST);
    let mut rng = Rng::new(seed, 0);
    let env = Env::new();
    let _reaper = Reaper(&env);
    // Scripts slow enough for kills to land while they run, with children of their own.
    env.mode("create", "busy:0.3");
    env.mode("delete", "busy:0.2");
    env.mode("start", "busy:0.15");
    env.mode("stop", "slow:0.15");
    check_overlap(&env);
    let flags = ["--max-concurrent-actions", "6"];

    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (port, standin, stop) = (env.port, env.standin_dir(), stop.clone());
        let rng = Rng::new(seed, 1);
        std::thread::spawn(move || declaration_stream(port, &standin, &stop, rng))
    };
    let chaos = Instant::now();
    let mut from_ready = 0;
    for _ in 0..rounds {
        let mut d = spawn_daemon(&env, &flags);
        // Half the daemons live from their start, so that kills land during start-up
        // (migrations, recovery); half from when they answer, so that kills land while
        // scripts run also on a loaded machine, where start-up takes most of that time.
        if rng.below(2) == 0 {
            let ready = Instant::now() + 10 * SEC;
            while Instant::now() < ready
                && !try_request(env.port, "GET", "/api/health", None, 2 * SEC)
                    .is_ok_and(|r| r.status == 200)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            from_ready += 1;
        }
        // The attack: a random lifetime of tens to hundreds of milliseconds.
        std::thread::sleep(rng.millis(20, 350));
        d.signal(libc::SIGKILL);
        d.wait_exit(10 * SEC).expect("a SIGKILLed daemon is gone");
        if client.is_finished() {
            break;
        }
    }
    let chaos_took = chaos.elapsed();
    stop.store(true, Ordering::Relaxed);
    let last_kill = Instant::now();
    let d = env.start(&flags);
    let declared = client
        .join()
        .expect("the client's stream (its panic is above)");

    // The last declaration of each cluster decides (each was answered before the next).
    let expected: BTreeMap<String, Want> =
        declared.iter().map(|d| (d.name.clone(), d.want)).collect();

    // Nothing lost, nothing stuck.
    let deadline = Duration::from_secs(90);
    let converged = loop {
        let diff = differences(&env, &expected);
        if diff.is_empty() {
            break last_kill.elapsed();
        }
        assert!(
            last_kill.elapsed() < deadline,
            "not converged {deadline:?} after the last kill (seed above):\n{}\noverlaps:\n{}",
            diff.join("\n"),
            overlaps(&env)
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // Nothing doubled: the stand-in saw no run start beside another one's processes, and
    // the history has each run of a cluster start after the one before it ended.
    assert_eq!(overlaps(&env), "", "runs overlapped (seed above)");
    let mut runs = 0;
    let mut interrupted = 0;
    for name in expected.keys() {
        let history = check_history(&env, name).unwrap_or_else(|e| panic!("{e}"));
        runs += history.len();
        interrupted += history
            .iter()
            .filter(|r| r["outcome"] == "interrupted")
            .count();
    }

    // Nothing orphaned.
    await_no_standin_processes(&env, 15 * SEC);

    // And the last daemon is alive and well.
    assert_eq!(env.get("/api/health").status, 200);
    let mut d = d;
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");

    let acked = declared.iter().filter(|d| d.status == 202).count();
    let retried = declared.iter().filter(|d| d.tries > 1).count();
    let posts = declared.iter().filter(|d| d.verb == "POST").count();
    eprintln!(
        "{TEST}: {rounds} SIGKILLs ({from_ready} timed from readiness) in {:.1}s; {} declarations ({posts} new clusters), {acked} \
         answered 202, {} took effect with their answer lost, {retried} sent again; {runs} runs \
         ({interrupted} interrupted by a kill); converged {:.1}s after the last kill",
        chaos_took.as_secs_f64(),
        declared.len(),
        declared.len() - acked,
        converged.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Other programs poisoning rows
// ---------------------------------------------------------------------------------------

/// What kindler must do with a poisoned row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// It cannot act on the row: listed under `ignored_rows`.
    Ignored,
    /// A value kindler reads (or passes on) as it is: the row is acted on.
    ActedOn,
    /// Either, but one of them: a row is never silently left alone.
    Either,
}

/// One poison: an SQL assignment to one or more columns of a row of `clusters`.
struct Poison {
    set: &'static str,
    columns: &'static [&'static str],
    expect: Expect,
}

const fn p(set: &'static str, columns: &'static [&'static str], expect: Expect) -> Poison {
    Poison {
        set,
        columns,
        expect,
    }
}

/// Odd values for every column of `clusters`.
const POISONS: &[Poison] = {
    use Expect::*;
    &[
        p("name = 'My_Cluster'", &["name"], Ignored),
        p("name = 'a;rm -rf /'", &["name"], Ignored),
        p("name = X'00ff'", &["name"], Ignored),
        p("name = ''", &["name"], Ignored),
        p("name = 42", &["name"], ActedOn),
        p("provider = 'docker'", &["provider"], Ignored),
        p("provider = 42", &["provider"], Ignored),
        p("provider = X'00ff'", &["provider"], Ignored),
        p("subnet = 'not-a-subnet'", &["subnet"], Either),
        p("subnet = X'00ff'", &["subnet"], Either),
        p("subnet = 12345", &["subnet"], Either),
        p("subnet = ''", &["subnet"], ActedOn),
        p("subnet = NULL", &["subnet"], ActedOn),
        p("node_port = 'abc'", &["node_port"], Ignored),
        p("pf_port = ''", &["pf_port"], ActedOn),
        p("http_port = 99999999999999", &["http_port"], Ignored),
        p("https_port = -1", &["https_port"], Ignored),
        p("pf_port = 1.5", &["pf_port"], Ignored),
        p("node_port = 1e300", &["node_port"], Ignored),
        p("https_port = NULL", &["https_port"], ActedOn),
        p("http_port = X'00ff'", &["http_port"], Ignored),
        p(
            "register_portainer = 'abc'",
            &["register_portainer"],
            Either,
        ),
        p("haproxy_route = X'00ff'", &["haproxy_route"], Either),
        p("register_argocd = 2", &["register_argocd"], Either),
        p("register_argocd = 'true'", &["register_argocd"], ActedOn),
        p("desired_state = 'sideways'", &["desired_state"], Ignored),
        p("desired_state = NULL", &["desired_state"], ActedOn),
        p("desired_state = 7", &["desired_state"], Ignored),
        p("desired_state = X'00ff'", &["desired_state"], Ignored),
        p("actual_state = 'exploded'", &["actual_state"], Either),
        p("actual_state = NULL", &["actual_state"], Either),
        p("actual_state = X'00ff'", &["actual_state"], Either),
        p("actual_state = 3.5", &["actual_state"], Either),
        p("generation = 'abc'", &["generation"], Either),
        p("generation = 9223372036854775807", &["generation"], Either),
        p("generation = -5", &["generation"], Either),
        p("generation = 1e300", &["generation"], Either),
        p("observed_generation = ''", &["observed_generation"], Either),
        p(
            "observed_generation = X'00ff'",
            &["observed_generation"],
            Either,
        ),
        p("attempts = 4294967295", &["attempts"], Either),
        p("attempts = 9223372036854775807", &["attempts"], Either),
        p("attempts = -7", &["attempts"], Either),
        p("attempts = 'abc'", &["attempts"], Either),
        p("attempts = 2.5", &["attempts"], Either),
        p("next_attempt_at = 'abc'", &["next_attempt_at"], ActedOn),
        p("next_attempt_at = -1e300", &["next_attempt_at"], ActedOn),
        p("next_attempt_at = X'00ff'", &["next_attempt_at"], ActedOn),
        p(
            "last_reconciled_at = 1e300",
            &["last_reconciled_at"],
            ActedOn,
        ),
        p(
            "last_transition_at = X'00ff'",
            &["last_transition_at"],
            ActedOn,
        ),
        p("created_at = -1", &["created_at"], ActedOn),
        p("updated_at = 'yesterday'", &["updated_at"], ActedOn),
        p("reconcile_error = X'00ff'", &["reconcile_error"], ActedOn),
        p("last_action = 'dance'", &["last_action"], ActedOn),
        p("nodes_ready = 1.5", &["nodes_ready"], Either),
        p("nodes_total = 'abc'", &["nodes_total"], Either),
        p("portainer_status = X'00ff'", &["portainer_status"], Either),
        p("argocd_status = 3.25", &["argocd_status"], Either),
        p("status = 999", &["status"], ActedOn),
        p("change_seq = 'abc'", &["change_seq"], ActedOn),
        p("change_seq = X'00ff'", &["change_seq"], ActedOn),
        p("change_seq = -1", &["change_seq"], ActedOn),
        p("change_seq = 0", &["change_seq"], ActedOn),
        p("change_seq = 1.5", &["change_seq"], ActedOn),
        p("id = -1042", &["id"], ActedOn),
        p("id = 9223372036854775807", &["id"], ActedOn),
        p("server_ip = X'00ff'", &["server_ip"], ActedOn),
        p(
            "provider = 'kind', pf_port = '', subnet = NULL, register_portainer = 0, \
             last_action = NULL, attempts = -1",
            &[
                "provider",
                "pf_port",
                "subnet",
                "register_portainer",
                "last_action",
                "attempts",
            ],
            Either,
        ),
        p(
            "name = 'Bad Name', provider = 'docker', node_port = 'x', generation = 'y'",
            &["name", "provider", "node_port", "generation"],
            Ignored,
        ),
    ]
};

/// Where a poison `id = N` moves its row.
fn moved_id(poison: &Poison) -> Option<i64> {
    let id = poison.set.strip_prefix("id = ")?;
    Some(id.parse().expect("an id"))
}

fn victim_name(i: usize) -> String {
    format!("v{i:02}")
}

fn open_db(env: &Env) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.busy_timeout(10 * SEC).unwrap();
    conn
}

/// The values of the columns victim `i` (row `id`) is poisoned in, as stored now.
fn poisoned_columns(conn: &rusqlite::Connection, i: usize, id: i64) -> Vec<SqlValue> {
    POISONS[i]
        .columns
        .iter()
        .map(|col| {
            conn.query_row(
                &format!("SELECT {col} FROM clusters WHERE id = {id}"),
                [],
                |r| r.get(0),
            )
            .unwrap()
        })
        .collect()
}

/// A victim's desired and actual state as stored now, raw.
fn victim_row(conn: &rusqlite::Connection, id: i64) -> (SqlValue, SqlValue) {
    conn.query_row(
        "SELECT desired_state, actual_state FROM clusters WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap_or_else(|e| panic!("row {id}: {e}"))
}

/// The actual state a readable desired state leads to.
fn target_state(desired: &SqlValue) -> Option<&'static str> {
    match desired {
        SqlValue::Null => Some("running"),
        SqlValue::Text(t) if t == "present" => Some("running"),
        SqlValue::Text(t) if t == "stopped" => Some("stopped"),
        _ => None,
    }
}

fn ignored_rows(env: &Env) -> (u16, BTreeMap<i64, String>) {
    let r = env.get("/api/health");
    let rows = r.json()["ignored_rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    (
                        row["id"].as_i64().unwrap(),
                        row["reason"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (r.status, rows)
}

/// Which victims are not yet where their poison's expectation puts them.
fn poison_verdicts(env: &Env, conn: &rusqlite::Connection, ids: &[i64]) -> Vec<String> {
    let (status, ignored) = ignored_rows(env);
    let mut wrong = Vec::new();
    if status != 200 {
        wrong.push(format!("health answered {status}"));
    }
    for (i, poison) in POISONS.iter().enumerate() {
        let (desired, actual) = victim_row(conn, ids[i]);
        let listed = ignored.get(&ids[i]);
        let reached =
            target_state(&desired).is_some_and(|t| matches!(&actual, SqlValue::Text(a) if a == t));
        let ok = match poison.expect {
            Expect::Ignored => listed.is_some(),
            Expect::ActedOn => reached && listed.is_none(),
            Expect::Either => (reached && listed.is_none()) || (listed.is_some() && !reached),
        };
        if !ok {
            wrong.push(format!(
                "{} ({}): expected {:?}; desired {desired:?}, actual {actual:?}, ignored: {listed:?}",
                victim_name(i),
                poison.set,
                poison.expect
            ));
        }
    }
    wrong
}

/// Waits until `check` finds nothing wrong; panics with what it found last.
fn settle(what: &str, timeout: Duration, mut check: impl FnMut() -> Vec<String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let wrong = check();
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still wrong after {timeout:?}:\n{}",
            wrong.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What healthy clusters need, and what every endpoint must keep doing, while rows are
/// poisoned: new declarations are acted on, stop and start work, nothing answers 500.
fn healthy_clusters_keep_working(env: &Env, d: &mut Daemon, round: &str) {
    for name in [format!("{round}-new1"), format!("{round}-new2")] {
        let r = env.post(
            "/api/clusters",
            &format!(r#"{{"name":"{name}","provider":"k3d"}}"#),
        );
        assert_eq!(r.status, 202, "POST {name}: {r:?}");
    }
    assert_eq!(env.post("/api/clusters/h2/stop", "").status, 202);
    env.await_state("h2", "stopped", 20 * SEC);
    assert_eq!(env.post("/api/clusters/h2/start", "").status, 202);
    env.await_state("h2", "running", 20 * SEC);
    env.await_state(&format!("{round}-new1"), "running", 20 * SEC);
    env.await_state(&format!("{round}-new2"), "running", 20 * SEC);
    for name in ["h1", "h2", "h3"] {
        let c = env.cluster(name).expect("a healthy cluster is listed");
        assert_eq!(c["actual_state"], "running", "{c}");
    }
    assert_eq!(env.get("/api/clusters").status, 200);
    // Every endpoint about every victim answers, and none with a server error.
    for (i, poison) in POISONS.iter().enumerate() {
        let name = victim_name(i);
        for path in [
            format!("/api/clusters/{name}"),
            format!("/api/clusters/{name}/status"),
            format!("/api/clusters/{name}/history"),
            format!("/api/tasks/reconcile-stop-{name}"),
        ] {
            let r = common::try_request(env.port, "GET", &path, None, 10 * SEC)
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert!(
                [200, 404, 503].contains(&r.status),
                "{} GET {path}: {r:?}",
                poison.set
            );
            if path.ends_with("/history") {
                // A history is served whatever the row holds (404: no runs, or renamed).
                assert!(
                    [200, 404].contains(&r.status),
                    "{} GET {path}: {r:?}",
                    poison.set
                );
            }
        }
    }
    let history = env.get("/api/clusters/h1/history");
    assert_eq!(history.status, 200, "a history with odd runs: {history:?}");
    assert!(
        history.json().as_array().unwrap().len() >= 3,
        "the odd runs are listed: {history:?}"
    );
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
}

#[test]
fn rows_other_programs_poison_stop_nothing_else_and_are_picked_up_once_corrected() {
    let env = Env::new();
    let _reaper = Reaper(&env);
    check_overlap(&env);
    let flags = ["--max-concurrent-actions", "8"];
    let mut d = env.start(&flags);
    for name in ["h1", "h2", "h3"] {
        let r = env.post(
            "/api/clusters",
            &format!(r#"{{"name":"{name}","provider":"k3d"}}"#),
        );
        assert_eq!(r.status, 202, "{r:?}");
    }
    // The victims: running clusters another program (the old backend, say) wrote.
    let conn = open_db(&env);
    let mut ids = Vec::new();
    for i in 0..POISONS.len() {
        conn.execute(
            "INSERT INTO clusters (name, provider, node_port, pf_port, http_port, https_port,
                                   server_ip, desired_state, actual_state, last_reconciled_at)
             VALUES (?1, 'k3d', 30080, ?2, ?3, ?4, ?5, 'present', 'running',
                     strftime('%Y-%m-%d %H:%M:%f', 'now'))",
            rusqlite::params![
                victim_name(i),
                20000 + i as i64,
                21000 + i as i64,
                22000 + i as i64,
                format!("victim-{i:02}")
            ],
        )
        .unwrap();
        ids.push(conn.last_insert_rowid());
    }
    for name in ["h1", "h2", "h3"] {
        env.await_state(name, "running", 20 * SEC);
    }
    // The values every poisoned column held, to correct them later.
    let originals: Vec<Vec<SqlValue>> = (0..POISONS.len())
        .map(|i| poisoned_columns(&conn, i, ids[i]))
        .collect();

    // Odd runs in the history of h1, h2's create moved to the largest id SQLite allows,
    // and unfinished runs no daemon started: a foreign one with odd values everywhere, one
    // with a tag no process carries.
    let h1_id: i64 = conn
        .query_row("SELECT id FROM clusters WHERE name = 'h1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute_batch(&format!(
        "UPDATE reconcile_runs SET started_at = 12345, attempt = -1, exit_code = 1e300,
                output_tail = X'00ff', duration_ms = 'abc'
          WHERE cluster_id = {h1_id};
         INSERT INTO reconcile_runs (cluster_id, cluster_name, action, generation, attempt,
                outcome, started_at, ended_at, duration_ms, exit_code, signal, error,
                output_tail, pgid, process_tag)
         VALUES ({h1_id}, 'h1', 'bogus', 'abc', 99999999999, X'00ff', 'yesterday', 1e300,
                 1.5, 99999999999, 'x', 42, 7, 'abc', NULL),
                ({h1_id}, 'h1', 'create', 1, 1, 'failed', X'00ff', -1, -5, -1, -1, X'00ff',
                 NULL, 99999999999, X'00ff');
         INSERT INTO reconcile_runs (cluster_id, cluster_name, action, generation, attempt,
                started_at, process_tag)
         VALUES ('abc', X'00ff', X'00ff', 'abc', 'abc', 'abc', 42),
                ({h1_id}, 'h1', 'stop', 1, 1, '2026-01-01 00:00:00', 'no-such-tag');
         UPDATE reconcile_runs SET id = 9223372036854775807
          WHERE id = (SELECT MIN(id) FROM reconcile_runs WHERE cluster_name = 'h2');"
    ))
    .unwrap();

    // Each victim is declared stopped and poisoned in one transaction.
    let mut poisoned = Vec::new();
    for (i, poison) in POISONS.iter().enumerate() {
        let id = ids[i];
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             UPDATE clusters SET desired_state = 'stopped' WHERE id = {id};
             UPDATE clusters SET {} WHERE id = {id};",
            poison.set
        ))
        .unwrap_or_else(|e| panic!("{}: {e}", poison.set));
        if let Some(id) = moved_id(poison) {
            ids[i] = id;
        }
        poisoned.push(poisoned_columns(&conn, i, ids[i]));
        conn.execute_batch("COMMIT").unwrap();
    }
    settle("poisoned rows", 30 * SEC, || {
        poison_verdicts(&env, &conn, &ids)
    });
    healthy_clusters_keep_working(&env, &mut d, "a");

    // A restart after a crash, while an action runs: the new daemon ends the dead one's
    // processes (odd unfinished runs beside them) and works on as before.
    env.mode("create-r1", "bg");
    assert_eq!(
        env.post("/api/clusters", r#"{"name":"r1","provider":"k3d"}"#)
            .status,
        202
    );
    eventually(20 * SEC, "r1's create and its children", || {
        (env.pids("create-r1").len() >= 4).then_some(())
    });
    d.signal(libc::SIGKILL);
    d.wait_exit(10 * SEC).expect("killed");
    env.mode("create-r1", "busy:0.2");
    let mut d = env.start(&flags);
    env.await_state("r1", "running", 30 * SEC);
    assert_eq!(overlaps(&env), "", "a run started beside a dead daemon's");
    let history = check_history(&env, "r1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(history[0]["outcome"], "interrupted", "{history:?}");
    settle("poisoned rows after a restart", 30 * SEC, || {
        poison_verdicts(&env, &conn, &ids)
    });
    healthy_clusters_keep_working(&env, &mut d, "b");

    // Corrected (each column that still holds its poison gets its value back, the
    // declaration stays), every row is acted on again: each reaches the declared state.
    for i in 0..POISONS.len() {
        // Immediate: a deferred transaction that reads first cannot take the write lock
        // once kindler has committed meanwhile (SQLITE_BUSY, without waiting).
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let now = poisoned_columns(&conn, i, ids[i]);
        for (n, col) in POISONS[i].columns.iter().enumerate() {
            if now[n] == poisoned[i][n] {
                let id = ids[i];
                conn.execute(
                    &format!("UPDATE clusters SET {col} = ?1 WHERE id = {id}"),
                    [&originals[i][n]],
                )
                .unwrap();
                if *col == "id" {
                    ids[i] = match originals[i][n] {
                        SqlValue::Integer(id) => id,
                        ref other => panic!("an id: {other:?}"),
                    };
                }
            }
        }
        conn.execute(
            &format!(
                "UPDATE clusters SET desired_state = 'stopped' WHERE id = {}",
                ids[i]
            ),
            [],
        )
        .unwrap();
        conn.execute_batch("COMMIT").unwrap();
    }
    settle("corrected rows", 30 * SEC, || {
        let (status, ignored) = ignored_rows(&env);
        let mut wrong: Vec<String> = ignored
            .iter()
            .map(|(id, why)| format!("row {id} still ignored: {why}"))
            .collect();
        if status != 200 {
            wrong.push(format!("health answered {status}"));
        }
        for (i, poison) in POISONS.iter().enumerate() {
            match env.cluster(&victim_name(i)) {
                Some(c) if c["actual_state"] == "stopped" => {}
                other => wrong.push(format!("{} ({}): {other:?}", victim_name(i), poison.set)),
            }
        }
        wrong
    });

    // Nothing doubled, nothing left running, and a stop is clean.
    assert_eq!(overlaps(&env), "");
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(20 * SEC).expect("the daemon stops");
    assert!(status.success(), "{status:?}");
    await_no_standin_processes(&env, 10 * SEC);
}

// ---------------------------------------------------------------------------------------
// 3. The database file removed or replaced under the daemon
// ---------------------------------------------------------------------------------------

/// A POST of the stream and its answer.
#[derive(Debug, Clone)]
struct Post {
    name: String,
    sent: Instant,
    answered: Instant,
    status: u16,
    text: String,
}

/// A client sending new clusters, one after the other (no retries), until finished.
struct Stream {
    stop: Arc<AtomicBool>,
    posts: Arc<Mutex<Vec<Post>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Stream {
    fn start(env: &Env, prefix: &'static str) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (port, stop, posts) = (env.port, stop.clone(), posts.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let name = format!("{prefix}{n:03}");
                    let body = format!(r#"{{"name":"{name}","provider":"k3d"}}"#);
                    let sent = Instant::now();
                    let r = try_request(port, "POST", "/api/clusters", Some(&body), 20 * SEC)
                        .unwrap_or_else(|e| panic!("POST {name}: {e}"));
                    posts.lock().unwrap().push(Post {
                        name,
                        sent,
                        answered: Instant::now(),
                        status: r.status,
                        text: r.text,
                    });
                    // The client's pace, not a wait for anything.
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Stream {
            stop,
            posts,
            thread,
        }
    }

    /// Waits until `n` posts sent after `after` satisfy `pred`.
    fn await_posts(&self, n: usize, after: Instant, what: &str, pred: impl Fn(&Post) -> bool) {
        eventually(20 * SEC, what, || {
            assert!(!self.thread.is_finished(), "the stream ended early");
            let posts = self.posts.lock().unwrap();
            (posts.iter().filter(|p| p.sent > after && pred(p)).count() >= n).then_some(())
        })
    }

    fn finish(self) -> Vec<Post> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the stream (its panic is above)");
        Arc::try_unwrap(self.posts).unwrap().into_inner().unwrap()
    }
}

fn names(clusters: &Response) -> BTreeSet<String> {
    clusters
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Every post sent after `event` was refused with 503 and a reason naming the file.
fn refused_after(posts: &[Post], event: Instant, db: &Path, why: &str) {
    let db = db.display().to_string();
    let after: Vec<&Post> = posts.iter().filter(|p| p.sent > event).collect();
    assert!(after.len() >= 10, "{after:?}");
    for p in after {
        assert_eq!(
            p.status, 503,
            "{} was sent after the file {why}: {p:?}",
            p.name
        );
        assert!(
            p.text.contains(&db) && p.text.contains(why),
            "the reason names the file: {p:?}"
        );
    }
}

fn await_health_naming(env: &Env, why: &str) {
    let db = env.db().display().to_string();
    eventually(10 * SEC, &format!("health to say the file {why}"), || {
        let r = env.get("/api/health");
        (r.status == 503 && r.text.contains(&db) && r.text.contains(why)).then_some(())
    });
}

#[test]
fn a_database_removed_under_a_stream_of_declarations_acknowledges_nothing_after() {
    let env = Env::new();
    let _reaper = Reaper(&env);
    let mut d = env.start(&[]);
    let stream = Stream::start(&env, "r");
    let began = Instant::now();
    stream.await_posts(10, began, "10 declarations answered 202", |p| {
        p.status == 202
    });
    for suffix in ["", "-wal", "-shm"] {
        let mut path = env.db().into_os_string();
        path.push(suffix);
        std::fs::remove_file(path).unwrap();
    }
    let removed = Instant::now();
    stream.await_posts(
        10,
        removed,
        "10 declarations sent after the removal",
        |_| true,
    );
    await_health_naming(&env, "was removed");
    let posts = stream.finish();
    refused_after(&posts, removed, &env.db(), "was removed");

    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(20 * SEC).expect("stops").success());
    let _d = env.start(&[]);
    let listed = names(&env.get("/api/clusters"));
    // What was acknowledged went with the file the operator removed; nothing was
    // acknowledged into a file no start would find.
    let acked: Vec<&str> = posts
        .iter()
        .filter(|p| p.status == 202)
        .map(|p| p.name.as_str())
        .collect();
    assert!(acked.len() >= 10);
    assert!(listed.is_empty(), "{listed:?}");
}

#[test]
fn a_database_replaced_under_a_stream_of_declarations_acknowledges_nothing_after() {
    let env = Env::new();
    let _reaper = Reaper(&env);
    let mut d = env.start(&[]);
    let stream = Stream::start(&env, "m");
    let began = Instant::now();
    stream.await_posts(8, began, "8 declarations answered 202", |p| p.status == 202);
    // A copy of the database, taken while declarations stream in, is moved onto its path
    // (a restore from an hour-old backup, say).
    let backup = env.dir.path().join("backup.db");
    let backup_began = Instant::now();
    env.sqlite(&format!(".backup '{}'", backup.display()));
    stream.await_posts(8, backup_began, "8 more answered 202", |p| p.status == 202);
    let out = std::process::Command::new("sqlite3")
        .arg(&backup)
        .arg("SELECT name FROM clusters")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let in_backup: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    std::fs::rename(&backup, env.db()).unwrap();
    let replaced = Instant::now();
    stream.await_posts(10, replaced, "10 declarations sent after the move", |_| {
        true
    });
    await_health_naming(&env, "was replaced");
    let posts = stream.finish();
    refused_after(&posts, replaced, &env.db(), "was replaced");

    // A crash now, and the next start uses the file at the path: whole, with what the
    // backup held and nothing acknowledged after the move.
    d.signal(libc::SIGKILL);
    d.wait_exit(10 * SEC).expect("killed");
    let _d = env.start(&[]);
    assert_eq!(
        env.sqlite("PRAGMA integrity_check"),
        "ok",
        "the database after the restart"
    );
    let listed = names(&env.get("/api/clusters"));
    assert_eq!(
        listed, in_backup,
        "kindler holds what the file moved onto its path holds"
    );
    for p in &posts {
        if p.status == 202 && p.answered < backup_began {
            assert!(
                listed.contains(&p.name),
                "{} was in the backup: {listed:?}",
                p.name
            );
        }
        if p.sent > replaced {
            assert!(
                !listed.contains(&p.name),
                "{} was refused: {listed:?}",
                p.name
            );
        }
    }
    let acked: BTreeSet<&str> = posts
        .iter()
        .filter(|p| p.status == 202 && p.sent < replaced)
        .map(|p| p.name.as_str())
        .collect();
    for name in &listed {
        assert!(
            acked.contains(name.as_str()),
            "{name} was never acknowledged"
        );
    }
}
