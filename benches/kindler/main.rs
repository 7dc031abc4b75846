//! kindler's benchmark suite: is the daemon fast and small? Run it with `bench/run.sh`
//! (release build, every measurement, one table of figures against their targets), or
//! `bench/run.sh --quick` for a short smoke run that fails only when the setup is broken.
//!
//! Everything goes through the real release binary (`CARGO_BIN_EXE_kindler`) and real
//! SQLite files, or (measurement 9, a fleet) a real PostgreSQL server started by the bench.
//! The API socket is passed as fd 3 with LISTEN_FDS, the way systemd does, and readiness
//! is the READY=1 datagram on a NOTIFY_SOCKET bound here. API load comes from `wrk`;
//! socket activation from `systemd-socket-activate`.
//!
//! This executable is also every script the daemon runs: started with BENCH_STANDIN in its
//! environment it is the stand-in (see [`standin`]), which tells the driver when it
//! started and then does what its mode says. (The daemon strips its own KINDLER_* variables
//! from a script's environment, so the stand-in's settings are named BENCH_*.)
//!
//! One file a measurement (`m1_…` to `m9_…`); the rest is what they share: [`harness`]
//! (the benchmarked daemons and their API), [`store`] (stores written with SQL),
//! [`standin`], [`wrk`], [`bare`] (the bare hyper server of measurement 2) and [`report`]
//! (the table). What the integration tests share with the benches (starting a daemon,
//! HTTP, NOTIFY_SOCKET, /proc) is `kindler::testkit`.

mod bare;
mod harness;
mod m1_post_latency;
mod m2_api;
mod m3_memory;
mod m4_startup;
mod m5_stop;
mod m6_actions;
mod m7_idle;
mod m8_floods;
mod m9_fleet;
mod report;
mod standin;
mod store;
mod wrk;

use std::path::Path;
use std::time::Instant;

use harness::{Ctx, MANIFEST_DIR};
use report::Table;

type Res<T> = Result<T, String>;

fn main() {
    if std::env::var_os("BENCH_STANDIN").is_some() {
        standin::main();
    }
    let mut quick = false;
    let mut keep = false;
    let mut only: Option<Vec<String>> = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--keep" => keep = true,
            // `cargo bench` passes --bench to every bench target.
            "--bench" => {}
            a if a.starts_with("--only=") => {
                only = Some(a["--only=".len()..].split(',').map(str::to_owned).collect())
            }
            a => {
                eprintln!("unknown argument {a:?}; use --quick, --keep, --only=1,2,...");
                std::process::exit(2);
            }
        }
    }
    let root = tempfile::Builder::new()
        .prefix("kindler-bench-")
        .tempdir()
        .unwrap_or_else(|e| {
            eprintln!("cannot create a temporary directory: {e}");
            std::process::exit(2)
        });
    let ctx = Ctx::new(quick, root.path());
    let mut table = Table::default();
    type Measurement = fn(&Ctx, &mut Table) -> Res<()>;
    let measurements: [(&str, &str, Measurement); 9] = [
        ("1", "declaration latency", m1_post_latency::run),
        ("2", "API throughput (wrk)", m2_api::run),
        ("3", "memory", m3_memory::run),
        ("4", "start-up", m4_startup::run),
        ("5", "stop", m5_stop::run),
        ("6", "reconcile throughput", m6_actions::run),
        ("7", "idle cost", m7_idle::run),
        ("8", "floods", m8_floods::run),
        ("9", "fleet on PostgreSQL", m9_fleet::run),
    ];
    let total = measurements.len();
    let started = Instant::now();
    for (id, title, run) in measurements {
        if only.as_ref().is_some_and(|o| !o.iter().any(|x| x == id)) {
            continue;
        }
        eprintln!("[{id}/{total}] {title} ...");
        let t0 = Instant::now();
        if let Err(e) = run(&ctx, &mut table) {
            eprintln!("[{id}/{total}] {title}: SETUP FAILED: {e}");
            table.error(id, title, &e);
        }
        eprintln!(
            "[{id}/{total}] {title}: {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }
    let text = table.render(quick);
    println!("{text}");
    println!(
        "{} run in {:.0} s{}",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64(),
        if quick {
            " (quick: figures come from short runs and are not judged)"
        } else {
            ""
        }
    );
    let results = Path::new(MANIFEST_DIR).join("bench/results");
    if std::fs::create_dir_all(&results).is_ok() {
        let name = if quick { "quick.txt" } else { "latest.txt" };
        let _ = std::fs::write(results.join(name), &text);
    }
    if keep {
        let kept = root.keep();
        eprintln!("kept the daemons' folders and logs in {}", kept.display());
    } else {
        // process::exit runs no destructors: remove the folders now.
        drop(root);
    }
    let status = if table.errors > 0 {
        2
    } else if table.missed > 0 && !quick {
        1
    } else {
        0
    };
    std::process::exit(status);
}
