#!/usr/bin/env python3
"""Client load for tests/system/run.sh: requests to kindler's API from a few threads, each
on a new connection, until told to stop; every request's outcome is logged.

    load-client.py BASE_URL WORKDIR [--threads N] [--min-requests N] [--declare N]

Requests, in turn: GET /api/clusters, GET /api/clusters/dev, GET /api/health,
POST /api/clusters/dev/start (a declaration that changes nothing: 202), and, for the first
--declare turns, POST /api/clusters declaring the new cluster load-K (202).
Files in WORKDIR:
  count     the number of requests ended so far (rewritten every 25)
  stop      created by the caller: finish once --min-requests were sent and 50 more
            were sent after the stop file appeared (so the load outlasts what it spans)
  requests  one line per request: start end method path status error
            (times from time.time(); status 0 and an error when there was no answer)
  result    at the end, JSON: total, gets, posts, failed, refused, errors (by kind),
            declared (names answered 202)
Exit status 0 when it ran (whatever the answers), 2 on bad usage.
"""
import argparse
import errno
import http.client
import json
import os
import threading
import time
import urllib.parse

EXPECTED = {"GET": 200, "POST": 202}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("workdir")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--min-requests", type=int, default=1000)
    ap.add_argument("--declare", type=int, default=10)
    args = ap.parse_args()
    url = urllib.parse.urlsplit(args.base)
    host, port = url.hostname, url.port or 80

    lock = threading.Lock()
    state = {"n": 0, "turn": 0, "declared_next": 0, "after_stop": 0}
    log = open(os.path.join(args.workdir, "requests"), "w", buffering=1)
    stop_file = os.path.join(args.workdir, "stop")
    count_file = os.path.join(args.workdir, "count")
    declared = []
    errors = {}
    totals = {"GET": 0, "POST": 0, "failed": 0, "refused": 0}

    def next_request():
        with lock:
            if os.path.exists(stop_file):
                if state["n"] >= args.min_requests and state["after_stop"] >= 50:
                    return None
                state["after_stop"] += 1
            turn = state["turn"]
            state["turn"] += 1
            if turn % 5 == 4 and state["declared_next"] < args.declare:
                name = f"load-{state['declared_next']}"
                state["declared_next"] += 1
                return "POST", "/api/clusters", json.dumps({"name": name, "provider": "k3d"}), name
        kind = turn % 5
        if kind == 0:
            return "GET", "/api/clusters", None, None
        if kind == 1:
            return "GET", "/api/clusters/dev", None, None
        if kind == 2:
            return "GET", "/api/health", None, None
        return "POST", "/api/clusters/dev/start", None, None

    def one(method, path, body):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            headers = {"Connection": "close"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status, ""
        except ConnectionRefusedError:
            return 0, "refused"
        except ConnectionResetError:
            return 0, "reset"
        except http.client.RemoteDisconnected:
            return 0, "closed-without-answer"
        except TimeoutError:
            return 0, "timeout"
        except OSError as e:
            return 0, errno.errorcode.get(e.errno, type(e).__name__)
        except http.client.HTTPException as e:
            return 0, type(e).__name__
        finally:
            conn.close()

    def worker():
        while True:
            req = next_request()
            if req is None:
                return
            method, path, body, name = req
            t0 = time.time()
            status, err = one(method, path, body)
            t1 = time.time()
            with lock:
                totals[method] += 1
                state["n"] += 1
                if status != EXPECTED[method]:
                    totals["failed"] += 1
                    kind = err or f"HTTP {status}"
                    errors[kind] = errors.get(kind, 0) + 1
                    if err == "refused":
                        totals["refused"] += 1
                elif name:
                    declared.append(name)
                log.write(f"{t0:.6f} {t1:.6f} {method} {path} {status} {err or '-'}\n")
                if state["n"] % 25 == 0:
                    tmp = count_file + ".tmp"
                    with open(tmp, "w") as f:
                        f.write(f"{state['n']}\n")
                    os.replace(tmp, count_file)

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    result = {
        "total": state["n"],
        "gets": totals["GET"],
        "posts": totals["POST"],
        "failed": totals["failed"],
        "refused": totals["refused"],
        "errors": errors,
        "declared": sorted(declared),
    }
    tmp = os.path.join(args.workdir, "result.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(args.workdir, "result"))


if __name__ == "__main__":
    main()
