//! Measurement 4, start-up. Through `systemd-socket-activate -l 127.0.0.1:PORT --fdname=http
//! kindler serve ...`: connect → end of the `GET /api/clusters` answer, which starts the daemon
//! (median of 7; store migrated but empty; also 7 with no database file yet); each activated daemon
//! then gets SIGTERM and must exit 0. And spawn → `READY=1` with 10,000 clusters stored (median of
//! 7), and with an empty store.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kindler::testkit::{free_port, signal, wait_exit, Guarded};

use crate::harness::{bin, http_once, which, Ctx};
use crate::report::{pct, Goal, Table};
use crate::store::{add_clusters, new_store};
use crate::Res;

pub fn run(ctx: &Ctx, t: &mut Table) -> Res<()> {
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
    let port = free_port().map_err(|e| e.to_string())?;
    let mut child = Guarded(
        Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--fdname=http")
            .arg(bin())
            .args(ctx.base_args(db))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("systemd-socket-activate: {e}"))?,
    );
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
    let first = http_once(port, "GET", "/api/clusters")?;
    let took = t0.elapsed().as_secs_f64() * 1e3;
    if first.status != 200 || first.text != "[]" {
        return Err(format!("first request: {first:?}"));
    }
    signal(child.id() as i32, libc::SIGTERM);
    let timeout = Duration::from_secs(15);
    let status = wait_exit(&mut child, timeout)
        .ok_or_else(|| format!("socket-activated kindler did not exit in {timeout:?}"))?;
    if status.signal() == Some(libc::SIGTERM) {
        return Ok((took, false));
    }
    if !status.success() {
        return Err(format!("socket-activated kindler exited with {status}"));
    }
    Ok((took, true))
}
