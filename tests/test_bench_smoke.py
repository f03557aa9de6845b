"""A tiny run of every benchmark: it starts, measures, and writes its results.

Structure and sanity only; speed belongs in `make bench`, not in tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_rabbitmq

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
@needs_rabbitmq
def test_bench_smoke_run_writes_every_figure(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["nproc"] >= 1

    for fig in results["response"]["results"].values():
        stats = fig["endpoints"]
        assert set(stats) == {"noop", "publish", "send", "send-sync"}
        for s in stats.values():
            assert 0 < s["p50"] <= s["p95"] <= s["p99"]
        # /send-sync does WORK_SECONDS (0.2 s in the smoke run) inside the request.
        assert stats["send-sync"]["p50"] >= 0.2
        assert fig["sync_over_send_p50"] > 1
        assert fig["publish_over_noop_p50"] > 0

    # In one process, /send does /noop's work and more: at least the parse and the delay().
    steps = results["response"]["in_process"]["microseconds"]
    assert steps["/send (WSGI)"] > steps["/noop (WSGI)"]
    assert steps["/send (WSGI)"] > steps["sendMail.delay()"] > 0
    assert steps["bare publish (py-amqp)"] > 0

    enqueue = results["enqueue"]
    assert set(enqueue["per_second"]) == {"kit", "sent-event", "unconfirmed", "trimmed"}
    assert enqueue["kit_sends_sent_event"] is False
    assert all(s["median"] > 0 for s in enqueue["per_second"].values())

    runs = results["drain"]["runs"]
    assert [run["pool"] for run in runs] == ["prefork", "threads", "gevent"]
    for run in runs:
        # No drain can beat the ideal: every mail needs its WORK_SECONDS.
        assert run["wall_seconds"] >= run["ideal_seconds"] * 0.95

    scale = results["scale"]
    assert set(scale["speedup"]) == {"1", "2"}
    assert scale["speedup"]["1"] == 1.0

    page = (tmp_path / "README.md").read_text()
    for heading in ("Targets", "Response time", "Enqueue", "Drain", "Scale out"):
        assert heading in page
    for chart in ("response.png", "enqueue.png", "drain.png", "scale.png"):
        assert (tmp_path / chart).stat().st_size > 1000


def response_figure(server: str, clients: int, send: float, sync: float) -> dict:
    return {
        "server": server,
        "clients": clients,
        "send_over_noop_p50": send,
        "publish_over_noop_p50": 1.2,
        "sync_over_send_p50": sync,
    }


def test_a_target_is_met_with_a_server_only_at_every_concurrency() -> None:
    from bench.report import targets, targets_markdown

    figures = [
        response_figure("werkzeug", 1, send=1.25, sync=5000),
        response_figure("werkzeug", 8, send=1.40, sync=600),
        response_figure("gunicorn", 1, send=1.20, sync=9000),
        response_figure("gunicorn", 8, send=1.29, sync=1800),
    ]
    results = {
        "response": {"results": {str(i): f for i, f in enumerate(figures)}},
        "enqueue": {"per_second": {"kit": {"median": 2999.0}}},
        "drain": {
            "runs": [
                {"pool": "prefork", "concurrency": 2, "over_ideal": 1.0},
                {"pool": "threads", "concurrency": 500, "over_ideal": 1.4},
                {"pool": "gevent", "concurrency": 500, "over_ideal": 1.3},
            ]
        },
    }
    verdicts = {figure: target for figure, _, target in targets(results)}
    assert verdicts["/send p50 ÷ /noop p50"] == "≤ 1.3: met with gunicorn"
    assert verdicts["/send-sync p50 ÷ /send p50"] == "≥ 1000: met with gunicorn"
    assert verdicts["sendMail.delay() per second"] == "≥ 3000: **not met**"
    assert verdicts["drain ÷ ideal, I/O pools"] == "≤ 1.3 for the best: met"
    assert "werkzeug, 8 client(s): 1.40" in targets_markdown(results)

    figures[2]["send_over_noop_p50"] = 1.31
    verdicts = {figure: target for figure, _, target in targets(results)}
    assert verdicts["/send p50 ÷ /noop p50"] == "≤ 1.3: **not met**"
