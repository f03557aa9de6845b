"""The Celery app and the `sendMail` task: slow work, then one mail, in the background.

After "Slow HTTP response times? Celery to the rescue!"
(https://betterprogramming.pub/slow-http-response-times-celery-to-the-rescue-76346eb4212c).
Run it from the repository root, one process per terminal:

    (terminal 1)$ python3 inbox.py --dir inbox           # the local mailbox
    (terminal 2)$ celery -A mailasync worker --loglevel=INFO
    (terminal 3)$ python3 app.py                         # Flask on 127.0.0.1:5000
    (terminal 4)$ python3
    >>> from mailasync import sendMail
    >>> sendMail.delay({"to": "you@example.com", "subject": "Hi", "body": "Done"})
    <AsyncResult: ...>                                   # returns at once
    # about WORK_SECONDS later a new .eml file appears in inbox/

RabbitMQ must be running (`rabbitmq-server -detached`); settings come from the
environment, then default_settings.py, then the defaults in settings.py.
For I/O-bound sends, a thread or gevent pool keeps many mails in flight:

    $ celery -A mailasync worker --loglevel=INFO --pool=threads --concurrency=100
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.signals import celeryd_init, worker_process_shutdown

from broker import embedded_transport_options, is_embedded
from mailer import Mailer, PermanentMailError, TransientMailError
from settings import load_settings
from tracking import SentLedger, backend_url
from validation import validate_mail

settings = load_settings()

app = Celery("mailasync")
app.conf.update(
    broker_url=settings.CELERY_BROKER_URL,
    # JSON only, both ways: never unpickle what arrives from the network.
    task_serializer="json",
    result_serializer="json",
    event_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_default_queue=settings.CELERY_QUEUE,
    # Nothing lost: acknowledge after the task ran, requeue if its process dies,
    # and hold only as many long tasks as there are slots to run them.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    # Tracking: report STARTED (with progress) and keep results for a day.
    task_track_started=True,
    result_expires=24 * 3600,
    # A request must never wait long on a broker that is down: bound every wait.
    broker_connection_timeout=settings.PUBLISH_TIMEOUT,
    broker_pool_acquire_timeout=settings.PUBLISH_TIMEOUT,
    task_publish_retry_policy={
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.2,
    },
    # The worker, unlike a request, keeps trying until the broker is back.
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    # Events for Flower come from the worker (received, started, succeeded...).
    # No task-sent event: it is a second publish inside every .delay() (about
    # a quarter of its time, measured by bench/), for a state Flower can do without.
    worker_send_task_events=True,
    task_send_sent_event=False,
)
# The result backend is set here, not as result_backend: Celery reads a
# CELERY_RESULT_BACKEND environment variable in place of that setting, so a
# file:// URL from the environment would get Celery's non-atomic file backend.
app.backend_cls = backend_url(settings.CELERY_RESULT_BACKEND)
if is_embedded(settings.CELERY_BROKER_URL):
    app.conf.broker_transport_options = embedded_transport_options()
if settings.CELERY_RESULT_BACKEND.startswith("file://"):
    Path(settings.CELERY_RESULT_BACKEND.removeprefix("file://")).mkdir(parents=True, exist_ok=True)


@celeryd_init.connect
def tune_green_pools(conf: Any, options: dict[str, Any], **_: Any) -> None:
    """gevent/eventlet workers: no AMQP heartbeats, which cap them near 10 messages a second.

    With a green pool Celery runs its blocking loop, which after every frame
    from the broker waits up to 0.1 s on the event connection when heartbeats
    are on (celery/worker/loops.py synloop, _quick_drain). A dead broker
    connection is still noticed through the TCP keepalive that py-amqp sets.
    """
    pool = options.get("pool") or options.get("pool_cls") or conf.worker_pool
    name = pool if isinstance(pool, str) else f"{pool.__module__}.{pool.__name__}"
    if "gevent" in name or "eventlet" in name:
        conf.broker_heartbeat = 0


ledger = SentLedger(app)
_mailer: Mailer | None = None
_mailer_lock = threading.Lock()


def get_mailer() -> Mailer:
    """The process's mailer, made on first use (so after a prefork worker forks)."""
    global _mailer
    with _mailer_lock:
        if _mailer is None:
            _mailer = Mailer(settings)
        return _mailer


@worker_process_shutdown.connect
def close_mailer(**_: Any) -> None:
    if _mailer is not None:
        _mailer.close()


def backoff(retries: int) -> float:
    """Seconds before retry number `retries` + 1: doubling, capped, with jitter."""
    ceiling = min(settings.MAIL_RETRY_BACKOFF_MAX, settings.MAIL_RETRY_BACKOFF * 2**retries)
    return random.uniform(ceiling / 2, ceiling)


def do_the_work(task: Task, seconds: float) -> None:
    """Stand-in for the slow part (image processing, encoding...), reporting progress.

    Every write is a file the worker writes and renames, the main cost of a
    busy worker (measured by bench/): progress is reported every second, or
    every third of the work when that is longer, and not at the end, since
    SUCCESS follows at once and says 1.0.
    """
    every = max(1.0, seconds / 3)
    started = time.monotonic()
    while (remaining := seconds - (time.monotonic() - started)) > 0:
        time.sleep(min(every, remaining))
        done = (time.monotonic() - started) / seconds
        if done < 1.0:
            task.update_state(state="STARTED", meta={"progress": round(done, 3)})


class MailTask(Task):
    """sendMail's task class: messages carry a short argsrepr instead of the mail.

    Celery formats the arguments of every message it publishes (saferepr, about
    a sixth of a .delay(), measured by bench/) for logs and Flower; a mail's
    recipient and body have no business there anyway.
    """

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        options.setdefault("argsrepr", "(<mail>,)")
        options.setdefault("kwargsrepr", repr(kwargs or {}))
        return super().apply_async(args, kwargs, **options)


@app.task(bind=True, base=MailTask, name="mailasync.sendMail")
def sendMail(self: Task, data: dict[str, Any], work_done: bool = False) -> dict[str, Any]:  # noqa: N802 (the article's name)
    """Do WORK_SECONDS of work, then mail `data` ({"to", "subject", "body"}) once.

    The task id is the idempotency key: a redelivered task whose mail already
    went out sends nothing. A retry after a transient SMTP error skips the work.
    """
    mail = validate_mail(data, settings.MAX_SUBJECT_LENGTH, settings.MAX_BODY_LENGTH)
    key = self.request.id
    message_id = f"<{key}@mailasync>"
    if ledger.was_sent(key):
        return {"to": mail.to, "message_id": message_id, "duplicate": True}
    if not work_done:
        do_the_work(self, settings.WORK_SECONDS)
    try:
        get_mailer().send(mail, message_id)
    except TransientMailError as error:
        raise self.retry(
            exc=error,
            countdown=backoff(self.request.retries),
            max_retries=settings.MAIL_RETRY_MAX,
            kwargs={"work_done": True},
        ) from error
    except PermanentMailError:
        raise
    ledger.record(key)
    sent_at = datetime.now(UTC).isoformat()
    return {"to": mail.to, "message_id": message_id, "sent_at": sent_at}


def send_now(data: dict[str, Any]) -> dict[str, Any]:
    """The slow path the article starts from: the same work and send, inline."""
    mail = validate_mail(data, settings.MAX_SUBJECT_LENGTH, settings.MAX_BODY_LENGTH)
    time.sleep(settings.WORK_SECONDS)
    message_id = f"<sync-{time.time_ns()}@mailasync>"
    get_mailer().send(mail, message_id)
    return {"to": mail.to, "message_id": message_id}
