"""Security: JSON only both ways, secrets never shown, loopback and debug off by default."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from kit import broker
from kit.processes import listening_addresses, start_app, start_inbox
from kit.settings import ROOT, load_settings

PASSWORD = f"pw-{uuid.uuid4().hex}"
GOOD = {"to": "learner@example.com", "subject": "Report", "body": "Ready"}


class Touch:
    """Pickled, it means "create this file": proof that a pickle was (never) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def pickled_task(marker: Path) -> bytes:
    """A Celery protocol-2 body (args, kwargs, embed) that creates `marker` when unpickled."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return pickle.dumps(((Touch(marker),), {}, embed), protocol=4)


def test_default_settings_py_is_ignored_by_git() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "default_settings.py"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "default_settings.py (your password) must be git-ignored"
    tracked = subprocess.run(
        ["git", "ls-files", "default_settings.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert tracked.stdout == ""


def test_settings_never_show_the_passwords() -> None:
    settings = load_settings(
        {
            "MAILASYNC_SETTINGS_FILE": os.devnull,
            "MAIL_PASSWORD": PASSWORD,
            "CELERY_BROKER_URL": f"pyamqp://kit:{PASSWORD}b@127.0.0.1:5672//",
        }
    )
    assert settings.MAIL_PASSWORD == PASSWORD
    for shown in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert PASSWORD not in shown
        assert "MAIL_PASSWORD='***'" in shown and "kit:***@" in shown


@pytest.mark.integration
def test_a_pickled_task_is_refused_and_never_runs(
    start_worker, mailbox, queue_name, tmp_path: Path
) -> None:
    live = tmp_path / "pickle-is-live"
    subprocess.run(
        [sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
        input=pickled_task(live),
        cwd=Path(__file__).parent,
        check=True,
    )
    assert live.exists(), "the payload must really do something when unpickled"

    worker = start_worker()
    marker = tmp_path / "pickle-ran"
    task_id = str(uuid.uuid4())
    with broker.connect(os.environ["CELERY_BROKER_URL"]) as connection:
        connection.Producer().publish(
            pickled_task(marker),
            routing_key=queue_name,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            delivery_mode=2,
            headers={
                "lang": "py",
                "task": "mailasync.sendMail",
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "retries": 0,
                "eta": None,
                "expires": None,
                "timelimit": [None, None],
                "argsrepr": "(...)",
                "kwargsrepr": "{}",
                "origin": "test_security",
            },
        )
    worker.wait_for_log(r"ContentDisallowed|untrusted content", timeout=30)
    time.sleep(1.5)  # WORK_SECONDS is 1
    assert not marker.exists(), "the worker unpickled the message"
    assert mailbox.count() == 0
    assert f"Task mailasync.sendMail[{task_id}] received" not in worker.log_text()


@pytest.mark.integration
def test_every_response_is_json(web, start_worker, mailbox) -> None:
    start_worker()
    url = web.url
    answers = {
        "202 send": requests.post(f"{url}/send", json=GOOD, timeout=10),
        "200 send-sync": requests.post(f"{url}/send-sync", json=GOOD, timeout=30),
        "400 send": requests.post(f"{url}/send", json={"to": "x"}, timeout=10),
        "415 send": requests.post(f"{url}/send", data="to=x", timeout=10),
        "413 send": requests.post(
            f"{url}/send", data=b"x" * 70_000, headers={"Content-Type": "application/json"}
        ),
        "405 GET /send": requests.get(f"{url}/send", timeout=10),
        "404 nope": requests.get(f"{url}/nope", timeout=10),
        "200 task": requests.get(f"{url}/tasks/abc", timeout=10),
        "400 task": requests.get(f"{url}/tasks/a.b", timeout=10),
        "200 health": requests.get(f"{url}/health", timeout=10),
        "404 noop": requests.get(f"{url}/noop", timeout=10),  # the benchmark's route only
    }
    for what, response in answers.items():
        assert response.status_code == int(what[:3]), (what, response.text)
        assert response.headers["Content-Type"] == "application/json", what
        response.json()
    mailbox.wait_for(2)


@pytest.mark.integration
def test_the_smtp_password_never_reaches_logs_or_task_status(
    start_worker, queue_name, tmp_path: Path
) -> None:
    from kit.inbox import Inbox

    locked = start_inbox(tmp_path / "locked", password=PASSWORD)
    env = {**locked.env, "MAIL_PASSWORD": PASSWORD}
    web = start_app(env=env)
    try:
        worker = start_worker(env=env, loglevel="DEBUG")
        task_id = requests.post(f"{web.url}/send", json=GOOD, timeout=10).json()["task_id"]
        Inbox(tmp_path / "locked").wait_for(1, timeout=30)  # so the password did log in
        deadline = time.monotonic() + 30
        while (status := requests.get(f"{web.url}/tasks/{task_id}", timeout=10).text) and (
            '"SUCCESS"' not in status and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert '"SUCCESS"' in status
        health = requests.get(f"{web.url}/health", timeout=10).text
        for text in (worker.log_text(), web.log_text(), status, health):
            assert PASSWORD not in text
            assert GOOD["to"] not in text  # nor the recipient: logs are no place for addresses
        assert "mailasync.sendMail" in worker.log_text()  # the log we searched is the real one
        assert "succeeded" in worker.log_text()
    finally:
        web.stop()
        locked.stop()


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_the_app_listens_on_loopback_only_with_debug_off(web) -> None:
    assert listening_addresses(web.port) == {"127.0.0.1"}  # and nothing else
    assert "Debug mode: off" in web.log_text()
    response = requests.get(f"{web.url}/console", timeout=10)  # Werkzeug's debugger console
    assert response.status_code == 404 and response.headers["Content-Type"] == "application/json"


@pytest.mark.integration
def test_another_host_name_is_refused_so_dns_rebinding_cannot_reach_the_app(web) -> None:
    """A page on evil.example whose name now points at 127.0.0.1 sends Host: evil.example."""
    rebound = requests.get(f"{web.url}/health", headers={"Host": "evil.example"}, timeout=10)
    assert rebound.status_code == 400
    for name in ("127.0.0.1", "localhost"):
        own = requests.get(f"{web.url}/health", headers={"Host": f"{name}:{web.port}"}, timeout=10)
        assert own.status_code in (200, 503), (name, own.text)


@pytest.mark.integration
def test_logs_results_mail_and_the_embedded_broker_are_private(
    web, start_worker, mailbox, tmp_path: Path
) -> None:
    from kit.broker import embedded_transport_options

    start_worker()
    requests.post(f"{web.url}/send", json=GOOD, timeout=10)
    mailbox.wait_for(1, timeout=30)
    results = Path(os.environ["CELERY_RESULT_BACKEND"].removeprefix("file://"))
    folders = [web.log_path.parent, results, mailbox.folder]
    folders += [
        Path(folder) for folder in embedded_transport_options().values() if "/" in str(folder)
    ]
    for folder in folders:
        assert folder.stat().st_mode & 0o777 == 0o700, folder
