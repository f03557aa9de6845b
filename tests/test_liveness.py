"""Liveness: a frozen worker's mail goes to another worker within a few heartbeats, every pool.

A frozen process (SIGSTOP, a hung VM) keeps its TCP connection: the kernel still
answers keepalives, so only AMQP heartbeats tell RabbitMQ it is gone.
"""

from __future__ import annotations

import signal
import time

import pytest
from celery import Celery

from conftest import needs_rabbitmq
from kit import liveness
from kit.lab import mail
from kit.settings import Settings, longest_task_run

HEARTBEAT = 4.0
WORK_SECONDS = 1.0


def test_time_limits_come_from_the_settings_and_heartbeats_stay_on() -> None:
    app = Celery("liveness-test")
    settings = Settings(BROKER_HEARTBEAT=7)
    liveness.install(app, settings)
    assert app.conf.broker_heartbeat == 7
    assert app.conf.worker_consumer == "kit.liveness:HeartbeatConsumer"
    assert app.conf.task_time_limit == longest_task_run(settings)
    assert 0 < app.conf.task_soft_time_limit < app.conf.task_time_limit


@needs_rabbitmq
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_a_frozen_workers_mail_is_sent_by_another_within_a_few_heartbeats(
    pool: str, producer, start_worker, mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_HEARTBEAT", str(HEARTBEAT))
    monkeypatch.setenv("WORK_SECONDS", str(WORK_SECONDS))
    # The worker to freeze works long, so that it still holds the mail when frozen.
    frozen = start_worker(pool=pool, env={"WORK_SECONDS": "60"}, name=f"frozen-{pool}")
    result = producer.sendMail.delay(mail(1))
    deadline = time.monotonic() + 60
    while result.state != "STARTED":
        assert time.monotonic() < deadline, f"the first worker never started the mail: {result}"
        time.sleep(0.05)
    start_worker(pool=pool, name=f"rescuer-{pool}")  # idle: the queue is empty
    frozen.signal(signal.SIGSTOP)  # the whole process group, mid-work
    frozen_at = time.monotonic()
    bound = 4 * HEARTBEAT + WORK_SECONDS + 10
    try:
        [received] = mailbox.wait_for(1, timeout=bound + 60)
        took = time.monotonic() - frozen_at
    finally:
        frozen.signal(signal.SIGCONT)
        frozen.stop(timeout=5)
    print(f"\n{pool}: mail of a frozen worker arrived {took:.1f} s after the freeze")
    assert received.message_id == f"<{result.id}@mailasync>"
    assert took < bound, f"{pool}: {took:.1f} s, bound {bound:.0f} s"
    assert [m.message_id for m in mailbox.messages()] == [received.message_id]
