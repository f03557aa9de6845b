"""How soon a frozen or dead worker's mail goes to another worker, and how long a task may run.

Every pool (prefork, threads, gevent) sends AMQP heartbeats on the connection it consumes
from, every BROKER_HEARTBEAT / 2 seconds. RabbitMQ closes a connection that has been silent
for two of its checks, one every BROKER_HEARTBEAT seconds, and hands its unacknowledged
mail to another worker: a frozen worker's mail moved on 12 s after the freeze with 4 s
heartbeats, in each pool (tests/test_liveness.py). With the default 60 s, expect two to
three minutes, not consumer_timeout's 30. A killed worker's mail moves at once (the
kernel closes its socket); only a frozen one needs heartbeats.

Time limits (``longest_task_run``, the soft one TIME_LIMIT_MARGIN earlier):

- prefork: both. The soft limit raises SoftTimeLimitExceeded in the task; the hard one
  kills its process.
- gevent: hard only (a gevent.Timeout in the task's greenlet).
- threads: neither. The mailer's deadline (5 x MAIL_TIMEOUT a send) and the bounded
  WORK_SECONDS keep a run within the limit anyway.

A send cut by the soft limit is retried later (mailasync.py); a run the hard limit
stops is recorded as FAILURE and acknowledged, not retried.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer
from kombu import Connection

from kit.settings import Settings, longest_task_run

# Seconds between the soft and the hard time limit: room for the task to retry cleanly.
TIME_LIMIT_MARGIN = 10.0


def install(app: Celery, settings: Settings) -> None:
    """Heartbeats for every pool (HeartbeatConsumer), and task time limits from the settings."""
    hard = longest_task_run(settings)
    app.conf.update(
        broker_heartbeat=settings.BROKER_HEARTBEAT,
        worker_consumer=f"{__name__}:HeartbeatConsumer",
        task_time_limit=hard,
        task_soft_time_limit=hard - TIME_LIMIT_MARGIN,
    )


class HeartbeatConsumer(Consumer):
    """Celery's consumer, with heartbeats on the consuming connection in green pools too.

    In a gevent or eventlet pool Celery's blocking loop (celery/worker/loops.py,
    synloop) waits up to 0.1 s on the event connection after every frame when
    ``amqheartbeat`` is set, capping the worker at a few dozen messages a second.
    Here ``amqheartbeat`` stays 0 in green pools, so the event connection has no
    heartbeats and that wait never happens, while the consuming connection is
    opened with BROKER_HEARTBEAT: synloop sends its heartbeats from the worker's
    timer for any connection that negotiated them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.green = bool(getattr(self.pool, "is_green", False))
        self.consumer_heartbeat = self.app.conf.broker_heartbeat or 0
        if self.green:
            self.amqheartbeat = 0  # the event connection: no heartbeat, so no 0.1 s drain

    def connect(self) -> Connection:
        """The connection tasks arrive on, with heartbeats whatever the pool.

        Only this one: the remote-control connection of a green pool (celery's
        gPidbox) is never heartbeat-checked, so it must not negotiate heartbeats.
        """
        if not self.green:  # prefork, threads: Celery's own, amqheartbeat is already set
            return super().connect()
        return self.connection_for_read(heartbeat=self.consumer_heartbeat)
