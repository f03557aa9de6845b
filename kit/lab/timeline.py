"""A timeline of which worker slot ran which mail when, from Celery's own events.

Workers publish task events (worker_send_task_events=True in mailasync.py) to
the broker's ``celeryev`` exchange (the producer's ``task-sent`` is off: it
costs a second publish per ``.delay()``, so the sender passes its own send
times to ``spans``). ``EventCapture`` listens to them in a background
thread of the notebook, like a tiny Flower, and ``timeline_chart`` draws one
lane per worker process or thread:

    >>> from kit.lab import timeline
    >>> capture = timeline.EventCapture(kit.mailasync.app).start()
    >>> kit.add_worker(pool="threads", concurrency=2, extra_args=timeline.WORKER_ARGS)
    >>> sent = {kit.mailasync.sendMail.delay(lab.mail(i)).id: time.time() for i in range(8)}
    >>> capture.wait_until_done(sent)
    >>> spans = capture.spans({task_id: f"#{i}" for i, task_id in enumerate(sent)}, sent)
    >>> timeline.timeline_chart(spans)
    >>> capture.stop()

Celery's task-started event names the worker but not the pool process or
thread that runs the task, so a worker started with ``WORKER_ARGS`` imports
this module, which sends one more event, ``task-runner``, from inside the pool
process or thread as the task begins. Without it, lanes are numbered slots.
"""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.signals import task_prerun

# Extra worker arguments: import this module so its task_prerun handler runs there.
WORKER_ARGS = ["--include", "kit.lab.timeline"]
RUNNER_EVENT = "task-runner"
STATES = {
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-rejected": "REJECTED",
    "task-revoked": "REVOKED",
}
DONE_EVENTS = tuple(STATES)


def runner_name() -> str:
    """The pool process and thread running the current code, such as 'ForkPoolWorker-2'."""
    process = multiprocessing.current_process().name
    thread = threading.current_thread().name
    if process != "MainProcess":  # prefork: one task at a time per child process
        return process
    match = re.search(r"_(\d+)$", thread)  # ThreadPoolExecutor-0_3 -> thread 3
    return f"thread {match.group(1)}" if match else thread


@task_prerun.connect
def announce_runner(task: Task | None = None, **_: Any) -> None:
    """In a worker: say which process or thread runs this task (a monitoring event)."""
    if task is None or not task.request.hostname:
        return  # not in a worker (e.g. an eager call in a notebook)
    try:
        task.send_event(RUNNER_EVENT, runner=runner_name(), retry=False)
    except Exception:  # monitoring must never break the task
        pass


@dataclass(frozen=True)
class TaskSpan:
    """One task's life in epoch seconds: sent, received by a worker, started, done."""

    task_id: str
    label: str
    hostname: str
    runner: str
    state: str
    sent: float | None
    received: float | None
    started: float | None
    done: float | None

    @property
    def waited(self) -> float | None:
        """Seconds between being sent and starting to run."""
        if self.sent is None or self.started is None:
            return None
        return self.started - self.sent

    @property
    def ran(self) -> float | None:
        if self.started is None or self.done is None:
            return None
        return self.done - self.started


class EventCapture:
    """Collect task events from the broker in a background thread (prints nothing).

    The capture must be started before the tasks are sent: events are not
    stored by the broker for listeners that come later.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: Any = None
        self.error: BaseException | None = None

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type", "").startswith("task-"):
            with self._lock:
                self.events.append(event)

    def _run(self) -> None:
        ready = self._ready

        class Receiver(self.app.events.Receiver):  # type: ignore[name-defined,misc]
            def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
                super().on_consume_ready(*args, **kwargs)
                ready.set()

        try:
            with self.app.connection_for_read() as connection:
                self._receiver = Receiver(connection, handlers={"*": self._on_event}, app=self.app)
                for _ in self._receiver.consume(limit=None, timeout=None, wakeup=False):
                    pass
        except BaseException as error:  # shown by start() or stop(), never printed here
            self.error = error
            ready.set()

    def start(self, timeout: float = 10.0) -> EventCapture:
        """Start listening; return once the event queue is bound on the broker."""
        self._thread = threading.Thread(target=self._run, name="event-capture", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self.error is not None:
            raise RuntimeError(f"could not start listening to task events: {self.error!r}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening (within about a second). Safe to call twice."""
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> EventCapture:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def done_ids(self) -> set[str]:
        return {e["uuid"] for e in self.snapshot() if e["type"] in DONE_EVENTS}

    def wait_until_done(self, task_ids: Iterable[str], timeout: float = 60.0) -> None:
        """Wait until every task in `task_ids` has a succeeded/failed event (and its runner)."""
        wanted = set(task_ids)
        deadline = time.monotonic() + timeout
        while not wanted <= self.done_ids():
            if time.monotonic() > deadline:
                missing = len(wanted - self.done_ids())
                raise TimeoutError(f"{missing} of {len(wanted)} tasks not done in {timeout} s")
            time.sleep(0.05)
        time.sleep(0.3)  # task-runner events travel on their own connection: let them land

    def spans(
        self, labels: Mapping[str, str], sent: Mapping[str, float] | None = None
    ) -> list[TaskSpan]:
        """One TaskSpan per task id in `labels` (id -> label), ordered by start time.

        `sent` (id -> time.time() at .delay()) stands in for task-sent events.
        """
        sent = sent or {}
        by_id: dict[str, dict[str, Any]] = {task_id: {} for task_id in labels}
        for event in self.snapshot():
            fields = by_id.get(event.get("uuid", ""))
            if fields is None:
                continue
            kind = event["type"]
            if kind == RUNNER_EVENT:
                fields["runner"] = event.get("runner")
            elif kind in ("task-sent", "task-received", "task-started") or kind in DONE_EVENTS:
                # A redelivered or retried task has several: keep the last start, first send.
                key = "done" if kind in DONE_EVENTS else kind.removeprefix("task-")
                if key == "sent" and "sent" in fields:
                    continue
                fields[key] = event["timestamp"]
                if kind != "task-sent":
                    fields["hostname"] = event.get("hostname", "")
                if kind in DONE_EVENTS:
                    fields["state"] = STATES[kind]
        spans = [
            TaskSpan(
                task_id=task_id,
                label=labels[task_id],
                hostname=fields.get("hostname", "?"),
                runner=fields.get("runner") or "",
                state=fields.get("state", "PENDING"),
                sent=fields.get("sent", sent.get(task_id)),
                received=fields.get("received"),
                started=fields.get("started"),
                done=fields.get("done"),
            )
            for task_id, fields in by_id.items()
        ]
        return sorted(spans, key=lambda s: (s.started is None, s.started or 0.0))


