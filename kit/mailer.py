"""Send mail with yagmail over a small pool of open SMTP connections.

yagmail builds the message and opens the connection. Its own ``send()`` opens
a new connection for every message and retries with long sleeps on its own,
so the kit keeps a few logged-in clients open, hands the message yagmail
built to the open connection, and sorts failures into two kinds: transient
ones (worth a retry later) and permanent ones (retrying cannot help).

Each SMTP step waits at most MAIL_TIMEOUT, and a whole send at most
5 x MAIL_TIMEOUT (SEND_STEPS): a server that answers a line every few seconds
and never finishes cannot hold a worker's slot for ever. The bound is a socket
timeout shrunk to the time left before every read and write, so it holds in
every Celery pool (prefork, threads, gevent) without signals or extra threads.
"""

from __future__ import annotations

import functools
import html
import io
import logging
import queue
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.charset import Charset
from typing import Any

import yagmail

from kit.settings import Settings

log = logging.getLogger(__name__)

# A whole send (connect or reuse, through the final reply) takes at most this many MAIL_TIMEOUTs.
SEND_STEPS = 5


class TransientMailError(Exception):
    """The server could not take the mail now (refused, timed out, 4xx): retry later."""


class OutcomeUnknownMailError(TransientMailError):
    """The connection broke after the message went out: the server may or may not have it.

    Resending at once could send it twice; the task retries it later with the
    same Message-ID, so a receiver can tell the copies apart.
    """


class PermanentMailError(Exception):
    """The server refused the mail for good (bad login, 5xx): do not retry."""


SECURITY_HINT = (
    "check MAIL_SECURITY: ssl for a server that speaks TLS at once (port 465), "
    "starttls for one that upgrades a plain connection (port 587)"
)


