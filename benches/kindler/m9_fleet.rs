//! Measurement 9, a fleet (issue 12): three agents, hosts a, b and c (each its own API
//! socket, folder and stand-in scripts), sharing one real PostgreSQL server started here
//! (`testkit::postgres`, fsync on, as a real setup has), each measurement on a new
//! database of it:
//! - declarations sent to a's API for clusters placed on b (`"host":"b"`), as measurement 1
//!   sends them: the client having the 202 → b's create script started, p50 and p99;
//! - 3,000 clusters inserted with SQL in one statement (spread over the hosts, host ports
//!   unique per host) while the agents run, 10 ms scripts, 16 actions at a time per agent:
//!   insert → all `running`, and the agents' CPU per action, as measurement 6 on SQLite;
//! - each agent's CPU over 60 s with 10,000 converged clusters in the fleet, as
//!   measurement 7;
//! - measurement 2's reads under wrk against agent a, next to the same reads of a SQLite
//!   daemon in the same run.
//!
//! All settings are at their defaults (lease TTL, pool, resync) except the host names and
//! what the other measurements set.

use std::time::{Duration, Instant};

use kindler::testkit::postgres::PgServer;
use kindler::testkit::{cpu_ticks, try_poll};

use crate::harness::{cluster_body, which, Bench, Ctx};
use crate::m1_post_latency;
use crate::m2_api::{self, CONNS, READS};
use crate::report::{show, Goal, Table};
use crate::standin::Records;
use crate::store::migrate;
use crate::wrk::wrk;
use crate::Res;

const HOSTS: [&str; 3] = ["a", "b", "c"];

pub fn run(ctx: &Ctx, t: &mut Table) -> Res<()> {
    which("wrk", "apt-get install wrk")?;
    let pg = PgServer::start(true)?;
    cross_host(ctx, &pg, t)?;
    all_running(ctx, &pg, t)?;
    idle(ctx, &pg, t)?;
    reads(ctx, &pg, t)
}

