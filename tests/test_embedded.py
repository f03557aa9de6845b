"""The embedded broker: kombu's filesystem transport, with each message written whole."""

from __future__ import annotations

import threading
from pathlib import Path

from kit import embedded
from kit.broker import connect, embedded_transport_options


def test_filesystem_urls_get_the_kits_transport() -> None:
    with connect("filesystem://") as connection:
        assert connection.transport_cls == "filesystem"
        assert isinstance(connection.transport, embedded.Transport)


def test_a_consumer_polling_while_messages_are_published_reads_every_one_whole(
    tmp_path: Path,
) -> None:
    """kombu's own transport lets a poller read a file still being written (JSONDecodeError)."""
    count = 400
    options = {**embedded_transport_options(tmp_path), "polling_interval": 0}  # poll flat out
    received: list[int] = []
    errors: list[BaseException] = []
    declared = threading.Event()

    def consume() -> None:
        with connect("filesystem://") as connection:
            connection.transport_options.update(options)
            queue = connection.SimpleQueue("race")  # declares and binds it
            declared.set()
            try:
                while len(received) < count:
                    message = queue.get(timeout=10)
                    received.append(message.payload["n"])
                    message.ack()
            except BaseException as error:  # noqa: BLE001 (reported by the assert below)
                errors.append(error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    # In one process the transport shares its bindings between threads: publish only
    # once the consumer's binding is on disk, or the first messages have nowhere to go.
    assert declared.wait(10)
    with connect("filesystem://") as connection:
        connection.transport_options.update(options)
        queue = connection.SimpleQueue("race")
        for n in range(count):
            queue.put({"n": n, "padding": "x" * 2000})
    consumer.join(60)
    assert not errors, errors
    assert sorted(received) == list(range(count))
