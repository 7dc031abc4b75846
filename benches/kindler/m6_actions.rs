//! Measurement 6, action throughput and CPU: 1,000 clusters inserted in one transaction while the
//! daemon runs (as the old tools would write them), 10 ms scripts, 16 actions at a time: insert →
//! all `running`, and the daemon's CPU per action (create, then probe).

use std::time::{Duration, Instant};

use kindler::testkit::{cpu_ticks, now_ns, try_poll};

use crate::harness::Ctx;
use crate::report::{Goal, Table};
use crate::store::{add_clusters, count, first_run_start_ms, new_store};
use crate::Res;

pub fn run(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let n = if ctx.quick { 200 } else { 1000 };
    let dir = ctx.dir("throughput")?;
    let db = new_store(&dir)?;
    let args = ["--max-concurrent-actions", "16"];
    let d = ctx.daemon(&dir, &db, &args, &[("BENCH_STANDIN", "sleep:10")])?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = cpu_ticks(d.pid())?;
    // "At once": one transaction, as another program (the old tools) would write them; the
    // daemon notices at its next poll (--poll-interval, 500 ms by default).
    add_clusters(&db, "t", 0, n, "unknown")?;
    let t0 = Instant::now();
    let committed_ms = now_ns() as f64 / 1e6;
    let timeout = Duration::from_secs(120);
    let all_running = try_poll(timeout, Duration::from_millis(10), || {
        Ok::<_, String>((count(&db, "actual_state = 'running'")? == n as i64).then_some(()))
    })?;
    if all_running.is_none() {
        let failed = count(&db, "actual_state = 'failed'")?;
        return Err(format!("not all {n} running after 120 s ({failed} failed)"));
    }
    let took = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(d.pid())? - cpu0) as f64 / ctx.tck;
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
