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

import json
import os
import re
from typing import Any

from flask import Flask, Response, jsonify, request
from kombu.exceptions import OperationalError
from werkzeug.exceptions import HTTPException

from broker import broker_problem
from mailasync import app as celery_app
from mailasync import send_now, sendMail, settings
from mailer import PermanentMailError, TransientMailError
from settings import mask_url
from tracking import task_status
from validation import InvalidMail, validate_mail

MAX_REQUEST_BYTES = 64 * 1024
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES


class BadRequest(Exception):
    """A client error to answer as JSON with its status code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    duplicated: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            duplicated.add(key)
        seen.add(key)
    if duplicated:
        raise BadRequest(f"duplicate key(s) in the JSON object: {', '.join(sorted(duplicated))}")
    return dict(pairs)


def refuse_constant(name: str) -> None:
    raise BadRequest(f"{name} is not valid JSON")


def read_body() -> bytes:
    """The request body, once its content type and size are checked."""
    if request.mimetype != "application/json":
        raise BadRequest("send the body as JSON with Content-Type: application/json", 415)
    raw = request.get_data(cache=False)
    if request.content_length is None and len(raw) >= MAX_REQUEST_BYTES:
        # A chunked body is cut at the limit without an error: never parse the cut part.
        raise BadRequest(f"the body is larger than {MAX_REQUEST_BYTES} bytes", 413)
    return raw


def parse_json(raw: bytes) -> Any:
    """Parse a body strictly: UTF-8, no duplicate keys, no NaN or Infinity."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=refuse_duplicates, parse_constant=refuse_constant)
    except RecursionError:
        raise BadRequest("the JSON is nested too deeply") from None
    except ValueError as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None


def mail_from_json(raw: bytes) -> dict[str, str]:
    """A JSON body's mail as plain task data, or BadRequest saying what to fix."""
    try:
        mail = validate_mail(parse_json(raw), settings.MAX_SUBJECT_LENGTH, settings.MAX_BODY_LENGTH)
    except InvalidMail as error:
        raise BadRequest(str(error)) from None
    return mail.as_task_data()


def broker_unavailable(error: Exception) -> tuple[Response, int]:
    message = (
        f"the broker at {mask_url(settings.CELERY_BROKER_URL)} is not reachable ({error}); "
        "nothing was queued, try again later. Operators: start RabbitMQ "
        "(rabbitmq-server -detached) or fix CELERY_BROKER_URL."
    )
    app.logger.error("publish failed: %s", error)
    return jsonify(error=message), 503


@app.post("/send")
def send() -> tuple[Response, int]:
    """Queue the mail and answer 202 at once."""
    data = mail_from_json(read_body())
    try:
        result = sendMail.delay(data)
    except OperationalError as error:
        return broker_unavailable(error)
    response = jsonify(task_id=result.id, status="queued")
    response.headers["Location"] = f"/tasks/{result.id}"
    return response, 202


@app.post("/send-sync")
def send_sync() -> tuple[Response, int]:
    """Do the work and the send inside the request: the slow path."""
    data = mail_from_json(read_body())
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
    if not TASK_ID.match(task_id):
        return jsonify(error="a task id has 1 to 64 letters, digits, '-' or '_'"), 400
    return jsonify(task_status(celery_app.AsyncResult(task_id))), 200


@app.get("/health")
def health() -> tuple[Response, int]:
    """The app is up; say whether the broker answers too."""
    problem = broker_problem(settings.CELERY_BROKER_URL, timeout=settings.PUBLISH_TIMEOUT)
    body = {"app": "ok", "broker": "ok" if problem is None else "unreachable"}
    if problem:
        body["error"] = problem
    return jsonify(body), 200 if problem is None else 503


@app.route("/noop", methods=["GET", "POST"])
def noop() -> tuple[Response, int]:
    """Does nothing: the framework's own cost, for the benchmarks (POST takes /send's body)."""
    return jsonify(status="ok"), 200


@app.errorhandler(BadRequest)
def bad_request(error: BadRequest) -> tuple[Response, int]:
    return jsonify(error=str(error)), error.status


@app.errorhandler(HTTPException)
def http_error(error: HTTPException) -> tuple[Response, int]:
    """Every HTTP error as JSON, such as 404, 405 and 413."""
    return jsonify(error=error.description or error.name), error.code or 500


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("FLASK_PORT", "5000")), debug=False)
