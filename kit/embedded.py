"""The embedded broker: kombu's filesystem transport, with each message written whole.

kombu writes a message straight into the queue folder under its final name, and a
worker takes whatever file it finds there without a lock, so a worker polling
while another process (or its own retry) publishes can read an empty file and
stop with "Unrecoverable error: JSONDecodeError". It creates an exchange's
binding table the same way: empty for a moment, before its lock is taken. Here
both are written under a temporary name and then moved into place, so a reader
sees them whole or not at all. Everything else is kombu's: the file names (and
with them the order), the polling, and no acknowledgements.

Importing this module makes it the transport behind every ``filesystem://`` URL.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    """kombu's filesystem channel, publishing by rename."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Put `payload` onto `queue`: written under a temporary name, then renamed into place."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"  # kombu's naming
        fd, partial = tempfile.mkstemp(dir=self.data_folder_out, prefix="partial-")  # no ".msg"
        with os.fdopen(fd, "wb") as out:
            out.write(str_to_bytes(dumps(payload)))
        os.replace(partial, os.path.join(self.data_folder_out, name))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        """Bind `queue`; a new binding table appears with its first binding already in it."""
        table = self._exchange_file(exchange)
        if not table.exists():
            self.control_folder.mkdir(exist_ok=True)
            first = [filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")]
            fd, partial = tempfile.mkstemp(dir=self.control_folder, prefix="partial-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(str_to_bytes(dumps(first)))
                os.link(partial, table)  # fails if another process made the table first
                return
            except FileExistsError:
                pass  # then add this binding to that table, under kombu's lock
            finally:
                os.unlink(partial)
        super()._queue_bind(exchange, routing_key, pattern, queue)


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
