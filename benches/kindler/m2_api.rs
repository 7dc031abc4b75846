//! Measurement 2, the API under wrk (`wrk -t1 -cN -d5s --latency`, 1 and 32 connections): reads of
//! one cluster and of the list, on a store of 100 converged clusters; declarations of a new cluster
//! per request (`bench/wrk-post.lua`), each run on a fresh store, with scripts that take long
//! (judged) and with `/bin/true` (shown).
//!
//! Every rate is also measured against a bare hyper server ([`crate::bare`]) answering the same
//! requests with kindler's own bytes, right after kindler's run and with the same connections and
//! duration, and given as a share of it: how far kindler is from what HTTP alone reaches on this
//! machine.

use std::path::PathBuf;

use kindler::testkit::Response;

use crate::bare::{versus, Answer, Bare};
use crate::harness::{
    call, cluster_body, connect, http_once, which, which_path, Bench, Ctx, MANIFEST_DIR,
};
use crate::report::{show, Goal, Table};
use crate::store::{add_clusters, count, new_store};
use crate::wrk::{wrk, WrkResult};
use crate::Res;

pub fn run(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let secs = wrk_secs(ctx);
    which("wrk", "apt-get install wrk")?;
    let accepted = reads(ctx, t, secs)?;
    // Declarations measured twice: with scripts that take as long as real ones do (the
    // target figures: three creates run, the rest wait their turn), and with /bin/true, so
    // that the reconciler starts two processes per declaration as fast as it can on the same
    // two cores (shown, not judged). The bare server answers kindler's 202 to them all.
    let body = cluster_body("bare", 0);
    let bare = Bare::start(
        vec![Answer::replay("POST", "/api/clusters", accepted)?],
        Some(&body),
    )?;
    let mut bare_rates: Vec<(u32, WrkResult)> = Vec::new();
    for (scripts, judged) in [("long", true), ("instant", false)] {
        for conns in [1, 32] {
            let run = declarations(ctx, secs, conns, scripts, false)?;
            if !bare_rates.iter().any(|(c, _)| *c == conns) {
                let b = post_wrk(bare.port, secs, conns, false, None)?;
                bare_rates.push((conns, b));
            }
            let (_, b) = bare_rates
                .iter()
                .find(|(c, _)| *c == conns)
                .expect("just run");
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
                format!(
                    "{} of {} running when wrk stopped",
                    run.running, run.declared
                )
            };
            let w = &run.wrk;
            let mut note = format!("{note}; {}", versus(w, b));
            if run.declared >= i64::from(POST_LIMIT) {
                // wrk divides by its whole second although the thread stopped sooner.
                note = format!(
                    "at least: the {POST_LIMIT} declarations a run may make (the port space) \
                     were answered before wrk's second was over; {note}"
                );
            }
            t.figure_note("2", &label, w.rps, "req/s", rate_goal, &note);
            let note = format!("bare hyper {} ms", show(b.p99_ms));
            t.figure_note(
                "2",
                &format!("{label}, p99"),
                w.p99_ms,
                "ms",
                p99_goal,
                &note,
            );
        }
    }
    Ok(())
}

/// How long each wrk run lasts.
pub fn wrk_secs(ctx: &Ctx) -> u64 {
    if ctx.quick {
        1
    } else {
        5
    }
}

/// The reads measured: what, its path (on a store of clusters c0 … c99) and the floor of
/// its rate; each with 1 and 32 connections ([`CONNS`]).
pub const READS: [(&str, &str, f64); 2] = [
    ("GET /api/clusters/{name}", "/api/clusters/c42", 20_000.0),
    ("GET /api/clusters (100 clusters)", "/api/clusters", 8_000.0),
];
pub const CONNS: [u32; 2] = [1, 32];

/// A daemon on a new SQLite store of 100 converged clusters (c0 … c99), and its answer to
/// `GET /api/clusters`.
pub fn read_store(ctx: &Ctx, name: &str) -> Res<(Bench, Response)> {
    let dir = ctx.dir(name)?;
    let db = new_store(&dir)?;
    add_clusters(&db, "c", 0, 100, "running")?;
    let d = ctx.daemon(&dir, &db, &[], &[])?;
    let list = list_of(d.port, 100)?;
    Ok((d, list))
}

/// `GET /api/clusters`, checked to list `n` clusters.
pub fn list_of(port: u16, n: usize) -> Res<Response> {
    let list = http_once(port, "GET", "/api/clusters")?;
    let listed = serde_json::from_str::<serde_json::Value>(&list.text)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len));
    if list.status != 200 || listed != Some(n) {
        return Err(format!(
            "GET /api/clusters: {}, {listed:?} clusters, not {n}",
            list.status
        ));
    }
    Ok(list)
}

