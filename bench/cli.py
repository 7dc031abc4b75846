#!/usr/bin/env python3
"""Benchmarks of the command line and of /metrics, printing each figure next to its target.

    bench/cli.sh [--quick]       (builds the release binary, then runs this)
    python3 bench/cli.py BINARY [--quick]

1. `kindler ls` with 1,000 clusters, from start to exit (over the unix socket and TCP).
2. `kindler create --wait` on a terminal (a pty): how long after the script printed a line
   it appears on the terminal.
3. `GET /metrics` with 10,000 clusters: latency while the store stands (the counts by state
   kept) and right after a write (counted again); the counting query alone.
4. What scraping costs the API: GET /api/clusters/NAME with wrk, without and with a
   scraper asking /metrics 10 times a second (Prometheus asks every 15 s).

Everything runs on loopback, in a temporary folder, with the daemon it starts.
"""

import http.client
import json
import os
import pty
import select
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

QUICK = "--quick" in sys.argv
BIN = os.path.abspath(sys.argv[1])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(REPO, "tests/fixtures/standin.sh")
failures = []


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def report(what, value_ms, target_ms=None, unit="ms"):
    verdict = ""
    if target_ms is not None:
        ok = value_ms <= target_ms
        verdict = f"   target < {target_ms} {unit}: {'ok' if ok else 'MISSED'}"
        if not ok and not QUICK:
            failures.append(what)
    print(f"  {what:<62} {value_ms:9.2f} {unit}{verdict}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    """A kindler serving TCP and a unix socket on a database of `clusters` converged ones."""

    def __init__(self, clusters, create_command=STANDIN, probe_command=STANDIN):
        self.dir = tempfile.mkdtemp(prefix="kindler-bench-cli-")
        self.db = os.path.join(self.dir, "kindler.db")
        self.sock = os.path.join(self.dir, "api.sock")
        self.port = free_port()
        standin_dir = os.path.join(self.dir, "standin")
        os.makedirs(os.path.join(standin_dir, "mode"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KINDLER_", "LISTEN_", "NOTIFY_"))}
        env["STANDIN_DIR"] = standin_dir
        self.env = env
        subprocess.run([BIN, "migrate", "--config", "/dev/null", "--database", self.db,
                        "--log-level", "warn"], check=True, env=env)
        if clusters:
            conn = sqlite3.connect(self.db)
            now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            rows = []
            for i in range(clusters):
                # One in twenty failed and waiting for a retry an hour from now.
                failed = i % 20 == 7
                rows.append((f"c{i:05d}", 2000 + 3 * i, 2001 + 3 * i, 2002 + 3 * i,
                             "failed" if failed else "running", now,
                             "create failed (exit status 3)" if failed else None,
                             1 if failed else 0,
                             "2099-01-01 00:00:00" if failed else None))
            conn.executemany(
                "INSERT INTO clusters (name, provider, pf_port, http_port, https_port, desired_state,"
                " actual_state, status, last_reconciled_at, reconcile_error, attempts, next_attempt_at)"
                " VALUES (?, 'k3d', ?, ?, ?, 'present', ?5, ?5, ?6, ?7, ?8, ?9)", rows)
            conn.commit()
            conn.close()
        log = open(os.path.join(self.dir, "daemon.log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--config", "/dev/null", "--database", self.db,
             "--listen", f"127.0.0.1:{self.port}", "--listen-unix", self.sock,
             "--create-command", create_command, "--probe-command", probe_command,
             "--delete-command", STANDIN, "--start-command", STANDIN, "--stop-command", STANDIN,
             "--script-env-pass", "STANDIN_DIR", "--resync-interval", "1h",
             "--backoff-initial", "1h", "--backoff-max", "1h",
             "--log-target", "stderr", "--log-level", "warn"],
            env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.get("/api/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("bench/cli.py: the daemon did not become healthy")

    def get(self, path, conn=None):
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        if conn is None:
            c.close()
        return r.status, body

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def client_env(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINDLER_")}
    env["KINDLER_SERVER"] = server
    return env


def bench_ls():
    print("1. kindler ls with 1,000 clusters, start to exit")
    d = Daemon(1000)
    try:
        runs = 20 if QUICK else 100
        for label, server in (("unix socket", f"unix:{d.sock}"), ("TCP", f"http://127.0.0.1:{d.port}")):
            for args in (["ls"], ["ls", "-o", "json"]):
                env = client_env(server)
                out = subprocess.run([BIN] + args, env=env, capture_output=True, check=True)
                shown = out.stdout.count(b'"name":') if "json" in args else out.stdout.count(b"\n")
                assert shown >= 1000, out.stdout[:200]
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    subprocess.run([BIN] + args, env=env, stdout=subprocess.DEVNULL, check=True)
                    times.append((time.perf_counter() - t0) * 1000)
                name = " ".join(args)
                report(f"kindler {name}, {label}, p50", pct(times, 50))
                report(f"kindler {name}, {label}, p99 ({runs} runs)", pct(times, 99), 50)
    finally:
        d.stop()


TICKER = r"""#!/usr/bin/env bash
# Prints a line every 50 ms with the time it was printed (bash's clock, no fork).
for i in $(seq 1 LINES); do
    printf 'tick %s %s\n' "$i" "$EPOCHREALTIME"
    sleep 0.05
done
"""


def bench_wait():
    print("2. kindler create --wait on a terminal: script prints a line -> it is on the terminal")
    lines = 20 if QUICK else 40
    creates = 2 if QUICK else 5
    tmp = tempfile.mkdtemp(prefix="kindler-bench-ticker-")
    ticker = os.path.join(tmp, "ticker.sh")
    with open(ticker, "w") as f:
        f.write(TICKER.replace("LINES", str(lines)))
    os.chmod(ticker, 0o755)
    d = Daemon(0, create_command=ticker, probe_command="/bin/true")
    delays = []
    try:
        for n in range(creates):
            master, slave = pty.openpty()
            proc = subprocess.Popen([BIN, "create", f"tick{n}", "--provider", "k3d", "--wait"],
                                    env=client_env(f"unix:{d.sock}"), stdin=subprocess.DEVNULL,
                                    stdout=slave, stderr=slave, close_fds=True)
            os.close(slave)
            buf = b""
            while True:
                ready, _, _ = select.select([master], [], [], 30)
                if not ready:
                    break
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen = time.time()
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    at = text.find("tick ")
                    if at >= 0:
                        parts = text[at:].split()
                        if len(parts) >= 3:
                            try:
                                delays.append((seen - float(parts[2])) * 1000)
                            except ValueError:
                                pass
            proc.wait(30)
            os.close(master)
            if proc.returncode != 0:
                failures.append(f"create --wait exited {proc.returncode}")
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if not delays:
        failures.append("no script line reached the terminal")
        print("  no script line reached the terminal")
        return
    report(f"line on the terminal after the script printed it, p50", pct(delays, 50))
    report(f"... p99 ({len(delays)} lines)", pct(delays, 99), 50)
    report("... max", max(delays))


def scrape_times(d, n, before=None):
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    times = []
    for i in range(n):
        if before:
            before(conn, i)
        t0 = time.perf_counter()
        status, body = d.get("/metrics", conn)
        times.append((time.perf_counter() - t0) * 1000)
        assert status == 200
    conn.close()
    return times


def bench_metrics():
    print("3. GET /metrics with 10,000 clusters (one keep-alive connection)")
    d = Daemon(10000)
    try:
        status, body = d.get("/metrics")
        text = body.decode()
        assert 'kindler_clusters{actual_state="running",desired_state="present"} 9500' in text, text[:2000]
        n = 300 if QUICK else 2000
        times = scrape_times(d, n)
        report("scrape while the store stands (counts kept), p50", pct(times, 50))
        report(f"scrape while the store stands, p99 ({n} scrapes)", pct(times, 99), 5)

        def write(conn, i):
            # Declares a running cluster present again: one commit, nothing to run.
            conn.request("POST", f"/api/clusters/c{(i * 20) % 10000:05d}/start", body=b"",
                         headers={"Content-Length": "0"})
            r = conn.getresponse()
            r.read()

        times = scrape_times(d, n // 4, write)
        report("scrape right after a write (recounted in the background), p50", pct(times, 50))
        report(f"scrape right after a write, p99 ({n // 4} scrapes)", pct(times, 99), 5)
        db = sqlite3.connect(d.db)
        q = ("SELECT desired_state, actual_state, COUNT(*), SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END)"
             " FROM clusters GROUP BY 1, 2")
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            db.execute(q).fetchall()
            times.append((time.perf_counter() - t0) * 1000)
        db.close()
        report("the counting query alone (GROUP BY over 10,000 rows), p50", pct(times, 50))
        bench_interference(d)
    finally:
        d.stop()


def bench_interference(d):
    print("4. GET /api/clusters/NAME (wrk, 1 connection) without and with a scraper at 10/s")
    if shutil.which("wrk") is None:
        print("  wrk is not installed (apt-get install wrk): skipped")
        return
    secs = 3 if QUICK else 8
    url = f"http://127.0.0.1:{d.port}/api/clusters/c00042"

    def wrk():
        out = subprocess.run(["wrk", "-t1", "-c1", f"-d{secs}s", "--latency", url],
                             capture_output=True, text=True, check=True).stdout
        rps = float(next(l.split()[1] for l in out.splitlines() if l.startswith("Requests/sec")))
        p99 = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("99%"))
        return rps, p99

    results = {}
    for label, scraping in (("without scraper", False), ("with a scrape every 100 ms", True),
                            ("without scraper, again", False)):
        stop = threading.Event()
        scrapes = []

        def scraper():
            conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
            while not stop.is_set():
                t0 = time.perf_counter()
                d.get("/metrics", conn)
                scrapes.append((time.perf_counter() - t0) * 1000)
                stop.wait(0.1)
            conn.close()

        t = threading.Thread(target=scraper) if scraping else None
        if t:
            t.start()
        rps, p99 = wrk()
        stop.set()
        if t:
            t.join()
        results[label] = rps
        extra = f", scrapes p99 {pct(scrapes, 99):.2f} ms" if scrapes else ""
        print(f"  {label:<62} {rps:9.0f} req/s (p99 {p99}){extra}")
    base = (results["without scraper"] + results["without scraper, again"]) / 2
    spread = abs(results["without scraper"] - results["without scraper, again"]) / base * 100
    change = (results["with a scrape every 100 ms"] - base) / base * 100
    print(f"  with the scraper: {change:+.1f} % against the mean of the runs without "
          f"(which differ by {spread:.1f} % between themselves: the noise)")


def main():
    print(f"== kindler command line and /metrics benchmarks ({'quick' if QUICK else 'full'}), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"   {os.cpu_count()} cores, load average {open('/proc/loadavg').read().split()[:3]}")
    bench_ls()
    bench_wait()
    bench_metrics()
    if failures:
        print("MISSED: " + "; ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
