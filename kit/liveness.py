"""How soon a dead or frozen worker's mail goes to another worker, and how long a task may run."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import celeryd_init

from kit.settings import Settings


def install(app: Celery, settings: Settings) -> None:
    """AMQP heartbeats every BROKER_HEARTBEAT seconds, fit for the worker's pool."""
    app.conf.broker_heartbeat = settings.BROKER_HEARTBEAT
    celeryd_init.connect(tune_green_pools, weak=False, dispatch_uid="mailasync-green-pools")


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
