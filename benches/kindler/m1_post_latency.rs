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
    let n = declarations(ctx);
    let dir = ctx.dir("post-latency")?;
    let db = new_store(&dir)?;
    let rec = Records::bind(&dir)?;
    let d = ctx.daemon(&dir, &db, &[], &[("BENCH_STANDIN_SOCKET", rec.path_str())])?;
    let lat = latencies(d.port, &rec, n, "lat", cluster_body)?;
    let what = format!("POST returned → create script started ({n} declarations)");
    rows(t, "1", &what, &lat, Goal::Below(20.0), Goal::Info);
    Ok(())
}

/// How many declarations are timed.
pub fn declarations(ctx: &Ctx) -> usize {
    if ctx.quick {
        40
    } else {
        200
    }
}

/// `n` declarations of clusters PREFIX1 … PREFIXn (`body` of name and number), 20 ms apart,
/// on one keep-alive connection to `port`, after PREFIX0, which warms up (first spawn,
/// first write) and is not counted. Returns the times from the client having each 202 to
/// the create script's start (reported to `rec`), in ms, sorted.
pub fn latencies(
    port: u16,
    rec: &Records,
    n: usize,
    prefix: &str,
    body: impl Fn(&str, usize) -> String,
) -> Res<Vec<f64>> {
    let mut http = connect(port)?;
    let mut returned = HashMap::new();
    for i in 0..=n {
        let name = format!("{prefix}{i}");
        let r = call(&mut http, "POST", "/api/clusters", Some(&body(&name, i)))?;
        let at = now_ns();
        if r.status != 202 {
            return Err(format!("POST {name}: {r:?}"));
        }
        returned.insert(name, at);
        std::thread::sleep(Duration::from_millis(20));
    }
    let ours = |r: &crate::standin::Rec| r.action == "create" && returned.contains_key(&r.cluster);
    let creates = rec.wait(ours, n + 1, Duration::from_secs(30))?;
    let warm_up = format!("{prefix}0");
    let mut lat: Vec<f64> = creates
        .iter()
        .filter(|r| r.cluster != warm_up)
        .filter_map(|r| {
            let back = *returned.get(&r.cluster)?;
            Some((r.ns as i128 - back as i128) as f64 / 1e6)
        })
        .collect();
    if lat.len() != n {
        return Err(format!("{} of {n} create starts matched a POST", lat.len()));
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

/// The p50, p99 (judged by `p99`) and max rows of sorted latencies; `others` judges p50
/// and max.
pub fn rows(t: &mut Table, id: &str, what: &str, lat: &[f64], p99: Goal, others: Goal) {
    let points = [
        ("p50", 50.0, others),
        ("p99", 99.0, p99),
        ("max", 100.0, others),
    ];
    for (name, p, goal) in points {
        t.figure(id, &format!("{what}, {name}"), pct(lat, p), "ms", goal);
    }
}
