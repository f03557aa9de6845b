"""The kit's Flask app plus two bench-only routes: /noop and POST /publish, the floor under /send.

/noop does nothing: the framework's own cost (POST takes /send's body).

/publish does the least any /send could do: one AMQP publish of a ready-made
message the size of a sendMail message, with py-amqp (the client under Celery)
on a connection opened once per process, to a queue no worker reads. No JSON
parsing, no validation, no Celery. So /publish over /noop, measured on the same
server in the same run, is the lowest that /send over /noop can be here.

    $ python -m bench.floorapp              # werkzeug, as `python3 app.py` runs it
    $ gunicorn bench.floorapp:app           # gunicorn

The queue is FLOOR_QUEUE on the kit's broker (CELERY_BROKER_URL).
"""

from __future__ import annotations

import json
import os
import threading

import amqp
from flask import Response, jsonify
from kombu import Connection

from app import app
from mailasync import settings

FLOOR_QUEUE = "bench-floor"
# The body Celery's protocol 2 sends for one mail: (args, kwargs, embed).
BODY = json.dumps(
    [
        [{"to": "bench@example.com", "subject": "Benchmark", "body": "Hello"}],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
).encode()

_lock = threading.Lock()
_channel: amqp.Channel | None = None


def bare_publish() -> None:
    """One persistent message to FLOOR_QUEUE; the first call connects and declares the queue."""
    global _channel
    with _lock:  # one channel per process, shared by the server's threads
        if _channel is None:
            connection = Connection(settings.CELERY_BROKER_URL, connect_timeout=5)
            _channel = connection.channel()  # connects; kombu's channel is py-amqp's
            _channel.queue_declare(FLOOR_QUEUE, durable=True, auto_delete=False)
        message = amqp.Message(BODY, content_type="application/json", delivery_mode=2)
        _channel.basic_publish(message, exchange="", routing_key=FLOOR_QUEUE)


@app.route("/noop", methods=["GET", "POST"])
def noop() -> tuple[Response, int]:
    """Does nothing: the framework's own cost, for the benchmarks (POST takes /send's body)."""
    return jsonify(status="ok"), 200


@app.post("/publish")
def publish() -> tuple[Response, int]:
    """One bare publish and a 202, like /send without Celery, parsing or checks."""
    bare_publish()
    return jsonify(status="queued"), 202


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("FLASK_PORT", "5000")), debug=False)
