"""Each of the kit's delivery guarantees, with a test that fails when its mechanism is removed.

- task_reject_on_worker_lost: a prefork child killed alone has its mail redelivered;
- worker_prefetch_multiplier=1: a busy worker holds one message, the rest stay in the queue;
- the sent-mail ledger: a real redelivery after the mail went out sends nothing;
- kit.work.backoff and kit.settings.retry_window: doubling, jittered, capped waits;
- retry with work_done=True: a retried send does not redo the work.
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import needs_acknowledgements, needs_rabbitmq, queue_counts, wait_until
from kit.lab import mail
from kit.processes import Background, start_inbox
from kit.settings import Settings, load_settings, retry_window
from kit.work import backoff

WAIT = 60.0  # generous: the machine is shared


# Helpers ---------------------------------------------------------------------------------


def results_folder() -> Path:
    """The file:// result backend of this run (conftest sets it), where the ledger lives too."""
    return Path(os.environ["CELERY_RESULT_BACKEND"].removeprefix("file://"))


def meta(producer: Any, task_id: str) -> dict[str, Any]:
    """The task's stored state and result, read fresh from the result backend."""
    return producer.app.backend.get_task_meta(task_id, cache=False)


def wait_for_meta(
    producer: Any, task_id: str, states: set[str], timeout: float = WAIT
) -> dict[str, Any]:
    """Poll the result backend until the task's state is one of `states`."""
    deadline = time.monotonic() + timeout
    while (found := meta(producer, task_id))["status"] not in states:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{task_id} never reached {states} in {timeout} s: {found}")
        time.sleep(0.02)
    return found


def children(pid: int) -> list[int]:
    """The PIDs of a process's direct children, from /proc (no name matching)."""
    found: list[int] = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in listing.read_text().split()]
    return sorted(set(found))


def message_ids(mailbox: Any) -> collections.Counter[str]:
    return collections.Counter(m.message_id for m in mailbox.messages())


# task_reject_on_worker_lost ------------------------------------------------------------


@pytest.mark.integration
@needs_acknowledgements
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_prefork_child_killed_alone_is_redelivered(
    producer, start_worker, mailbox, monkeypatch
) -> None:
    """SIGKILL to the pool child running a mail (the worker's main process lives on):
    the message is rejected and requeued, and the mail arrives once.

    Without task_reject_on_worker_lost Celery acknowledges the message and marks the
    task FAILURE (WorkerLostError): the mail never arrives.
    """
    monkeypatch.setenv("WORK_SECONDS", "4")
    worker = start_worker(pool="prefork", concurrency=1)
    [child] = wait_until("pool child", lambda: children(worker.pid))
    task_id = producer.sendMail.delay(mail(1)).id
    started = wait_for_meta(producer, task_id, {"STARTED"})
    assert started["result"]["pid"] == child, "the only pool child runs the mail"
    assert mailbox.count() == 0

    os.kill(child, signal.SIGKILL)  # the child alone, mid-work; not the process group
    worker.wait_for_log(r"WorkerLostError|exited with 'signal 9", timeout=WAIT)
    done = wait_for_meta(producer, task_id, {"SUCCESS", "FAILURE"})
    assert done["status"] == "SUCCESS", done
    assert worker.running(), "the worker's main process must survive its child"
    new_children = children(worker.pid)
    assert new_children and child not in new_children, "the pool replaced the killed child"
    [arrived] = mailbox.wait_for(1, timeout=WAIT)
    assert arrived.message_id == f"<{task_id}@mailasync>"
    time.sleep(1.0)  # a second copy would have had time to arrive
    assert message_ids(mailbox) == {f"<{task_id}@mailasync>": 1}


# worker_prefetch_multiplier=1 ------------------------------------------------------------


@pytest.mark.integration
@needs_rabbitmq  # RabbitMQ's own count of unacknowledged messages
def test_busy_worker_holds_one_task(producer, start_worker, queue_name, monkeypatch) -> None:
    """A worker of concurrency 1 busy on one long mail holds only that one unacknowledged;
    the others stay ready in the queue for any free worker.

    With Celery's default prefetch multiplier (4) it would hold four.
    """
    monkeypatch.setenv("WORK_SECONDS", "6")
    start_worker(concurrency=1)
    ids = [producer.sendMail.delay(mail(n)).id for n in range(5)]
    wait_for_meta(producer, ids[0], {"STARTED"})
    # Poll until RabbitMQ has settled what it delivered (all 5 counted), then read twice.
    readings = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(readings) < 3:
        ready, unacked = queue_counts(queue_name)
        if ready + unacked == 5:
            readings.append((ready, unacked))
        time.sleep(0.3)
    assert readings and all(r == (4, 1) for r in readings), readings
    assert meta(producer, ids[0])["status"] == "STARTED", "still busy on the first mail"
    assert all(meta(producer, i)["status"] == "PENDING" for i in ids[1:])


# The sent-mail ledger --------------------------------------------------------------------


