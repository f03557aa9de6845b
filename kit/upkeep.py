"""Housekeeping without celery beat: old results, ledger entries and temporary files go.

The file:// result backend keeps one file per task result (``celery-task-meta-*``),
per sent mark (``mailasync-sent-*``) and per claim (``mailasync-claim-*``), and a
writer that died leaves its ``.tmp-*`` file. Every worker sweeps the folder when
it starts and then every hour (a worker bootstep on the worker's own timer, in
its main process only); the web app never does. Several workers sweeping one
folder is harmless. On Redis, Celery writes results with an expiry, and the
ledger writes its keys with one (kit.tracking), so nothing needs sweeping.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps

from kit.settings import Settings
from kit.tracking import CLAIM_KEY_PREFIX, RELEASED, SENT_KEY_PREFIX

RESULT_PREFIXES = ("celery-task-meta-", "celery-taskset-meta-")
SENT_PREFIX = SENT_KEY_PREFIX.decode()
CLAIM_PREFIX = CLAIM_KEY_PREFIX.decode()
TMP_PREFIX = ".tmp-"
TMP_EXPIRES = 3600.0  # far longer than any one write takes
SWEEP_EVERY = 3600.0

log = logging.getLogger(__name__)


def expire(
    folder: str | os.PathLike[str],
    result_expires: float,
    ledger_expires: float,
    tmp_expires: float = TMP_EXPIRES,
    now: float | None = None,
) -> dict[str, int]:
    """Remove files last written longer ago than their lifetime; how many of each went.

    A claim goes only with every generation of its mail's claims, and never while
    one holds a live lease.
    """
    now = time.time() if now is None else now
    removed = {"results": 0, "sent": 0, "claims": 0, "tmp": 0}
    claims: dict[str, list[os.DirEntry[str]]] = defaultdict(list)
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(CLAIM_PREFIX):
                claims[name.rpartition("-")[0]].append(entry)  # claim-<key>-<generation>
                continue
            if name.startswith(RESULT_PREFIXES):
                kind, lifetime = "results", result_expires
            elif name.startswith(SENT_PREFIX):
                kind, lifetime = "sent", ledger_expires
            elif name.startswith(TMP_PREFIX):
                kind, lifetime = "tmp", tmp_expires
            else:
                continue
            if age(entry, now) > lifetime and remove(entry):
                removed[kind] += 1
    for generations in claims.values():
        if all(age(e, now) > ledger_expires and not live(e, now) for e in generations):
            removed["claims"] += sum(remove(entry) for entry in generations)
    return removed


def age(entry: os.DirEntry[str], now: float) -> float:
    """Seconds since the file was last written; 0 if it is gone."""
    try:
        return now - entry.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def live(entry: os.DirEntry[str], now: float) -> bool:
    """True if a claim file holds a lease that has not run out."""
    try:
        held = Path(entry.path).read_bytes()
    except FileNotFoundError:
        return False
    try:
        return held != RELEASED and float(held) > now
    except ValueError:
        return True  # unreadable: keep it, rather than let a second run send


def remove(entry: os.DirEntry[str]) -> bool:
    """Delete a file; False if another sweeper got there first."""
    try:
        os.unlink(entry.path)
    except FileNotFoundError:
        return False
    return True


class Upkeep(bootsteps.StartStopStep):
    """Worker bootstep: ``expire`` at start-up, then every SWEEP_EVERY on the worker's timer."""

    requires = ("celery.worker.components:Timer",)
    folder: Path
    result_expires: float
    ledger_expires: float

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry: Any = None

    def start(self, parent: Any) -> None:
        self.sweep()
        self.timer_entry = parent.timer.call_repeatedly(SWEEP_EVERY, self.sweep)

    def stop(self, parent: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()

    def sweep(self) -> None:
        try:
            removed = expire(self.folder, self.result_expires, self.ledger_expires)
        except Exception:  # housekeeping must never stop the worker
            log.exception("upkeep: sweeping %s failed", self.folder)
            return
        log.info("upkeep: removed %s", ", ".join(f"{n} {kind}" for kind, n in removed.items()))


def install(app: Celery, settings: Settings) -> None:
    """Expire results after RESULT_EXPIRES and ledger entries after LEDGER_EXPIRES."""
    app.conf.result_expires = settings.RESULT_EXPIRES  # Redis: written with this expiry
    url = settings.CELERY_RESULT_BACKEND
    if not url.startswith("file://"):
        return
    step = type(
        "Upkeep",
        (Upkeep,),
        {
            "__module__": __name__,
            "folder": Path(url.removeprefix("file://")),
            "result_expires": settings.RESULT_EXPIRES,
            "ledger_expires": settings.LEDGER_EXPIRES,
        },
    )
    app.steps["worker"].add(step)
