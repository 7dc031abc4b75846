//! Measurement 5, stop: SIGTERM with three creates running whose scripts obey SIGTERM (default 10 s
//! kill grace) → the daemon has exited; exit status 0 and no script left alive are checked.

use std::time::Duration;

use kindler::testkit::alive;

use crate::harness::Ctx;
use crate::report::{pct, Goal, Table};
use crate::standin::Records;
use crate::store::{add_clusters, new_store};
use crate::Res;

pub fn run(ctx: &Ctx, t: &mut Table) -> Res<()> {
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
        let mut d = ctx.daemon(&dir, &db, &[], &env)?;
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
