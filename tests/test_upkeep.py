"""Upkeep: old results, ledger entries and temporary files expire without celery beat."""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from kit import upkeep
from kit.processes import free_port
from kit.settings import Settings
from kit.tracking import ClaimBusy, SentLedger

HOUR = 3600.0
DAY = 24 * HOUR


def write(folder: Path, name: str, age: float, content: bytes = b"{}") -> Path:
    """A file in `folder` last written `age` seconds ago."""
    path = folder / name
    path.write_bytes(content)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_old_entries_go_and_fresh_ones_and_live_claims_stay(tmp_path: Path) -> None:
    now = time.time()
    lease = f"{now + 600:.3f}".encode()
    stay = {
        write(tmp_path, "celery-task-meta-fresh", 10 * 60),
        write(tmp_path, "mailasync-sent-fresh", 2 * HOUR),  # older than a result may be
        write(tmp_path, "mailasync-claim-fresh-0", 10 * 60, b"released"),
        # Another mail: an old released generation, then one with a live lease.
        write(tmp_path, "mailasync-claim-busy-0", 3 * DAY, b"released"),
        write(tmp_path, "mailasync-claim-busy-1", 3 * DAY, lease),
        write(tmp_path, ".tmp-fresh", 10 * 60),
        write(tmp_path, "notes.txt", 30 * DAY),  # not the kit's
    }
    go = {
        write(tmp_path, "celery-task-meta-old", 2 * HOUR),
        write(tmp_path, "celery-taskset-meta-old", 2 * HOUR),
        write(tmp_path, "mailasync-sent-old", 3 * DAY),
        write(tmp_path, "mailasync-claim-done-0", 3 * DAY, b"released"),
        write(tmp_path, "mailasync-claim-done-1", 3 * DAY, f"{now - 2 * DAY:.3f}".encode()),
        write(tmp_path, ".tmp-abandoned", 2 * HOUR),
    }
    removed = upkeep.expire(tmp_path, result_expires=HOUR, ledger_expires=DAY)
    assert removed == {"results": 2, "sent": 1, "claims": 2, "tmp": 1}
    assert set(tmp_path.iterdir()) == stay
    assert not any(path.exists() for path in go)
    assert upkeep.expire(tmp_path, HOUR, DAY) == {"results": 0, "sent": 0, "claims": 0, "tmp": 0}


def test_a_swept_ledger_still_keeps_a_second_run_out(tmp_path: Path) -> None:
    """A sweep between a claim and its mark leaves the live claim where the next run finds it."""
    app = Celery("upkeep-test")
    app.backend_cls = f"kit.tracking:AtomicFilesystemBackend+file://{tmp_path}"
    ledger = SentLedger(app, lease=600, expires=DAY)
    ledger.claim("task-1", lease=600)
    for path in tmp_path.iterdir():  # as if written long ago, by a clock that jumped
        os.utime(path, (time.time() - 3 * DAY,) * 2)
    assert upkeep.expire(tmp_path, HOUR, DAY)["claims"] == 0
    with pytest.raises(ClaimBusy):
        ledger.claim("task-1", lease=600)
    app.close()


class FakeTimer:
    def __init__(self) -> None:
        self.repeated: list[tuple[float, Any]] = []

    def call_repeatedly(self, seconds: float, function: Any) -> Any:
        self.repeated.append((seconds, function))
        return self


def test_the_worker_step_sweeps_at_start_and_then_every_hour(tmp_path: Path) -> None:
    app = Celery("upkeep-step-test")
    settings = Settings(CELERY_RESULT_BACKEND=f"file://{tmp_path}", RESULT_EXPIRES=60)
    upkeep.install(app, settings)
    [step_class] = [s for s in app.steps["worker"] if issubclass(s, upkeep.Upkeep)]
    write(tmp_path, "celery-task-meta-old", 2 * 60)
    timer = FakeTimer()
    worker = type("Worker", (), {"timer": timer})()
    step = step_class(worker)
    step.start(worker)
    assert list(tmp_path.iterdir()) == []  # swept at start
    assert [seconds for seconds, _ in timer.repeated] == [upkeep.SWEEP_EVERY]
    write(tmp_path, "celery-task-meta-later", 2 * 60)
    timer.repeated[0][1]()  # an hour later
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_a_worker_removes_an_old_result_at_start_up_and_the_web_app_does_not(
    start_worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setenv("CELERY_RESULT_BACKEND", f"file://{results}")
    monkeypatch.setenv("RESULT_EXPIRES", "60")
    old = write(results, "celery-task-meta-old", 2 * HOUR)
    fresh = write(results, "celery-task-meta-fresh", 1)
    import mailasync  # what the web app does: import the task and its app

    module = importlib.reload(mailasync)
    module.app.close()
    assert old.exists()
    worker = start_worker()
    assert not old.exists() and fresh.exists()
    assert "upkeep: removed 1 results" in worker.log_text()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A private redis-server on a free port, stopped by its own PID afterwards."""
    pytest.importorskip("redis", reason="the redis package is not installed")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert server.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not open its port"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


def test_on_redis_ledger_keys_carry_their_own_expiry(redis_url: str) -> None:
    app = Celery("upkeep-redis-test")
    app.backend_cls = redis_url  # as kit.guarantees does: the environment's file:// must not win
    ledger = SentLedger(app, lease=600, expires=DAY)
    redis = ledger.redis
    assert redis is not None
    claim = ledger.claim("task-1", lease=600)
    with pytest.raises(ClaimBusy):  # SET NX: a live claim keeps the second run out
        ledger.claim("task-1", lease=600)
    ledger.release(claim)
    ledger.record("task-1")
    for name in (claim.name, b"mailasync-sent-task-1"):
        assert 0 < redis.pttl(name) <= DAY * 1000, name
    short = SentLedger(app, lease=600, expires=0.5)
    short.record("task-2")
    assert short.was_sent("task-2")
    deadline = time.monotonic() + 20
    while short.was_sent("task-2"):  # Redis removes it by itself
        assert time.monotonic() < deadline, "the sent mark never expired"
        time.sleep(0.1)
    app.close()
