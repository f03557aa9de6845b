"""`python -m bench`: run the benchmarks and write bench/results/.

$ make bench                                 # everything (about 5 minutes)
$ python -m bench --quick                    # smaller figures, about 2 minutes
$ python -m bench --only drain --n 1000      # one part; other parts keep their results
$ python -m bench --smoke --out /tmp/b       # tiny, checks it all works (the test suite)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

PARTS = ("response", "enqueue", "drain", "scale")
RESULTS = Path(__file__).resolve().parent / "results"
TASK_QUEUE = "bench-tasks"

# Sizes per mode: the full run is what bench/results shows.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "response": {
            "requests": 2000,
            "round_seconds": 2.0,
            "sync_requests": 3,
            "work_seconds": 5.0,
            "rounds": 5,
        },
        "enqueue": {"n": 1000, "rounds": 9},
        "drain": {"n": 1000, "work_seconds": 5.0, "io_concurrency": 500},
        "scale": {"n": 800, "work_seconds": 1.0, "concurrency": 50, "repeats": 2},
    },
    "quick": {
        "response": {
            "requests": 500,
            "round_seconds": 1.0,
            "sync_requests": 1,
            "work_seconds": 5.0,
            "rounds": 3,
            "in_process_calls": 1000,
        },
        "enqueue": {"n": 1000, "rounds": 3},
        "drain": {"n": 500, "work_seconds": 2.0, "io_concurrency": 250},
        "scale": {"n": 300, "work_seconds": 1.0, "concurrency": 50, "repeats": 1},
    },
    "smoke": {
        "response": {
            "requests": 40,
            "round_seconds": 1.0,
            "sync_requests": 1,
            "work_seconds": 0.2,
            "rounds": 2,
            "in_process_calls": 50,
        },
        "enqueue": {"n": 100, "rounds": 1},
        "drain": {"n": 10, "work_seconds": 0.5, "io_concurrency": 5, "prefork_n": 2},
        "scale": {"n": 10, "work_seconds": 0.2, "concurrency": 5, "counts": (1, 2)},
    },
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller figures, a few minutes")
    mode.add_argument("--smoke", action="store_true", help="tiny run that checks it all works")
    parser.add_argument("--only", action="append", choices=PARTS, help="run this part (repeatable)")
    parser.add_argument("--n", type=int, help="mails for the drain (I/O pools)")
    parser.add_argument("--concurrency", type=int, help="concurrency of the drain's I/O pools")
    parser.add_argument("--pools", help="drain pools, comma-separated (prefork,threads,gevent)")
    parser.add_argument("--work-seconds", type=float, help="WORK_SECONDS for the drain")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = {part: dict(options) for part, options in SIZES[mode].items()}
    drain = sizes["drain"]
    if args.n:
        drain["n"] = args.n
    if args.concurrency:
        drain["io_concurrency"] = args.concurrency
    if args.work_seconds is not None:
        drain["work_seconds"] = args.work_seconds
    if args.pools:
        drain["pools"] = tuple(args.pools.split(","))
    parts = args.only or list(PARTS)

    from bench.env import machine, open_env

    env = open_env()
    # Set before mailasync is imported: its settings are read once, at import.
    os.environ.update(env.settings_env(TASK_QUEUE, 0))
    from bench import drain as drain_bench
    from bench import enqueue, report, response

    previous = args.out / "results.json"
    results: dict[str, Any] = {}
    if args.only and previous.exists():
        results = json.loads(previous.read_text())
    results.update(
        machine=machine(),
        mode=mode,
        command="python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
    )
    runners = {
        "response": lambda: response.run(env, **sizes["response"]),
        "enqueue": lambda: enqueue.run(env, **sizes["enqueue"]),
        "drain": lambda: drain_bench.run(env, **sizes["drain"]),
        "scale": lambda: drain_bench.scale(env, **sizes["scale"]),
    }
    try:
        for part in parts:
            began = time.monotonic()
            print(f"bench: {part} ...", flush=True)
            results[part] = runners[part]()
            print(f"bench: {part} done in {time.monotonic() - began:.0f} s", flush=True)
            report.write(results, args.out)
    finally:
        from kit.processes import stop_all

        stop_all()
        env.close()
    print(report.markdown(results))
    print(f"bench: results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
