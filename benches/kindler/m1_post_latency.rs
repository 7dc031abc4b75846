//! Measurement 1, POST /api/clusters returns → the create script has started: 200
//! declarations, 20 ms apart, on one keep-alive connection; the time from the client having
//! the 202 to the script's own start timestamp.

use std::collections::HashMap;
use std::time::Duration;

use kindler::testkit::now_ns;

use crate::harness::{call, cluster_body, connect, Ctx};
use crate::report::{pct, Goal, Table};
use crate::standin::Records;
use crate::store::new_store;
use crate::Res;

pub fn run(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let n = if ctx.quick { 40 } else { 200 };
    let dir = ctx.dir("post-latency")?;
    let db = new_store(&dir)?;
    let rec = Records::bind(&dir)?;
    let d = ctx.daemon(&dir, &db, &[], &[("BENCH_STANDIN_SOCKET", rec.path_str())])?;
    let mut http = connect(d.port)?;
    let mut returned = HashMap::new();
    // Declaration 0 warms up (first spawn, first write) and is not counted.
    for i in 0..=n {
        let name = format!("lat{i}");
        let r = call(
            &mut http,
            "POST",
            "/api/clusters",
            Some(&cluster_body(&name, i)),
        )?;
        let at = now_ns();
        if r.status != 202 {
            return Err(format!("POST {name}: {r:?}"));
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