def classify(error: Exception) -> Exception:
    """Wrap an SMTP or socket error as TransientMailError or PermanentMailError."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return PermanentMailError(
            f"the mail server's certificate is not trusted ({error.verify_message}); the "
            "password was not sent. Check MAIL_HOST, or trust its CA with SSL_CERT_FILE"
        )
    if isinstance(error, ssl.SSLError):
        return PermanentMailError(f"TLS with the mail server failed ({error}); {SECURITY_HINT}")
    if isinstance(error, smtplib.SMTPNotSupportedError):
        hint = (
            SECURITY_HINT
            if "STARTTLS" in str(error) or "AUTH" in str(error)
            else ("set MAIL_SMTPUTF8=false, so that addresses it cannot take are refused up front")
        )
        return PermanentMailError(f"the mail server does not offer it ({error}); {hint}")
    if isinstance(error, smtplib.SMTPAuthenticationError) and error.smtp_code >= 500:
        return PermanentMailError(
            f"SMTP login refused ({error.smtp_code}): check MAIL_USERNAME and MAIL_PASSWORD"
        )
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        # The reply, not the address: errors end up in worker logs and task results.
        codes = [code for code, _ in error.recipients.values()]
        reason = "; ".join(
            f"{code} {msg.decode(errors='replace')}" for code, msg in error.recipients.values()
        )
        kind = TransientMailError if all(400 <= c < 500 for c in codes) else PermanentMailError
        return kind(f"recipient refused: {reason}")
    if isinstance(error, smtplib.SMTPResponseException):
        text = (
            error.smtp_error.decode(errors="replace")
            if isinstance(error.smtp_error, bytes)
            else str(error.smtp_error)
        )
        kind = TransientMailError if 400 <= error.smtp_code < 500 else PermanentMailError
        return kind(f"SMTP server replied {error.smtp_code} {text}")
    if isinstance(error, (smtplib.SMTPServerDisconnected, OSError)):
        return TransientMailError(f"cannot reach the SMTP server: {error!r}")
    return PermanentMailError(f"{type(error).__name__}: {error}")


def build_message(
    client: yagmail.SMTP, to: str, subject: str, body: str, message_id: str
) -> tuple[list[str], str]:
    """yagmail's message for a plain-text body, via its public ``prepare_send``.

    yagmail writes one string into both parts: newlines become <br> and markup
    is kept as it is. The kit hands it the body escaped for HTML, so a client's
    <a> or <script> shows as text in the HTML part, then puts the body as sent
    back into the plain part, which yagmail base64-encodes exactly as below.
    """
    escaped = html.escape(body)
    recipients, message = client.prepare_send(
        to=to,
        subject=subject,
        contents=yagmail.raw(escaped),  # raw: never read the body as a file path
        prettify_html=False,
        message_id=message_id,
    )
    as_yagmail_wrote_it = escaped.replace("\n", "<br>")
    if as_yagmail_wrote_it == body:  # no markup, no line breaks: the plain part is right
        return recipients, message
    charset = Charset(client.encoding)
    yagmail_plain = charset.body_encode(as_yagmail_wrote_it)
    if yagmail_plain not in message:
        raise PermanentMailError("yagmail's message has no plain part where the kit expects one")
    return recipients, message.replace(yagmail_plain, charset.body_encode(body), 1)


class SendDeadlineExceeded(TimeoutError):
    """The whole send ran past its deadline (SEND_STEPS x MAIL_TIMEOUT)."""


class DeadlineReader(socket.SocketIO):
    """A socket's reading side whose every receive waits only for the time its send has left.

    smtplib reads replies line by line through a buffered file; one line can take
    several receives, so the bound goes here, on each one.
    """

    def __init__(self, sock: socket.socket, time_left: Callable[[], float]) -> None:
        super().__init__(sock, "rb")
        self.time_left = time_left

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(self.time_left())  # type: ignore[attr-defined]
        return super().readinto(buffer)


class TracksData:
    """An smtplib connection that tracks whether a message's data started going out, and
    ends every read and write by its send's ``deadline`` (a ``time.monotonic()`` value)."""

    data_started = False
    deadline: float | None = None  # None: each step waits up to MAIL_TIMEOUT, no overall bound
    timeout: float
    sock: socket.socket | None
    file: Any

    def __init__(self, *args: Any, deadline: float | None = None, **kwargs: Any) -> None:
        self.deadline = deadline  # set before smtplib connects and reads the greeting
        super().__init__(*args, **kwargs)

    def time_left(self) -> float:
        """The socket timeout for the next step: MAIL_TIMEOUT, or less near the deadline."""
        if self.deadline is None:
            return self.timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SendDeadlineExceeded("the send ran past its deadline")
        return min(self.timeout, left)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return super()._get_socket(host, port, min(timeout, self.time_left()))  # type: ignore[misc]

    def send(self, s: bytes | str) -> None:
        if self.sock is not None:
            try:
                # sendall counts its timeout over all the data, not per chunk.
                self.sock.settimeout(self.time_left())
            except OSError as error:  # past the deadline, or a socket closed under us
                self.close()  # type: ignore[attr-defined]
                raise smtplib.SMTPServerDisconnected(str(error)) from error
        super().send(s)  # type: ignore[misc]

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:
            self.file = io.BufferedReader(DeadlineReader(self.sock, self.time_left))
        return super().getreply()  # type: ignore[misc]

    def data(self, msg: bytes | str) -> tuple[int, bytes]:
        self.data_started = True  # from the DATA command on, the server may end up with the mail
        return super().data(msg)  # type: ignore[misc]


class TrackedSMTP(TracksData, smtplib.SMTP):
    pass


class TrackedSMTPSSL(TracksData, smtplib.SMTP_SSL):
    pass


class Client(yagmail.SMTP):
    """yagmail's client on connections that tell a failure before the data from one after,
    and that end every step by the current send's deadline."""

    deadline: float | None = None

    @property
    def connection(self) -> Callable[..., smtplib.SMTP]:
        kind = TrackedSMTPSSL if self.ssl else TrackedSMTP
        return functools.partial(kind, deadline=self.deadline)

    def bound(self, deadline: float | None) -> None:
        """End this client's next steps by `deadline`, on its open connection and any new one."""
        self.deadline = deadline
        if self.smtp is not None:
            self.smtp.deadline = deadline