@pytest.mark.integration
@needs_acknowledgements
def test_redelivery_after_send_is_skipped(producer, start_worker, mailbox, monkeypatch) -> None:
    """A worker killed after its mail went out and the ledger recorded it, but before the
    message was acknowledged: RabbitMQ redelivers it, and the next worker sends nothing.

    The window is made deterministic, not raced: in a prefork worker the child runs the
    task and the main process acknowledges it once the child reports back. The main
    process is stopped (SIGSTOP) while the child works, so the child sends, records and
    stores its result, and nothing acknowledges the message; then the whole group is
    killed. Without the ledger the redelivered run mails it a second time.
    """
    monkeypatch.setenv("WORK_SECONDS", "2")
    first = start_worker(pool="prefork", concurrency=1)
    task_id = producer.sendMail.delay(mail(1)).id
    wait_for_meta(producer, task_id, {"STARTED"})
    os.kill(first.pid, signal.SIGSTOP)  # the main process only: the child works on
    try:
        # The child stores SUCCESS after the mail went out and the ledger recorded it.
        assert "sent_at" in wait_for_meta(producer, task_id, {"SUCCESS"})["result"]
        mailbox.wait_for(1, timeout=WAIT)
    finally:
        first.signal(signal.SIGKILL)  # the whole group, main process still stopped
    assert first.process is not None and first.process.wait(10) == -signal.SIGKILL

    second = start_worker(concurrency=1)
    second.wait_for_log(rf"\[{task_id}\] succeeded", timeout=WAIT)
    assert f"Task mailasync.sendMail[{task_id}] received" in second.log_text(), "redelivered"
    time.sleep(1.0)  # a second copy would have had time to arrive
    assert message_ids(mailbox) == {f"<{task_id}@mailasync>": 1}
    assert re.search(rf"\[{task_id}\] succeeded.*'duplicate': True", second.log_text())
    assert (results_folder() / f"mailasync-sent-{task_id}").exists()
    # Celery keeps the first SUCCESS stored: the later run's result shows in its log only.
    assert "sent_at" in meta(producer, task_id)["result"]


# Backoff and the retry window ------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    """Wait n is drawn from [ceiling/2, ceiling], ceiling = min(MAX, BACKOFF * 2**n):
    the ceilings double until the cap, and the draws really vary."""
    settings = Settings(MAIL_RETRY_BACKOFF=1.5, MAIL_RETRY_BACKOFF_MAX=40.0)
    expected = [1.5, 3.0, 6.0, 12.0, 24.0, 40.0, 40.0, 40.0, 40.0, 40.0]
    random.seed(12)
    for retries, ceiling in enumerate(expected):
        draws = [backoff(retries, settings) for _ in range(400)]
        assert all(ceiling / 2 <= d <= ceiling for d in draws), (retries, min(draws), max(draws))
        # The draws fill the range: near both ends, centred on three quarters of the ceiling.
        assert min(draws) < ceiling * 0.55 and max(draws) > ceiling * 0.95, retries
        assert abs(statistics.mean(draws) - 0.75 * ceiling) < 0.05 * ceiling, retries
        assert len(set(draws)) > 390, f"retry {retries}: jitter barely varies"
    assert backoff(100, settings) <= 40.0  # no overflow far past the cap


def test_the_default_retry_window_outlasts_an_hour_of_outage() -> None:
    """With no settings at all, a mail survives at least an hour of mail-server outage,
    and the window matches the waits backoff() really draws."""
    defaults = load_settings({}, settings_file=Path(os.devnull))
    shortest, longest = retry_window(defaults)
    assert shortest >= 3600, f"the defaults give up after {shortest:.0f} s"
    assert shortest <= longest <= 2 * shortest
    random.seed(3)
    for _ in range(200):
        total = sum(backoff(n, defaults) for n in range(defaults.MAIL_RETRY_MAX))
        assert shortest <= total <= longest


# Only the send is retried ----------------------------------------------------------------


@pytest.mark.integration
def test_only_the_send_is_retried_not_the_work(
    producer, inbox, start_worker, mailbox, monkeypatch, tmp_path: Path
) -> None:
    """The mail server refuses connections for a while: the task retries several times,
    but its WORK_SECONDS of work (its STARTED progress reports) happens in one run only.

    Every run that does the work writes progress into the STARTED state; a retry sent
    with work_done=True goes straight to the send. The task's states are watched from
    the result backend: progress seen in more than one run means the work was redone.
    """
    monkeypatch.setenv("WORK_SECONDS", "2.5")
    monkeypatch.setenv("MAIL_RETRY_MAX", "40")
    worker = start_worker(concurrency=1)
    inbox.stop()  # connections refused: a transient failure, retried
    task_id = producer.sendMail.delay(mail(1)).id

    def reports_progress(snapshot: dict[str, Any]) -> bool:
        return isinstance(snapshot["result"], dict) and "progress" in snapshot["result"]

    states: list[str] = []  # each state seen, once per change
    work_runs = 0  # stretches of progress reports, each after a state without progress
    restarted: Background | None = None
    previous: dict[str, Any] | None = None
    try:
        deadline = time.monotonic() + WAIT
        while (found := meta(producer, task_id))["status"] not in ("SUCCESS", "FAILURE"):
            if reports_progress(found) and (previous is None or not reports_progress(previous)):
                work_runs += 1
            if not states or states[-1] != found["status"]:
                states.append(found["status"])
            previous = found
            if restarted is None and worker.log_text().count("Retry in") >= 3:
                restarted = start_inbox(mailbox.folder, port=inbox.port)  # the server is back
            assert time.monotonic() < deadline, f"{task_id} did not finish: {states}"
            time.sleep(0.02)
    finally:
        if restarted is not None:
            restarted.stop()

    assert found["status"] == "SUCCESS", found
    retries = worker.log_text().count("Retry in")
    print(f"{retries} retries; the work reported progress in {work_runs} run(s); {states}")
    assert retries >= 3, "the send must have been retried at least three times"
    assert "RETRY" in states and states.index("RETRY") > states.index("STARTED")
    assert work_runs == 1, f"the work ran {work_runs} times for {retries + 1} runs"
    assert message_ids(mailbox) == {f"<{task_id}@mailasync>": 1}