/// The reads, against kindler and the bare server in turns. Returns kindler's answer to
/// a declaration, for the bare server of the declarations: taken last, so that the reads
/// saw 100 clusters.
fn reads(ctx: &Ctx, t: &mut Table, secs: u64) -> Res<Response> {
    let (d, list) = read_store(ctx, "api-get")?;
    let one = http_once(d.port, "GET", "/api/clusters/c42")?;
    let bare = Bare::start(
        vec![
            Answer::replay("GET", "/api/clusters/c42", one)?,
            Answer::replay("GET", "/api/clusters", list)?,
        ],
        None,
    )?;
    for (what, path, floor) in READS {
        for conns in CONNS {
            let w = wrk(d.port, path, conns, secs, None)?;
            let b = wrk(bare.port, path, conns, secs, None)?;
            let label = format!("{what}, {conns} conn");
            t.figure_note(
                "2",
                &label,
                w.rps,
                "req/s",
                Goal::AtLeast(floor),
                &versus(&w, &b),
            );
            let mut note = format!("bare hyper {} ms", show(b.p99_ms));
            if w.non2xx > 0 || w.errors > 0 {
                note = format!("{note}; {} non-2xx, {} socket errors", w.non2xx, w.errors);
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
    // Host ports no cluster of the store holds (they hold those of clusters 0 to 99).
    let body = cluster_body("bare", 100);
    let accepted = call(&mut connect(d.port)?, "POST", "/api/clusters", Some(&body))?;
    if accepted.status != 202 {
        return Err(format!("POST /api/clusters: {accepted:?}"));
    }
    Ok(accepted)
}

/// One run of declarations against a fresh daemon and store.
struct Declarations {
    wrk: WrkResult,
    declared: i64,
    running: i64,
}

/// One wrk run of `POST /api/clusters` against a fresh daemon and store (every POST claims
/// three host ports, and there are only ~21,500 sets of them). `diagnose`: wrk counts the
/// answers' statuses (which slows it), for a re-run after answers that were not 2xx.
fn declarations(
    ctx: &Ctx,
    secs: u64,
    conns: u32,
    scripts: &str,
    diagnose: bool,
) -> Res<Declarations> {
    let name = if diagnose { "diagnose" } else { "api-post" };
    let dir = ctx.dir(&format!("{name}-{scripts}-{conns}"))?;
    let db = new_store(&dir)?;
    let d = if scripts == "long" {
        ctx.daemon(&dir, &db, &[], &[("BENCH_STANDIN_CREATE", "hang")])?
    } else {
        let instant = which_path("true")?;
        let args = ["--create-command", &instant, "--probe-command", &instant];
        ctx.daemon(&dir, &db, &args, &[])?
    };
    let w = post_wrk(d.port, secs, conns, diagnose, Some(POST_LIMIT))?;
    if w.non2xx > 0 && !diagnose {
        // The daemon logs why it refuses writes (health events), the store says how many
        // declarations it took, and a re-run says what the answers were: enough to tell a
        // refusal from a benchmark error.
        let stored = count(&db, "1").unwrap_or(-1);
        let log = d.log_tail(15);
        drop(d);
        // Its statuses go in the first line, which the table shows.
        let (counted, again) = match declarations(ctx, secs, conns, scripts, true) {
            Ok(again) => {
                let out = again.wrk.script_output;
                let counted: Vec<&str> = out.lines().filter(|l| l.starts_with("status ")).collect();
                (counted.join(", "), out)
            }
            Err(e) => (String::new(), format!("it failed: {e}")),
        };
        return Err(format!(
            "POST benchmark with {conns} connections: {} answers were not 2xx, at {:.0} req/s \
             ({stored} clusters stored); a re-run counting statuses got: {}\n\
             The daemon's log ends with:\n{log}\n\
             The re-run (on a fresh store, with wrk slowed by the counting):\n{again}",
            w.non2xx,
            w.rps,
            if counted.is_empty() {
                "nothing"
            } else {
                &counted
            },
        ));
    }
    Ok(Declarations {
        declared: count(&db, "1")?,
        running: count(&db, "actual_state = 'running'")?,
        wrk: w,
    })
}

/// Most declarations one run makes: the port space holds ~21,500 sets of three host ports,
/// and some are in flight when the thread stops.
const POST_LIMIT: u32 = 20_000;

/// wrk with `bench/wrk-post.lua`: 3 s for one connection, 1 s for 32, and at most `limit`
/// declarations (kindler at 32 connections reaches [`POST_LIMIT`] within the second; the
/// bare server stores nothing and has no limit). At most `secs`.
fn post_wrk(
    port: u16,
    secs: u64,
    conns: u32,
    diagnose: bool,
    limit: Option<u32>,
) -> Res<WrkResult> {
    let script = PathBuf::from(MANIFEST_DIR).join("bench/wrk-post.lua");
    let prefix = format!("p{conns}-");
    let mut args = vec![prefix.as_str(), "1024"];
    if diagnose {
        args.push("statuses");
    }
    let limit = limit.map(|n| format!("limit={n}"));
    if let Some(limit) = &limit {
        args.push(limit);
    }
    let secs = secs.min(if conns == 1 { 3 } else { 1 });
    wrk(port, "/api/clusters", conns, secs, Some((&script, &args)))
}