/// Declared through a's API, created by b's agent: the notification wakes b at once.
fn cross_host(ctx: &Ctx, pg: &PgServer, t: &mut Table) -> Res<()> {
    let n = m1_post_latency::declarations(ctx);
    let mut fleet = Fleet::new(pg)?;
    let rec = Records::bind(&ctx.dir("fleet-latency")?)?;
    let env = [("BENCH_STANDIN_SOCKET", rec.path_str())];
    fleet.start(ctx, "fleet-latency", &[], &env)?;
    let on_b = |name: &str, i: usize| {
        let body = cluster_body(name, i);
        format!(r#"{},"host":"b"}}"#, body.trim_end_matches('}'))
    };
    let lat = m1_post_latency::latencies(fleet.agents[0].port, &rec, n, "x", on_b)?;
    let elsewhere = fleet.number("SELECT count(*) FROM clusters WHERE host <> 'b'")?;
    if elsewhere != 0.0 {
        return Err(format!(
            "{elsewhere} of the clusters declared for b are elsewhere"
        ));
    }
    let what = format!("declared on host a → create script started on host b ({n} declarations)");
    m1_post_latency::rows(t, "9", &what, &lat, Goal::Below(50.0), Goal::Shown);
    Ok(())
}

/// Clusters inserted with SQL while three agents run → all `running`.
fn all_running(ctx: &Ctx, pg: &PgServer, t: &mut Table) -> Res<()> {
    let n = if ctx.quick { 300 } else { 3000 };
    let mut fleet = Fleet::new(pg)?;
    let args = ["--max-concurrent-actions", "16"];
    fleet.start(
        ctx,
        "fleet-throughput",
        &args,
        &[("BENCH_STANDIN", "sleep:10")],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = fleet.cpu(ctx)?;
    // The database's clock just before the insert commits; the runs' times are its too.
    let committed_ms = fleet.insert(n, "unknown")?;
    let timeout = Duration::from_secs(300);
    let mut running = 0.0;
    let all_running = try_poll(timeout, Duration::from_millis(100), || {
        running = fleet.number("SELECT count(*) FROM clusters WHERE actual_state = 'running'")?;
        Ok::<_, String>((running == n as f64).then_some(()))
    })?;
    if all_running.is_none() {
        let failed = fleet.number("SELECT count(*) FROM clusters WHERE actual_state = 'failed'")?;
        return Err(format!(
            "{running} of {n} running after {timeout:?} ({failed} failed)"
        ));
    }
    let cpu: Vec<f64> = fleet
        .cpu(ctx)?
        .iter()
        .zip(&cpu0)
        .map(|(b, a)| b - a)
        .collect();
    let all_ms =
        fleet.number("SELECT EXTRACT(EPOCH FROM max(last_transition_at)) * 1000 FROM clusters")?;
    let first_ms =
        fleet.number("SELECT EXTRACT(EPOCH FROM min(started_at)) * 1000 FROM reconcile_runs")?;
    let took = (all_ms - committed_ms) / 1e3;
    let noticed = (first_ms - committed_ms) / 1e3;
    t.figure_note(
        "9",
        &format!(
            "{} clusters inserted for 3 agents → all running (10 ms scripts)",
            show(n as f64)
        ),
        took,
        "s",
        Goal::Shown,
        &format!(
            "first action {:.0} ms after the insert; {:.0} actions/s after that",
            noticed * 1e3,
            n as f64 / (took - noticed)
        ),
    );
    let total: f64 = cpu.iter().sum();
    let each: Vec<String> = HOSTS
        .iter()
        .zip(&cpu)
        .map(|(host, s)| format!("{host} {s:.2} s"))
        .collect();
    t.figure_note(
        "9",
        "agents' CPU per action (create + probe)",
        total * 1e3 / n as f64,
        "ms",
        Goal::Shown,
        &format!("{total:.2} s in all: {}", each.join(", ")),
    );
    Ok(())
}

/// Each agent's CPU with 10,000 converged clusters in the fleet.
fn idle(ctx: &Ctx, pg: &PgServer, t: &mut Table) -> Res<()> {
    let secs = if ctx.quick { 5 } else { 60 };
    let n = 10_000;
    let mut fleet = Fleet::new(pg)?;
    fleet.insert(n, "running")?;
    fleet.start(ctx, "fleet-idle", &[], &[])?;
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = fleet.cpu(ctx)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu1 = fleet.cpu(ctx)?;
    let elapsed = t0.elapsed().as_secs_f64();
    for (i, host) in HOSTS.iter().enumerate() {
        let own = n / HOSTS.len() + usize::from(i < n % HOSTS.len());
        let cpu = cpu1[i] - cpu0[i];
        t.figure_note(
            "9",
            &format!(
                "idle CPU of agent {host}, {} converged clusters ({} its own), over {secs} s",
                show(n as f64),
                show(own as f64)
            ),
            cpu / elapsed * 100.0,
            "% of a core",
            Goal::Shown,
            &format!("{:.0} ms of CPU", cpu * 1e3),
        );
    }
    Ok(())
}

/// Measurement 2's reads of agent a and of a SQLite daemon, in turns.
fn reads(ctx: &Ctx, pg: &PgServer, t: &mut Table) -> Res<()> {
    let secs = m2_api::wrk_secs(ctx);
    let mut fleet = Fleet::new(pg)?;
    fleet.insert(100, "running")?;
    fleet.start(ctx, "fleet-api", &[], &[])?;
    let port = fleet.agents[0].port;
    m2_api::list_of(port, 100)?;
    let (sqlite, _) = m2_api::read_store(ctx, "fleet-api-sqlite")?;
    for (what, path, _) in READS {
        for conns in CONNS {
            let w = wrk(port, path, conns, secs, None)?;
            let lite = wrk(sqlite.port, path, conns, secs, None)?;
            let label = format!("{what}, {conns} conn, PostgreSQL");
            let mut note = format!("SQLite {} req/s ({:.2}×)", show(lite.rps), w.rps / lite.rps);
            if w.non2xx > 0 || w.errors > 0 {
                note = format!("{note}; {} non-2xx, {} socket errors", w.non2xx, w.errors);
            }
            t.figure_note("9", &label, w.rps, "req/s", Goal::Shown, &note);
            let note = format!("SQLite {} ms", show(lite.p99_ms));
            t.figure_note(
                "9",
                &format!("{label}, p99"),
                w.p99_ms,
                "ms",
                Goal::Shown,
                &note,
            );
        }
    }
    Ok(())
}

/// A database of the fleet on the server, with kindler's schema (so that rows can go in
/// before the agents start), and the agents on it; they stop when it is dropped.
struct Fleet<'a> {
    pg: &'a PgServer,
    db: String,
    url: String,
    agents: Vec<Bench>,
}

impl<'a> Fleet<'a> {
    fn new(pg: &'a PgServer) -> Res<Fleet<'a>> {
        let db = pg.create_db();
        let url = pg.url(&db);
        migrate(&url)?;
        Ok(Fleet {
            pg,
            db,
            url,
            agents: Vec::new(),
        })
    }

    /// Starts the agents of hosts a, b and c, each in a folder of its own, with `extra`
    /// flags and `env` for the stand-in; returns once each holds its host's lease (its
    /// health answers 200), so that every host is live for the others.
    fn start(&mut self, ctx: &Ctx, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Res<()> {
        for host in HOSTS {
            let dir = ctx.dir(&format!("{name}-{host}"))?;
            let mut args = vec!["--host", host];
            args.extend_from_slice(extra);
            self.agents.push(ctx.daemon(&dir, &self.url, &args, env)?);
        }
        for (agent, host) in self.agents.iter().zip(HOSTS) {
            agent
                .wait_healthy(Duration::from_secs(30))
                .map_err(|e| format!("agent {host}: {e}: {}", agent.log_tail(15)))?;
        }
        Ok(())
    }

    /// The one number `sql` selects.
    fn number(&self, sql: &str) -> Res<f64> {
        let out = self.pg.psql(&self.db, sql)?;
        let last = out.lines().last().unwrap_or("");
        last.trim()
            .parse()
            .map_err(|_| format!("{sql}: {out:?} is no number"))
    }

    /// Inserts clusters c0 … c(n-1) in one statement, as another program would, spread
    /// over the hosts in turn; on each host the ports are those of measurement 6's k-th
    /// cluster (`store::ports`) for its k-th, so the same ports recur on every host, as
    /// the fleet allows. `running` rows are converged (reconciled just now); others wait
    /// for a create. Returns the database's clock just before the commit, in ms since the
    /// epoch.
    fn insert(&self, n: usize, actual: &str) -> Res<f64> {
        let hosts: Vec<String> = HOSTS.iter().map(|h| format!("'{h}'")).collect();
        let (hosts, k) = (hosts.join(", "), HOSTS.len());
        self.number(&format!(
            "INSERT INTO clusters (name, host, provider, pf_port, http_port, https_port,
                                   desired_state, actual_state, status, last_reconciled_at)
             SELECT 'c' || i, (ARRAY[{hosts}])[i % {k} + 1], 'k3d',
                    2000 + 3 * (i / {k}), 2001 + 3 * (i / {k}), 2002 + 3 * (i / {k}),
                    'present', '{actual}', '{actual}',
                    CASE WHEN '{actual}' = 'running' THEN now() END
               FROM generate_series(0, {n} - 1) AS i;
             SELECT EXTRACT(EPOCH FROM clock_timestamp()) * 1000"
        ))
    }

    /// Each agent's CPU so far (user + system), in seconds.
    fn cpu(&self, ctx: &Ctx) -> Res<Vec<f64>> {
        self.agents
            .iter()
            .map(|a| Ok(cpu_ticks(a.pid())? as f64 / ctx.tck))
            .collect()
    }
}
