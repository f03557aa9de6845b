"""2. Enqueue throughput from one producer: sendMail.delay() calls per second.

Four ways of publishing, in alternating rounds in one process:
- "kit": `sendMail.delay()` with the kit's configuration (durable queue,
  persistent message, JSON, publisher confirms: each publish waits for
  RabbitMQ's acknowledgement, so that a 202 means RabbitMQ has the mail);
- "sent-event": the same with `task_send_sent_event=True`, which the kit used
  to set: one more publish (a task-sent event) per call;
- "unconfirmed": through a connection with `confirm_publish=False`, as the
  kit published before it chose confirms: a 202 then meant "written to a socket";
- "trimmed": the knobs left that make a publish cheaper, together: a producer
  held by the caller (no pool), `retry=False` and `declare=[]` (no queue
  declaration). The kit does not use them: without the retry, the first
  publish on a connection the broker dropped fails; without the declaration,
  a mail sent before any worker declared the queue is dropped by RabbitMQ.
"""

from __future__ import annotations

import time
from typing import Any

from bench.env import BenchEnv
from bench.stats import spread

MAIL = {"to": "bench@example.com", "subject": "Benchmark", "body": "Hello"}


def run(env: BenchEnv, n: int = 3000, rounds: int = 5) -> dict[str, Any]:
    """Calls per second for each way of publishing, and their ratios to the kit's."""
    import mailasync

    task, app = mailasync.sendMail, mailasync.app
    queue = app.conf.task_default_queue
    unconfirming = app.connection_for_write(transport_options={"confirm_publish": False})
    producer = unconfirming.Producer()
    plain = app.connection_for_write()
    held = plain.Producer()

    def kit() -> None:
        task.delay(MAIL)

    def sent_event() -> None:
        task.delay(MAIL)

    def unconfirmed() -> None:
        task.apply_async((MAIL,), producer=producer)

    def trimmed() -> None:
        task.apply_async((MAIL,), producer=held, retry=False, declare=[])

    ways = {"kit": kit, "sent-event": sent_event, "unconfirmed": unconfirmed, "trimmed": trimmed}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    kit_setting = app.conf.task_send_sent_event
    try:
        for call in ways.values():  # warm up: connections, queue declaration
            for _ in range(100):
                call()
        for _ in range(rounds):
            for name, call in ways.items():
                app.conf.task_send_sent_event = name == "sent-event" or kit_setting
                began = time.perf_counter()
                for _ in range(n):
                    call()
                rates[name].append(n / (time.perf_counter() - began))
                env.purge(queue)
    finally:
        app.conf.task_send_sent_event = kit_setting
        unconfirming.release()
        plain.release()
        env.purge(queue)
    per_second = {name: spread(values) for name, values in rates.items()}
    kit_rate = per_second["kit"]["median"]
    return {
        "n_per_round": n,
        "rounds": rounds,
        "kit_sends_sent_event": bool(kit_setting),
        "per_second": per_second,
        "ms_per_call": {name: 1000 / s["median"] for name, s in per_second.items()},
        # What the confirms cost: how much faster the same publish is without them.
        "confirm_cost_ratio": per_second["unconfirmed"]["median"] / kit_rate,
        "sent_event_cost_ratio": kit_rate / per_second["sent-event"]["median"],
        "trimmed_cost_ratio": kit_rate / per_second["trimmed"]["median"],
    }
