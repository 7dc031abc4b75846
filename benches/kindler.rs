//! kindler's benchmark suite: is the daemon fast and small? Run it with `bench/run.sh`
//! (release build, every measurement, one table of figures against their targets), or
//! `bench/run.sh --quick` for a short smoke run that fails only when the setup is broken.
//!
//! Everything goes through the real release binary (`CARGO_BIN_EXE_kindler`) and real
//! SQLite files. The API socket is passed as fd 3 with LISTEN_FDS, the way systemd does,
//! and readiness is the READY=1 datagram on a NOTIFY_SOCKET bound here. API load comes
//! from `wrk`; socket activation from `systemd-socket-activate`.
//!
//! This executable is also every script the daemon runs: started with BENCH_STANDIN in its
//! environment it is the stand-in (see [`standin`]), which tells the driver when it
//! started and then does what its mode says. (The daemon strips its own KINDLER_* variables
//! from a script's environment, so the stand-in's settings are named BENCH_*.)

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "../tests/common/activation.rs"]
mod activation;
#[path = "../tests/common/notify.rs"]
mod notify;
#[path = "../tests/common/process.rs"]
mod process;
use notify::Notifications;
use process::alive;

const BIN: &str = env!("CARGO_BIN_EXE_kindler");

/// The daemon under test: the release build of this tree, or BENCH_KINDLER_BIN (another
/// build, to compare).
fn bin() -> String {
    std::env::var("BENCH_KINDLER_BIN").unwrap_or_else(|_| BIN.to_owned())
}
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const MIB: u64 = 1024 * 1024;

type Res<T> = Result<T, String>;

fn main() {
    if std::env::var_os("BENCH_STANDIN").is_some() {
        standin::main();
    }
    let mut quick = false;
    let mut keep = false;
    let mut only: Option<Vec<String>> = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--keep" => keep = true,
            // `cargo bench` passes --bench to every bench target.
            "--bench" => {}
            a if a.starts_with("--only=") => {
                only = Some(a["--only=".len()..].split(',').map(str::to_owned).collect())
            }
            a => {
                eprintln!("unknown argument {a:?}; use --quick, --keep, --only=1,2,...");
                std::process::exit(2);
            }
        }
    }
    let root = tempfile::Builder::new()
        .prefix("kindler-bench-")
        .tempdir()
        .unwrap_or_else(|e| {
            eprintln!("cannot create a temporary directory: {e}");
            std::process::exit(2)
        });
    let ctx = Ctx {
        quick,
        root: root.path().to_owned(),
        exe: std::env::current_exe().expect("the bench's own path"),
        tck: unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64,
        seq: std::cell::Cell::new(0),
    };
    let mut table = Table::default();
    type Section = fn(&Ctx, &mut Table) -> Res<()>;
    let sections: [(&str, &str, Section); 7] = [
        ("1", "declaration latency", s1_post_to_start),
        ("2", "API throughput (wrk)", s2_api),
        ("3", "memory", s3_memory),
        ("4", "start-up", s4_startup),
        ("5", "stop", s5_stop),
        ("6", "reconcile throughput", s6_throughput),
        ("7", "idle cost", s7_idle),
    ];
    let started = Instant::now();
    for (id, title, run) in sections {
        if only.as_ref().is_some_and(|o| !o.iter().any(|x| x == id)) {
            continue;
        }
        eprintln!("[{id}/7] {title} ...");
        let t0 = Instant::now();
        if let Err(e) = run(&ctx, &mut table) {
            eprintln!("[{id}/7] {title}: SETUP FAILED: {e}");
            table.error(id, title, &e);
        }
        eprintln!("[{id}/7] {title}: {:.1} s", t0.elapsed().as_secs_f64());
    }
    let text = table.render(quick);
    println!("{text}");
    println!(
        "{} run in {:.0} s{}",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64(),
        if quick {
            " (quick: figures come from short runs and are not judged)"
        } else {
            ""
        }
    );
    let results = Path::new(MANIFEST_DIR).join("bench/results");
    if std::fs::create_dir_all(&results).is_ok() {
        let name = if quick { "quick.txt" } else { "latest.txt" };
        let _ = std::fs::write(results.join(name), &text);
    }
    if keep {
        let kept = root.keep();
        eprintln!("kept the daemons' folders and logs in {}", kept.display());
    } else {
        // process::exit runs no destructors: remove the folders now.
        drop(root);
    }
    let status = if table.errors > 0 {
        2
    } else if table.missed > 0 && !quick {
        1
    } else {
        0
    };
    std::process::exit(status);
}

// ---------------------------------------------------------------------------------------
// The measurements
// ---------------------------------------------------------------------------------------

