//! Measurement 7, idle cost: daemon CPU over 60 s with 10,000 converged clusters, after a 2 s
//! settle.

use std::time::{Duration, Instant};

use kindler::testkit::cpu_ticks;

use crate::harness::Ctx;
use crate::report::{Goal, Table};
use crate::store::{add_clusters, new_store};
use crate::Res;

pub fn run(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let secs = if ctx.quick { 5 } else { 60 };
    let dir = ctx.dir("idle")?;
    let db = new_store(&dir)?;
    add_clusters(&db, "c", 0, 10_000, "running")?;
    let d = ctx.daemon(&dir, &db, &[], &[])?;
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_ticks(d.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = (cpu_ticks(d.pid())? - cpu0) as f64 / ctx.tck;
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
