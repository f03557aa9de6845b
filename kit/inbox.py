"""A local SMTP inbox: the kit's offline stand-in for temp-mail.org.

A real SMTP server (aiosmtpd) that stores every message it receives as one
.eml file in a folder, so mail sent by yagmail over a real socket can be read
back by notebooks and tests. Run it in its own terminal:

    $ python3 -m kit.inbox --host 127.0.0.1 --port 8025 --dir inbox

and read the folder from Python:

    >>> from kit.inbox import Inbox
    >>> Inbox("inbox").messages()[-1].subject

For fault drills it refuses some recipients on purpose: a local part starting
with ``reject`` gets a permanent 550, one starting with ``tempfail`` a
temporary 451, and for one starting with ``drop-after-data`` the message is
stored but the connection closed before the reply. With ``--password`` it
requires SMTP AUTH (PLAIN or LOGIN); with ``--tls-cert`` and ``--tls-key`` it
serves TLS (``--tls ssl`` or ``starttls``).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import signal
import ssl
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from kit.settings import private_folder

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8025
# AUTH without TLS is what the --password drill is for, and it stays on loopback.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")


def header(name: str) -> property:
    """A read-only property: one header of the message as text, "" when it is absent."""
    return property(lambda mail: str(mail.message[name] or ""), doc=f"The {name} header.")


@dataclass(frozen=True)
class ReceivedMail:
    """One stored message, parsed."""

    path: Path
    received_at: float
    message: EmailMessage

    subject = header("Subject")
    to = header("To")
    sender = header("From")
    message_id = header("Message-ID")

    @property
    def body(self) -> str:
        """The plain-text part of the message."""
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content().strip() if part is not None else ""


class Inbox:
    """Read the .eml files that the inbox server stores in a folder."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def paths(self) -> list[Path]:
        """Stored message files, oldest first (names start with the arrival time)."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("*.eml"))

    def count(self) -> int:
        return len(self.paths())

    def messages(self) -> list[ReceivedMail]:
        """Every stored message, parsed, oldest first."""
        return [read_mail(path) for path in self.paths()]

    def __iter__(self) -> Iterator[ReceivedMail]:
        return iter(self.messages())

    def wait_for(self, count: int, timeout: float = 30.0, poll: float = 0.05) -> list[ReceivedMail]:
        """Wait until at least `count` messages are stored, then return them all."""
        deadline = time.monotonic() + timeout
        while self.count() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.count()} of {count} mails arrived in {self.folder} within {timeout} s"
                )
            time.sleep(poll)
        return self.messages()

    def clear(self) -> None:
        """Delete every stored message."""
        for path in self.paths():
            path.unlink(missing_ok=True)


def read_mail(path: Path) -> ReceivedMail:
    """Parse one stored file; its name starts with the arrival time in nanoseconds."""
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    received_at = int(path.name.split("-", 1)[0]) / 1e9
    return ReceivedMail(path=path, received_at=received_at, message=message)


def store(folder: Path, content: bytes) -> Path:
    """Write one message atomically: a reader sees the whole file or none of it."""
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.eml"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-")
    with os.fdopen(fd, "wb") as out:
        out.write(content)
    final = folder / name
    os.replace(tmp, final)
    return final


class InboxHandler:
    """aiosmtpd handler that stores each message and refuses drill addresses."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        private_folder(self.folder)

    async def handle_RCPT(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        local_part = address.split("@", 1)[0].lower()
        if local_part.startswith("reject"):
            return "550 5.1.1 Mailbox unavailable (refused on purpose by the local inbox)"
        if local_part.startswith("tempfail"):
            return "451 4.3.0 Try again later (refused on purpose by the local inbox)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        store(self.folder, content)
        if any(rcpt.lower().startswith("drop-after-data") for rcpt in envelope.rcpt_tos):
            server.transport.close()  # stored, but the sender never hears so: outcome unknown
        return "250 Message accepted for delivery"


class PasswordAuthenticator:
    """Accept exactly one user name and password (for authentication drills).

    `attempts` counts the logins the server was shown, right or wrong: a drill
    with an untrusted certificate checks that it stays 0.
    """

    def __init__(self, password: str) -> None:
        self.password = password
        self.attempts = 0

    def __call__(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.attempts += 1
        print(f"inbox: login attempt {self.attempts} ({mechanism})", flush=True)
        ok = isinstance(data, LoginPassword) and data.password.decode() == self.password
        return AuthResult(success=ok, handled=False)


def server_tls_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server-side TLS context from a certificate chain and its key (PEM files)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def make_controller(
    folder: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    tls_mode: str = "ssl",
) -> Controller:
    """An unstarted aiosmtpd Controller serving the inbox on host:port.

    With `tls`, the inbox speaks TLS from the first byte (``tls_mode="ssl"``, as on
    port 465) or requires STARTTLS before anything else (``"starttls"``, as on 587).
    """
    options: dict[str, Any] = {}
    if password is not None:
        options = {
            "authenticator": PasswordAuthenticator(password),
            "auth_required": True,
            # aiosmtpd counts only STARTTLS as TLS; implicit TLS is encrypted from the start.
            "auth_require_tls": tls is not None and tls_mode == "starttls",
        }
    if tls is not None and tls_mode == "starttls":
        options |= {"tls_context": tls, "require_starttls": True}
    return Controller(
        InboxHandler(Path(folder)),
        hostname=host,
        port=port,
        data_size_limit=1024 * 1024,
        server_hostname="mailasync-inbox",
        ssl_context=tls if tls_mode == "ssl" else None,
        **options,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local SMTP inbox that stores mail as .eml files.")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--dir", default="inbox", help="folder for the .eml files")
    parser.add_argument("--password", default=None, help="require SMTP AUTH with this password")
    parser.add_argument("--tls-cert", default=None, help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
    parser.add_argument("--tls", choices=("ssl", "starttls"), default="ssl", help="how TLS starts")
    args = parser.parse_args(argv)

    tls = server_tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    controller = make_controller(args.dir, args.host, args.port, args.password, tls, args.tls)
    controller.start()
    print(
        f"inbox: listening on {args.host}:{args.port}, storing mail in {Path(args.dir).resolve()}",
        flush=True,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    print("inbox: stopped", flush=True)


if __name__ == "__main__":
    main()
