"""The sent-mail ledger: an atomic claim right before the send, so no two runs send one mail."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from kit.lab import mail
from kit.tracking import AlreadySent, ClaimBusy, SentLedger, backend_url


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SentLedger]:
    """A ledger on the kit's file:// backend in a folder of this test's own."""
    app = Celery("ledger-test")
    app.backend_cls = backend_url(f"file://{tmp_path}")
    yield SentLedger(app, lease=30)
    app.close()


def test_a_live_claim_keeps_a_second_run_out_until_released(ledger: SentLedger) -> None:
    first = ledger.claim("task-1", lease=30)
    with pytest.raises(ClaimBusy):
        ledger.claim("task-1", lease=30)
    ledger.release(first)  # the send failed: the retry may claim at once
    again = ledger.claim("task-1", lease=30)
    assert again.name != first.name and not again.possible_duplicate


def test_a_claim_whose_lease_ran_out_is_taken_over_as_a_possible_duplicate(
    ledger: SentLedger,
) -> None:
    ledger.claim("task-2", lease=0.05)  # its holder died mid-send
    time.sleep(0.1)
    assert ledger.claim("task-2", lease=30).possible_duplicate


def test_of_many_runs_claiming_at_once_exactly_one_gets_it(ledger: SentLedger) -> None:
    won: list[bool] = []
    start = threading.Barrier(16)

    def run() -> None:
        start.wait()
        try:
            ledger.claim("task-3", lease=30)
            won.append(True)
        except ClaimBusy:
            won.append(False)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 15 + [True]


def test_sending_marks_sent_and_a_later_run_finds_it_sent(ledger: SentLedger) -> None:
    with ledger.sending("task-4"):
        pass  # the send
    assert ledger.was_sent("task-4")
    with pytest.raises(AlreadySent), ledger.sending("task-4"):
        pytest.fail("a mail already sent must not be sent again")


def test_a_failed_send_releases_its_claim_and_marks_nothing(ledger: SentLedger) -> None:
    with pytest.raises(OSError), ledger.sending("task-5"):
        raise OSError("connection refused")
    assert not ledger.was_sent("task-5")
    with ledger.sending("task-5"):  # the retry claims at once
        pass
    assert ledger.was_sent("task-5")


@pytest.mark.integration
def test_two_runs_of_one_task_at_once_send_one_mail(
    producer, start_worker, mailbox, monkeypatch
) -> None:
    """As when a worker that lost its broker keeps running a task RabbitMQ gave to another."""
    monkeypatch.setenv("WORK_SECONDS", "0.5")
    monkeypatch.setenv("MAIL_RETRY_BACKOFF", "0.2")
    start_worker(concurrency=2)
    task_id = "twice-at-once-0001"
    runs = [producer.sendMail.apply_async(args=[mail(1)], task_id=task_id) for _ in range(2)]
    runs[0].get(timeout=30)
    time.sleep(2)  # the other run finishes too: it retries once the claim is marked sent
    assert [m.message_id for m in mailbox.messages()] == [f"<{task_id}@mailasync>"]
