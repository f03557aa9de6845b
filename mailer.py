"""Send mail with yagmail over a small pool of open SMTP connections.

yagmail builds the message and opens the connection. Its own ``send()`` opens
a new connection for every message and retries with long sleeps on its own,
so the kit keeps a few logged-in clients open, hands the message yagmail
built to the open connection, and sorts failures into two kinds: transient
ones (worth a retry later) and permanent ones (retrying cannot help).
"""

from __future__ import annotations

import html
import logging
import queue
import smtplib
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message

import yagmail
from yagmail.headers import resolve_addresses
from yagmail.message import prepare_message
from yagmail.validate import validate_email_with_regex

from settings import Settings
from validation import Mail

log = logging.getLogger(__name__)


class TransientMailError(Exception):
    """The server could not take the mail now (refused, timed out, 4xx): retry later."""


class PermanentMailError(Exception):
    """The server refused the mail for good (bad login, 5xx): do not retry."""


def classify(error: Exception) -> Exception:
    """Wrap an SMTP or socket error as TransientMailError or PermanentMailError."""
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return PermanentMailError(
            f"SMTP login refused ({error.smtp_code}): check MAIL_USERNAME and MAIL_PASSWORD"
        )
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in error.recipients.values()]
        reason = "; ".join(
            f"{addr}: {code} {msg.decode(errors='replace')}"
            for addr, (code, msg) in error.recipients.items()
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


def replace_text(part: Message, text: str, charset: str) -> None:
    """Give a text part new content, encoded afresh (its old encoding header goes)."""
    del part["Content-Transfer-Encoding"]
    part.set_payload(text, charset=charset)


def build_message(client: yagmail.SMTP, mail: Mail, message_id: str) -> tuple[list[str], str]:
    """What yagmail's prepare_send returns (recipients, message text), made safe and cheap.

    The body is escaped in the HTML part (it is plain text from a client) and
    kept as sent in the plain part, where yagmail turns newlines into <br>. MIME
    boundaries are set here: left unset, the email package picks a random one for each of the
    three multipart parts yagmail builds and compiles a regular expression to
    look for it in the text: about a tenth of a busy worker's time (bench/).
    A uuid4 boundary (122 random bits) cannot turn up in a body by chance.
    """
    addresses = resolve_addresses(client.user, client.useralias, mail.to, None, None)
    if client.soft_email_validation:
        for address in addresses["recipients"]:
            validate_email_with_regex(address)
    message = prepare_message(
        client.user,
        client.useralias,
        addresses,
        mail.subject,
        yagmail.raw(mail.body),  # raw: never read the body as a file path
        None,
        None,
        client.encoding,
        prettify_html=False,
        message_id=message_id,
        dkim=None,  # the kit signs nothing; a signature would have to follow the edit below
    )
    for part in message.walk():
        if part.is_multipart():
            part.set_boundary(f"===============mailasync{uuid.uuid4().hex}==")
        elif part.get_content_type() == "text/html":
            # yagmail copies the body into the HTML part as it is: a client's <a> or
            # <script> would render. The body is plain text, so escape it there.
            escaped = html.escape(mail.body).replace("\n", "<br>\n")
            replace_text(part, f"<div>{escaped}</div>", client.encoding)
        elif part.get_content_type() == "text/plain":
            # yagmail turns newlines into <br> in the plain part too: keep the text as sent.
            replace_text(part, mail.body, client.encoding)
    return addresses["recipients"], message.as_string()


class Mailer:
    """A pool of at most MAIL_MAX_CONNECTIONS open yagmail clients, safe across threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: queue.LifoQueue[yagmail.SMTP] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(settings.MAIL_MAX_CONNECTIONS)

    def connect(self) -> yagmail.SMTP:
        """Open and log in one new connection."""
        s = self.settings
        client = yagmail.SMTP(
            user=s.MAIL_USERNAME,
            password=s.MAIL_PASSWORD or None,
            host=s.MAIL_HOST,
            port=s.MAIL_PORT,
            smtp_ssl=s.MAIL_SECURITY == "ssl",
            smtp_starttls=s.MAIL_SECURITY == "starttls",
            smtp_skip_login=not s.MAIL_PASSWORD,
            timeout=s.MAIL_TIMEOUT,
        )
        client.login()
        return client

    @contextmanager
    def connection(self) -> Iterator[yagmail.SMTP]:
        """Lend an open client, idle or new; one that fails is closed, not returned."""
        with self._slots:
            try:
                client = self._idle.get_nowait()
            except queue.Empty:
                client = self.connect()
            try:
                yield client
            except BaseException:
                client.close()
                raise
            self._idle.put(client)

    def send(self, mail: Mail, message_id: str) -> None:
        """Send one mail; raise TransientMailError or PermanentMailError on failure."""
        try:
            try:
                self._send_once(mail, message_id)
            except smtplib.SMTPServerDisconnected:
                # A pooled connection the server closed while idle: one fresh try.
                self._send_once(mail, message_id)
        except (smtplib.SMTPException, OSError) as error:
            raise classify(error) from error

    def _send_once(self, mail: Mail, message_id: str) -> None:
        with self.connection() as client:
            recipients, message = build_message(client, mail, message_id)
            client.smtp.sendmail(client.user, recipients, message)

    def close(self) -> None:
        """Close every idle connection."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
