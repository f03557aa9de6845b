"""1. Response time of POST /send, POST /send-sync and GET /noop on the same app server.

The server is the one learners run, `python3 app.py`: werkzeug's threaded
development server (HTTP/1.1, one thread per connection). The load generator
is Python: each client keeps one connection open and sends requests back to
back. /noop and /send are measured in alternating rounds so that both see the
same machine load; /send-sync takes WORK_SECONDS per request, so it gets few.
"""

from __future__ import annotations

import http.client
import json
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
    """Latencies (seconds) of `clients` concurrent clients sending `per_client` requests each."""
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


def run(
    env: BenchEnv,
    requests: int = 2000,
    sync_requests: int = 3,
    work_seconds: float = 5.0,
    rounds: int = 5,
    concurrencies: tuple[int, ...] = (1, 8),
) -> dict[str, Any]:
    """p50/p95/p99 per endpoint and concurrency, and the ratios the targets name."""
    from processes import start_app, start_inbox

    queue = "bench-response"
    inbox_server = start_inbox(env.folder / "inbox-response")  # where /send-sync mails go
    web = start_app({**env.settings_env(queue, work_seconds), **inbox_server.env})
    try:
        load(web.port, "noop", 1, 50)  # warm up: imports, first connection to the broker
        load(web.port, "send", 1, 50)
        figures: dict[str, Any] = {}
        for clients in concurrencies:
            per_round = max(1, requests // rounds // clients)
            samples: dict[str, list[float]] = {"noop": [], "send": []}
            for _ in range(rounds):
                for endpoint in samples:
                    samples[endpoint] += load(web.port, endpoint, clients, per_round)
                env.purge(queue)
            sync = load(web.port, "send-sync", clients, max(1, sync_requests // clients))
            stats = {name: summary(values) for name, values in samples.items()}
            stats["send-sync"] = summary(sync)
            figures[f"c{clients}"] = {
                "clients": clients,
                "endpoints": stats,
                "send_over_noop_p50": stats["send"]["p50"] / stats["noop"]["p50"],
                "sync_over_send_p50": stats["send-sync"]["p50"] / stats["send"]["p50"],
            }
    finally:
        web.stop()
        inbox_server.stop()
        env.purge(queue)
    return {
        "server": "werkzeug threaded development server (python3 app.py), HTTP/1.1 keep-alive",
        "load_generator": "Python threads, http.client, one kept-alive connection per client",
        "work_seconds": work_seconds,
        "rounds": rounds,
        "results": figures,
    }
