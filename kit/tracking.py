"""Task tracking: the result backend, the sent-mail ledger and task status.

The kit's default result backend is a folder of files (``file://``) that every
process on this machine can read, so the web app can report on a task that a
worker ran. Celery's own file backend writes in place, so a reader polling
while a worker writes progress could read half a file: ours writes a
temporary file and renames it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from celery import Celery
from celery.backends.base import KeyValueStoreBackend
from celery.backends.filesystem import FilesystemBackend
from celery.result import AsyncResult
from kombu.utils.encoding import ensure_bytes

ATOMIC_FILE_BACKEND = "kit.tracking:AtomicFilesystemBackend"
SENT_KEY_PREFIX = b"mailasync-sent-"


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


def backend_url(url: str) -> str:
    """Route file:// result URLs to the atomic backend; leave the others alone."""
    if url.startswith("file://"):
        return f"{ATOMIC_FILE_BACKEND}+{url}"
    return url


class SentLedger:
    """Which idempotency keys already had their mail sent, kept in the result backend.

    At-least-once delivery means a task can run twice (a worker killed after
    sending but before acknowledging). The task checks the ledger before
    sending and records the key after, so the second run sends nothing.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app

    @property
    def store(self) -> KeyValueStoreBackend:
        backend = self.app.backend
        if not isinstance(backend, KeyValueStoreBackend):
            raise RuntimeError(
                "CELERY_RESULT_BACKEND must be a key-value store such as file:// or redis:// "
                "so that every worker shares the sent-mail ledger."
            )
        return backend

    def was_sent(self, key: str) -> bool:
        return self.store.get(SENT_KEY_PREFIX + ensure_bytes(key)) is not None

    def record(self, key: str) -> None:
        self.store.set(SENT_KEY_PREFIX + ensure_bytes(key), b"1")


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
