"""Never silently lost: waits held by RabbitMQ, failures kept and replayed, refusals told.

- a retry waits in RabbitMQ's delay queues, not unacknowledged in the worker;
- a mail that fails for good is kept in the dead-letter queue, shown, and replayed;
- a retry whose publish fails is dead-lettered, not dropped;
- a queue left with other arguments stops the worker and the app with the fix;
- with publisher confirms, a mail RabbitMQ refuses is a 503, never a 202.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from kombu import Connection, Queue

import rabbitnode
from conftest import needs_rabbitmq, queue_counts, vhost, wait_for_state, wait_until
from kit import broker, later, processes
from kit.lab import mail
from kit.processes import start_app, start_inbox

pytestmark = [pytest.mark.integration, needs_rabbitmq]


def waiting_in_delay_queues(connection: Connection) -> int:
    """Messages held in kit/later.py's delay queues now (levels never declared hold none)."""
    total = 0
    for level in range(later.TOP_LEVEL + 1):
        with connection.channel() as channel:
            try:
                total += channel.queue_declare(
                    queue=later.level_name(level, later.PREFIX), passive=True
                ).message_count
            except connection.channel_errors:
                pass
    return total


def dead_letters_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "kit.dead_letters", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_a_retry_waits_in_rabbitmq_not_in_the_worker(
    inbox, mailbox, web, start_worker, queue_name, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAIL_RETRY_BACKOFF", "6")  # first wait 3 to 6 s: the delay queues'
    monkeypatch.setenv("MAIL_RETRY_BACKOFF_MAX", "6")
    start_worker()
    inbox.stop()
    task_id = requests.post(f"{web.url}/send", json=mail(1), timeout=10).json()["task_id"]
    wait_for_state(web.url, task_id, {"RETRY"}, timeout=30)

    with Connection(os.environ["CELERY_BROKER_URL"]) as connection:
        assert waiting_in_delay_queues(connection) == 1
    assert queue_counts(queue_name) == (0, 0)  # the worker holds nothing

    restarted = start_inbox(tmp_path / "inbox", port=inbox.port)
    try:
        assert wait_for_state(web.url, task_id, timeout=60)[-1]["state"] == "SUCCESS"
        assert [m.message_id for m in mailbox.messages()] == [f"<{task_id}@mailasync>"]
    finally:
        restarted.stop()


def test_a_mail_that_fails_for_good_is_kept_then_replayed_once(
    web, start_worker, queue_name, monkeypatch, tmp_path: Path
) -> None:
    from kit.inbox import Inbox

    # The server wants one password and the worker has another: 535, a permanent failure.
    server = start_inbox(tmp_path / "strict", password="server-secret")
    monkeypatch.setenv("MAIL_PORT", str(server.port))
    monkeypatch.setenv("MAIL_PASSWORD", "worker-secret")
    try:
        start_worker()
        task_id = requests.post(f"{web.url}/send", json=mail(1), timeout=10).json()["task_id"]
        failed = wait_for_state(web.url, task_id, timeout=60)[-1]
        assert failed["state"] == "FAILURE"
        assert failed["dead_letter_queue"] == f"{queue_name}.dead"
        assert task_id in failed["replay"]
        assert f"kept in {queue_name}.dead" in failed["error"]  # as Flower and the log show it
        wait_until(
            "1 dead letter(s)", lambda: queue_counts(f"{queue_name}.dead")[0] == 1, timeout=10
        )

        listing = dead_letters_cli()
        assert task_id in listing and "rejected" in listing and "535" in listing
        assert queue_counts(f"{queue_name}.dead")[0] == 1  # listing takes nothing away

        # The fix, on the server's side this time: it now takes the worker's password.
        server.stop()
        server = start_inbox(tmp_path / "strict", port=server.port, password="worker-secret")
        assert task_id in dead_letters_cli("--replay")
        assert wait_for_state(web.url, task_id, timeout=60)[-1]["state"] == "SUCCESS"
        messages = Inbox(tmp_path / "strict").messages()
        assert [m.message_id for m in messages] == [f"<{task_id}@mailasync>"]
        assert queue_counts(f"{queue_name}.dead")[0] == 0
    finally:
        server.stop()


def test_a_retry_that_cannot_be_published_is_dead_lettered(
    inbox, web, start_worker, queue_name, monkeypatch
) -> None:
    monkeypatch.setenv("MAIL_RETRY_BACKOFF", "4")  # waits of 2 to 4 s: the delay queues'
    monkeypatch.setenv("MAIL_RETRY_BACKOFF_MAX", "4")
    start_worker()
    with Connection(os.environ["CELERY_BROKER_URL"]) as connection:
        connection.default_channel.exchange_delete(later.level_name(later.TOP_LEVEL, later.PREFIX))
    task_id = requests.post(
        f"{web.url}/send", json=mail(1, to="tempfail@example.com"), timeout=10
    ).json()["task_id"]
    failed = wait_for_state(web.url, task_id, timeout=60)[-1]
    assert failed["state"] == "FAILURE"
    assert "NOT_FOUND" in failed["error"]  # the missing exchange, not the 451
    wait_until("1 dead letter(s)", lambda: queue_counts(f"{queue_name}.dead")[0] == 1, timeout=10)


def test_a_queue_left_with_other_arguments_stops_the_worker_and_the_app_with_the_fix(
    inbox, web, queue_name
) -> None:
    with Connection(os.environ["CELERY_BROKER_URL"]) as connection:
        Queue(queue_name).bind(connection.default_channel).declare()  # an older kit's queue

    answer = requests.post(f"{web.url}/send", json=mail(1), timeout=10)
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert f"CELERY_QUEUE={queue_name}-2" in error and f"delete_queue {queue_name}" in error

    with pytest.raises(RuntimeError, match="exited early") as stopped:
        processes.start_worker(timeout=60).stop()
    log = str(stopped.value)
    assert f"CELERY_QUEUE={queue_name}-2" in log and f"delete_queue {queue_name}" in log


def test_a_mail_rabbitmq_refuses_is_a_503_not_a_202(inbox, web, start_worker, queue_name) -> None:
    policy = f"full-{queue_name}"
    broker.rabbitmqctl(
        "set_policy",
        "-p",
        vhost(),
        "--apply-to",
        "queues",
        policy,
        f"^{queue_name}$",
        json.dumps({"max-length": 1, "overflow": "reject-publish"}),
    )
    try:
        time.sleep(1)  # policies apply asynchronously
        first = requests.post(f"{web.url}/send", json=mail(1), timeout=10)
        second = requests.post(f"{web.url}/send", json=mail(2), timeout=10)
        assert first.status_code == 202
        assert second.status_code == 503
        assert "refused the mail" in second.json()["error"]
        assert queue_counts(queue_name)[0] == 1
    finally:
        broker.rabbitmqctl("clear_policy", "-p", vhost(), policy)


@pytest.mark.slow
@pytest.mark.skipif(rabbitnode.available() is not None, reason="no private RabbitMQ node here")
def test_a_blocked_broker_gets_503_from_the_app_while_the_workers_retry_waits_it_out(
    inbox, mailbox, queue_name, monkeypatch, tmp_path: Path
) -> None:
    """RabbitMQ blocks publishers on a memory alarm: a request gives up after about
    PUBLISH_TIMEOUT, the worker's own retry publish waits (and is not dead-lettered)."""
    node = rabbitnode.RabbitNode(tmp_path / "rabbit").start()
    started = []
    try:
        monkeypatch.setenv("CELERY_BROKER_URL", node.url)
        monkeypatch.setenv("WORK_SECONDS", "4")
        web = start_app()
        worker = processes.start_worker()
        started += [web, worker]
        inbox.stop()  # the first send fails, and the worker publishes its retry...
        task_id = requests.post(f"{web.url}/send", json=mail(1), timeout=10).json()["task_id"]
        node.ctl("set_vm_memory_high_watermark", "0")  # ...into a broker that blocks it
        began = time.monotonic()
        refused = requests.post(f"{web.url}/send", json=mail(2), timeout=30)
        waited = time.monotonic() - began
        assert refused.status_code == 503
        assert waited < 3 * float(os.environ.get("PUBLISH_TIMEOUT", "1")) + 1
        unknown = refused.json()
        assert unknown["outcome"] == "unknown" and "memory or disk alarm" in unknown["error"]

        time.sleep(8)  # the work is over and the retry publish has waited a few seconds
        node.ctl("set_vm_memory_high_watermark", "0.4")
        started.append(start_inbox(tmp_path / "inbox", port=inbox.port))
        assert wait_for_state(web.url, task_id, timeout=60)[-1]["state"] == "SUCCESS"
        assert "Retry in" in worker.log_text()  # its retry waited the alarm out
        # The unconfirmed mail was in the socket when RabbitMQ blocked it: queued once the
        # alarm cleared, under the task id the 503 gave, and sent once.
        later = unknown["task_id"]
        assert wait_for_state(web.url, later, timeout=60)[-1]["state"] == "SUCCESS"
        assert sorted(m.message_id for m in mailbox.messages()) == sorted(
            [f"<{task_id}@mailasync>", f"<{later}@mailasync>"]
        )
    finally:
        for process in reversed(started):
            process.stop()
        node.stop()
