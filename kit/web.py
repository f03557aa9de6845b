"""Reading a mail request in the web app: strict JSON in, JSON errors out.

app.py keeps only its routes; everything a route needs to refuse bad input
with a status code and a message that says what to fix lives here.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Iterator
from typing import Any

from amqp.exceptions import ChannelError, MessageNacked
from flask import Flask, Response, jsonify, request
from kombu.exceptions import OperationalError
from werkzeug.exceptions import HTTPException

from kit.queues import is_mismatch, mismatch_fix
from kit.settings import Settings, mask_url
from kit.validation import InvalidMail, check_mail

MAX_REQUEST_BYTES = 64 * 1024
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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


def mail_from_json(raw: bytes, settings: Settings) -> dict[str, str]:
    """A JSON body's mail as plain task data, or BadRequest saying what to fix."""
    try:
        return check_mail(parse_json(raw), settings).as_task_data()
    except InvalidMail as error:
        raise BadRequest(str(error)) from None


def check_task_id(task_id: str) -> None:
    if not TASK_ID.match(task_id):
        raise BadRequest("a task id has 1 to 64 letters, digits, '-' or '_'")


# What a publish can raise when the mail was not queued: the broker unreachable
# (kombu's OperationalError), or reachable but refusing it (a channel error: the
# queue exists with other arguments; a publisher confirm that came back negative).
PUBLISH_FAILURES = (OperationalError, ChannelError, MessageNacked)


def causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what caused it, and so on (kombu wraps what py-amqp raised)."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def refusal_in(error: BaseException) -> BaseException | None:
    """The broker's refusal behind a publish error, if it was one (kombu wraps a negative
    confirm, which it retries like a lost connection, in an OperationalError)."""
    return next((e for e in causes(error) if isinstance(e, (ChannelError, MessageNacked))), None)


def unconfirmed(error: BaseException) -> bool:
    """True if `error` ended a wait for RabbitMQ's confirm: the mail went out on a live
    connection and may be queued later. (A broker that never answered the handshake
    times out too, before anything was sent: only the frames tell the two apart.)"""
    return any(
        frame.name == "basic_publish_confirm"
        for cause in causes(error)
        for frame in traceback.extract_tb(cause.__traceback__)
    )


def broker_unavailable(settings: Settings, error: Exception) -> tuple[Response, int]:
    """503: nothing was queued, why (the broker or the queue, password masked), and the fix."""
    task_id = getattr(error, "task_id", None)
    error = refusal_in(error) or error
    if is_mismatch(error):
        message = f"nothing was queued: {mismatch_fix(settings.CELERY_QUEUE, error)}"
    elif isinstance(error, (ChannelError, MessageNacked)):
        message = (
            f"the broker at {mask_url(settings.CELERY_BROKER_URL)} refused the mail "
            f"({type(error).__name__}{': ' if str(error) else ''}{error}); nothing was queued, "
            "try again later. "
            f"Operators: check queue {settings.CELERY_QUEUE!r} and RabbitMQ's log "
            "(a full queue, a disk or memory alarm)."
        )
    elif unconfirmed(error) and task_id:
        message = (
            f"the broker at {mask_url(settings.CELERY_BROKER_URL)} did not confirm the mail "
            f"within PUBLISH_TIMEOUT={settings.PUBLISH_TIMEOUT:g} s ({error}): it may still "
            f"be queued once the broker recovers, as task {task_id}; look it up at "
            f"GET /tasks/{task_id} before sending it again. Operators: see RabbitMQ's log "
            "(a memory or disk alarm blocks publishers)."
        )
        return jsonify(error=message, task_id=task_id, outcome="unknown"), 503
    else:
        message = (
            f"the broker at {mask_url(settings.CELERY_BROKER_URL)} is not reachable ({error}); "
            "nothing was queued, try again later. Operators: start RabbitMQ "
            "(rabbitmq-server -detached) or fix CELERY_BROKER_URL."
        )
    return jsonify(error=message), 503


def answer_errors_as_json(app: Flask) -> None:
    """Every error the app answers, ours and Flask's (404, 405, 413...), as {"error": ...}."""

    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest) -> tuple[Response, int]:
        return jsonify(error=str(error)), error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        return jsonify(error=error.description or error.name), error.code or 500
