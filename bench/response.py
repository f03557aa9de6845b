"""1. Response time of POST /send, POST /send-sync and GET /noop, all three on one server.

Two servers, each measured on its own: the one learners run, `python3 app.py`
(werkzeug's threaded development server), and gunicorn with gthread workers,
the kind of server the app runs under in production. The load generator is wrk
(Debian's package) when it is installed: a C client that takes little of the
cores it shares with the server and RabbitMQ. Without wrk, a Python one
(threads, http.client). Either way every client keeps one connection open and
sends requests back to back. /noop and /send are measured in alternating
rounds so that both see the same machine load; /send-sync takes WORK_SECONDS
per request, so it gets few.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from bench.env import BenchEnv
from bench.stats import summary

MAIL = json.dumps({"to": "bench@example.com", "subject": "Benchmark", "body": "Hello"})
ENDPOINTS = {
    "noop": ("GET", "/noop", None),
    "send": ("POST", "/send", MAIL),
    "send-sync": ("POST", "/send-sync", MAIL),
}
GUNICORN_THREADS = 8
SERVERS = {
    "werkzeug": "werkzeug threaded development server (python3 app.py)",
    "gunicorn": (
        f"gunicorn {{workers}} gthread workers x {GUNICORN_THREADS} threads "
        f"(gunicorn -k gthread -w {{workers}} --threads {GUNICORN_THREADS} app:app)"
    ),
}
# wrk reports its latency histogram's percentiles in microseconds from done().
WRK_SCRIPT = """
wrk.method = "{method}"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MAILASYNC %d %d %d %d %d\\n", summary.requests,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""
WRK_LINE = re.compile(r"^MAILASYNC (\d+) (\d+) (\d+) (\d+) (\d+)$", re.MULTILINE)


