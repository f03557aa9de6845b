"""3. Drain and 4. scale out: how long real workers take to send N mails into the inbox.

One measurement: start the inbox and the workers (each with its own node
name), wait until every worker is ready, publish N sendMail tasks with
.delay(), and time from the first publish to the moment the inbox stored the
N-th mail. The ideal is ceil(N / total concurrency) x WORK_SECONDS: every
slot busy all the time and nothing else costing anything.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from bench.env import BenchEnv
from bench.stats import spread

MAIL = {"to": "bench@example.com", "subject": "Benchmark", "body": "Hello from the benchmark"}


def drain_once(
    env: BenchEnv,
    pool: str,
    concurrency: int,
    n: int,
    work_seconds: float,
    workers: int = 1,
    timeout_factor: float = 20.0,
) -> dict[str, Any]:
    """Send `n` mails through `workers` workers; wall time and its ratio to the ideal."""
    import mailasync
    from kit.inbox import Inbox
    from kit.processes import start_inbox, start_worker

    queue = mailasync.app.conf.task_default_queue
    run_id = f"{pool}-{concurrency}-{workers}-{time.time_ns()}"
    folder = env.folder / f"inbox-{run_id}"
    env.purge(queue)
    inbox_server = start_inbox(folder)
    started = []
    try:
        settings = env.settings_env(queue, work_seconds, f"results-{run_id}")
        worker_env = {**settings, **inbox_server.env}
        for index in range(workers):
            started.append(
                start_worker(
                    env=worker_env,
                    pool=pool,
                    concurrency=concurrency,
                    name=f"bench{index}-{os.getpid()}",
                )
            )
        ideal = math.ceil(n / (concurrency * workers)) * work_seconds
        began = time.time()
        for _ in range(n):
            mailasync.sendMail.delay(MAIL)
        published = time.time() - began
        mailbox = Inbox(folder)
        mailbox.wait_for(n, timeout=ideal * timeout_factor + 60, poll=0.1)
        last = max(int(path.name.split("-", 1)[0]) for path in mailbox.paths()) / 1e9
        wall = last - began
    finally:
        for worker in started:
            worker.stop()
        inbox_server.stop()
        env.purge(queue)
    return {
        "pool": pool,
        "concurrency": concurrency,
        "workers": workers,
        "n": n,
        "work_seconds": work_seconds,
        "publish_seconds": published,
        "wall_seconds": wall,
        "ideal_seconds": ideal,
        "over_ideal": wall / ideal if ideal else float("nan"),
        "mails_per_second": n / wall,
    }


def run(
    env: BenchEnv,
    n: int = 1000,
    work_seconds: float = 5.0,
    io_concurrency: int = 500,
    prefork_n: int | None = None,
    pools: tuple[str, ...] = ("prefork", "threads", "gevent"),
) -> dict[str, Any]:
    """Drain N mails with each pool; prefork gets fewer mails (it runs only nproc at once)."""
    cores = os.cpu_count() or 1
    runs = []
    for pool in pools:
        if pool == "prefork":
            runs.append(drain_once(env, pool, cores, prefork_n or 4 * cores, work_seconds))
        else:
            runs.append(drain_once(env, pool, io_concurrency, n, work_seconds))
    return {"runs": runs}


def scale(
    env: BenchEnv,
    n: int = 800,
    work_seconds: float = 1.0,
    pool: str = "gevent",
    concurrency: int = 50,
    counts: tuple[int, ...] = (1, 2, 4),
    repeats: int = 1,
) -> dict[str, Any]:
    """Throughput of 1, 2 and 4 worker processes, each against one worker's."""
    rates: dict[int, list[float]] = {count: [] for count in counts}
    runs = []
    for _ in range(repeats):
        for count in counts:
            result = drain_once(env, pool, concurrency, n, work_seconds, workers=count)
            runs.append(result)
            rates[count].append(result["mails_per_second"])
    one = spread(rates[counts[0]])["median"]
    return {
        "pool": pool,
        "concurrency_per_worker": concurrency,
        "n": n,
        "work_seconds": work_seconds,
        "repeats": repeats,
        "runs": runs,
        "throughput": {str(count): spread(values) for count, values in rates.items()},
        "speedup": {str(count): spread(values)["median"] / one for count, values in rates.items()},
    }
