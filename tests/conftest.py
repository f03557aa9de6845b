"""Shared fixtures: an isolated broker vhost, the inbox, workers and the web app.

Settings reach every process through the environment, so this file sets the
test settings before anything imports mailasync: a RabbitMQ vhost of its own
(created with rabbitmqctl, deleted at the end), a short WORK_SECONDS, and no
default_settings.py (a developer's Gmail settings must never be used here).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from kit import broker
from kit.settings import Settings

TEST_WORK_SECONDS = "1"
RUN_ID = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
VHOST = f"mailasync-test-{RUN_ID}"
_created_vhost = False


def rabbitmqctl(*args: str) -> bool:
    """True if rabbitmqctl is installed and did what it was asked."""
    try:
        broker.rabbitmqctl(*args)
    except (OSError, RuntimeError):
        return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    """Point every process of this run at its own vhost, queue and result folder."""
    global _created_vhost
    os.environ["MAILASYNC_SETTINGS_FILE"] = os.devnull
    os.environ["WORK_SECONDS"] = TEST_WORK_SECONDS
    os.environ["CELERY_QUEUE"] = f"mailasync-test-{RUN_ID}"
    os.environ["MAIL_RETRY_MAX"] = "8"
    os.environ["MAIL_RETRY_BACKOFF"] = "0.2"
    os.environ["MAIL_RETRY_BACKOFF_MAX"] = "1"
    results = Path(config.rootpath) / ".mailasync" / f"test-results-{RUN_ID}"
    os.environ["CELERY_RESULT_BACKEND"] = f"file://{results}"
    url = os.environ.get("CELERY_BROKER_URL", "") or Settings.CELERY_BROKER_URL
    # Only the local default RabbitMQ (what `make test` finds) is given a vhost of
    # this run's own; a broker someone configured on purpose is used as it is.
    if url == Settings.CELERY_BROKER_URL and rabbitmqctl("add_vhost", VHOST):
        rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        _created_vhost = True
        os.environ["CELERY_BROKER_URL"] = f"pyamqp://guest:guest@127.0.0.1:5672/{VHOST}"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _created_vhost:
        rabbitmqctl("delete_vhost", VHOST)
    results = os.environ.get("CELERY_RESULT_BACKEND", "").removeprefix("file://")
    if "test-results-" in results:
        shutil.rmtree(results, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With MAILASYNC_EXPECTED_SKIPS=<file>, fail the run on any skip the file does not list.

    CI runs a RabbitMQ pass and an embedded-broker pass, each with its own list,
    so that a test which stops running (chromium missing, a broker not found)
    is noticed instead of passing quietly as a skip.
    """
    listed = os.environ.get("MAILASYNC_EXPECTED_SKIPS")
    if not listed:
        return
    expected = {
        line.split("#")[0].strip()
        for line in Path(listed).read_text().splitlines()
        if line.split("#")[0].strip()
    }
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = {report.nodeid for report in reporter.stats.get("skipped", [])} if reporter else set()
    unexpected = sorted(skipped - expected)
    if unexpected:
        print(f"\nskips not listed in {listed}:\n  " + "\n  ".join(unexpected))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif skipped:
        print(f"\n{len(skipped)} skip(s), all listed in {listed}")


def uses_rabbitmq() -> bool:
    return os.environ.get("CELERY_BROKER_URL", "pyamqp://").startswith(("amqp", "pyamqp"))


needs_rabbitmq = pytest.mark.skipif(
    not uses_rabbitmq(), reason="needs RabbitMQ (the embedded broker is in use)"
)
needs_acknowledgements = pytest.mark.skipif(
    not uses_rabbitmq(),
    reason="needs a broker with acknowledgements: the embedded broker loses what a killed "
    "worker held (notebook 06 measures it)",
)


def vhost() -> str:
    """This run's RabbitMQ virtual host, from CELERY_BROKER_URL."""
    path = urlparse(os.environ["CELERY_BROKER_URL"]).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def queue_counts(queue: str) -> tuple[int, int]:
    """(messages_ready, messages_unacknowledged) of `queue`, as RabbitMQ itself counts them."""
    out = broker.rabbitmqctl(
        "list_queues",
        "-p",
        vhost(),
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    )
    for line in out.splitlines():
        name, ready, unacked = line.split("\t")
        if name == queue:
            return int(ready), int(unacked)
    raise AssertionError(f"no queue {queue} in vhost {vhost()}: {out!r}")


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60, poll: float = 0.05) -> Any:
    """Poll `check()` until it returns something true; return it."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(poll)
    return found


def task_status(url: str, task_id: str) -> dict:
    """GET /tasks/<id> from the app at `url`, which must answer 200."""
    import requests

    response = requests.get(f"{url}/tasks/{task_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_state(
    url: str, task_id: str, states: set[str] | None = None, timeout: float = 30
) -> list[dict]:
    """Poll a task until its state is one of `states` (by default: it ended); every answer seen."""
    states = states or {"SUCCESS", "FAILURE"}
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(task_status(url, task_id))
        if seen[-1]["state"] in states:
            return seen
        time.sleep(0.05)
    raise TimeoutError(f"{task_id} never reached {states} in {timeout} s; last: {seen[-3:]}")


@pytest.fixture
def queue_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """A queue of this test's own, in the environment of every process it starts."""
    name = f"mailasync-test-{RUN_ID}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CELERY_QUEUE", name)
    return name


@pytest.fixture
def inbox(tmp_path: Path, queue_name: str) -> Iterator:
    """The local inbox running on a free port; MAIL_* in the environment point at it."""
    from kit.processes import start_inbox

    server = start_inbox(tmp_path / "inbox")
    previous = {key: os.environ.get(key) for key in server.env}
    os.environ.update(server.env)
    yield server
    server.stop()
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def mailbox(inbox, tmp_path: Path):
    """Reader for the running inbox's folder."""
    from kit.inbox import Inbox

    return Inbox(tmp_path / "inbox")


@pytest.fixture
def start_worker(inbox) -> Iterator[Callable]:
    """Start workers on this test's queue; every one is stopped afterwards."""
    from kit.processes import start_worker as start

    started = []

    def factory(**options):
        worker = start(**options)
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()


@pytest.fixture
def web(inbox) -> Iterator:
    """app.py served on a free port, with this test's settings."""
    from kit.processes import start_app

    server = start_app()
    yield server
    server.stop()


@pytest.fixture
def producer(queue_name: str):
    """The sendMail task as seen by a producer with this test's settings."""
    import importlib

    import mailasync

    module = importlib.reload(mailasync)
    yield module
    module.app.close()
