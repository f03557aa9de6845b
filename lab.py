"""Helpers the notebooks import, so no cell pastes kit code.

One call gives a notebook an isolated, running kit: its own queue, its own
local inbox and its own worker(s), and the web app if asked for. Everything it
starts is stopped by ``kit.stop()`` and, failing that, when the kernel exits
(processes.py stops every process at interpreter exit and, on Linux, when the
kernel dies).

    >>> import lab
    >>> kit = lab.start_kit("02", work_seconds=1, app=True)   # env set, then mailasync loaded
    >>> result = kit.mailasync.sendMail.delay({"to": "a@example.com", "subject": "Hi", "body": "."})
    >>> mails = lab.wait_for_mail(kit.inbox, 1)                # tqdm bar while waiting
    >>> print(kit.worker.log_text())
    >>> kit.stop()

API (stable: names are added, never renamed):

- ``start_kit(name, work_seconds=None, workers=1, pool="threads", concurrency=1,
  app=False, env=None) -> Kit``: sets ``os.environ`` for this kernel
  (CELERY_QUEUE ``mailasync-nb-<name>-<pid>``, MAIL_HOST/MAIL_PORT/MAIL_SECURITY of
  a fresh inbox under ``.mailasync/notebooks/<name>-<pid>/inbox``, removed at stop,
  WORK_SECONDS if given,
  no default_settings.py, a broker chosen like ``make lab`` if none is set), then
  (re)loads ``mailasync``, purges the queue and starts the processes.
- ``Kit``: ``name``, ``queue``, ``env`` (what was set), ``inbox`` (``inbox.Inbox``
  reader), ``inbox_process``, ``workers`` / ``worker`` (first one), ``web`` /
  ``url`` (the app, or None), ``mailasync`` (the loaded module), ``settings``;
  ``add_worker(pool, concurrency, env=None, **options)``, ``stop_workers()``,
  ``start_app()``, ``purge()``, ``ping(timeout)``, ``stop()``; a context manager.
- ``show_log(process, contains=None, last=None)``: print a worker's or app's log.
- ``timed(fn, *args, **kwargs) -> (result, seconds)``; ``time_calls(fn, n, desc)``.
- ``percentiles(samples, qs=(50, 90, 99)) -> Table``; ``Table`` renders as HTML in
  Jupyter and as text in ``print``.
- ``latency_chart(samples, title) -> Figure``: latency distributions, log scale.
- ``wait_for_mail(inbox, count, timeout=60, desc=...)``: like ``Inbox.wait_for``
  with a tqdm progress bar.
- ``versions() -> Table``; ``check_setup() -> list[Check]`` (the learner's own
  settings, read from the environment as it was when lab was imported);
  ``checks_table(checks) -> Table``; ``Check(name, ok, found, fix)``.
- ``mail(i, prefix) -> dict``: task data for mail number ``i``.
- ``arrival_order(mails) -> list[int]``: mail numbers in the order they arrived.

No helper prints a password: settings are shown through ``Settings.__repr__``
and ``mask_url``, which hide them.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.metadata
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from types import ModuleType
from typing import Any

from tqdm import tqdm

import processes
from inbox import Inbox, ReceivedMail
from processes import Background
from settings import STATE_DIR, Settings, SettingsError, load_settings, mask_url

NOTEBOOK_DIR = STATE_DIR / "notebooks"
# The environment as the kernel started, before any kit changed it: what check_setup reads.
STARTING_ENV = dict(os.environ)
SUBJECT_NUMBER = re.compile(r"#(\d+)\b")


# --- the kit ---------------------------------------------------------------


@dataclass
class Kit:
    """A notebook's running kit: its settings, inbox, workers and (maybe) web app."""

    name: str
    queue: str
    env: dict[str, str]
    inbox: Inbox
    inbox_process: Background
    mailasync: ModuleType
    workers: list[Background] = field(default_factory=list)
    web: Background | None = None

    @property
    def settings(self) -> Settings:
        return self.mailasync.settings

    @property
    def worker(self) -> Background:
        """The first worker (most notebooks start exactly one)."""
        return self.workers[0]

    @property
    def url(self) -> str | None:
        """The web app's address, such as http://127.0.0.1:40123, or None."""
        return getattr(self.web, "url", None)

    def add_worker(
        self,
        pool: str = "threads",
        concurrency: int = 1,
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Background:
        """Start one more worker on this kit's queue and wait until it is ready.

        `env` adds to the kit's settings for this worker only, such as
        {"WORK_SECONDS": "0.3"}; other options go to processes.start_worker.
        """
        number = len(self.workers) + 1
        name = options.pop("name", f"nb{self.name}-w{number}-{os.getpid()}")
        worker = processes.start_worker(
            env={**self.env, **(env or {})},
            pool=pool,
            concurrency=concurrency,
            name=name,
            **options,
        )
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        """Stop every worker (the queue and the inbox stay)."""
        for worker in reversed(self.workers):
            worker.stop()
        self.workers.clear()

    def start_app(self) -> Background:
        """Start app.py with this kit's settings, if it is not running yet."""
        if self.web is None or not self.web.running():
            self.web = processes.start_app(self.env)
        return self.web

    def purge(self) -> int:
        """Drop every message waiting in this kit's queue; return how many."""
        return purge_queue(self.mailasync.app, self.queue)

    def ping(self, timeout: float = 2.0) -> list[str]:
        """Names of this kit's workers that answer a ping within `timeout` seconds."""
        names = [worker_hostname(w) for w in self.workers]
        if not names:
            return []
        replies = self.mailasync.app.control.ping(destination=names, timeout=timeout)
        return sorted(name for reply in replies for name in reply)

    def stop(self) -> None:
        """Stop the app, the workers and the inbox; delete the queue. Safe to call twice."""
        if self.web is not None:
            self.web.stop()
        self.stop_workers()
        self.inbox_process.stop()
        delete_queue(self.mailasync.app, self.queue)
        shutil.rmtree(self.inbox.folder.parent, ignore_errors=True)

    def __enter__(self) -> Kit:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_kit(
    name: str,
    work_seconds: float | None = None,
    workers: int = 1,
    pool: str = "threads",
    concurrency: int = 1,
    app: bool = False,
    env: Mapping[str, str] | None = None,
) -> Kit:
    """Set this kernel's environment for notebook `name`, load mailasync, start the kit."""
    # Per kernel, so two runs of one notebook (JupyterLab and nbval) never share an inbox.
    folder = NOTEBOOK_DIR / f"{name}-{os.getpid()}" / "inbox"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ensure_broker()
    inbox_process = processes.start_inbox(folder)
    queue = f"mailasync-nb-{name}-{os.getpid()}"
    chosen = {
        # The kit's defaults, never a learner's Gmail account from default_settings.py.
        "MAILASYNC_SETTINGS_FILE": os.devnull,
        "CELERY_QUEUE": queue,
        **inbox_process.env,
    }
    if work_seconds is not None:
        chosen["WORK_SECONDS"] = str(work_seconds)
    chosen.update(env or {})
    # Before (re)loading mailasync: it reads its settings once, at import.
    os.environ.update(chosen)
    module = load_mailasync()
    kit = Kit(
        name=name,
        queue=queue,
        env=chosen,
        inbox=Inbox(folder),
        inbox_process=inbox_process,
        mailasync=module,
    )
    atexit.register(kit.stop)
    try:
        kit.purge()
        for _ in range(workers):
            kit.add_worker(pool=pool, concurrency=concurrency)
        if app:
            kit.start_app()
    except BaseException:
        kit.stop()
        raise
    return kit


def ensure_broker() -> str:
    """Use CELERY_BROKER_URL if set, else pick one as `make lab` does (RabbitMQ or embedded)."""
    if not os.environ.get("CELERY_BROKER_URL"):
        from broker import choose

        url, banner = choose(dict(os.environ))
        os.environ["CELERY_BROKER_URL"] = url
        if url.startswith("filesystem://"):
            print(banner)
    return os.environ["CELERY_BROKER_URL"]


def load_mailasync() -> ModuleType:
    """Import mailasync, or reload it so that it reads the current environment."""
    if "mailasync" in sys.modules:
        old = sys.modules["mailasync"]
        old.app.close()
        return importlib.reload(old)
    return importlib.import_module("mailasync")


def purge_queue(celery_app: Any, queue: str) -> int:
    """Declare `queue` as the worker would, then empty it; return how many were dropped."""
    with celery_app.connection_for_write() as connection:
        bound = celery_app.amqp.queues[queue].bind(connection.default_channel)
        bound.declare()
        return bound.purge() or 0


def delete_queue(celery_app: Any, queue: str) -> None:
    """Remove a notebook's queue from the broker, so runs leave no queues behind."""
    try:
        with celery_app.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
    except Exception:  # the broker may be gone at kernel exit: nothing left to clean
        pass


def worker_hostname(worker: Background) -> str:
    """The node name a worker answers to (celery expands %h to the host name)."""
    return f"{worker.name}@{platform.node()}"


def show_log(process: Background, contains: str | None = None, last: int | None = None) -> None:
    """Print a background process's log on purpose: the lines with `contains`, the `last` ones."""
    lines = process.log_text().splitlines()
    if contains is not None:
        lines = [line for line in lines if contains in line]
    if last is not None:
        lines = lines[-last:]
    print("\n".join(lines))


# --- timing and tables -----------------------------------------------------


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Call fn and return (its result, seconds it took)."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def time_calls(fn: Callable[[int], Any], n: int, desc: str = "calls") -> list[float]:
    """Call fn(0) ... fn(n - 1) one after another; return each call's seconds."""
    seconds = []
    for i in tqdm(range(n), desc=desc, file=sys.stdout, ncols=80):
        seconds.append(timed(fn, i)[1])
    return seconds


class Table:
    """A small table: HTML in Jupyter, aligned text in print()."""

    def __init__(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.headers = list(headers)
        self.rows = [[str(cell) for cell in row] for row in rows]

    def __str__(self) -> str:
        widths = [
            max(len(str(h)), *(len(r[i]) for r in self.rows)) if self.rows else len(str(h))
            for i, h in enumerate(self.headers)
        ]
        lines = [
            "  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True)),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in self.rows]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of samples, linearly interpolated between ranks."""
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(
    samples: Mapping[str, Sequence[float]], qs: Sequence[float] = (50, 90, 99)
) -> Table:
    """One row per series: count and latency percentiles in milliseconds."""
    headers = ["series", "n", *(f"p{q:g} (ms)" for q in qs), "max (ms)"]
    rows = [
        [
            label,
            len(values),
            *(f"{percentile(values, q) * 1000:.1f}" for q in qs),
            f"{max(values) * 1000:.1f}",
        ]
        for label, values in samples.items()
    ]
    return Table(headers, rows)


def latency_chart(samples: Mapping[str, Sequence[float]], title: str = "Response time") -> Any:
    """Each series' latencies as points over a box, on a log scale (ms to seconds fit)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 1.2 + 0.9 * len(samples)))
    labels = list(samples)
    data = [[v * 1000 for v in samples[label]] for label in labels]
    axes.boxplot(data, orientation="horizontal", tick_labels=labels, widths=0.5, showfliers=False)
    for row, values in enumerate(data, start=1):
        spread = [row + 0.15 * ((i % 5) - 2) / 2 for i in range(len(values))]
        axes.scatter(values, spread, s=14, alpha=0.6)
    axes.set_xscale("log")
    axes.set_xlabel("milliseconds until the HTTP answer (log scale)")
    axes.set_title(title)
    axes.grid(axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    return figure


# --- mail ------------------------------------------------------------------


def mail(i: int, prefix: str = "Report") -> dict[str, str]:
    """Task data for mail number i; the number is in the subject as #i."""
    return {
        "to": f"learner{i}@example.com",
        "subject": f"{prefix} #{i}",
        "body": f"Mail number {i}: your report is ready.",
    }


def arrival_order(mails: Iterable[ReceivedMail]) -> list[int]:
    """The #numbers in the subjects, in the order the inbox stored the mails."""
    order = []
    for received in mails:
        found = SUBJECT_NUMBER.search(received.subject)
        if found:
            order.append(int(found.group(1)))
    return order


def wait_for_mail(
    inbox: Inbox, count: int, timeout: float = 60.0, desc: str = "mails in the inbox"
) -> list[ReceivedMail]:
    """Wait until the inbox holds `count` mails, with a progress bar; return them all."""
    deadline = time.monotonic() + timeout
    with tqdm(total=count, desc=desc, file=sys.stdout, ncols=80, mininterval=0.5) as bar:
        while (seen := inbox.count()) < count:
            if seen > bar.n:
                bar.update(seen - bar.n)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{seen} of {count} mails arrived within {timeout} s")
            time.sleep(0.05)
        bar.update(count - bar.n)
    return inbox.messages()


# --- set-up check (notebook 00) ------------------------------------------------

PACKAGES = ("celery", "kombu", "flask", "yagmail", "aiosmtpd", "requests", "matplotlib", "nbval")


def versions() -> Table:
    """Python, the kit's packages and, when it answers, the RabbitMQ server."""
    rows = [["python", platform.python_version()]]
    for package in PACKAGES:
        try:
            rows.append([package, importlib.metadata.version(package)])
        except importlib.metadata.PackageNotFoundError:
            rows.append([package, "not installed: run make setup"])
    rows.append(["RabbitMQ", rabbitmq_version() or "not in use or not answering"])
    return Table(["component", "version"], rows)


def rabbitmq_version(url: str | None = None) -> str | None:
    """The RabbitMQ server's version as it announces it, or None."""
    from kombu import Connection

    url = url or os.environ.get("CELERY_BROKER_URL") or Settings.CELERY_BROKER_URL
    if not url.startswith(("amqp", "pyamqp")):
        return None
    try:
        with Connection(url, connect_timeout=1) as connection:
            connection.ensure_connection(max_retries=1, timeout=1)
            props = connection.connection.server_properties
    except Exception:
        return None
    version = props.get("version")
    return version.decode() if isinstance(version, bytes) else version


@dataclass(frozen=True)
class Check:
    """One set-up check: what was checked, whether it is fine, what was found, the fix."""

    name: str
    ok: bool
    found: str
    fix: str = ""


def check_setup(environ: Mapping[str, str] | None = None) -> list[Check]:
    """Check the learner's own settings (not a kit's): settings, broker, mailer, workers.

    Reads the environment as it was when lab was first imported, so a kit
    started earlier in the notebook does not hide the learner's own set-up.
    """
    from broker import broker_problem, is_embedded

    environ = dict(STARTING_ENV if environ is None else environ)
    try:
        settings = load_settings(environ)
    except SettingsError as error:
        return [Check("settings load", False, str(error), "fix the setting named above")]
    checks = [Check("settings load", True, "default_settings.py and environment are valid")]

    url = environ.get("CELERY_BROKER_URL") or settings.CELERY_BROKER_URL
    kind = "embedded (kombu filesystem://)" if is_embedded(url) else "RabbitMQ"
    problem = broker_problem(url)
    checks.append(
        Check(
            "broker answers",
            problem is None,
            f"{kind} at {mask_url(url)}" + ("" if problem is None else f": {problem}"),
            "" if problem is None else "start RabbitMQ, or start JupyterLab with `make lab`",
        )
    )
    if is_embedded(url):
        checks.append(
            Check(
                "broker is RabbitMQ",
                False,
                "the embedded broker is in use: fine on one machine, not for the real thing",
                "install and start rabbitmq-server, then restart `make lab`",
            )
        )

    if settings.uses_local_inbox:
        listening = processes.port_answers(settings.MAIL_PORT, settings.MAIL_HOST)
        checks.append(
            Check(
                "mailer",
                True,
                f"local inbox at {settings.MAIL_HOST}:{settings.MAIL_PORT}"
                + (
                    " (listening)" if listening else " (not running now; notebooks start their own)"
                ),
                "" if listening else "for the terminals of the article: `make inbox`",
            )
        )
    else:
        checks.append(
            Check(
                "mailer",
                True,
                f"real SMTP server {settings.MAIL_HOST}:{settings.MAIL_PORT} as "
                f"{settings.MAIL_USERNAME} (password set: {bool(settings.MAIL_PASSWORD)}); "
                "the notebooks still use their own local inbox",
            )
        )

    if problem is None:
        checks.append(worker_check(url, settings.CELERY_QUEUE))
    return checks


def worker_check(url: str, queue: str, timeout: float = 1.0) -> Check:
    """Does any running worker consume `queue`? (A task with none stays PENDING forever.)"""
    from celery import Celery

    probe = Celery("mailasync-check", broker=url)
    probe.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json")
    if url.startswith("filesystem://"):
        from broker import embedded_transport_options

        probe.conf.broker_transport_options = embedded_transport_options()
    try:
        active = probe.control.inspect(timeout=timeout).active_queues() or {}
    finally:
        probe.close()
    serving = sorted(
        name for name, queues in active.items() if any(q["name"] == queue for q in queues)
    )
    if serving:
        return Check(f"a worker consumes queue {queue!r}", True, ", ".join(serving))
    return Check(
        f"a worker consumes queue {queue!r}",
        False,
        f"none answers ({len(active)} worker(s) on this broker serve other queues)",
        "tasks would stay PENDING: run `make worker` in a terminal "
        "(the notebooks start their own workers)",
    )


def checks_table(checks: Sequence[Check]) -> Table:
    """The check list as a table: each problem next to its fix."""
    return Table(
        ["check", "ok", "found", "fix"],
        [[c.name, "yes" if c.ok else "NO", c.found, c.fix] for c in checks],
    )
