"""Task tracking: the result backend, the sent-mail ledger and task status.

The kit's default result backend is a folder of files (``file://``) that every
process on this machine can read, so the web app can report on a task that a
worker ran. Celery's own file backend writes in place, so a reader polling
while a worker writes progress could read half a file: ours writes a
temporary file and renames it.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.backends.base import BaseKeyValueStoreBackend
from celery.backends.filesystem import FilesystemBackend
from celery.result import AsyncResult
from kombu.utils.encoding import ensure_bytes

from kit.settings import Settings

ATOMIC_FILE_BACKEND = "kit.tracking:AtomicFilesystemBackend"
SENT_KEY_PREFIX = b"mailasync-sent-"
CLAIM_KEY_PREFIX = b"mailasync-claim-"
RELEASED = b"released"

log = logging.getLogger(__name__)


class AtomicFilesystemBackend(FilesystemBackend):
    """Celery's file:// result backend, with writes that readers see whole or not at all."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Whole files renamed into place: safe to share across threads and greenlets.
        # Celery otherwise makes one backend per thread (per greenlet under gevent:
        # one per task), each writing and deleting a test file in the folder.
        self.thread_safe = True

    def set(self, key: bytes, value: Any) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=b".tmp-")
        with os.fdopen(fd, "wb") as out:
            out.write(ensure_bytes(value))
        os.replace(tmp, self._filename(key))

    def add(self, key: bytes, value: Any) -> bool:
        """Store `value` under `key` only if the key is absent; True if this call stored it.

        The file is written whole under a temporary name, then linked into place:
        the link fails if the name exists, so of two writers exactly one wins,
        and no reader ever sees the file half written.
        """
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=b".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(ensure_bytes(value))
            os.link(tmp, self._filename(key))
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True


def backend_url(url: str) -> str:
    """Route file:// result URLs to the atomic backend; leave the others alone."""
    if url.startswith("file://"):
        return f"{ATOMIC_FILE_BACKEND}+{url}"
    return url


class ClaimBusy(Exception):
    """Another run of this task holds a live claim on its send: try again after the lease."""


class AlreadySent(Exception):
    """The mail went out in another run of this task while this one did its work."""


@dataclass(frozen=True)
class Claim:
    """The right to send one mail: which claim record it is, and whether it took one over."""

    name: bytes
    generation: int  # 0 for the first claim on a mail
    possible_duplicate: bool  # the run before it let its lease run out, maybe after sending


class SentLedger:
    """Which idempotency keys had their mail sent, and who may send now, in the result backend.

    At-least-once delivery means a task can run twice: redelivered after a worker
    died, or twice at once when a worker that lost its broker connection keeps
    running what the broker hands to another. The task checks ``was_sent``
    before the work, then takes a ``claim`` right before the send: an atomic
    add-if-absent with a lease, so two runs cannot both send. While the lease
    is live a second run waits and retries; once it has run out without a
    "sent" mark (its holder died mid-send), the next run takes over, knowing
    the mail may already have gone out. ``record`` marks the key sent.

    Entries live ``expires`` seconds (LEDGER_EXPIRES): on Redis each key is written
    with that expiry; in a file:// folder kit.upkeep sweeps them.
    """

    def __init__(
        self, app: Celery, lease: float = 60.0, expires: float = Settings.LEDGER_EXPIRES
    ) -> None:
        self.app = app
        self.lease = lease  # longer than any one send can take
        self.expires = expires

    @contextmanager
    def sending(self, key: str) -> Iterator[Claim]:
        """Claim `key`'s send for the block and mark it sent after; release it if the block fails.

        Raises ClaimBusy if another run holds the claim, AlreadySent if the mail
        went out before this run got it.
        """
        claim = self.claim(key, self.lease)
        try:
            # Only a claim after an earlier one can follow a send; the first needs no read.
            if claim.generation > 0 and self.was_sent(key):
                raise AlreadySent(key)
            if claim.possible_duplicate:
                log.warning(
                    "send %s: taking over a claim whose lease ran out: maybe sent twice", key
                )
            yield claim
        except BaseException:
            self.release(claim)
            raise
        self.record(key)

    @property
    def store(self) -> BaseKeyValueStoreBackend:
        backend = self.app.backend
        if not isinstance(backend, BaseKeyValueStoreBackend):  # Redis is not a KeyValueStoreBackend
            raise RuntimeError(
                "CELERY_RESULT_BACKEND must be a key-value store such as file:// or redis:// "
                "so that every worker shares the sent-mail ledger."
            )
        return backend

    def was_sent(self, key: str) -> bool:
        return self.store.get(SENT_KEY_PREFIX + ensure_bytes(key)) is not None

    def record(self, key: str) -> None:
        self._put(SENT_KEY_PREFIX + ensure_bytes(key), b"1")

    def claim(self, key: str, lease: float) -> Claim:
        """Take the right to send `key`'s mail for `lease` seconds, or raise ClaimBusy.

        Claims come in generations (claim-<key>-0, -1, ...), each created with an
        atomic add-if-absent, so that taking over an ended claim is itself atomic:
        of two runs that find generation n ended, only one creates n + 1.
        """
        until = f"{time.time() + lease:.3f}".encode()
        ended_by_lease = False
        for generation in itertools.count():
            name = CLAIM_KEY_PREFIX + ensure_bytes(f"{key}-{generation}")
            if self._add(name, until):
                return Claim(name, generation, possible_duplicate=ended_by_lease)
            held = self.store.get(name) or RELEASED
            if held != RELEASED and float(held) > time.time():
                if self.was_sent(key):  # its holder sent it; the claim just has not run out
                    raise AlreadySent(key)
                raise ClaimBusy(f"another run is sending {key} (lease until {float(held):.0f})")
            ended_by_lease = held != RELEASED
        raise AssertionError("unreachable")

    def release(self, claim: Claim) -> None:
        """End a claim after a send that failed, so that a retry can take the next one at once."""
        self._put(claim.name, RELEASED)

    @property
    def redis(self) -> Any | None:
        """The Redis client of a redis:// result backend, else None."""
        client = getattr(self.store, "client", None)  # the file backend has none
        return client if hasattr(client, "set") else None

    def _put(self, name: bytes, value: bytes) -> None:
        """Write an entry; on Redis it expires by itself after ``expires`` seconds.

        (Celery's own Redis ``set`` would expire it with the results, after RESULT_EXPIRES.)
        """
        redis = self.redis
        if redis is None:
            self.store.set(name, value)
        else:
            redis.set(name, value, px=round(self.expires * 1000))

    def _add(self, name: bytes, value: bytes) -> bool:
        """Add-if-absent on the backend: the file backend's link, Redis's SET NX."""
        store = self.store
        if isinstance(store, AtomicFilesystemBackend):
            return store.add(name, value)
        redis = self.redis
        if redis is not None:
            return bool(redis.set(name, value, nx=True, px=round(self.expires * 1000)))
        raise RuntimeError(
            f"the result backend {type(store).__name__} cannot claim a send atomically: "
            "use CELERY_RESULT_BACKEND=file://... or redis://..."
        )


def task_status(result: AsyncResult) -> dict[str, Any]:
    """What GET /tasks/<id> answers: state, and progress, result or error where they apply."""
    # One read of the stored meta: AsyncResult.state and .info would each read it
    # (for unfinished tasks), and a worker writing between the two could mix them.
    meta = result.backend.get_task_meta(result.id)
    state, info = meta["status"], meta["result"]
    status: dict[str, Any] = {"task_id": result.id, "state": state}
    if state == "PENDING":
        status["detail"] = (
            "PENDING means unknown: the task is queued and no worker has started it, "
            "or no task with this id was ever sent"
        )
    elif state == "STARTED":
        status["progress"] = info.get("progress", 0.0) if isinstance(info, dict) else 0.0
    elif state == "SUCCESS":
        status["progress"] = 1.0
        status["result"] = info
    elif state in ("FAILURE", "RETRY"):
        status["error"] = describe_error(info)
    return status


def describe_error(info: Any) -> str:
    """A one-line reason from a stored exception."""
    if isinstance(info, BaseException):
        return f"{type(info).__name__}: {info}"
    return str(info)