/// 1. POST /api/clusters returns → the create script has started.
fn s1_post_to_start(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let n = if ctx.quick { 40 } else { 200 };
    let dir = ctx.dir("post-latency")?;
    let db = new_store(&dir)?;
    let rec = Records::bind(&dir)?;
    let d = ctx.daemon(&dir, &db, &[], &[("BENCH_STANDIN_SOCKET", rec.path_str())])?;
    let mut http = Http::connect(d.port)?;
    let mut returned = HashMap::new();
    // Declaration 0 warms up (first spawn, first write) and is not counted.
    for i in 0..=n {
        let name = format!("lat{i}");
        let (status, text) = http.call("POST", "/api/clusters", Some(&cluster_body(&name, i)))?;
        let at = now_ns();
        if status != 202 {
            return Err(format!("POST {name}: {status} {text}"));
        }
        returned.insert(name, at);
        std::thread::sleep(Duration::from_millis(20));
    }
    let creates = rec.wait(|r| r.action == "create", n + 1, Duration::from_secs(30))?;
    let mut lat: Vec<f64> = creates
        .iter()
        .filter(|r| r.cluster != "lat0")
        .filter_map(|r| {
            let back = *returned.get(&r.cluster)?;
            Some((r.ns as i128 - back as i128) as f64 / 1e6)
        })
        .collect();
    if lat.len() != n {
        return Err(format!("{} of {n} create starts matched a POST", lat.len()));
    }
    lat.sort_by(f64::total_cmp);
    let what = format!("POST returned → create script started ({n} declarations)");
    t.figure(
        "1",
        &format!("{what}, p50"),
        pct(&lat, 50.0),
        "ms",
        Goal::Info,
    );
    t.figure(
        "1",
        &format!("{what}, p99"),
        pct(&lat, 99.0),
        "ms",
        Goal::Below(20.0),
    );
    t.figure(
        "1",
        &format!("{what}, max"),
        pct(&lat, 100.0),
        "ms",
        Goal::Info,
    );
    Ok(())
}

/// 2. The API under wrk: reads of one cluster, the list of 100, and declarations.
fn s2_api(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let secs = if ctx.quick { 1 } else { 5 };
    which("wrk", "apt-get install wrk")?;
    {
        let dir = ctx.dir("api-get")?;
        let db = new_store(&dir)?;
        add_clusters(&db, "c", 0, 100, "running")?;
        let d = ctx.daemon(&dir, &db, &[], &[])?;
        let (status, body) = http_once(d.port, "GET", "/api/clusters")?;
        let listed = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len));
        if status != 200 || listed != Some(100) {
            return Err(format!("GET /api/clusters: {status}, {listed:?} clusters"));
        }
        let cases = [
            ("GET /api/clusters/{name}", "/api/clusters/c42", 20_000.0),
            ("GET /api/clusters (100 clusters)", "/api/clusters", 8_000.0),
        ];
        for (what, path, floor) in cases {
            for conns in [1, 32] {
                let w = wrk(d.port, path, conns, secs, None)?;
                let label = format!("{what}, {conns} conn");
                t.figure("2", &label, w.rps, "req/s", Goal::AtLeast(floor));
                let mut note = String::new();
                if w.non2xx > 0 || w.errors > 0 {
                    note = format!("{} non-2xx, {} socket errors", w.non2xx, w.errors);
                }
                t.figure_note(
                    "2",
                    &format!("{label}, p99"),
                    w.p99_ms,
                    "ms",
                    Goal::Info,
                    &note,
                );
            }
        }
    }
    // Declarations measured twice: with scripts that take as long as real ones do (the
    // target figures: three creates run, the rest wait their turn), and with /bin/true, so
    // that the reconciler starts two processes per declaration as fast as it can on the same
    // two cores (shown, not judged).
    for (scripts, judged) in [("long", true), ("instant", false)] {
        for conns in [1, 32] {
            post_run(ctx, t, secs, conns, scripts, judged)?;
        }
    }
    Ok(())
}

/// One wrk run of `POST /api/clusters` against a fresh daemon and store (every POST claims
/// three host ports, and there are only ~21,500 sets of them).
fn post_run(
    ctx: &Ctx,
    t: &mut Table,
    secs: u64,
    conns: u32,
    scripts: &str,
    judged: bool,
) -> Res<()> {
    let dir = ctx.dir(&format!("api-post-{scripts}-{conns}"))?;
    let db = new_store(&dir)?;
    let instant_script = which_path("true")?;
    let instant = [
        "--create-command",
        instant_script.as_str(),
        "--probe-command",
        instant_script.as_str(),
    ];
    let d = if judged {
        ctx.daemon(&dir, &db, &[], &[("BENCH_STANDIN_CREATE", "hang")])?
    } else {
        ctx.daemon(&dir, &db, &instant, &[])?
    };
    let script = Path::new(MANIFEST_DIR).join("bench/wrk-post.lua");
    let prefix = format!("p{conns}-");
    let w = wrk(
        d.port,
        "/api/clusters",
        conns,
        // 3 s are enough for one connection; 32 connections get 1 s (room for 21,000
        // declarations a second).
        secs.min(if conns == 1 { 3 } else { 1 }),
        Some((&script, &[prefix.as_str(), "1024"])),
    )?;
    if w.non2xx > 0 {
        // The daemon logs why it refuses writes (health events), and the store says how
        // many declarations it took: enough to tell a refusal from a benchmark error.
        return Err(format!(
            "POST benchmark with {conns} connections: {} answers were not 2xx, at {:.0} req/s \
             ({} clusters stored); the daemon's log ends with:\n{}",
            w.non2xx,
            w.rps,
            count(&db, "1").unwrap_or(-1),
            d.log_tail()
        ));
    }
    let declared = count(&db, "1")?;
    let running = count(&db, "actual_state = 'running'")?;
    let label = match scripts {
        "long" => format!("POST /api/clusters (unique names), {conns} conn"),
        _ => format!(
            "  same, /bin/true as the scripts (create + probe per declaration), {conns} conn"
        ),
    };
    let (rate_goal, p99_goal) = if judged {
        (Goal::AtLeast(2_000.0), Goal::Below(10.0))
    } else {
        (Goal::Info, Goal::Info)
    };
    let note = if judged {
        "scripts that take long: 3 creates run meanwhile".to_owned()
    } else {
        format!("{running} of {declared} running when wrk stopped")
    };
    t.figure_note("2", &label, w.rps, "req/s", rate_goal, &note);
    t.figure_note("2", &format!("{label}, p99"), w.p99_ms, "ms", p99_goal, "");
    Ok(())
}

