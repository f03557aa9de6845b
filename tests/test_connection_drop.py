"""The lease drill: RabbitMQ drops the workers' connections mid-batch, and every mail goes once.

When a worker's connection closes, RabbitMQ requeues every message it held
unacknowledged and hands them to whichever consumer comes next, the same
workers once they reconnect. A prefork worker cancels the runs it can (Celery's
worker_cancel_long_running_tasks_on_connection_loss); a threads worker cannot
stop a thread, so its old runs carry on while the redelivered copies start: two
runs of one task at once. The ledger's claim with a lease lets only one of them
send; the other finds the mail sent (a duplicate) or the claim busy (it retries).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import time
from typing import Any

import pytest

import conftest
from conftest import needs_rabbitmq, vhost, wait_until
from kit import broker
from kit.lab import mail

pytestmark = pytest.mark.integration

MAILS = 16
WORK_SECONDS = 3.0
WAIT = 180.0  # generous: two workers of four on two shared cores


def states(producer: Any, ids: list[str]) -> collections.Counter[str]:
    """How many of the tasks are in each state, read fresh from the result backend."""
    return collections.Counter(
        producer.app.backend.get_task_meta(task_id, cache=False)["status"] for task_id in ids
    )


def paths_taken(log: str) -> dict[str, int]:
    """What a worker's log says its runs did: received, sent, duplicate, claim busy..."""
    return {
        "received": len(re.findall(r"Task mailasync\.sendMail\[\S+\] received", log)),
        "sent": len(re.findall(r"succeeded in \S+: \{'message_id': \S+, 'sent_at'", log)),
        "duplicate": len(re.findall(r"succeeded in \S+: .*'duplicate': True", log)),
        "claim busy": len(re.findall(r"Retry in \S+: ClaimBusy", log)),
        "lease taken over": log.count("taking over a claim whose lease ran out"),
        "cut off by the drop": log.count("cannot be acknowledged after a connection loss"),
        "ack failed": log.count("Couldn't ack"),
        "connections lost": log.count("Connection to broker lost"),
    }


@pytest.mark.slow
@needs_rabbitmq
def test_every_mail_once_when_rabbitmq_drops_the_workers_connections(
    producer, start_worker, mailbox, monkeypatch
) -> None:
    """A threads worker and a prefork worker, four slots each, busy on a batch of 16 when
    RabbitMQ closes their connections: all 16 mails arrive, each exactly once.

    Without the claim's lease, a threads worker's old run and the redelivered copy both
    send (the copy starts before the old run has recorded its send).
    """
    if not conftest._created_vhost:  # never drop the connections of a vhost others use
        pytest.skip("closes every connection of the vhost: only on this run's own vhost")
    monkeypatch.setenv("WORK_SECONDS", str(WORK_SECONDS))
    # A run killed between its claim and its record leaves the claim held for its lease
    # (6 * MAIL_TIMEOUT = 60 s): retries must outlast it. 100 waits of 0.1-1 s do.
    monkeypatch.setenv("MAIL_RETRY_MAX", "100")
    workers = {
        "threads": start_worker(pool="threads", concurrency=4, name=f"drill-threads-{os.getpid()}"),
        "prefork": start_worker(pool="prefork", concurrency=4, name=f"drill-prefork-{os.getpid()}"),
    }
    ids = [producer.sendMail.delay(mail(n)).id for n in range(MAILS)]
    wait_until("8 runs at work", lambda: states(producer, ids)["STARTED"] >= 8, timeout=60)
    for name, worker in workers.items():
        assert paths_taken(worker.log_text())["received"] >= 3, f"{name} is not busy"
    before_the_drop = mailbox.count()
    assert before_the_drop < 8, "the drop must come while most runs are mid-work"

    broker.rabbitmqctl("close_all_connections", "-p", vhost(), "drill")
    for worker in workers.values():
        worker.wait_for_log(r"Connection to broker lost", timeout=60)

    try:
        wait_until(
            f"all {MAILS} tasks SUCCESS",
            lambda: states(producer, ids)["SUCCESS"] == MAILS,
            timeout=WAIT,
        )
    except TimeoutError:
        for worker in workers.values():  # Celery logs every thread's stack on SIGUSR1
            os.kill(worker.pid, signal.SIGUSR1)
        time.sleep(2)
        logs = "\n".join(f"== {n}\n{w.log_text()[-20000:]}" for n, w in workers.items())
        raise TimeoutError(f"{states(producer, ids)}\n{logs}") from None
    for name, worker in workers.items():
        assert worker.running(), f"the {name} worker died"
    time.sleep(2.0)  # late copies, if any, would show up now
    received = collections.Counter(m.message_id for m in mailbox.messages())
    figures = {name: paths_taken(worker.log_text()) for name, worker in workers.items()}
    print(f"\ndrop drill: {before_the_drop} of {MAILS} mails out at the drop; {figures}")
    assert received == {f"<{task_id}@mailasync>": 1 for task_id in ids}
    total = {path: sum(f[path] for f in figures.values()) for path in figures["threads"]}
    assert total["sent"] == MAILS, total
    assert figures["threads"]["cut off by the drop"] >= 1, "the threads worker held nothing"
    # One loss each, the drop: a threads worker used to stall after its reconnect until
    # heartbeats cut it off again (worker_enable_prefetch_count_reduction, kit/guarantees.py).
    assert figures["threads"]["connections lost"] == 1, figures
    # The threads worker's old runs went on while their copies ran: the ledger stopped those.
    assert total["duplicate"] + total["claim busy"] >= 1, total
