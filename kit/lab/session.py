"""Start and stop a notebook's own kit: its queue, local inbox, workers and web app.

One call gives a notebook an isolated, running kit. Everything it starts is
stopped by ``kit.stop()`` and, failing that, when the kernel exits
(kit/processes.py stops every process at interpreter exit and, on Linux, when
the kernel dies).

    >>> from kit import lab
    >>> kit = lab.start_kit("02", work_seconds=1, app=True)   # env set, then mailasync loaded
    >>> result = kit.mailasync.sendMail.delay(lab.mail(1))
    >>> mails = lab.wait_for_mail(kit.inbox, 1)                # tqdm bar while waiting
    >>> lab.show_log(kit.worker, contains="succeeded")
    >>> kit.stop()
"""

from __future__ import annotations

import atexit
import importlib
import os
import platform
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from kit import processes
from kit.broker import choose, declare_and_purge, delete_queue, is_embedded, queue_depth
from kit.inbox import Inbox
from kit.processes import Background
from kit.settings import ROOT, STATE_DIR, Settings

NOTEBOOK_DIR = STATE_DIR / "notebooks"


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
    def embedded(self) -> bool:
        """True when this kit runs on the embedded broker, which keeps fewer promises."""
        return is_embedded(self.settings.CELERY_BROKER_URL)

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
        return declare_and_purge(self.mailasync.app, self.queue)

    def ping(self, timeout: float = 2.0) -> list[str]:
        """Names of this kit's workers that answer a ping within `timeout` seconds."""
        names = [worker_hostname(w) for w in self.workers]
        if not names:
            return []
        replies = self.mailasync.app.control.ping(destination=names, timeout=timeout)
        return sorted(name for reply in replies for name in reply)

    def wait_until_idle(self, timeout: float = 60.0) -> None:
        """Wait until this kit's queue is empty and none of its workers runs a task."""
        names = [worker_hostname(w) for w in self.workers]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if queue_depth(self.settings.CELERY_BROKER_URL, self.queue) == 0:
                active = self.mailasync.app.control.inspect(destination=names, timeout=1).active()
                if active is not None and not any(active.values()):
                    return
            time.sleep(0.2)
        raise TimeoutError(f"queue {self.queue} still busy after {timeout} s")

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
        url, banner = choose(dict(os.environ))
        os.environ["CELERY_BROKER_URL"] = url
        if is_embedded(url):
            print(banner)
    return os.environ["CELERY_BROKER_URL"]


def load_mailasync() -> ModuleType:
    """Import mailasync, or reload it so that it reads the current environment."""
    if "mailasync" in sys.modules:
        old = sys.modules["mailasync"]
        old.app.close()
        return importlib.reload(old)
    return importlib.import_module("mailasync")


def worker_hostname(worker: Background) -> str:
    """The node name a worker answers to (celery expands %h to the host name)."""
    return f"{worker.name}@{platform.node()}"


def clean_log(text: str) -> list[str]:
    """A log's lines as a notebook shows them: no warnings, no paths, host or platform.

    Celery warns at length when a worker runs as root (as in CI and containers);
    that and its other warnings say nothing about the lesson, and the machine's
    paths and names are nobody's business in a committed output.
    """
    lines, in_warning = [], False
    for line in text.splitlines():
        if "SecurityWarning" in line:
            in_warning = True  # until Celery's own line that raised it
        if in_warning:
            in_warning = "_warn_or_raise_security_error" not in line
            continue
        if "WARNING/" in line:
            continue
        line = line.replace(str(ROOT), "<repo>").replace(platform.platform(), "<platform>")
        lines.append(line.replace(f"@{platform.node()}", "@<host>"))
    return lines


def show_log(process: Background, contains: str | None = None, last: int | None = None) -> None:
    """Print a background process's log on purpose: the lines with `contains`, the `last` ones."""
    lines = clean_log(process.log_text())
    if contains is not None:
        lines = [line for line in lines if contains in line]
    if last is not None:
        lines = lines[-last:]
    print("\n".join(lines))