/// Measurement 3, resident memory: idle, with a large store and actions running, and
/// while a script prints a gigabyte.
fn s3_memory(ctx: &Ctx, t: &mut Table) -> Res<()> {
    {
        let dir = ctx.dir("mem-idle")?;
        let db = new_store(&dir)?;
        let d = ctx.daemon(&dir, &db, &[], &[])?;
        http_once(d.port, "GET", "/api/health")?;
        http_once(d.port, "GET", "/api/clusters")?;
        std::thread::sleep(Duration::from_secs(1));
        t.figure(
            "3",
            "idle RSS, empty store",
            rss_mb(d.pid)?,
            "MB",
            Goal::Below(12.0),
        );
    }
    {
        let dir = ctx.dir("mem-10k")?;
        let db = new_store(&dir)?;
        add_clusters(&db, "c", 0, 10_000, "running")?;
        add_clusters(&db, "busy", 10_000, 3, "unknown")?;
        let rec = Records::bind(&dir)?;
        let env = [
            ("BENCH_STANDIN_CREATE", "hang"),
            ("BENCH_STANDIN_SOCKET", rec.path_str()),
        ];
        let d = ctx.daemon(&dir, &db, &[], &env)?;
        rec.wait(|r| r.action == "create", 3, Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(500));
        t.figure(
            "3",
            "RSS, 10,000 clusters stored, 3 actions running",
            rss_mb(d.pid)?,
            "MB",
            Goal::Below(40.0),
        );
        let (status, body) = http_once(d.port, "GET", "/api/clusters")?;
        if status != 200 {
            return Err(format!("GET /api/clusters: {status}"));
        }
        std::thread::sleep(Duration::from_millis(300));
        t.figure_note(
            "3",
            "  same, after one GET /api/clusters of all 10,003",
            rss_mb(d.pid)?,
            "MB",
            Goal::Info,
            &format!("response {:.1} MB", body.len() as f64 / MIB as f64),
        );
    }
    {
        let bytes = if ctx.quick { 64 * MIB } else { 1024 * MIB };
        let dir = ctx.dir("mem-flood")?;
        let db = new_store(&dir)?;
        let modes = dir.join("modes");
        std::fs::create_dir_all(&modes).map_err(|e| e.to_string())?;
        let env = [("BENCH_STANDIN_DIR", modes.to_str().unwrap())];
        let d = ctx.daemon(&dir, &db, &[], &env)?;
        // One ordinary action first, so the baseline includes what any action allocates.
        declare(d.port, "warm", 0)?;
        await_state(&db, "warm", "running", Duration::from_secs(10))?;
        let size = if bytes >= 1024 * MIB {
            format!("{} GiB", bytes / (1024 * MIB))
        } else {
            format!("{} MiB", bytes / MIB)
        };
        let cases = [
            (
                "flood-lines",
                "lines",
                format!("a script prints {size} in 64-byte lines"),
            ),
            (
                "flood-one-line",
                "longline",
                format!("a script prints {size} without a newline"),
            ),
        ];
        for (i, (name, mode, what)) in cases.into_iter().enumerate() {
            std::fs::write(
                modes.join(format!("create-{name}")),
                format!("{mode}:{bytes}"),
            )
            .map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(300));
            let base = rss_kb(d.pid)?;
            let cpu0 = cpu_ticks(d.pid)?;
            let t0 = Instant::now();
            declare(d.port, name, i + 1)?;
            let mut peak = base;
            let deadline = t0 + Duration::from_secs(300);
            loop {
                peak = peak.max(rss_kb(d.pid)?);
                if state(&db, name)?.as_deref() == Some("running") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{name} did not finish in 300 s"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let took = t0.elapsed().as_secs_f64();
            let cpu = (cpu_ticks(d.pid)? - cpu0) as f64 / ctx.tck;
            let grew = peak.saturating_sub(base) as f64 / 1024.0;
            t.figure_note(
                "3",
                &format!("RSS growth while {what}"),
                grew,
                "MB",
                Goal::Below(5.0),
                &format!("done in {took:.1} s, daemon CPU {cpu:.2} s"),
            );
        }
    }
    Ok(())
}

