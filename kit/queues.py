"""The kit's queues on RabbitMQ: the mail queue, its dead-letter queue, and their checks.

A mail that fails for good (a refused address, retries used up, a retry that
could not be published) is rejected by the worker without requeue, and
RabbitMQ moves it to ``<CELERY_QUEUE>.dead`` instead of dropping it, where
``make dead-letters`` lists it and ``make replay`` sends it back (see
kit/dead_letters.py). The embedded broker has no dead-lettering: there a failed
mail is kept only as its FAILURE in GET /tasks and the worker's log.
"""

from __future__ import annotations

from typing import Any

from amqp.exceptions import PreconditionFailed
from celery import Celery, bootsteps
from celery.signals import worker_init
from kombu import Connection, Exchange, Queue

from kit import later
from kit.broker import is_embedded


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dead"


def mail_queue(name: str) -> Queue:
    """The queue sendMail is published to: durable, dead-lettering into `<name>.dead`.

    The dead-letter exchange is RabbitMQ's default one, which routes by queue
    name, so no exchange has to exist for a rejected mail to be kept.
    """
    return Queue(
        name,
        Exchange(name, type="direct"),
        routing_key=name,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue_name(name),
        },
    )


def dead_letter_queue(name: str) -> Queue:
    dead = dead_letter_queue_name(name)
    return Queue(dead, Exchange(""), routing_key=dead)


class QueueMismatch(RuntimeError):
    """The queue exists on the broker with other arguments than the kit declares."""


def mismatch_fix(queue: str, error: Exception) -> str:
    """What PRECONDITION_FAILED on the kit's queue means, and the two ways out."""
    return (
        f"the queue {queue!r} already exists on RabbitMQ with other settings than this "
        f"version of the kit declares ({error}). Either use a new queue: set "
        f"CELERY_QUEUE={queue}-2 (in the environment or default_settings.py) for the app and "
        f"the workers; or, once no mail waits in it (rabbitmqctl list_queues name messages), "
        f"delete the old one: rabbitmqctl delete_queue {queue}"
    )


def declare_mail_queue(connection: Connection, queue: Queue) -> None:
    """Declare the mail queue; QueueMismatch if it exists with other arguments."""
    channel = connection.channel()
    try:
        queue.bind(channel).declare()
    except PreconditionFailed as error:
        raise QueueMismatch(mismatch_fix(queue.name, error)) from None
    finally:
        if channel.is_open:
            channel.close()


def declare_around(connection: Connection, queue: Queue) -> None:
    """Declare what the mail queue relies on: its dead-letter queue and the delay queues."""
    with connection.channel() as channel:
        dead_letter_queue(queue.name).bind(channel).declare()
    later.declare(connection, queue)


def is_mismatch(error: BaseException) -> bool:
    """True for the broker's answer to a queue declared with other arguments."""
    return isinstance(error, PreconditionFailed) and "inequivalent arg" in str(error)


class DeclareQueues(bootsteps.StartStopStep):
    """Worker step: on every (re)connection, after the task consumer declared the mail
    queue, declare its dead-letter queue and the delay queues too, before any reject."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer: Any) -> None:
        app = consumer.app
        if not is_embedded(app.conf.broker_url or ""):
            declare_around(consumer.connection, app.amqp.queues[app.conf.task_default_queue])


def check_at_start(sender: Any, **_: Any) -> None:
    """worker_init: a queue left by an older kit with other arguments stops the worker here,
    naming CELERY_QUEUE and the fix, instead of Celery's "Unrecoverable error" traceback."""
    app = sender.app
    if is_embedded(app.conf.broker_url or ""):
        return
    try:
        with app.connection_for_write() as connection:
            declare_mail_queue(connection, app.amqp.queues[app.conf.task_default_queue])
    except QueueMismatch as error:
        raise SystemExit(f"mailasync: {error}") from None
    except Exception:  # noqa: BLE001 (a broker that is down: the worker's own loop waits for it)
        return


def install(app: Celery, queue: str) -> None:
    """Publish sendMail to `queue` (see mail_queue) and declare the queues in every worker."""
    app.conf.task_default_queue = queue
    app.conf.task_queues = [mail_queue(queue)]
    app.steps["consumer"].add(DeclareQueues)
    worker_init.connect(check_at_start, weak=False, dispatch_uid="mailasync-queues")