class Mailer:
    """A pool of at most MAIL_MAX_CONNECTIONS open yagmail clients, safe across threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: queue.LifoQueue[Client] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(settings.MAIL_MAX_CONNECTIONS)
        self.unknown_outcomes = 0  # sends whose connection broke after the data went out

    @property
    def send_limit(self) -> float:
        """Seconds a whole send may take: SEND_STEPS x MAIL_TIMEOUT."""
        return SEND_STEPS * self.settings.MAIL_TIMEOUT

    def connect(self, deadline: float | None = None) -> Client:
        """Open and log in one new connection, TLS verified before the password goes out.

        smtplib checks no certificate unless given a context; the default one
        checks the chain against the system's CA store (or SSL_CERT_FILE) and
        the host name against MAIL_HOST.
        """
        s = self.settings
        context = ssl.create_default_context()
        tls = {"context": context} if s.MAIL_SECURITY == "ssl" else {}
        client = Client(
            user=s.MAIL_USERNAME,
            password=s.MAIL_PASSWORD or None,
            host=s.MAIL_HOST,
            port=s.MAIL_PORT,
            smtp_ssl=s.MAIL_SECURITY == "ssl",
            smtp_starttls={"context": context} if s.MAIL_SECURITY == "starttls" else False,
            smtp_skip_login=not s.MAIL_PASSWORD,
            timeout=s.MAIL_TIMEOUT,
            **tls,  # passed on to smtplib.SMTP_SSL
        )
        client.bound(deadline)
        client.login()
        return client

    @contextmanager
    def connection(self, deadline: float | None = None) -> Iterator[Client]:
        """Lend an open client, idle or new, bound by `deadline`; one that fails is closed.

        The caller holds one of the pool's slots.
        """
        try:
            client = self._idle.get_nowait()
            client.bound(deadline)
        except queue.Empty:
            client = self.connect(deadline)
        try:
            yield client
        except BaseException:
            client.close()  # past the deadline it sends no QUIT: every step fails at once
            raise
        self._idle.put(client)

    def send(self, to: str, subject: str, contents: str, message_id: str) -> None:
        """Send one plain-text mail, like yagmail's ``send``, on a pooled connection.

        Raises TransientMailError or PermanentMailError instead of yagmail's own
        retries with sleeps and its ``False`` for a mail left unsent. The send
        ends within ``send_limit`` seconds of getting a connection slot.
        """
        with self._slots:
            deadline = time.monotonic() + self.send_limit
            try:
                try:
                    self._send_once(to, subject, contents, message_id, deadline)
                except smtplib.SMTPServerDisconnected:
                    if time.monotonic() >= deadline:
                        raise
                    # A pooled connection the server closed while idle fails at MAIL FROM,
                    # before any of the message went out: one fresh try is safe.
                    self._send_once(to, subject, contents, message_id, deadline)
            except (smtplib.SMTPException, OSError) as error:
                if time.monotonic() >= deadline:
                    raise TransientMailError(
                        f"the SMTP server did not finish the send within {self.send_limit:g} s "
                        f"({SEND_STEPS} x MAIL_TIMEOUT), before the message went out: {error!r}"
                    ) from error
                raise classify(error) from error

    def _send_once(
        self, to: str, subject: str, contents: str, message_id: str, deadline: float
    ) -> None:
        with self.connection(deadline) as client:
            recipients, message = build_message(client, to, subject, contents, message_id)
            # A non-ASCII local part can only travel where the server offers SMTPUTF8.
            options = [] if to.isascii() else ["SMTPUTF8"]
            smtp = client.smtp
            smtp.data_started = False
            try:
                smtp.sendmail(client.user, recipients, message, mail_options=options)
            except (smtplib.SMTPServerDisconnected, OSError) as error:
                if not smtp.data_started:
                    raise
                self.unknown_outcomes += 1
                log.warning(
                    "send %s: outcome unknown (%r) after the data went out; not resent now "
                    "(%d so far in this process)",
                    message_id,
                    error,
                    self.unknown_outcomes,
                )
                raise OutcomeUnknownMailError(
                    f"the connection broke after the mail went out ({error!r}): the server may "
                    f"have it; retried later with the same Message-ID {message_id}"
                ) from error

    def close(self) -> None:
        """Close every idle connection, each QUIT waiting at most MAIL_TIMEOUT."""
        while True:
            try:
                client = self._idle.get_nowait()
            except queue.Empty:
                return
            client.bound(time.monotonic() + self.settings.MAIL_TIMEOUT)
            client.close()