/// 4. Start-up: the first request through socket activation, and READY=1 with a large store.
fn s4_startup(ctx: &Ctx, t: &mut Table) -> Res<()> {
    which("systemd-socket-activate", "apt-get install systemd")?;
    let reps = if ctx.quick { 2 } else { 7 };
    let mut existing = Vec::new();
    let mut fresh = Vec::new();
    let mut killed = 0;
    for _ in 0..reps {
        let dir = ctx.dir("activate")?;
        let db = new_store(&dir)?;
        let (ms, clean) = activated_first_request(ctx, &dir, &db)?;
        existing.push(ms);
        killed += usize::from(!clean);
        let dir = ctx.dir("activate-new")?;
        let (ms, clean) = activated_first_request(ctx, &dir, &dir.join("new.db"))?;
        fresh.push(ms);
        killed += usize::from(!clean);
    }
    existing.sort_by(f64::total_cmp);
    fresh.sort_by(f64::total_cmp);
    t.figure_note(
        "4",
        "socket-activated first request, connect → response, empty store (median)",
        pct(&existing, 50.0),
        "ms",
        Goal::Below(50.0),
        &format!("{reps} runs, max {:.1} ms", pct(&existing, 100.0)),
    );
    t.figure(
        "4",
        "  same, no database file yet (created and migrated), median",
        pct(&fresh, 50.0),
        "ms",
        Goal::Info,
    );
    // Each activated daemon gets SIGTERM right after its first answer; it must still stop
    // cleanly (exit 0), not die of the signal.
    t.figure_note(
        "4",
        "  SIGTERM right after the first answer: daemon died of the signal instead of exit 0",
        killed as f64,
        &format!("of {} runs", 2 * reps),
        Goal::Below(1.0),
        if killed > 0 {
            "the signal came before kindler handled SIGTERM"
        } else {
            ""
        },
    );
    let mut big = Vec::new();
    let mut empty = Vec::new();
    for _ in 0..reps {
        let dir = ctx.dir("ready-10k")?;
        let db = new_store(&dir)?;
        add_clusters(&db, "c", 0, 10_000, "running")?;
        let d = ctx.daemon(&dir, &db, &[], &[])?;
        big.push(d.ready_after.as_secs_f64() * 1e3);
        drop(d);
        let dir = ctx.dir("ready-empty")?;
        let db = new_store(&dir)?;
        let d = ctx.daemon(&dir, &db, &[], &[])?;
        empty.push(d.ready_after.as_secs_f64() * 1e3);
    }
    big.sort_by(f64::total_cmp);
    empty.sort_by(f64::total_cmp);
    t.figure_note(
        "4",
        "spawn → READY=1, 10,000 clusters stored (median)",
        pct(&big, 50.0),
        "ms",
        Goal::Below(200.0),
        &format!("{reps} runs, max {:.1} ms", pct(&big, 100.0)),
    );
    t.figure(
        "4",
        "  same, empty store (median)",
        pct(&empty, 50.0),
        "ms",
        Goal::Info,
    );
    Ok(())
}

/// Starts the daemon the way kindler.socket does, through `systemd-socket-activate`, and
/// times the first request from connect to the end of the response. Then stops it with
/// SIGTERM; the flag says whether it exited 0 (false: it died of the signal).
fn activated_first_request(ctx: &Ctx, dir: &Path, db: &Path) -> Res<(f64, bool)> {
    let port = free_port()?;
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--fdname=http")
        .arg(bin())
        .args(ctx.base_args(db))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("systemd-socket-activate: {e}"))?;
    let mut guard = ChildGuard(Some(child.id() as i32));
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            let _ = child.wait();
            return Err(format!("systemd-socket-activate ended: {head}"));
        }
        head.push_str(&line);
        if line.contains("Listening on") {
            break;
        }
    }
    let log = dir.join("daemon.log");
    std::thread::spawn(move || {
        if let Ok(mut f) = std::fs::File::create(log) {
            let _ = std::io::copy(&mut err, &mut f);
        }
    });
    let t0 = Instant::now();
    let (status, body) = http_once(port, "GET", "/api/clusters")?;
    let took = t0.elapsed().as_secs_f64() * 1e3;
    if status != 200 || body != "[]" {
        return Err(format!("first request: {status} {body}"));
    }
    signal(child.id() as i32, libc::SIGTERM);
    let status = wait_timeout(&mut child, Duration::from_secs(15))?;
    guard.0 = None;
    use std::os::unix::process::ExitStatusExt;
    if status.signal() == Some(libc::SIGTERM) {
        return Ok((took, false));
    }
    if !status.success() {
        return Err(format!("socket-activated kindler exited with {status}"));
    }
    Ok((took, true))
}

/// 5. SIGTERM with three actions running whose scripts obey SIGTERM.
fn s5_stop(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let reps = if ctx.quick { 1 } else { 5 };
    let mut took = Vec::new();
    for _ in 0..reps {
        let dir = ctx.dir("stop")?;
        let db = new_store(&dir)?;
        add_clusters(&db, "busy", 0, 3, "unknown")?;
        let rec = Records::bind(&dir)?;
        let env = [
            ("BENCH_STANDIN_CREATE", "hang"),
            ("BENCH_STANDIN_SOCKET", rec.path_str()),
        ];
        let d = ctx.daemon(&dir, &db, &[], &env)?;
        let started = rec.wait(|r| r.action == "create", 3, Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(200));
        let (dt, status) = d.stop(Duration::from_secs(30))?;
        if !status.success() {
            return Err(format!("kindler exited with {status} on SIGTERM"));
        }
        if let Some(r) = started.iter().find(|r| alive(r.pid)) {
            return Err(format!(
                "script {} of {} outlived the daemon",
                r.pid, r.cluster
            ));
        }
        took.push(dt.as_secs_f64() * 1e3);
    }
    took.sort_by(f64::total_cmp);
    t.figure_note(
        "5",
        "SIGTERM → daemon gone, 3 actions running (median)",
        pct(&took, 50.0),
        "ms",
        Goal::Below(300.0),
        &format!(
            "{reps} runs, max {:.0} ms; exit status 0",
            pct(&took, 100.0)
        ),
    );
    Ok(())
}

