"""Start the kit's processes (inbox, worker, web app) in the background, and stop them.

Notebooks, tests and benchmarks use this instead of terminals. Each process
runs in its own process group with its log in a file, and is stopped by that
group: at `stop()`, at `stop_all()`, when this Python process exits, and (on
Linux) when this process dies without cleaning up.

    >>> from kit.processes import start_inbox, start_worker, stop_all
    >>> inbox = start_inbox("inbox")
    >>> worker = start_worker(env=inbox.env)
    >>> print(worker.log_text())
    >>> stop_all()
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from kit.settings import ROOT, private_folder

LOG_DIR = ROOT / ".mailasync" / "logs"
PR_SET_PDEATHSIG = 1
_running: list[Background] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies.

    Linux ties this to the thread that started the child, so start processes
    from the main thread (as notebooks and tests do).
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Background:
    """One background process in its own process group, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env or {})
        self.port = port  # the TCP port it serves on 127.0.0.1, if it serves one
        self.log_path = log_path or LOG_DIR / f"{name}-{os.getpid()}-{time.time_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port> of a process that serves HTTP."""
        assert self.port is not None, f"{self.name} serves no port"
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def start(self) -> Background:
        private_folder(self.log_path.parent)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches its children
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        _running.append(self)
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> None:
        """Wait until the log matches `pattern`; fail with the log if the process exits."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.log_text()):
            if not self.running():
                raise RuntimeError(f"{self.name} exited early; its log:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no {pattern!r} in {timeout} s; log:\n{self.log_text()}"
                )
            time.sleep(0.05)

    def wait_for_port(self, port: int | None = None, timeout: float = 30.0) -> None:
        """Wait until `port` (by default its own) accepts connections."""
        port = port or self.port
        assert port is not None, f"{self.name}: which port?"
        deadline = time.monotonic() + timeout
        while not port_answers(port):
            if not self.running():
                raise RuntimeError(f"{self.name} exited early; its log:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: port {port} not open in {timeout} s")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        """Send a signal to the whole process group (kill -9 drills use SIGKILL)."""
        if self.running():
            os.killpg(self.pid, signum)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after `timeout`."""
        if self.process is None:
            return
        if self.running():
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # children that outlived their parent
        except ProcessLookupError:
            pass
        self.process.wait()
        if self in _running:
            _running.remove(self)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_inbox(
    folder: str | os.PathLike[str],
    port: int | None = None,
    password: str | None = None,
    tls_pem: str | os.PathLike[str] | None = None,
    tls_mode: str = "ssl",
) -> Background:
    """Start the local inbox (python -m kit.inbox) on a free port; `env` points the mailer there.

    With `tls_pem` (a key and certificate chain in one PEM file) it serves TLS,
    from the first byte (``tls_mode="ssl"``) or after STARTTLS.
    """
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "kit.inbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(folder),
    ]
    if password is not None:
        argv += ["--password", password]
    if tls_pem is not None:
        argv += ["--tls-cert", str(tls_pem), "--tls-key", str(tls_pem), "--tls", tls_mode]
    inbox = Background("inbox", argv, port=port)
    security = tls_mode if tls_pem is not None else "none"
    inbox.env = {"MAIL_HOST": "127.0.0.1", "MAIL_PORT": str(port), "MAIL_SECURITY": security}
    inbox.start().wait_for_port()
    return inbox


def start_worker(
    env: Mapping[str, str] | None = None,
    pool: str = "threads",
    concurrency: int = 1,
    name: str | None = None,
    loglevel: str = "INFO",
    extra_args: list[str] | None = None,
    timeout: float = 60.0,
) -> Background:
    """Start `celery -A mailasync worker` and wait until it says it is ready."""
    name = name or f"worker-{os.getpid()}-{time.time_ns()}"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "mailasync",
        "worker",
        f"--loglevel={loglevel}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--hostname={name}@%h",
        "--without-mingle",
        "--without-gossip",
        *(extra_args or []),
    ]
    worker = Background(name, argv, env)
    worker.start().wait_for_log(r"\bready\.", timeout)
    return worker


def start_app(env: Mapping[str, str] | None = None, port: int | None = None) -> Background:
    """Start app.py (Flask, 127.0.0.1, debug off) on a free port; `url` is its address."""
    port = port or free_port()
    env = {**(env or {}), "FLASK_PORT": str(port)}
    web = Background("app", [sys.executable, "app.py"], env, port=port)
    web.start().wait_for_port()
    return web


def listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses (IPv6 as ipv6:<hex>) listening on TCP `port`, from /proc."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                if len(address) == 8:  # IPv4, little-endian hex
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(f"ipv6:{address}")
    return found


def stop_all() -> None:
    """Stop every process started here, newest first."""
    for process in reversed(list(_running)):
        process.stop()


atexit.register(stop_all)
