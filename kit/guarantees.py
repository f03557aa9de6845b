"""The Celery settings behind the kit's promises, one function a promise.

mailasync.py calls each of these on its app with a one-line comment, so the
article's file stays short; the reasons and the measurements are here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.signals import celeryd_init, worker_process_shutdown
from celery.utils import uuid

from kit import later, queues
from kit.broker import embedded_transport_options, is_embedded
from kit.mailer import Mailer, PermanentMailError, TransientMailError
from kit.settings import Settings, private_folder
from kit.tracking import ClaimBusy, backend_url
from kit.validation import InvalidMail


def json_only(app: Celery) -> None:
    """JSON both ways: a worker never unpickles what arrives from the network."""
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
    )


def nothing_lost(app: Celery) -> None:
    """Acknowledge a task after it ran, requeue it if its process dies, hold one at a time.

    The article's worker acknowledges on receipt: a worker killed mid-task
    loses that mail. Holding only as many long tasks as there are slots keeps
    the others in the queue for a free worker. A task that fails for good is
    rejected, not acknowledged, so RabbitMQ keeps it in the dead-letter queue
    (kit/queues.py) instead of dropping it.
    """
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure=False,
        worker_prefetch_multiplier=1,
        # After a reconnect Celery 5.7 lowers the prefetch count, then restores it with a
        # basic.qos sent from a pool thread; in a threads worker that thread and the main
        # one read the same socket, and the worker stalls until heartbeats cut it off
        # (half the runs of tests/test_connection_drop.py did).
        worker_enable_prefetch_count_reduction=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )


# A worker's own publishes (retries) wait longer than a request: giving up
# there dead-letters the mail, while a request can answer 503 and be tried again.
WORKER_PUBLISH_TIMEOUT = 30.0


def bounded_publish(app: Celery, settings: Settings) -> None:
    """A 202 means RabbitMQ has the mail; a request waits about PUBLISH_TIMEOUT for it at most.

    With publisher confirms each publish waits for RabbitMQ's acknowledgement
    (for a persistent message on a durable queue: written to disk), so a mail
    the broker refuses (queue full, resource alarm) is a 503, not a 202 for a
    mail that was never kept. Without bounds `.delay()` retries a refused
    connection and waits on a silent one for a long time, and the request with it.
    """
    app.conf.update(
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
    )
    if not is_embedded(settings.CELERY_BROKER_URL):
        app.conf.broker_transport_options = {
            "confirm_publish": True,
            # A broker that blocks publishers (a memory or disk alarm) stops reading
            # the socket: without a read timeout, closing the channel after the
            # confirm timed out would wait for its answer for ever. Two attempts of
            # a confirm and a close each: a 503 in about 2.5 x PUBLISH_TIMEOUT.
            "read_timeout": settings.PUBLISH_TIMEOUT / 4,
            "write_timeout": settings.PUBLISH_TIMEOUT / 4,
        }
    celeryd_init.connect(unbound_worker_publishes, weak=False, dispatch_uid="mailasync-publish")


def unbound_worker_publishes(conf: Any, **_: Any) -> None:
    """In a worker: publishes wait up to WORKER_PUBLISH_TIMEOUT, retried through a blip."""
    conf.broker_connection_timeout = WORKER_PUBLISH_TIMEOUT
    conf.broker_pool_acquire_timeout = WORKER_PUBLISH_TIMEOUT
    conf.task_publish_retry_policy = {
        "max_retries": 10,
        "interval_start": 0,
        "interval_step": 1,
        "interval_max": 5,
    }
    # The worker's consuming connection waits on a quiet broker by design.
    options = dict(conf.broker_transport_options or {})
    options.pop("read_timeout", None)
    options.pop("write_timeout", None)
    conf.broker_transport_options = options


def tracked(app: Celery, settings: Settings) -> None:
    """Task states, progress and results where any process can read them (GET /tasks/<id>)."""
    app.conf.update(
        task_track_started=True,
        # Events for Flower come from the worker (received, started, succeeded...).
        # No task-sent event: it is a second publish inside every .delay() (about
        # a quarter of its time, measured by bench/), for a state Flower can do without.
        worker_send_task_events=True,
        task_send_sent_event=False,
    )
    # Set here, not as result_backend: Celery reads a CELERY_RESULT_BACKEND
    # environment variable in place of that setting, so a file:// URL from the
    # environment would get Celery's non-atomic file backend.
    app.backend_cls = backend_url(settings.CELERY_RESULT_BACKEND)
    if settings.CELERY_RESULT_BACKEND.startswith("file://"):
        private_folder(Path(settings.CELERY_RESULT_BACKEND.removeprefix("file://")))


def on_the_kits_queue(app: Celery, settings: Settings) -> None:
    """The kit's own queue and its dead-letter queue, or the embedded broker's folders."""
    queues.install(app, settings.CELERY_QUEUE)
    if is_embedded(settings.CELERY_BROKER_URL):
        app.conf.broker_transport_options = embedded_transport_options()


def close_at_worker_exit(mailer: Mailer) -> None:
    """Log out of the SMTP connections when a worker process stops."""

    def close(**_: Any) -> None:
        mailer.close()

    worker_process_shutdown.connect(close, weak=False)


class MailTask(Task):
    """sendMail's task class: a mail's recipient and body stay out of logs and Flower.

    Celery formats every message's arguments for logs and monitors (saferepr,
    also about a sixth of a .delay(), measured by bench/); the kit sends a
    short stand-in instead.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task; a mail failing for good says where it is kept, for logs and Flower."""
        try:
            return super().__call__(*args, **kwargs)
        except (PermanentMailError, TransientMailError, InvalidMail, ClaimBusy) as error:
            if is_embedded(self.app.conf.broker_url or ""):
                raise
            dead = queues.dead_letter_queue_name(self.app.conf.task_default_queue)
            note = f"kept in {dead}; fix the cause, then: make replay TASKS={self.request.id}"
            raise type(error)(f"{error} ({note})") from error

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Publish with the kit's confirm timeout; a failed publish carries its task id.

        When RabbitMQ does not confirm in time, the mail may still be queued
        later (a broker that blocks publishers reads it once its alarm clears),
        so the caller can tell the client which task id to look for.
        """
        # The confirm waits as long as a connection may: PUBLISH_TIMEOUT in the web app,
        # WORKER_PUBLISH_TIMEOUT in a worker (bounded_publish, unbound_worker_publishes).
        options.setdefault("confirm_timeout", self.app.conf.broker_connection_timeout)
        options.setdefault("argsrepr", "(<mail>,)")
        options.setdefault("kwargsrepr", repr(kwargs or {}))
        options.setdefault("task_id", uuid())
        try:
            return super().apply_async(args, kwargs, **options)
        except Exception as error:
            error.task_id = options["task_id"]  # type: ignore[attr-defined]
            raise

    def retry_later(self, error: Exception, seconds: float, **options: Any) -> Any:
        """self.retry(exc=error, countdown=seconds, ...), the wait held by RabbitMQ (kit/later)."""
        queue = self.app.amqp.queues[self.app.conf.task_default_queue]
        on_rabbitmq = not is_embedded(self.app.conf.broker_url or "")
        return self.retry(exc=error, **later.hold_options(seconds, queue, on_rabbitmq), **options)