/// 6. 1,000 clusters declared at once; 10 ms scripts; 16 actions at a time.
fn s6_throughput(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let n = if ctx.quick { 200 } else { 1000 };
    let dir = ctx.dir("throughput")?;
    let db = new_store(&dir)?;
    let args = ["--max-concurrent-actions", "16"];
    let d = ctx.daemon(&dir, &db, &args, &[("BENCH_STANDIN", "sleep:10")])?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = cpu_ticks(d.pid)?;
    // "At once": one transaction, as another program (the old tools) would write them; the
    // daemon notices at its next poll (--poll-interval, 500 ms by default).
    add_clusters(&db, "t", 0, n, "unknown")?;
    let t0 = Instant::now();
    let committed_ms = now_ns() as f64 / 1e6;
    let deadline = t0 + Duration::from_secs(120);
    loop {
        if count(&db, "actual_state = 'running'")? == n as i64 {
            break;
        }
        if Instant::now() > deadline {
            let failed = count(&db, "actual_state = 'failed'")?;
            return Err(format!("not all {n} running after 120 s ({failed} failed)"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(d.pid)? - cpu0) as f64 / ctx.tck;
    let noticed = (first_run_start_ms(&db)? - committed_ms) / 1e3;
    t.figure_note(
        "6",
        &format!("{n} clusters declared at once → all running"),
        took,
        "s",
        Goal::Below(5.0),
        &format!(
            "first action {:.0} ms after the insert (the next poll); {:.0} actions/s after that",
            noticed * 1e3,
            n as f64 / (took - noticed)
        ),
    );
    t.figure_note(
        "6",
        "daemon CPU per action (create + probe)",
        cpu * 1e3 / n as f64,
        "ms",
        Goal::Below(2.0),
        &format!("{cpu:.2} s in all"),
    );
    Ok(())
}

/// 7. Idle cost with 10,000 converged clusters.
fn s7_idle(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let secs = if ctx.quick { 5 } else { 60 };
    let dir = ctx.dir("idle")?;
    let db = new_store(&dir)?;
    add_clusters(&db, "c", 0, 10_000, "running")?;
    let d = ctx.daemon(&dir, &db, &[], &[])?;
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_ticks(d.pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = (cpu_ticks(d.pid)? - cpu0) as f64 / ctx.tck;
    let share = cpu / t0.elapsed().as_secs_f64() * 100.0;
    t.figure_note(
        "7",
        &format!("idle CPU, 10,000 converged clusters, over {secs} s"),
        share,
        "% of a core",
        Goal::Below(1.0),
        &format!("{:.0} ms of CPU", cpu * 1e3),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The stand-in script
// ---------------------------------------------------------------------------------------

/// What the daemon runs as every command when this executable is started with BENCH_STANDIN.
///
/// On start it sends "ACTION CLUSTER PID EPOCH_NS" (CLOCK_REALTIME) to the datagram socket
/// BENCH_STANDIN_SOCKET, if set. Its mode is the file BENCH_STANDIN_DIR/ACTION-CLUSTER if
/// that exists, else BENCH_STANDIN_ACTION (BENCH_STANDIN_CREATE, ...), else BENCH_STANDIN:
///   ok              exit 0 at once           fail          exit 3 at once
///   sleep:MS        exit 0 after MS ms       hang          sleep (SIGTERM ends it)
///   stubborn        like hang, ignores SIGTERM
///   lines:BYTES     print BYTES in 64-byte lines, exit 0
///   longline:BYTES  print BYTES without a newline, exit 0
/// `hang` and `stubborn` give up after five minutes, so nothing is left behind for long.
mod standin {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::path::Path;
    use std::time::Duration;

    const HANG_MAX: Duration = Duration::from_secs(300);

    pub fn main() -> ! {
        let start = super::now_ns();
        let action = std::env::var("KINDLER_ACTION").unwrap_or_else(|_| "unknown".into());
        let cluster = std::env::var("KINDLER_CLUSTER").unwrap_or_else(|_| "unknown".into());
        if let Some(sock) = std::env::var_os("BENCH_STANDIN_SOCKET") {
            if let Ok(s) = UnixDatagram::unbound() {
                let msg = format!("{action} {cluster} {} {start}", std::process::id());
                let _ = s.send_to(msg.as_bytes(), sock);
            }
        }
        let mode = mode(&action, &cluster);
        std::process::exit(behave(mode.trim()))
    }

    fn mode(action: &str, cluster: &str) -> String {
        if let Some(dir) = std::env::var_os("BENCH_STANDIN_DIR") {
            let file = Path::new(&dir).join(format!("{action}-{cluster}"));
            if let Ok(m) = std::fs::read_to_string(file) {
                return m;
            }
        }
        std::env::var(format!("BENCH_STANDIN_{}", action.to_uppercase()))
            .or_else(|_| std::env::var("BENCH_STANDIN"))
            .unwrap_or_else(|_| "ok".into())
    }

    fn behave(mode: &str) -> i32 {
        let (name, arg) = mode.split_once(':').unwrap_or((mode, ""));
        let number = || arg.parse::<u64>().unwrap_or(0);
        match name {
            "ok" => 0,
            "fail" => 3,
            "sleep" => {
                std::thread::sleep(Duration::from_millis(number()));
                0
            }
            "hang" => {
                std::thread::sleep(HANG_MAX);
                0
            }
            "stubborn" => {
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                std::thread::sleep(HANG_MAX);
                0
            }
            "lines" => flood(number(), true),
            "longline" => flood(number(), false),
            _ => {
                eprintln!("unknown stand-in mode {mode:?}");
                64
            }
        }
    }

    fn flood(total: u64, lines: bool) -> i32 {
        let mut chunk = Vec::with_capacity(1 << 20);
        let mut i = 0u64;
        while chunk.len() < 1 << 20 {
            if lines {
                let mut line = format!("output line {i:08} ");
                line.extend(std::iter::repeat('.').take(63 - line.len()));
                line.push('\n');
                chunk.extend_from_slice(line.as_bytes());
                i += 1;
            } else {
                chunk.push(b'x');
            }
        }
        // Straight to fd 1: std's stdout is line-buffered.
        let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if out.write_all(&chunk[..n]).is_err() {
                return 1;
            }
            left -= n as u64;
        }
        0
    }
}

// ---------------------------------------------------------------------------------------
// Driver plumbing: daemons, stores, HTTP, /proc, wrk
// ---------------------------------------------------------------------------------------

struct Ctx {
    quick: bool,
    root: PathBuf,
    /// This executable, which is also the stand-in script.
    exe: PathBuf,
    tck: f64,
    seq: std::cell::Cell<u32>,
}

impl Ctx {
    /// A new folder for one daemon's world.
    fn dir(&self, name: &str) -> Res<PathBuf> {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        let dir = self.root.join(format!("{n:03}-{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// The settings every benchmarked daemon runs with: defaults, except that every
    /// command is the stand-in and logs go to stderr.
    fn base_args(&self, db: &Path) -> Vec<String> {
        let exe = self.exe.to_str().expect("a UTF-8 path").to_owned();
        let mut args: Vec<String> = ["serve", "--config", "/dev/null", "--database"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(db.to_str().expect("a UTF-8 path").to_owned());
        for c in ["create", "delete", "start", "stop", "probe"] {
            args.push(format!("--{c}-command"));
            args.push(exe.clone());
        }
        for a in ["--log-target", "stderr", "--log-level", "info"] {
            args.push(a.to_owned());
        }
        args
    }

    /// Starts a daemon on a socket passed as fd 3 and waits for its READY=1.
    fn daemon(&self, dir: &Path, db: &Path, extra: &[&str], env: &[(&str, &str)]) -> Res<Daemon> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let notify = Notifications::try_bind(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = dir.join("daemon.log");
        let mut cmd = Command::new(bin());
        cmd.args(self.base_args(db)).args(extra);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            let private = ["KINDLER_", "LISTEN_", "WATCHDOG_", "BENCH_"]
                .iter()
                .any(|p| k.starts_with(p));
            if private || k == "NOTIFY_SOCKET" || k == "JOURNAL_STREAM" {
                cmd.env_remove(k);
            }
        }
        cmd.env("BENCH_STANDIN", "ok")
            .envs(env.iter().copied())
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?);
        activation::pass_socket(&mut cmd, &listener);
        let spawned = Instant::now();
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", bin()))?;
        let mut d = Daemon {
            pid: child.id() as i32,
            child: Some(child),
            port,
            _listener: listener,
            log,
            ready_after: Duration::ZERO,
        };
        let deadline = spawned + Duration::from_secs(30);
        loop {
            if let Some(at) = notify.first("READY=1") {
                d.ready_after = at.duration_since(spawned);
                return Ok(d);
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait().ok().flatten() {
                return Err(format!(
                    "kindler exited with {status} before READY=1: {}",
                    d.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("no READY=1 in 30 s: {}", d.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

struct Daemon {
    child: Option<Child>,
    pid: i32,
    port: u16,
    /// The API socket; the daemon has its own copy as fd 3.
    _listener: TcpListener,
    log: PathBuf,
    /// From spawn to the READY=1 datagram.
    ready_after: Duration,
}

impl Daemon {
    /// SIGTERM, then waits for the exit; returns how long it took.
    fn stop(mut self, timeout: Duration) -> Res<(Duration, ExitStatus)> {
        let mut child = self.child.take().unwrap();
        let t0 = Instant::now();
        signal(self.pid, libc::SIGTERM);
        let status = wait_timeout(&mut child, timeout);
        let took = t0.elapsed();
        if status.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok((took, status?))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A clean stop, so the daemon ends the scripts it runs.
        if let Some(mut child) = self.child.take() {
            signal(self.pid, libc::SIGTERM);
            if wait_timeout(&mut child, Duration::from_secs(20)).is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Kills a child that was not waited for (an error path) when dropped.
struct ChildGuard(Option<i32>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            signal(pid, libc::SIGKILL);
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Res<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "process {} did not exit in {timeout:?}",
                child.id()
            ));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn signal(pid: i32, sig: i32) {
    unsafe { libc::kill(pid, sig) };
}

/// A stand-in's report of its start.
#[derive(Debug, Clone)]
struct Rec {
    action: String,
    cluster: String,
    pid: i32,
    ns: u128,
}

/// The datagram socket the stand-ins report to.
struct Records {
    path: PathBuf,
    list: Arc<Mutex<Vec<Rec>>>,
}

impl Records {
    fn bind(dir: &Path) -> Res<Records> {
        let path = dir.join("standin.sock");
        let sock = UnixDatagram::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let list = Arc::new(Mutex::new(Vec::new()));
        let sink = list.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let f: Vec<&str> = text.split(' ').collect();
                if f.len() == 4 {
                    sink.lock().unwrap().push(Rec {
                        action: f[0].into(),
                        cluster: f[1].into(),
                        pid: f[2].parse().unwrap_or(0),
                        ns: f[3].parse().unwrap_or(0),
                    });
                }
            }
        });
        Ok(Records { path, list })
    }

    fn path_str(&self) -> &str {
        self.path.to_str().expect("a UTF-8 path")
    }

    /// Waits until `n` records satisfy `pred`; returns them.
    fn wait(&self, pred: impl Fn(&Rec) -> bool, n: usize, timeout: Duration) -> Res<Vec<Rec>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<Rec> = self
                .list
                .lock()
                .unwrap()
                .iter()
                .filter(|r| pred(r))
                .cloned()
                .collect();
            if found.len() >= n {
                return Ok(found);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} of {n} expected script starts after {timeout:?}",
                    found.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

// --- stores -------------------------------------------------------------------------------

/// A new database with kindler's schema and no clusters.
fn new_store(dir: &Path) -> Res<PathBuf> {
    let db = dir.join("kindler.db");
    let out = Command::new(bin())
        .args([
            "migrate",
            "--config",
            "/dev/null",
            "--log-target",
            "stderr",
            "--database",
        ])
        .arg(&db)
        .env_remove("KINDLER_DATABASE")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("kindler migrate: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{} migrate ({}): {}",
            bin(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(db)
}

fn open(db: &Path) -> Res<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Host ports of the i-th cluster a benchmark declares: unique across clusters.
fn ports(i: usize) -> (i64, i64, i64) {
    let i = i as i64;
    (2000 + 3 * i, 2001 + 3 * i, 2002 + 3 * i)
}

/// Inserts `n` clusters named PREFIX{first..} in one transaction, as another program
/// would. `running` rows are converged (reconciled just now); others wait for a create.
fn add_clusters(db: &Path, prefix: &str, first: usize, n: usize, actual: &str) -> Res<()> {
    let mut conn = open(db)?;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO clusters (name, provider, pf_port, http_port, https_port,
                                       desired_state, actual_state, status, last_reconciled_at)
                 VALUES (?1, 'k3d', ?2, ?3, ?4, 'present', ?5, ?5,
                         CASE WHEN ?5 = 'running' THEN strftime('%Y-%m-%d %H:%M:%f', 'now') END)",
            )
            .map_err(|e| e.to_string())?;
        for i in first..first + n {
            let (pf, http, https) = ports(i);
            stmt.execute(rusqlite::params![
                format!("{prefix}{i}"),
                pf,
                http,
                https,
                actual
            ])
            .map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

fn count(db: &Path, filter: &str) -> Res<i64> {
    let conn = open(db)?;
    conn.query_row(
        &format!("SELECT COUNT(*) FROM clusters WHERE {filter}"),
        [],
        |r| r.get(0),
    )
    .map_err(|e| e.to_string())
}

fn state(db: &Path, name: &str) -> Res<Option<String>> {
    use rusqlite::OptionalExtension;
    let conn = open(db)?;
    conn.query_row(
        "SELECT actual_state FROM clusters WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| e.to_string())
    .map(Option::flatten)
}

fn await_state(db: &Path, name: &str, want: &str, timeout: Duration) -> Res<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = state(db, name)?;
        if now.as_deref() == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "cluster {name} is {now:?}, not {want}, after {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// When the first action run recorded in the store started, in ms since the epoch.
fn first_run_start_ms(db: &Path) -> Res<f64> {
    let conn = open(db)?;
    conn.query_row(
        "SELECT (julianday(MIN(started_at)) - 2440587.5) * 86400000.0 FROM reconcile_runs",
        [],
        |r| r.get(0),
    )
    .map_err(|e| e.to_string())
}

// --- HTTP -----------------------------------------------------------------------------------

fn cluster_body(name: &str, i: usize) -> String {
    let (pf, http, https) = ports(i);
    format!(
        r#"{{"name":"{name}","provider":"k3d","pf_port":{pf},"http_port":{http},"https_port":{https}}}"#
    )
}

fn declare(port: u16, name: &str, i: usize) -> Res<()> {
    let (status, text) =
        Http::connect(port)?.call("POST", "/api/clusters", Some(&cluster_body(name, i)))?;
    if status != 202 {
        return Err(format!("POST {name}: {status} {text}"));
    }
    Ok(())
}

/// A keep-alive HTTP/1.1 client, just enough for kindler's JSON answers.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    fn connect(port: u16) -> Res<Http> {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Http {
            stream,
            buf: Vec::new(),
        })
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Res<(u16, String)> {
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad response: {head}"))?;
                let len: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .ok_or_else(|| format!("no Content-Length: {head}"))?;
                if self.buf.len() >= end + 4 + len {
                    let body =
                        String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).into_owned();
                    self.buf.drain(..end + 4 + len);
                    return Ok((status, body));
                }
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| format!("{method} {path}: {e}"))?;
            if n == 0 {
                return Err(format!("{method} {path}: connection closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn http_once(port: u16, method: &str, path: &str) -> Res<(u16, String)> {
    Http::connect(port)?.call(method, path, None)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

// --- /proc ------------------------------------------------------------------------------------

/// utime + stime of the whole process (all threads, living and ended), in clock ticks.
fn cpu_ticks(pid: i32) -> Res<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let num = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("bad /proc stat")
    };
    Ok(num(14)? + num(15)?)
}

fn rss_kb(pid: i32) -> Res<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

fn rss_mb(pid: i32) -> Res<f64> {
    Ok(rss_kb(pid)? as f64 / 1024.0)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

// --- wrk ------------------------------------------------------------------------------------

struct WrkResult {
    rps: f64,
    p99_ms: f64,
    non2xx: u64,
    errors: u64,
}

fn which_path(program: &str) -> Res<String> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|f| f.is_file())
        })
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{program} is not in PATH"))
}

fn which(program: &str, install: &str) -> Res<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(format!("{program} is not installed ({install})"))
    }
}

fn wrk(
    port: u16,
    path: &str,
    conns: u32,
    secs: u64,
    script: Option<(&Path, &[&str])>,
) -> Res<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some((s, _)) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    if let Some((_, args)) = script {
        cmd.arg("--").args(args);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let p99_ms = field("99%")
        .and_then(|v| latency_ms(&v))
        .ok_or_else(|| format!("no 99% latency in wrk's output: {text}"))?;
    let non2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let errors = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(WrkResult {
        rps,
        p99_ms,
        non2xx,
        errors,
    })
}

/// wrk's "1.23ms", "456.00us", "1.02s", "2.00m" as milliseconds.
fn latency_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => num / 1e3,
        "ms" => num,
        "s" => num * 1e3,
        "m" => num * 60e3,
        _ => return None,
    })
}

// --- results ----------------------------------------------------------------------------------

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

enum Goal {
    Below(f64),
    AtLeast(f64),
    Info,
}

struct Row {
    id: String,
    what: String,
    value: String,
    target: String,
    verdict: &'static str,
    note: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    missed: usize,
    errors: usize,
}

impl Table {
    fn figure(&mut self, id: &str, what: &str, value: f64, unit: &str, goal: Goal) {
        self.figure_note(id, what, value, unit, goal, "");
    }

    fn figure_note(
        &mut self,
        id: &str,
        what: &str,
        value: f64,
        unit: &str,
        goal: Goal,
        note: &str,
    ) {
        // Counts ("2 of 14 runs") are whole numbers.
        let show = |v: f64| {
            if unit.starts_with("of ") {
                format!("{v:.0}")
            } else {
                show(v)
            }
        };
        let (target, verdict) = match goal {
            Goal::Below(limit) => (
                format!("< {} {unit}", show(limit)),
                if value < limit { "ok" } else { "MISSED" },
            ),
            Goal::AtLeast(floor) => (
                format!("≥ {} {unit}", show(floor)),
                if value >= floor { "ok" } else { "MISSED" },
            ),
            Goal::Info => (String::new(), ""),
        };
        if verdict == "MISSED" {
            self.missed += 1;
        }
        self.rows.push(Row {
            id: id.into(),
            what: what.into(),
            value: format!("{} {unit}", show(value)),
            target,
            verdict,
            note: note.into(),
        });
    }

    fn error(&mut self, id: &str, what: &str, message: &str) {
        self.errors += 1;
        self.rows.push(Row {
            id: id.into(),
            what: what.into(),
            value: "—".into(),
            target: String::new(),
            verdict: "ERROR",
            note: message
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        });
    }

    /// A markdown table (readable as plain text too).
    fn render(&self, quick: bool) -> String {
        let head = [
            "#",
            "measurement",
            "result",
            "target",
            if quick { "verdict (quick)" } else { "verdict" },
            "notes",
        ];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.id.clone(),
                    r.what.clone(),
                    r.value.clone(),
                    r.target.clone(),
                    r.verdict.to_owned(),
                    r.note.clone(),
                ]
            })
            .collect();
        let mut width = head.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: [&str; 6]| {
            let mut s = String::from("|");
            for (i, c) in cols.iter().enumerate() {
                let pad = width[i] - c.chars().count();
                if i == 2 {
                    s.push_str(&format!(" {}{c} |", " ".repeat(pad)));
                } else {
                    s.push_str(&format!(" {c}{} |", " ".repeat(pad)));
                }
            }
            s
        };
        let mut out = vec![line(head)];
        let rule: Vec<String> = width
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 2 {
                    format!("{}:", "-".repeat(*w + 1))
                } else {
                    "-".repeat(w + 2)
                }
            })
            .collect();
        out.push(format!("|{}|", rule.join("|")));
        for row in &cells {
            out.push(line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]));
        }
        out.join("\n")
    }
}

/// A figure with sensible precision: 0.123, 1.23, 12.3, 1,234.
fn show(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let whole = v.round() as i64;
        let digits = whole.abs().to_string();
        let mut grouped = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if whole < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
