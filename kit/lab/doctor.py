"""The set-up doctor (notebook 00): versions, and each problem of a set-up next to its fix."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kit import processes
from kit.broker import broker_problem, consumer_count, is_embedded, server_version
from kit.lab.timing import Table
from kit.settings import Settings, SettingsError, load_settings, mask_url

# The environment as the kernel started, before any kit changed it: what check_setup reads.
STARTING_ENV = dict(os.environ)

# What the kit runs on; notebook 00 and the benchmarks' results show these versions.
PACKAGES = (
    "celery",
    "kombu",
    "amqp",
    "flask",
    "werkzeug",
    "yagmail",
    "aiosmtpd",
    "gevent",
    "gunicorn",
    "requests",
    "matplotlib",
    "nbval",
)


def package_versions() -> dict[str, str]:
    """Each of PACKAGES with its installed version."""
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed: run make setup"
    return found


def versions() -> Table:
    """Python, the kit's packages and, when it answers, the RabbitMQ server."""
    url = os.environ.get("CELERY_BROKER_URL") or Settings.CELERY_BROKER_URL
    rows = [["python", platform.python_version()], *package_versions().items()]
    rows.append(["RabbitMQ", server_version(url) or "not in use or not answering"])
    return Table(["component", "version"], rows)


# What a learner gives up on the embedded broker, each with the notebook that shows it.
EMBEDDED_LIMITS = (
    (
        "strict first in, first out",
        "messages are files named by the millisecond they were queued: mails queued in the "
        "same millisecond are taken in random order (notebooks 02 and 05 measure it)",
    ),
    (
        "nothing lost when a worker is killed",
        "no acknowledgements: a message leaves the folder when a worker takes it, so a "
        "killed worker loses the mails it held (notebook 06 counts them)",
    ),
    (
        "speed",
        "workers poll the folder every 0.1 s instead of being pushed each message",
    ),
    (
        "several machines",
        "the queue is a folder on this machine; workers elsewhere cannot reach it",
    ),
    (
        "RabbitMQ-only drills",
        "broker restarts, Flower's live view, consumer counts and the benchmarks need RabbitMQ; "
        "make test skips their tests",
    ),
)


def embedded_limits() -> Table:
    """The promises the embedded broker cannot keep, and what happens instead."""
    return Table(["what you lose", "why, and where it shows"], EMBEDDED_LIMITS)


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


def worker_check(url: str, queue: str) -> Check:
    """Does any running worker consume `queue`? (A task with none stays PENDING forever.)"""
    name = f"a worker consumes queue {queue!r}"
    consumers = consumer_count(url, queue)
    if consumers is None:
        return Check(
            name,
            True,
            "cannot tell: the embedded broker does not count consumers",
            "if tasks stay PENDING, run `make worker` in a terminal",
        )
    if consumers:
        return Check(name, True, f"{consumers} consumer(s)")
    return Check(
        name,
        False,
        "none on this broker",
        "tasks would stay PENDING: run `make worker` in a terminal "
        "(the notebooks start their own workers)",
    )


def checks_table(checks: Sequence[Check]) -> Table:
    """The check list as a table: each problem next to its fix."""
    return Table(
        ["check", "ok", "found", "fix"],
        [[c.name, "yes" if c.ok else "NO", c.found, c.fix] for c in checks],
    )
