"""Flower, as `make flower` starts it: a live view of the worker, on 127.0.0.1 only.

The test runs the same command line on a free port against this run's broker,
with a worker and one mail sent, and reads what Flower shows.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from conftest import needs_rabbitmq
from kit.processes import Background, free_port, listening_addresses

pytestmark = [pytest.mark.integration, needs_rabbitmq]


def flower_argv(port: int) -> list[str]:
    """The Makefile's `flower` recipe, on another port."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "mailasync",
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
    ]


def outside_address() -> str | None:
    """This machine's address on its main interface, if it has one besides loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.fixture
def flower(inbox) -> Iterator[Background]:
    port = free_port()
    server = Background("flower", flower_argv(port), port=port)
    server.start().wait_for_port(timeout=60)
    yield server
    server.stop()


def test_flower_listens_on_loopback_only(flower) -> None:
    assert listening_addresses(flower.port) == {"127.0.0.1"}
    address = outside_address()
    if address is not None:
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex((address, flower.port)) != 0, f"Flower answers on {address}"
    # Its HTTP API stays closed without credentials (Flower's default; make flower keeps it).
    assert requests.get(f"{flower.url}/api/workers", timeout=10).status_code == 401


def test_flower_shows_the_worker_and_the_mail_it_ran(
    flower, start_worker, producer, mailbox
) -> None:
    worker = start_worker(name=f"flowerwatch-{time.time_ns()}")
    worker_name = worker.name
    result = producer.sendMail.delay(
        {"to": "watched@example.com", "subject": "Seen in Flower", "body": "Hello"}
    )
    mailbox.wait_for(1, timeout=60)

    deadline = time.monotonic() + 60
    workers_page = task_page = ""
    while time.monotonic() < deadline:
        workers_page = requests.get(f"{flower.url}/workers", timeout=10).text
        task = requests.get(f"{flower.url}/task/{result.id}", timeout=10)
        task_page = task.text if task.ok else ""
        if worker_name in workers_page and "SUCCESS" in task_page:
            break
        time.sleep(0.5)
    assert worker_name in workers_page, flower.log_text()[-2000:]
    assert "SUCCESS" in task_page and "mailasync.sendMail" in task_page, flower.log_text()[-2000:]
    assert worker_name in task_page  # which worker ran it


def test_flower_shows_where_a_failed_mail_is_kept(
    flower, start_worker, producer, queue_name
) -> None:
    start_worker()
    result = producer.sendMail.delay(
        {"to": "reject@example.com", "subject": "Refused for good", "body": "Hello"}
    )
    deadline = time.monotonic() + 60
    task_page = ""
    while time.monotonic() < deadline:
        task = requests.get(f"{flower.url}/task/{result.id}", timeout=10)
        task_page = task.text if task.ok else ""
        if "FAILURE" in task_page:
            break
        time.sleep(0.5)
    assert "FAILURE" in task_page, flower.log_text()[-2000:]
    assert f"kept in {queue_name}.dead" in task_page and "make replay" in task_page
