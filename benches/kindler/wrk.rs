//! wrk, the HTTP load generator: one run, its figures read from its report.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::Res;

pub struct WrkResult {
    pub rps: f64,
    pub p99_ms: f64,
    /// Answers with a status of 400 or more.
    pub non2xx: u64,
    pub errors: u64,
    /// What the script printed after wrk's report (its `done()`).
    pub script_output: String,
}

/// `wrk -t1 -cCONNS -dSECSs --latency` against 127.0.0.1:PORT/PATH, with a Lua script and
/// its arguments if given.
pub fn wrk(
    port: u16,
    path: &str,
    conns: u32,
    secs: u64,
    script: Option<(&Path, &[&str])>,
) -> Res<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some((s, _)) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    if let Some((_, args)) = script {
        cmd.arg("--").args(args);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let p99_ms = field("99%")
        .and_then(|v| latency_ms(&v))
        .ok_or_else(|| format!("no 99% latency in wrk's output: {text}"))?;
    let non2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let errors = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let script_output = text
        .lines()
        .skip_while(|l| !l.starts_with("Transfer/sec:"))
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n");
    Ok(WrkResult {
        rps,
        p99_ms,
        non2xx,
        errors,
        script_output,
    })
}

/// wrk's "1.23ms", "456.00us", "1.02s", "2.00m" as milliseconds.
fn latency_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => num / 1e3,
        "ms" => num,
        "s" => num * 1e3,
        "m" => num * 60e3,
        _ => return None,
    })
}
