"""The benchmark's surroundings: its own RabbitMQ vhost, result folder and inbox."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.broker import connect, rabbitmqctl
from kit.lab.doctor import package_versions

BROKER_HOST = "127.0.0.1:5672"


@dataclass
class BenchEnv:
    """A vhost, a temporary folder and the environment that points processes at them."""

    vhost: str
    folder: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def broker_url(self) -> str:
        return f"pyamqp://guest:guest@{BROKER_HOST}/{self.vhost}"

    def settings_env(
        self, queue: str, work_seconds: float, results: str = "results"
    ) -> dict[str, str]:
        """Environment for one benchmark's processes: its queue, work time and result folder."""
        results_dir = self.folder / results
        results_dir.mkdir(parents=True, exist_ok=True)
        return {
            "MAILASYNC_SETTINGS_FILE": os.devnull,
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_QUEUE": queue,
            "CELERY_RESULT_BACKEND": f"file://{results_dir}",
            "WORK_SECONDS": str(work_seconds),
            **self.env,
        }

    def purge(self, queue: str) -> None:
        """Empty a queue of this vhost (if it exists)."""
        with connect(self.broker_url) as conn:
            channel = conn.default_channel
            try:
                channel.queue_purge(queue)
            except Exception:  # noqa: BLE001 (an undeclared queue is already empty)
                pass

    def close(self) -> None:
        try:
            rabbitmqctl("delete_vhost", self.vhost)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def open_env() -> BenchEnv:
    """Create a RabbitMQ vhost and a temporary folder of the benchmark's own."""
    url = os.environ.get("CELERY_BROKER_URL", "pyamqp://")
    if not url.startswith(("amqp", "pyamqp")) or shutil.which("rabbitmqctl") is None:
        raise SystemExit(
            "bench: the benchmarks need RabbitMQ on 127.0.0.1:5672 and rabbitmqctl "
            f"(CELERY_BROKER_URL is {url.split('@')[-1]!r}); "
            "start it with rabbitmq-server -detached."
        )
    vhost = f"mailasync-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    folder = Path(tempfile.mkdtemp(prefix="mailasync-bench-"))
    return BenchEnv(vhost=vhost, folder=folder)


def machine() -> dict[str, Any]:
    """What the figures were taken on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        rabbit = rabbitmqctl("version").strip()
    except (RuntimeError, OSError):
        rabbit = "unknown"
    versions = package_versions()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rabbitmq": rabbit,
        "load_average_at_start": list(os.getloadavg()),
        "packages": versions,
    }
