"""GET /tasks/<id> through the real app, fed by a real worker: every state a learner can see."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from conftest import task_status, wait_for_state
from kit.lab import mail

pytestmark = pytest.mark.integration


def queue(web: Any, data: dict[str, str]) -> str:
    response = requests.post(f"{web.url}/send", json=data, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def test_pending_then_started_with_rising_progress_then_success(
    web, start_worker, mailbox, monkeypatch
) -> None:
    task_id = queue(web, mail())
    pending = task_status(web.url, task_id)  # no worker yet: queued, so PENDING
    assert pending["state"] == "PENDING" and "unknown" in pending["detail"]
    monkeypatch.setenv("WORK_SECONDS", "3")
    start_worker()
    seen = wait_for_state(web.url, task_id, timeout=60)
    states = [s["state"] for s in seen]
    assert states[-1] == "SUCCESS"
    assert "STARTED" in states and "RETRY" not in states
    assert states.index("STARTED") < states.index("SUCCESS")
    progress = [s["progress"] for s in seen if s["state"] == "STARTED"]
    assert progress == sorted(progress), "progress must never go down"
    assert len({p for p in progress if 0 < p < 1}) >= 1, f"no progress seen mid-work: {progress}"
    result = seen[-1]["result"]
    assert seen[-1]["progress"] == 1.0
    assert result["message_id"] == f"<{task_id}@mailasync>" and "to" not in result
    [arrived] = mailbox.wait_for(1)
    assert arrived.message_id == result["message_id"]


def test_permanent_refusal_fails_at_once_with_the_reason(web, start_worker, mailbox) -> None:
    worker = start_worker()
    task_id = queue(web, mail(to="reject-me@example.com"))
    seen = wait_for_state(web.url, task_id, timeout=30)
    assert seen[-1]["state"] == "FAILURE"
    assert "550" in seen[-1]["error"] and "recipient refused" in seen[-1]["error"]
    assert "reject-me@example.com" not in seen[-1]["error"]  # no addresses in logs or results
    assert "PermanentMailError" in seen[-1]["error"]
    assert "RETRY" not in [s["state"] for s in seen]
    assert "Retry in" not in worker.log_text()
    assert mailbox.count() == 0


def test_transient_refusal_retries_then_fails_after_the_retry_limit(
    web, start_worker, mailbox, monkeypatch
) -> None:
    monkeypatch.setenv("MAIL_RETRY_MAX", "3")
    monkeypatch.setenv("WORK_SECONDS", "0.2")
    worker = start_worker()
    task_id = queue(web, mail(to="tempfail-me@example.com"))
    seen = wait_for_state(web.url, task_id, timeout=60)
    states = [s["state"] for s in seen]
    assert "RETRY" in states and states[-1] == "FAILURE"
    retry = next(s for s in seen if s["state"] == "RETRY")
    assert "451" in retry["error"]
    assert "451" in seen[-1]["error"] and "TransientMailError" in seen[-1]["error"]
    assert worker.log_text().count("Retry in") == 3  # MAIL_RETRY_MAX retries, then it stops
    assert mailbox.count() == 0


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/tasks/0c8e2c3a-0000-4000-8000-000000000000", 200),  # well formed, never sent
        ("/tasks/" + "a" * 65, 400),
        ("/tasks/..%2F..%2Fetc%2Fpasswd", 404),  # %2F is a "/": no such route
        ("/tasks/%00", 400),
        ("/tasks/%0d%0aX-Injected:%201", 400),
        ("/tasks/%E2%80%A8", 400),
        ("/tasks/%ff%fe", 400),
        ("/tasks/id%20with%20spaces", 400),
        ("/tasks/" + "%F0%9F%93%A7" * 40, 400),
        ("/tasks/", 404),
        ("/tasks/a/b", 404),
    ],
)
def test_unknown_and_malformed_ids_never_get_a_5xx(web, path: str, expected: int) -> None:
    response = requests.get(f"{web.url}{path}", timeout=10)
    assert response.status_code == expected, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    if expected == 200:
        assert body["state"] == "PENDING" and "unknown" in body["detail"]
    else:
        assert body["error"]
