"""The article's system end to end: real broker, real worker, real inbox, the Flask app.

WORK_SECONDS is 1 here (conftest.py), so "after the work" means after about a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests

from conftest import needs_rabbitmq
from kit import broker
from kit.broker import EMBEDDED_BROKER_URL, choose
from kit.lab import mail
from kit.processes import Background, free_port, start_app

pytestmark = pytest.mark.integration
WORK = float(os.environ["WORK_SECONDS"])


def queue_depth(queue: str) -> int:
    """Messages waiting in `queue` on this run's broker, RabbitMQ or embedded."""
    return broker.queue_depth(os.environ["CELERY_BROKER_URL"], queue)


def test_send_answers_at_once_and_the_mail_lands_after_the_work(web, start_worker, mailbox) -> None:
    start_worker()
    sent_at = time.time()
    response = requests.post(f"{web.url}/send", json=mail(), timeout=10)
    answered_in = time.time() - sent_at
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["task_id"]
    assert response.headers["Location"] == f"/tasks/{body['task_id']}"
    assert answered_in < WORK / 2, f"/send took {answered_in:.3f} s"
    assert mailbox.count() == 0  # the answer came before the mail
    [arrived] = mailbox.wait_for(1, timeout=30)
    assert arrived.received_at - sent_at >= WORK * 0.9
    assert (arrived.to, arrived.subject, arrived.body) == (
        "learner0@example.com",
        "Report #0",
        "Mail number 0: your report is ready.",
    )
    assert arrived.message_id == f"<{body['task_id']}@mailasync>"


def test_send_sync_answers_only_once_the_mail_is_sent(web, mailbox) -> None:
    started = time.monotonic()
    response = requests.post(f"{web.url}/send-sync", json=mail(1), timeout=30)
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "sent"
    assert took >= WORK
    assert mailbox.count() == 1  # already in the SMTP server's hands when the answer came


def test_one_worker_of_concurrency_one_delivers_in_the_order_sent(
    web, start_worker, mailbox, monkeypatch
) -> None:
    monkeypatch.setenv("WORK_SECONDS", "0.2")
    start_worker(concurrency=1)
    for n in range(8):
        assert requests.post(f"{web.url}/send", json=mail(n), timeout=10).status_code == 202
    mails = mailbox.wait_for(8, timeout=60)
    assert [m.subject for m in mails] == [f"Report #{n}" for n in range(8)]


BAD_BODIES = [
    ("not json", "application/json", 400, "not valid JSON"),
    ("[1, 2]", "application/json", 400, "JSON object"),
    (json.dumps({"subject": "s", "body": "b"}), "application/json", 400, "missing"),
    (json.dumps({**mail(), "to": 7}), "application/json", 400, "must be a string"),
    (json.dumps({**mail(), "to": "nobody"}), "application/json", 400, "not a valid address"),
    (json.dumps({**mail(), "to": "a@example.com,b@example.com"}), "application/json", 400, "one"),
    (json.dumps({**mail(), "subject": "a\r\nBcc: x@example.com"}), "application/json", 400, "line"),
    (
        json.dumps({**mail(), "to": "a@example.com\nBcc: x@example.com"}),
        "application/json",
        400,
        "single line",
    ),
    (json.dumps({**mail(), "subject": "s" * 201}), "application/json", 400, "limit"),
    (json.dumps({**mail(), "body": "b" * 10_001}), "application/json", 400, "limit"),
    (json.dumps(mail()), "text/plain", 415, "Content-Type"),
    ("x" * 70_000, "application/json", 413, "capacity limit"),
]


@pytest.mark.parametrize("path", ["/send", "/send-sync"])
def test_bad_input_gets_400_and_nothing_is_queued_or_sent(
    web, start_worker, mailbox, queue_name, path
) -> None:
    start_worker()
    for body, content_type, status, words in BAD_BODIES:
        response = requests.post(
            f"{web.url}{path}", data=body, headers={"Content-Type": content_type}, timeout=10
        )
        assert response.status_code == status, (body[:80], response.text)
        assert response.headers["Content-Type"] == "application/json"
        assert words in response.json()["error"]
    time.sleep(WORK + 0.5)  # long enough for a wrongly queued mail to arrive
    assert mailbox.count() == 0
    assert queue_depth(queue_name) == 0


def test_unreachable_broker_gets_503_within_about_a_second(inbox, monkeypatch) -> None:
    closed = f"pyamqp://guest@127.0.0.1:{free_port()}//"
    web = start_app(env={"CELERY_BROKER_URL": closed})
    try:
        started = time.monotonic()
        response = requests.post(f"{web.url}/send", json=mail(), timeout=30)
        took = time.monotonic() - started
        assert response.status_code == 503
        assert (
            "broker" in response.json()["error"] and "rabbitmq-server" in response.json()["error"]
        )
        assert took < 3, f"503 took {took:.2f} s"
        health = requests.get(f"{web.url}/health", timeout=30)
        assert health.status_code == 503 and health.json()["broker"] == "unreachable"
    finally:
        web.stop()


def test_health_says_the_broker_answers(web) -> None:
    response = requests.get(f"{web.url}/health", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"app": "ok", "broker": "ok"}


def test_flask_cli_serves_the_app_on_loopback(inbox) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(port)]
    with Background("flask-cli", argv).start() as server:
        server.wait_for_port(port)
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["app"] == "ok"
        assert "127.0.0.1" in server.log_text()
        assert "Debug mode: off" in server.log_text()


def test_broker_choice_falls_back_to_embedded_only_when_not_configured() -> None:
    closed = f"pyamqp://guest@127.0.0.1:{free_port()}//"
    url, banner = choose({"MAILASYNC_SETTINGS_FILE": os.devnull}, url=closed)
    assert url == EMBEDDED_BROKER_URL and "EMBEDDED" in banner
    with pytest.raises(SystemExit, match="rabbitmq-server"):
        choose({"MAILASYNC_SETTINGS_FILE": os.devnull, "CELERY_BROKER_URL": closed})


@needs_rabbitmq
def test_broker_choice_takes_rabbitmq_when_it_answers() -> None:
    url, banner = choose({"MAILASYNC_SETTINGS_FILE": os.devnull})
    assert url.startswith("pyamqp://") and "RabbitMQ" in banner


def test_embedded_broker_carries_a_mail_end_to_end(inbox, mailbox, queue_name, tmp_path) -> None:
    env = {
        "CELERY_BROKER_URL": EMBEDDED_BROKER_URL,
        "CELERY_RESULT_BACKEND": f"file://{tmp_path / 'results'}",
    }
    from kit.processes import start_worker

    worker = start_worker(env=env)
    try:
        code = (
            "from mailasync import sendMail\n"
            "print(sendMail.delay({'to': 'a@example.com', 'subject': 'embedded', 'body': 'b'}).id)"
        )
        produced = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        [arrived] = mailbox.wait_for(1, timeout=30)
        assert arrived.subject == "embedded"
        assert arrived.message_id == f"<{produced.stdout.strip()}@mailasync>"
    finally:
        worker.stop()
