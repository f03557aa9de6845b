"""The Flask app: hand the mail to Celery and answer at once.

    $ python3 app.py              # or: flask --app app run
    $ curl -s -X POST http://127.0.0.1:5000/send -H 'Content-Type: application/json' \\
        -d '{"to": "you@example.com", "subject": "Hi", "body": "Your report is ready"}'
    {"status": "queued", "task_id": "..."}

POST /send queues the task (202); POST /send-sync does the same work inline
(the slow path); GET /tasks/<id> reports a task; GET /health says whether the
broker answers. Bad input gets 400 with {"error": ...} and nothing is queued.
"""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify

from kit.broker import broker_problem, is_embedded
from kit.mailer import PermanentMailError, TransientMailError
from kit.queues import dead_letter_queue_name
from kit.settings import load_settings
from kit.tracking import task_status
from kit.web import (
    MAX_REQUEST_BYTES,
    PUBLISH_FAILURES,
    answer_errors_as_json,
    broker_unavailable,
    check_task_id,
    mail_from_json,
    read_body,
    refusal_in,
)
from mailasync import app as celery_app
from mailasync import send_now, sendMail

settings = load_settings()
app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
# Loopback names only, so a web page cannot reach the app through DNS rebinding.
# Behind a proxy, set FLASK_TRUSTED_HOSTS='["mail.example.org"]' (any FLASK_* overrides).
app.config["TRUSTED_HOSTS"] = ["127.0.0.1", "localhost", "[::1]"]
app.config.from_prefixed_env()
answer_errors_as_json(app)


@app.post("/send")
def send() -> tuple[Response, int]:
    """Queue the mail and answer 202 at once."""
    data = mail_from_json(read_body(), settings)
    try:
        result = sendMail.delay(data)
    except PUBLISH_FAILURES as error:
        app.logger.error("publish failed: %r", refusal_in(error) or error)
        return broker_unavailable(settings, error)
    response = jsonify(task_id=result.id, status="queued")
    response.headers["Location"] = f"/tasks/{result.id}"
    return response, 202


@app.post("/send-sync")
def send_sync() -> tuple[Response, int]:
    """Do the work and the send inside the request: the slow path."""
    data = mail_from_json(read_body(), settings)
    try:
        sent = send_now(data)
    except TransientMailError as error:
        return jsonify(error=f"the mail server is unavailable: {error}"), 503
    except PermanentMailError as error:
        return jsonify(error=f"the mail server refused the mail: {error}"), 502
    return jsonify(status="sent", **sent), 200


@app.get("/tasks/<task_id>")
def task(task_id: str) -> tuple[Response, int]:
    """Report a task's state, with progress, result or error where they apply."""
    check_task_id(task_id)
    status = task_status(celery_app.AsyncResult(task_id))
    if status["state"] == "FAILURE" and not is_embedded(settings.CELERY_BROKER_URL):
        status["dead_letter_queue"] = dead_letter_queue_name(settings.CELERY_QUEUE)
        status["replay"] = f"make replay TASKS={task_id}"
    return jsonify(status), 200


@app.get("/health")
def health() -> tuple[Response, int]:
    """The app is up; say whether the broker answers too."""
    problem = broker_problem(settings.CELERY_BROKER_URL, timeout=settings.PUBLISH_TIMEOUT)
    body = {"app": "ok", "broker": "ok" if problem is None else "unreachable"}
    if problem:
        body["error"] = problem
    return jsonify(body), 200 if problem is None else 503


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("FLASK_PORT", "5000")), debug=False)