def client_loop(
    port: int, endpoint: str, count: int, start: threading.Barrier, out: list[float]
) -> None:
    """Send `count` requests on one kept-alive connection, recording each latency."""
    method, path, body = ENDPOINTS[endpoint]
    headers = {"Content-Type": "application/json"} if body else {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start.wait()
    for _ in range(count):
        began = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        out.append(time.perf_counter() - began)
        if response.status >= 300:
            raise RuntimeError(f"{method} {path} answered {response.status}")
    conn.close()


def load(port: int, endpoint: str, clients: int, per_client: int) -> list[float]:
    """Latencies (seconds) of `clients` concurrent Python clients, `per_client` requests each."""
    latencies: list[float] = []
    start = threading.Barrier(clients)
    threads = [
        threading.Thread(target=client_loop, args=(port, endpoint, per_client, start, latencies))
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(latencies) != clients * per_client:
        raise RuntimeError(f"{endpoint}: {len(latencies)} of {clients * per_client} requests done")
    return latencies


def wrk(port: int, endpoint: str, clients: int, seconds: float) -> dict[str, float]:
    """Count, p50, p95, p99 (seconds) of `clients` wrk connections for `seconds`."""
    method, path, body = ENDPOINTS[endpoint]
    script = WRK_SCRIPT.format(method=method, body=json.dumps(body) if body else "nil")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)
    try:
        argv = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout=60s"]
        done = subprocess.run(
            [*argv, "-s", lua.name, f"http://127.0.0.1:{port}{path}"],
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
    finally:
        os.unlink(lua.name)
    found = WRK_LINE.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
    n, p50, p95, p99, errors = (int(x) for x in found.groups())
    if errors or n == 0:
        raise RuntimeError(f"{method} {path}: {errors} errors in {n} requests\n{done.stdout}")
    return {"n": n, "p50": p50 / 1e6, "p95": p95 / 1e6, "p99": p99 / 1e6}


def merge(rounds: list[dict[str, float]]) -> dict[str, float]:
    """wrk gives percentiles, not samples: sum the counts, take each percentile's median."""
    merged = {q: statistics.median(r[q] for r in rounds) for q in ("p50", "p95", "p99")}
    return {"n": sum(r["n"] for r in rounds), **merged}


def start_server(server: str, env: dict[str, str]) -> Any:
    """Start the Flask app under `server`; returns a processes.Background with `.port`."""
    from processes import Background, free_port, start_app

    if server == "werkzeug":
        return start_app(env)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class=gthread",
        f"--workers={os.cpu_count() or 1}",
        f"--threads={GUNICORN_THREADS}",
        f"--bind=127.0.0.1:{port}",
        "app:app",
    ]
    web = Background("gunicorn", argv, env, port=port)
    web.start().wait_for_port()
    return web


def measure_server(
    env: BenchEnv,
    server: str,
    queue: str,
    app_env: dict[str, str],
    use_wrk: bool,
    requests: int,
    round_seconds: float,
    sync_requests: int,
    work_seconds: float,
    rounds: int,
    concurrencies: tuple[int, ...],
) -> dict[str, Any]:
    """The three endpoints on one server, at each concurrency."""
    web = start_server(server, app_env)
    figures: dict[str, Any] = {}
    try:
        load(web.port, "noop", 1, 50)  # warm up: imports, first connection to the broker
        load(web.port, "send", 1, 50)
        for clients in concurrencies:
            per_round = max(1, requests // rounds // clients)
            samples: dict[str, list[Any]] = {"noop": [], "send": []}
            for _ in range(rounds):
                for endpoint in samples:
                    if use_wrk:
                        samples[endpoint].append(wrk(web.port, endpoint, clients, round_seconds))
                    else:
                        samples[endpoint] += load(web.port, endpoint, clients, per_round)
                env.purge(queue)
            per_client = max(1, sync_requests // clients)
            if use_wrk:
                # wrk runs for a time: long enough for every connection to finish per_client.
                sync = wrk(web.port, "send-sync", clients, work_seconds * (per_client + 0.5) + 1)
            else:
                sync = summary(load(web.port, "send-sync", clients, per_client))
            merged = merge if use_wrk else summary
            stats = {name: merged(values) for name, values in samples.items()}
            stats["send-sync"] = sync
            figures[f"{server}-c{clients}"] = {
                "server": server,
                "clients": clients,
                "endpoints": stats,
                "send_over_noop_p50": stats["send"]["p50"] / stats["noop"]["p50"],
                "sync_over_send_p50": stats["send-sync"]["p50"] / stats["send"]["p50"],
            }
    finally:
        web.stop()
        env.purge(queue)
    return figures


def run(
    env: BenchEnv,
    requests: int = 2000,
    round_seconds: float = 2.0,
    sync_requests: int = 3,
    work_seconds: float = 5.0,
    rounds: int = 5,
    concurrencies: tuple[int, ...] = (1, 8),
    servers: tuple[str, ...] = ("werkzeug", "gunicorn"),
) -> dict[str, Any]:
    """p50/p95/p99 per server, endpoint and concurrency, and the ratios the targets name."""
    from processes import start_inbox

    use_wrk = shutil.which("wrk") is not None
    queue = "bench-response"
    inbox_server = start_inbox(env.folder / "inbox-response")  # where /send-sync mails go
    app_env = {**env.settings_env(queue, work_seconds), **inbox_server.env}
    figures: dict[str, Any] = {}
    try:
        for server in servers:
            figures |= measure_server(
                env,
                server,
                queue,
                app_env,
                use_wrk,
                requests,
                round_seconds,
                sync_requests,
                work_seconds,
                rounds,
                concurrencies,
            )
    finally:
        inbox_server.stop()
    if use_wrk:
        generator = (
            f"wrk ({wrk_version()}), one thread, one kept-alive connection per client, "
            f"{rounds} alternating rounds of {round_seconds:g} s per endpoint; "
            "p50/p95/p99 are the medians of the rounds' percentiles"
        )
    else:
        generator = "Python threads, http.client, one kept-alive connection per client"
    workers = os.cpu_count() or 1
    return {
        "servers": {name: SERVERS[name].format(workers=workers) for name in servers},
        "server": "; ".join(SERVERS[name].format(workers=workers) for name in servers),
        "load_generator": generator,
        "work_seconds": work_seconds,
        "rounds": rounds,
        "results": figures,
    }


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (done.stdout + done.stderr).split(" Copyright")[0].strip()