def short_host(hostname: str) -> str:
    """'nb05-w1-1234@box' -> 'nb05-w1-1234': the node name without the machine name."""
    return hostname.split("@", 1)[0]


def lanes(spans: Sequence[TaskSpan]) -> dict[str, str]:
    """Task id -> lane name: the worker and its process or thread.

    Spans without a runner (a worker started without WORKER_ARGS, or gevent,
    where every task shares one thread) get the first free numbered slot.
    """
    lane_of: dict[str, str] = {}
    busy_until: dict[tuple[str, int], float] = {}
    for span in sorted(spans, key=lambda s: _or_last(s.started)):
        host = short_host(span.hostname)
        if span.runner and not span.runner.startswith(("MainThread", "Dummy")):
            lane_of[span.task_id] = f"{host} / {span.runner}"
            continue
        slot = 0
        started = _or_last(span.started)
        while busy_until.get((host, slot), float("-inf")) > started + 1e-3:
            slot += 1
        busy_until[(host, slot)] = started if span.done is None else span.done
        lane_of[span.task_id] = f"{host} / slot {slot}"
    return lane_of


def max_overlap(spans: Sequence[TaskSpan]) -> int:
    """The most tasks that were running at the same instant (the concurrency reached)."""
    edges = []
    for span in spans:
        if span.started is not None and span.done is not None:
            edges += [(span.started, 1), (span.done, -1)]
    running = peak = 0
    for _, step in sorted(edges):  # at a tie, -1 sorts first: end-then-start is no overlap
        running += step
        peak = max(peak, running)
    return peak


def _or_last(moment: float | None) -> float:
    """Sort key: a moment that never came sorts last."""
    return float("inf") if moment is None else moment


def start_order(spans: Sequence[TaskSpan]) -> list[str]:
    """Labels in the order their tasks started."""
    return [s.label for s in sorted(spans, key=lambda s: _or_last(s.started))]


def done_order(spans: Sequence[TaskSpan]) -> list[str]:
    """Labels in the order their tasks finished."""
    return [s.label for s in sorted(spans, key=lambda s: _or_last(s.done))]


def natural(text: str) -> list[Any]:
    """Sort key that puts 'slot 2' before 'slot 10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def timeline_chart(
    spans: Sequence[TaskSpan], title: str = "Which worker ran which mail, when"
) -> Any:
    """A Gantt-style chart: a lane per worker process/thread, a bar per task.

    The thin grey line is the time a mail waited (sent -> started), the bar is
    the time it ran (started -> done), coloured by worker and labelled.
    """
    import matplotlib.pyplot as plt

    timed = [s for s in spans if s.started is not None and s.done is not None]
    if not timed:
        raise ValueError("no task has both a started and a done event yet")
    zero = min(s.started if s.sent is None else s.sent for s in timed)  # type: ignore[type-var]
    lane_of = lanes(timed)
    names = sorted(set(lane_of.values()), key=natural)
    row = {name: i for i, name in enumerate(names)}
    hosts = sorted({short_host(s.hostname) for s in timed})
    colours = {host: plt.get_cmap("tab10")(i % 10) for i, host in enumerate(hosts)}

    figure, axes = plt.subplots(figsize=(9, 1.2 + 0.45 * len(names)))
    for span in timed:
        y = row[lane_of[span.task_id]]
        start, end = span.started - zero, span.done - zero  # type: ignore[operator]
        if span.sent is not None:
            waited_from = min(span.sent - zero, start)  # clocks of two processes: never < 0
            axes.plot([waited_from, start], [y, y], color="0.7", linewidth=1, zorder=1)
        axes.broken_barh(
            [(start, end - start)],
            (y - 0.35, 0.7),
            facecolors=colours[short_host(span.hostname)],
            edgecolor="white",
            zorder=2,
        )
        axes.text(start + (end - start) / 2, y, span.label, ha="center", va="center", fontsize=8)
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the first mail was sent (grey: waiting in the queue)")
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure
