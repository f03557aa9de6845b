"""List the mails that failed for good, and send them back to the mail queue.

    $ python3 -m kit.dead_letters              # or: make dead-letters
    $ python3 -m kit.dead_letters --replay     # or: make replay (all of them)
    $ python3 -m kit.dead_letters --replay <task id> ...

A dead letter is the task's own message, so a replayed mail keeps its task id
and Message-ID: GET /tasks/<id> follows it again, and the sent-mail ledger
still stops a second send if the first one went out after all. Its retry count
starts again from zero. Fix the cause first (the address, the password, the
mail server), or it comes straight back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from kit.broker import connect, is_embedded
from kit.queues import dead_letter_queue_name
from kit.settings import load_settings
from kit.tracking import describe_error

# RabbitMQ's record of the dead-lettering; dropped on replay, Celery has no use for it.
DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason")


@dataclass(frozen=True)
class DeadLetter:
    task_id: str
    task: str
    retries: int
    reason: str  # RabbitMQ's: rejected, expired...


def _take_all(connection: Connection, queue: str) -> tuple[Any, list[Any]]:
    """Every message in `queue`, taken unacknowledged on one channel (closing it puts them back)."""
    channel = connection.channel()
    messages = []
    try:
        while (message := channel.basic_get(queue, no_ack=False)) is not None:
            messages.append(message)
    except connection.channel_errors:  # no such queue: no worker ever ran, nothing failed
        channel = connection.channel()
    return channel, messages


def _describe(message: Any) -> DeadLetter:
    headers = message.headers or {}
    deaths = headers.get("x-death") or [{}]
    return DeadLetter(
        task_id=str(headers.get("id", "?")),
        task=str(headers.get("task", "?")),
        retries=int(headers.get("retries") or 0),
        reason=str(deaths[0].get("reason", "?")),
    )


def dead_letters(url: str, queue: str) -> list[DeadLetter]:
    """The mails kept in `queue`'s dead-letter queue, oldest first; the queue is unchanged."""
    with connect(url) as connection:
        channel, messages = _take_all(connection, dead_letter_queue_name(queue))
        channel.close()  # every message goes back, in its place
    return [_describe(message) for message in messages]


def replay(url: str, queue: str, task_ids: Iterable[str] | None = None) -> list[str]:
    """Move dead letters (all, or those of `task_ids`) back to `queue`; the ids moved.

    Each is published with publisher confirms before its dead letter is
    acknowledged: a crash in between leaves a copy in both queues, which the
    ledger makes harmless, never none.
    """
    wanted = set(task_ids) if task_ids else None
    moved = []
    with Connection(url, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer()
        channel, messages = _take_all(connection, dead_letter_queue_name(queue))
        for message in messages:
            letter = _describe(message)
            if wanted is not None and letter.task_id not in wanted:
                continue
            headers = {k: v for k, v in message.headers.items() if k not in DEATH_HEADERS}
            headers["retries"] = 0
            producer.publish(
                message.body,
                exchange="",
                routing_key=queue,
                headers=headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                delivery_mode=2,
                correlation_id=message.properties.get("correlation_id"),
                reply_to=message.properties.get("reply_to"),
                priority=message.properties.get("priority"),
                retry=True,
            )
            channel.basic_ack(message.delivery_tag)
            moved.append(letter.task_id)
        channel.close()  # the others go back to the dead-letter queue
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m kit.dead_letters", description=__doc__)
    parser.add_argument("--replay", action="store_true", help="send them back to the mail queue")
    parser.add_argument("task_ids", nargs="*", help="only these (default: all)")
    args = parser.parse_args(argv)
    settings = load_settings()
    url, queue = settings.CELERY_BROKER_URL, settings.CELERY_QUEUE
    if is_embedded(url):
        print(
            "The embedded broker keeps no dead letters: a failed mail is its FAILURE in "
            "GET /tasks/<id> and the worker's log. RabbitMQ keeps them (README)."
        )
        return 0
    if args.replay:
        moved = replay(url, queue, args.task_ids)
        print(f"replayed {len(moved)} mail(s) into {queue}: {' '.join(moved)}".rstrip(": "))
        return 0
    letters = dead_letters(url, queue)
    print(f"{len(letters)} mail(s) in {dead_letter_queue_name(queue)}")
    if letters:
        from mailasync import app  # the result backend, for each mail's error

        for letter in letters:
            meta = app.backend.get_task_meta(letter.task_id)
            error = describe_error(meta["result"]) if meta["status"] == "FAILURE" else "?"
            print(f"  {letter.task_id}  retries={letter.retries}  {letter.reason}: {error}")
        print("Fix the cause, then: make replay (or make replay TASKS='<id> ...')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
