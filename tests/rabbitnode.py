"""A private RabbitMQ node for restart drills, started and stopped by its own PID.

Tests must never stop the machine's RabbitMQ (others use it), so a restart drill
runs `rabbitmq-server` in the foreground as a second node: its own node name,
AMQP and distribution ports, data and log folders, and no plugins. Stopping it
and starting it again with the same folder, name and port is a broker restart:
durable queues and persistent messages are read back from its data folder.

    >>> node = RabbitNode(tmp_path / "rabbit").start()
    >>> node.url            # pyamqp://guest:guest@127.0.0.1:<port>//
    >>> node.stop(); node.start()
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kit.processes import Background, free_port, port_answers

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")


def available() -> str | None:
    """None if a private node can be started here, else why not."""
    if not SERVER.exists():
        return f"{SERVER} is missing (install rabbitmq-server)"
    if shutil.which("erl") is None and not Path("/usr/lib/erlang").exists():
        return "Erlang is not installed"
    return None


class RabbitNode:
    """One private RabbitMQ node living in `folder`, restartable on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"mailasync-test-{os.getpid()}-{free_port()}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.server: Background | None = None

    @property
    def url(self) -> str:
        return f"pyamqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        """rabbitmq-server's settings: everything in our folder, nothing from /etc."""
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("plugins", "rabbitmq-env.conf", "rabbitmq.conf"):
            (folder / name).touch()
        return {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "plugins"),
            "RABBITMQ_ENABLED_PLUGINS": "",
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "rabbit.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self, timeout: float = 90.0) -> RabbitNode:
        """Start the node in the foreground and wait until its AMQP port answers."""
        if port_answers(self.port):
            raise RuntimeError(f"port {self.port} is taken; cannot start {self.name}")
        self.server = Background(f"rabbit-{self.port}", [str(SERVER)], self.env()).start()
        self.server.wait_for_port(self.port, timeout)
        return self

    def stop(self) -> None:
        """SIGTERM the node's process group (never the machine's RabbitMQ) and wait."""
        if self.server is not None:
            self.server.stop(timeout=30)
            self.server = None

    def ctl(self, *args: str) -> str:
        """rabbitmqctl against this node (the full path shares root's Erlang cookie)."""
        done = subprocess.run(
            [str(CTL), "-q", "-n", self.name, *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")
        return done.stdout

    def log_text(self) -> str:
        return self.server.log_text() if self.server else ""
