//! Measurement 3, memory (RSS, `VmRSS`): 1 s after start with an empty store (one health and one
//! list request); with 10,000 converged clusters and 3 creates running (scripts that sleep), and
//! after one list of them all; the peak growth, sampled every 5 ms, while a create script
//! prints 1 GiB in 64-byte lines, and 1 GiB without a newline.

use std::time::{Duration, Instant};

use kindler::testkit::{cpu_ticks, rss_kb, try_poll};

use crate::harness::{declare, http_once, Ctx};
use crate::report::{Goal, Table};
use crate::standin::Records;
use crate::store::{add_clusters, await_state, new_store, state};
use crate::Res;

const MIB: u64 = 1024 * 1024;

fn rss_mb(pid: i32) -> Res<f64> {
    Ok(rss_kb(pid)? as f64 / 1024.0)
}

pub fn run(ctx: &Ctx, t: &mut Table) -> Res<()> {
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
            rss_mb(d.pid())?,
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
            rss_mb(d.pid())?,
            "MB",
            Goal::Below(40.0),
        );
        let list = http_once(d.port, "GET", "/api/clusters")?;
        if list.status != 200 {
            return Err(format!("GET /api/clusters: {list:?}"));
        }
        std::thread::sleep(Duration::from_millis(300));
        t.figure_note(
            "3",
            "  same, after one GET /api/clusters of all 10,003",
            rss_mb(d.pid())?,
            "MB",
            Goal::Info,
            &format!("response {:.1} MB", list.text.len() as f64 / MIB as f64),
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
            let base = rss_kb(d.pid())?;
            let cpu0 = cpu_ticks(d.pid())?;
            let t0 = Instant::now();
            declare(d.port, name, i + 1)?;
            let mut peak = base;
            try_poll(Duration::from_secs(300), Duration::from_millis(5), || {
                peak = peak.max(rss_kb(d.pid())?);
                Ok::<_, String>((state(&db, name)?.as_deref() == Some("running")).then_some(()))
            })?
            .ok_or_else(|| format!("{name} did not finish in 300 s"))?;
            let took = t0.elapsed().as_secs_f64();
            let cpu = (cpu_ticks(d.pid())? - cpu0) as f64 / ctx.tck;
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
