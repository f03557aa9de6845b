"""Find a broker: RabbitMQ if it answers, else the embedded one for make lab and make test.

    $ eval "$(python3 -m kit.broker)"   # exports CELERY_BROKER_URL (and prints a banner)

If CELERY_BROKER_URL is already set, it is checked and never replaced: an
unreachable broker is then an error naming the URL and how to start RabbitMQ.
The embedded broker is kombu's filesystem transport in .mailasync/broker: good
for one machine and a few mails, not for several machines or high rates.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from kombu import Connection

import kit.embedded  # noqa: F401 (filesystem:// is the kit's transport from here on)
from kit.settings import (
    STATE_DIR,
    Settings,
    SettingsError,
    load_settings,
    mask_url,
    private_folder,
)

EMBEDDED_BROKER_URL = "filesystem://"
EMBEDDED_BROKER_DIR = STATE_DIR / "broker"
START_RABBITMQ = (
    "start RabbitMQ (Debian/Ubuntu: sudo apt-get install rabbitmq-server, then "
    "sudo rabbitmq-server -detached or sudo systemctl start rabbitmq-server; "
    "macOS: brew services start rabbitmq)"
)


def is_embedded(url: str) -> bool:
    return url.startswith("filesystem://")


def embedded_transport_options(folder: Path = EMBEDDED_BROKER_DIR) -> dict[str, object]:
    """kombu filesystem transport options: message and control folders inside the project."""
    queue_dir, control_dir = folder / "queue", folder / "control"
    for path in (queue_dir, control_dir):
        private_folder(path)
    return {
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "control_folder": str(control_dir),
        "polling_interval": 0.1,
    }


def connect(url: str, timeout: float = 5.0) -> Connection:
    """A kombu connection to `url`; the embedded broker always gets the kit's folders."""
    options = embedded_transport_options() if is_embedded(url) else {}
    return Connection(url, connect_timeout=timeout, transport_options=options)


def broker_problem(url: str, timeout: float = 1.0) -> str | None:
    """None if the broker at `url` answers within `timeout` seconds, else what is wrong."""
    if is_embedded(url):
        embedded_transport_options()
        return None
    try:
        with connect(url, timeout) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    except Exception as error:  # any failure to connect is the answer, not a crash
        return (
            f"the broker at {mask_url(url)} does not answer ({type(error).__name__}: {error}); "
            f"{START_RABBITMQ}"
        )
    return None


def queue_depth(url: str, queue: str) -> int:
    """Messages waiting in `queue` on whichever broker `url` is (0 if it was never declared)."""
    with connect(url) as connection:
        try:
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
        except connection.channel_errors:  # no such queue: nothing was ever sent to it
            return 0
    return declared.message_count


def consumer_count(url: str, queue: str) -> int | None:
    """Consumers of `queue` as RabbitMQ counts them; None on the embedded broker, which cannot."""
    if is_embedded(url):
        return None
    with connect(url) as connection:
        try:
            return connection.default_channel.queue_declare(
                queue=queue, passive=True
            ).consumer_count
        except connection.channel_errors:
            return 0


def server_version(url: str, timeout: float = 1.0) -> str | None:
    """The RabbitMQ server's version as it announces it; None if it does not answer."""
    if is_embedded(url):
        return None
    try:
        with connect(url, timeout) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
            version = connection.connection.server_properties.get("version")
    except Exception:  # a broker that does not answer has no version to show
        return None
    return version.decode() if isinstance(version, bytes) else version


def declare_and_purge(celery_app: Any, queue: str) -> int:
    """Declare `queue` as a worker of `celery_app` would, then empty it; return how many went."""
    with celery_app.connection_for_write() as connection:
        bound = celery_app.amqp.queues[queue].bind(connection.default_channel)
        bound.declare()
        return bound.purge() or 0


def delete_queue(celery_app: Any, queue: str) -> None:
    """Remove `queue` from the broker, so runs leave no queues behind."""
    try:
        with celery_app.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
    except Exception:  # the broker may be gone at exit: nothing left to clean
        pass


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl quietly; raise with its output if it fails (or is not installed)."""
    argv = ["rabbitmqctl", "-q", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr or done.stdout}")
    return done.stdout


def choose(environ: dict[str, str], url: str = Settings.CELERY_BROKER_URL) -> tuple[str, str]:
    """Return (broker URL, banner) to use, or raise SystemExit naming the fix."""
    try:
        configured = load_settings(environ).CELERY_BROKER_URL
    except SettingsError as error:
        raise SystemExit(f"mailasync: {error}") from None
    if configured != Settings.CELERY_BROKER_URL or environ.get("CELERY_BROKER_URL"):
        problem = broker_problem(configured)
        if problem:
            raise SystemExit(f"mailasync: CELERY_BROKER_URL is set, but {problem}")
        return configured, f"broker: {mask_url(configured)} (from CELERY_BROKER_URL) answers"
    if broker_problem(url) is None:
        return url, f"broker: RabbitMQ at {url} answers"
    banner = (
        "*" * 72 + "\n"
        f"* RabbitMQ does not answer at {url}.\n"
        "* Using the EMBEDDED broker (kombu filesystem transport in .mailasync/broker).\n"
        "* Fine for learning on one machine; for the real thing, "
        + "install RabbitMQ (README).\n"
        + "*" * 72
    )
    return EMBEDDED_BROKER_URL, banner


def main() -> None:
    url, banner = choose(dict(os.environ))
    print(banner, file=sys.stderr)
    print(f"export CELERY_BROKER_URL={shlex.quote(url)}")


if __name__ == "__main__":
    main()
