"""kit.lab: the notebooks' helpers, and a kit that leaves nothing behind."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator

import pytest

from kit import broker, lab
from kit.lab.session import worker_hostname


def test_percentile_interpolates_between_ranks() -> None:
    samples = [0.4, 0.1, 0.3, 0.2]
    assert lab.percentile(samples, 0) == 0.1
    assert lab.percentile(samples, 100) == 0.4
    assert lab.percentile(samples, 50) == pytest.approx(0.25)
    assert lab.percentile([2.0], 90) == 2.0


def test_percentiles_table_is_in_milliseconds() -> None:
    table = lab.percentiles({"slow": [5.0, 5.2], "fast": [0.002]}, qs=(50,))
    assert table.headers == ["series", "n", "p50 (ms)", "max (ms)"]
    assert table.rows == [["slow", "2", "5100.0", "5200.0"], ["fast", "1", "2.0", "2.0"]]


def test_table_escapes_html_and_aligns_text() -> None:
    table = lab.Table(["a", "b"], [["<x>", 1], ["long value", 22]])
    assert "&lt;x&gt;" in table._repr_html_() and "<x>" not in table._repr_html_()
    header, rule, *rows = str(table).splitlines()
    column_b = header.index("b")
    assert rule[column_b - 2 : column_b] == "  " and rule[column_b] == "-"
    assert [row[column_b:].strip() for row in rows] == ["1", "22"]


def test_arrival_order_reads_numbers_from_subjects(tmp_path) -> None:
    from email.message import EmailMessage

    from kit.inbox import Inbox, store

    for number in (2, 0, 1):
        message = EmailMessage()
        message["Subject"] = lab.mail(number)["subject"]
        message.set_content("x")
        store(tmp_path, message.as_bytes())
    assert lab.arrival_order(Inbox(tmp_path).messages()) == [2, 0, 1]


def test_check_setup_reports_a_dead_broker_with_its_fix() -> None:
    environ = {"CELERY_BROKER_URL": "pyamqp://guest:secret@127.0.0.1:1//"}
    checks = {check.name: check for check in lab.check_setup(environ)}
    broker = checks["broker answers"]
    assert not broker.ok and "RabbitMQ" in broker.fix
    assert "secret" not in broker.found
    assert checks["mailer"].ok


@pytest.fixture
def restored_environment() -> Iterator[None]:
    """start_kit changes os.environ and reloads mailasync: undo both afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    import mailasync

    importlib.reload(mailasync)


@pytest.mark.integration
def test_kit_sends_a_mail_and_stop_leaves_nothing(restored_environment: None) -> None:
    kit = lab.start_kit("test", work_seconds=0.1, app=True)
    processes = [kit.inbox_process, *kit.workers, kit.web]
    assert os.environ["CELERY_QUEUE"] == kit.queue == kit.settings.CELERY_QUEUE
    assert kit.ping() == [worker_hostname(kit.worker)]

    kit.mailasync.sendMail.delay(lab.mail(7, "Kit"))
    [received] = lab.wait_for_mail(kit.inbox, 1, timeout=30)
    assert received.subject == "Kit #7"

    kit.stop()
    assert not any(process.running() for process in processes)
    assert not kit.inbox.folder.exists()
    with broker.connect(os.environ["CELERY_BROKER_URL"]) as connection:
        if connection.transport_cls in ("amqp", "pyamqp"):
            with pytest.raises(Exception, match="NOT_FOUND"):
                connection.default_channel.queue_declare(kit.queue, passive=True)
