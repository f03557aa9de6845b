"""Holding a mail until later without holding its message: RabbitMQ's delay queues.

Celery keeps a task with a countdown or an ETA unacknowledged in the worker
until its time comes. RabbitMQ closes the channel of a consumer that holds a
message longer than its consumer_timeout (30 minutes by default) and hands
every message on it to another worker, so a long wait there ends in
duplicates and loops. The kit instead publishes a mail that must wait into a
chain of 28 delay queues (kombu's native delayed delivery, which Celery uses
for quorum queues): the queue of level n keeps a message 2**n seconds, and the
bits of the delay pick the levels it passes through, so any wait up to 2**28 s
(8 years) takes at most 28 hops. At the end it is routed back to the kit's
queue, with Celery's ETA still in it. Nothing holds it meanwhile: the worker
acknowledges the old message as soon as the new one is published.

Waits under a second are held by the worker, as Celery does. The embedded
broker has no message TTL (and no consumer_timeout), so there every wait is
held by the worker, and a worker killed meanwhile loses that mail (notebook 06).
"""

from __future__ import annotations

from typing import Any

from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues,
    level_name,
)

PREFIX = "mailasync"  # mailasync_celery_delayed_0 ... _27, mailasync_celery_delayed_delivery
TOP_LEVEL = 27
DELIVERY_EXCHANGE = f"{PREFIX}_celery_delayed_delivery"


def declare(connection: Connection, queue: Queue, queue_type: str = "classic") -> None:
    """Declare the delay queues and route what leaves them back to `queue`."""
    declare_native_delayed_delivery_exchanges_and_queues(connection, queue_type, prefix=PREFIX)
    channel = connection.channel()
    try:
        # Delayed routing keys end in ".<the queue's routing key>".
        queue.bind(channel).bind_to(DELIVERY_EXCHANGE, routing_key=f"#.{queue.routing_key}")
    finally:
        channel.close()


def hold_options(seconds: float, queue: Queue, on_rabbitmq: bool) -> dict[str, Any]:
    """apply_async/retry options that deliver a task to `queue` in `seconds`.

    Both branches name the exchange and routing key: a retried task would
    otherwise inherit the routing key it arrived with, which for a delayed
    message carries the delay's bits.
    """
    if on_rabbitmq and seconds >= 1:
        return {
            "countdown": seconds,
            "exchange": Exchange(level_name(TOP_LEVEL, PREFIX), type="topic"),
            "routing_key": calculate_routing_key(int(seconds), queue.routing_key),
        }
    return {"countdown": seconds, "exchange": queue.exchange, "routing_key": queue.routing_key}
