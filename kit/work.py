"""The task's slow part and the waits between its retries."""

from __future__ import annotations

import random
import time

from celery import Task

from kit.settings import Settings


def do_the_work(task: Task, seconds: float) -> None:
    """Stand-in for the slow part (image processing, encoding...), reporting progress.

    The article's task sleeps; this one sleeps too, and reports how far it got
    as the STARTED state's progress: every second, or every third of the work
    when that is longer (each report is a write to the result backend), and not
    at the end, since SUCCESS follows at once.
    """
    every = max(1.0, seconds / 3)
    started = time.monotonic()
    while (remaining := seconds - (time.monotonic() - started)) > 0:
        time.sleep(min(every, remaining))
        done = (time.monotonic() - started) / seconds
        if done < 1.0:
            task.update_state(state="STARTED", meta={"progress": round(done, 3)})


def backoff(retries: int, settings: Settings) -> float:
    """Seconds before retry number `retries` + 1: doubling, capped, with jitter."""
    ceiling = min(settings.MAIL_RETRY_BACKOFF_MAX, settings.MAIL_RETRY_BACKOFF * 2**retries)
    return random.uniform(ceiling / 2, ceiling)
