"""1. Response time of POST /noop, POST /publish, POST /send and POST /send-sync on one server.

Every endpoint gets the same request (a mail as JSON), so the differences are
the handlers' work: /noop does nothing (the framework's cost), /publish one
bare AMQP publish (bench/floorapp.py: the floor under /send), /send the kit's
parse, check and `sendMail.delay()`, /send-sync the work and the mail inline.

Two servers, each measured on its own: the one learners run, `python3 app.py`
(werkzeug's threaded development server, which closes the connection after
every response and starts a thread per connection), and gunicorn with gthread
workers (keep-alive), the kind of server the app runs under in production. The
load generator is wrk (Debian's package) when it is installed: a C client that
takes little of the cores it shares with the server and RabbitMQ. Without wrk,
a Python one (threads, http.client). Each client sends requests back to back.
/noop, /publish and /send are measured in alternating rounds so that they see
the same machine load; /send-sync takes WORK_SECONDS per request, so it gets few.

`in_process` takes the same steps apart in one process, without HTTP: the
Flask app called as WSGI, and each piece of /send on its own.
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
    "noop": ("POST", "/noop", MAIL),
    "publish": ("POST", "/publish", MAIL),
    "send": ("POST", "/send", MAIL),
    "send-sync": ("POST", "/send-sync", MAIL),
}
GUNICORN_THREADS = 8
SERVERS = {
    "werkzeug": (
        "werkzeug threaded development server, as python3 app.py runs it "
        "(python -m bench.floorapp; a new connection and thread for every request)"
    ),
    "gunicorn": (
        f"gunicorn {{workers}} gthread workers x {GUNICORN_THREADS} threads "
        f"(gunicorn -k gthread -w {{workers}} --threads {GUNICORN_THREADS} bench.floorapp:app)"
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
    """Send `count` requests on one connection (reopened if the server closes it), timing each."""
    method, path, body = ENDPOINTS[endpoint]
    headers = {"Content-Type": "application/json"}
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
    script = WRK_SCRIPT.format(method=method, body=json.dumps(body))
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
    """Start the Flask app (with bench/floorapp.py's /publish) under `server`.

    Returns a processes.Background with `.port`.
    """
    from kit.processes import Background, free_port

    port = free_port()
    if server == "werkzeug":
        argv = [sys.executable, "-m", "bench.floorapp"]  # app.run(), as python3 app.py
    else:
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class=gthread",
            f"--workers={os.cpu_count() or 1}",
            f"--threads={GUNICORN_THREADS}",
            f"--bind=127.0.0.1:{port}",
            "bench.floorapp:app",
        ]
    web = Background(server, argv, {**env, "FLASK_PORT": str(port)}, port=port)
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
    """Every endpoint on one server, at each concurrency."""
    from bench.floorapp import FLOOR_QUEUE

    web = start_server(server, app_env)
    figures: dict[str, Any] = {}
    try:
        for endpoint in ("noop", "publish", "send"):  # warm up: imports, broker connections
            load(web.port, endpoint, 1, 50)
        for clients in concurrencies:
            per_round = max(1, requests // rounds // clients)
            samples: dict[str, list[Any]] = {"noop": [], "publish": [], "send": []}
            for _ in range(rounds):
                for endpoint in samples:
                    if use_wrk:
                        samples[endpoint].append(wrk(web.port, endpoint, clients, round_seconds))
                    else:
                        samples[endpoint] += load(web.port, endpoint, clients, per_round)
                env.purge(queue)
                env.purge(FLOOR_QUEUE)
            per_client = max(1, sync_requests // clients)
            if use_wrk:
                # wrk runs for a time: long enough for every connection to finish per_client.
                sync = wrk(web.port, "send-sync", clients, work_seconds * (per_client + 0.5) + 1)
            else:
                sync = summary(load(web.port, "send-sync", clients, per_client))
            merged = merge if use_wrk else summary
            stats = {name: merged(values) for name, values in samples.items()}
            stats["send-sync"] = sync
            p50 = {name: s["p50"] for name, s in stats.items()}
            figures[f"{server}-c{clients}"] = {
                "server": server,
                "clients": clients,
                "endpoints": stats,
                "send_over_noop_p50": p50["send"] / p50["noop"],
                "publish_over_noop_p50": p50["publish"] / p50["noop"],
                "send_over_publish_p50": p50["send"] / p50["publish"],
                "sync_over_send_p50": stats["send-sync"]["p50"] / stats["send"]["p50"],
            }
    finally:
        web.stop()
        env.purge(queue)
        env.purge(FLOOR_QUEUE)
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
    in_process_calls: int = 2000,
) -> dict[str, Any]:
    """p50/p95/p99 per server, endpoint and concurrency, and the ratios the targets name."""
    from kit.processes import start_inbox

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
    connections = (
        "one connection per client (kept alive where the server allows it; "
        "werkzeug closes it after every response)"
    )
    if use_wrk:
        generator = (
            f"wrk ({wrk_version()}), one thread, {connections}, {rounds} alternating rounds "
            f"of {round_seconds:g} s per endpoint; p50/p95/p99 are the medians of the rounds' "
            "percentiles"
        )
    else:
        generator = f"Python threads, http.client, {connections}"
    workers = os.cpu_count() or 1
    return {
        "servers": {name: SERVERS[name].format(workers=workers) for name in servers},
        "load_generator": generator,
        "work_seconds": work_seconds,
        "rounds": rounds,
        "results": figures,
        "in_process": in_process(env, in_process_calls, rounds),
    }


def in_process(env: BenchEnv, calls: int, rounds: int) -> dict[str, Any]:
    """Microseconds per call of /noop, /send and each piece of /send, in this process.

    No HTTP and no server: the Flask app is called as a WSGI function, and the
    pieces one at a time, in alternating rounds; each figure is the median of
    the rounds. What /send spends beyond /noop is its parse and check, one
    `sendMail.delay()` and its answer; the bare publish is what a publish needs.
    """
    import io

    from werkzeug.test import create_environ

    from bench.floorapp import FLOOR_QUEUE, app, bare_publish
    from kit.web import mail_from_json
    from mailasync import sendMail, settings

    body = MAIL.encode()
    task_queue = sendMail.app.conf.task_default_queue
    environs = {
        path: create_environ(path, method="POST", data=body, content_type="application/json")
        for path in ("/noop", "/send")
    }

    def call_wsgi(path: str) -> None:
        environ = {**environs[path], "wsgi.input": io.BytesIO(body)}
        status: list[str] = []
        b"".join(app.wsgi_app(environ, lambda code, headers, exc_info=None: status.append(code)))
        if not status[0].startswith("2"):
            raise RuntimeError(f"POST {path} answered {status[0]}")

    steps = {
        "/noop (WSGI)": lambda: call_wsgi("/noop"),
        "/send (WSGI)": lambda: call_wsgi("/send"),
        "parse and check the JSON": lambda: mail_from_json(body, settings),
        "sendMail.delay()": lambda: sendMail.delay(json.loads(MAIL)),
        "bare publish (py-amqp)": bare_publish,
    }
    micros: dict[str, list[float]] = {name: [] for name in steps}
    try:
        for step in steps.values():  # warm up: imports, connections, queue declarations
            for _ in range(50):
                step()
        for _ in range(rounds):
            for name, step in steps.items():
                began = time.perf_counter()
                for _ in range(calls):
                    step()
                micros[name].append((time.perf_counter() - began) / calls * 1e6)
            env.purge(task_queue)
            env.purge(FLOOR_QUEUE)
    finally:
        env.purge(task_queue)
        env.purge(FLOOR_QUEUE)
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "microseconds": {name: statistics.median(values) for name, values in micros.items()},
    }


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (done.stdout + done.stderr).split(" Copyright")[0].strip()
