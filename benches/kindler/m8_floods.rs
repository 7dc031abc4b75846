//! Measurement 8, floods (issue 9): a new client's `GET /api/health` while 1,000
//! connections are held open (half idle keep-alive ones, half slowloris ones still sending
//! their headers), and the daemon's CPU and health latency while 100 WebSocket clients hold
//! 64 subscriptions each and nothing changes.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kindler::testkit::{cpu_ticks, room_for_sockets};
use tokio_tungstenite::tungstenite::{client::client, Message};

use crate::harness::{http_once, Ctx};
use crate::report::{pct, Goal, Table};
use crate::store::new_store;
use crate::Res;

pub fn run(ctx: &Ctx, t: &mut Table) -> Res<()> {
    room_for_sockets();
    held_connections(ctx, t)?;
    idle_subscriptions(ctx, t)
}

/// Latencies in ms of `n` health requests, each on a new connection, while `between` runs
/// before each one.
fn health_latencies(port: u16, n: usize, mut between: impl FnMut()) -> Res<Vec<f64>> {
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        between();
        let t0 = Instant::now();
        let r = http_once(port, "GET", "/api/health")?;
        if r.status != 200 {
            return Err(format!("GET /api/health: {}", r.status));
        }
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

fn held_connections(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let dir = ctx.dir("floods-held")?;
    let db = new_store(&dir)?;
    let d = ctx.daemon(&dir, &db, &[], &[])?;
    let connect = || TcpStream::connect(("127.0.0.1", d.port)).map_err(|e| e.to_string());
    let mut idle = Vec::new();
    for _ in 0..500 {
        let mut s = connect()?;
        s.write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| e.to_string())?;
        idle.push(s);
    }
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut s = connect()?;
        s.write_all(b"GET /api/health HTTP/1.1\r\nX-Slow: ")
            .map_err(|e| e.to_string())?;
        slow.push(s);
    }
    let n = if ctx.quick { 100 } else { 1_000 };
    let mut i = 0;
    let ms = health_latencies(d.port, n, || {
        // The slow ones keep trickling a header byte, as slowloris does.
        i += 1;
        if i % 20 == 0 {
            for s in &mut slow {
                let _ = s.write_all(b"y");
            }
        }
    })?;
    let label = "GET /api/health on a new connection, 1,000 held (500 idle, 500 slowloris)";
    t.figure_note(
        "8",
        &format!("{label}, p99"),
        pct(&ms, 99.0),
        "ms",
        Goal::Below(100.0),
        &format!(
            "{n} requests; p50 {:.2} ms, max {:.1} ms",
            pct(&ms, 50.0),
            ms.last().copied().unwrap_or(0.0)
        ),
    );
    drop(idle);
    drop(slow);
    Ok(())
}

fn idle_subscriptions(ctx: &Ctx, t: &mut Table) -> Res<()> {
    let dir = ctx.dir("floods-subscriptions")?;
    let db = new_store(&dir)?;
    let d = ctx.daemon(&dir, &db, &[], &[])?;
    let mut clients = Vec::new();
    for c in 0..100 {
        let stream = TcpStream::connect(("127.0.0.1", d.port)).map_err(|e| e.to_string())?;
        let (mut ws, _) = client(format!("ws://127.0.0.1:{}/ws/tasks", d.port), stream)
            .map_err(|e| format!("WebSocket handshake: {e}"))?;
        for i in 0..64 {
            let sub = format!(r#"{{"type":"subscribe","task_id":"reconcile-idle-{c}-{i}"}}"#);
            ws.send(Message::text(sub)).map_err(|e| e.to_string())?;
        }
        // The pong comes after every subscription before it was read.
        ws.send(Message::text(r#"{"type":"ping"}"#))
            .map_err(|e| e.to_string())?;
        while !ws
            .read()
            .map_err(|e| e.to_string())?
            .to_text()
            .unwrap_or("")
            .contains("pong")
        {}
        clients.push(ws);
    }
    std::thread::sleep(Duration::from_secs(2));
    let secs = if ctx.quick { 5.0 } else { 30.0 };
    let cpu0 = cpu_ticks(d.pid())?;
    let t0 = Instant::now();
    let mut health = Vec::new();
    while t0.elapsed().as_secs_f64() < secs {
        std::thread::sleep(Duration::from_millis(100));
        health.extend(health_latencies(d.port, 1, || {})?);
    }
    let cpu = (cpu_ticks(d.pid())? - cpu0) as f64 / ctx.tck;
    let share = cpu / t0.elapsed().as_secs_f64() * 100.0;
    health.sort_by(f64::total_cmp);
    let label = "100 WebSocket clients × 64 subscriptions, nothing changing";
    t.figure_note(
        "8",
        &format!("{label}: daemon CPU"),
        share,
        "% of a core",
        Goal::Below(2.0),
        &format!(
            "{:.0} ms of CPU over {secs:.0} s (health requests included)",
            cpu * 1e3
        ),
    );
    t.figure_note(
        "8",
        &format!("{label}: GET /api/health p99"),
        pct(&health, 99.0),
        "ms",
        Goal::Below(10.0),
        &format!("{} requests, one every 100 ms", health.len()),
    );
    drop(clients);
    Ok(())
}
