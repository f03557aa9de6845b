"""Mailer: yagmail over reused SMTP connections, and failures sorted into two kinds."""

import socket
import threading
import time
from pathlib import Path

import pytest

from kit.inbox import Inbox, make_controller
from kit.mailer import Mailer, OutcomeUnknownMailError, PermanentMailError, TransientMailError
from kit.processes import free_port
from kit.settings import Settings
from kit.validation import check_mail

MAIL = {"to": "learner@example.com", "subject": "Hi", "contents": "/etc/passwd"}


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def server(tmp_path: Path, port: int):
    """An in-process inbox on a free port; yields a function that restarts it."""
    controllers = [make_controller(tmp_path / "mail", port=port)]
    controllers[0].start()

    def restart() -> None:
        controllers[-1].stop()
        controllers.append(make_controller(tmp_path / "mail", port=port))
        controllers[-1].start()

    yield restart
    controllers[-1].stop()


def mailer_for(port: int, **overrides) -> Mailer:
    return Mailer(Settings(MAIL_PORT=port, MAIL_TIMEOUT=5, **overrides))


def test_connections_are_reused_and_the_body_is_never_read_as_a_file(
    server, port: int, tmp_path: Path
) -> None:
    mailer = mailer_for(port)
    for number in range(3):
        mailer.send(**MAIL, message_id=f"<{number}@test>")
    mails = Inbox(tmp_path / "mail").wait_for(3, timeout=10)
    assert [m.message_id for m in mails] == ["<0@test>", "<1@test>", "<2@test>"]
    assert mails[0].body == "/etc/passwd"  # yagmail would attach the file if not raw
    assert not mails[0].message.get_payload()[1:]  # no attachment part
    assert mailer._idle.qsize() == 1  # one connection served all three
    mailer.close()


def test_a_connection_the_server_dropped_is_replaced(server, port: int, tmp_path: Path) -> None:
    mailer = mailer_for(port)
    mailer.send(**MAIL, message_id="<before@test>")
    server()  # the server restarts: the pooled connection is now dead
    mailer.send(**MAIL, message_id="<after@test>")
    assert len(Inbox(tmp_path / "mail").wait_for(2, timeout=10)) == 2
    mailer.close()


def test_refused_connection_is_transient(port: int) -> None:
    with pytest.raises(TransientMailError, match="cannot reach"):
        mailer_for(port).send(**MAIL, message_id="<x@test>")


def test_4xx_is_transient_and_5xx_permanent(server, port: int) -> None:
    mailer = mailer_for(port)
    with pytest.raises(TransientMailError, match="451"):
        mailer.send("tempfail@example.com", "s", "b", message_id="<t@test>")
    with pytest.raises(PermanentMailError, match="550"):
        mailer.send("reject@example.com", "s", "b", message_id="<p@test>")


def test_a_wrong_password_is_permanent_and_not_shown(tmp_path: Path, port: int) -> None:
    controller = make_controller(tmp_path / "mail", port=port, password="right-one")
    controller.start()
    try:
        mailer = mailer_for(port, MAIL_PASSWORD="wrong-secret")
        with pytest.raises(PermanentMailError, match="MAIL_PASSWORD") as caught:
            mailer.send(**MAIL, message_id="<a@test>")
        assert "wrong-secret" not in str(caught.value)
        mailer_for(port, MAIL_PASSWORD="right-one").send(**MAIL, message_id="<b@test>")
    finally:
        controller.stop()
    assert Inbox(tmp_path / "mail").count() == 1


def test_markup_in_the_body_is_escaped_in_the_html_part(server, port: int, tmp_path: Path) -> None:
    body = 'Hi <script>alert("x")</script> & <a href="https://evil.example">click</a>\nBye'
    mailer_for(port).send("learner@example.com", "Markup", body, message_id="<m@test>")
    [received] = Inbox(tmp_path / "mail").wait_for(1, timeout=10)
    assert received.body == body.strip()  # the text part is the body as sent
    html_part = received.message.get_body(preferencelist=("html",))
    html_text = html_part.get_content()
    assert "<script>" not in html_text and "<a href" not in html_text
    assert "&lt;script&gt;" in html_text and "&amp;" in html_text and "<br>" in html_text


def test_internationalised_addresses_reach_the_inbox(server, port: int, tmp_path: Path) -> None:
    """Through check_mail, as the task does: an IDN domain as punycode, SMTPUTF8 when allowed."""
    settings = Settings(MAIL_PORT=port, MAIL_TIMEOUT=5, MAIL_SMTPUTF8=True)
    mailer = Mailer(settings)
    for number, to in enumerate(("learner@bücher.example", "usér@example.com")):
        mail = check_mail({"to": to, "subject": "IDN", "body": "b"}, settings)
        mailer.send(mail.to, mail.subject, mail.body, message_id=f"<idn{number}@test>")
    received = Inbox(tmp_path / "mail").wait_for(2, timeout=10)
    assert [m.message_id for m in received] == ["<idn0@test>", "<idn1@test>"]
    mailer.close()


def test_a_connection_lost_after_the_data_is_not_resent_at_once(
    server, port: int, tmp_path: Path
) -> None:
    """The server stored the mail but the reply never came: resending now would send it twice."""
    mailer = mailer_for(port)
    with pytest.raises(OutcomeUnknownMailError, match="same Message-ID <drop@test>"):
        mailer.send("drop-after-data@example.com", "s", "b", message_id="<drop@test>")
    time.sleep(0.5)  # would a second copy arrive?
    assert [m.message_id for m in Inbox(tmp_path / "mail").messages()] == ["<drop@test>"]
    assert mailer.unknown_outcomes == 1
    assert isinstance(OutcomeUnknownMailError("x"), TransientMailError)  # the task retries it
    mailer.send(**MAIL, message_id="<next@test>")  # the pool recovers with a new connection
    assert Inbox(tmp_path / "mail").count() == 2
    mailer.close()


class DripServer:
    """An SMTP server on a free loopback port that answers one step in drips and never ends it.

    Every drip (a reply line, or one byte of a line that never ends) comes well within
    MAIL_TIMEOUT, so no single read times out: only a deadline on the whole send stops
    it. After GIVE_UP seconds it hangs up, so that a send without one fails its test
    instead of hanging it.
    """

    GIVE_UP = 30.0

    def __init__(self, stall_at: str, unit: str = "line", interval: float = 0.2) -> None:
        self.stall_at = stall_at  # "greeting", "mail" (the second MAIL FROM) or "data-end"
        self.unit = unit
        self.interval = interval
        self.connections = 0
        self.drips = 0
        self.mail_froms = 0
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def drip(self, conn: socket.socket, code: bytes) -> None:
        if self.unit == "byte":
            conn.sendall(code + b" ")  # a reply line that never ends
        ends = time.monotonic() + self.GIVE_UP
        while not self.stop.wait(self.interval) and time.monotonic() < ends:
            conn.sendall(b"x" if self.unit == "byte" else code + b"-still working\r\n")
            self.drips += 1

    def serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            try:
                if self.stall_at == "greeting":
                    return self.drip(conn, b"220")
                conn.sendall(b"220 drip ready\r\n")
                for line in lines:
                    verb = line[:4].upper()
                    if verb == b"MAIL":
                        self.mail_froms += 1
                        if self.stall_at == "mail" and self.mail_froms == 2:
                            return self.drip(conn, b"250")
                    if verb == b"DATA":
                        conn.sendall(b"354 go on\r\n")
                        while lines.readline() not in (b".\r\n", b""):
                            pass
                        if self.stall_at == "data-end":
                            return self.drip(conn, b"250")
                    if verb == b"QUIT":
                        return conn.sendall(b"221 bye\r\n")
                    conn.sendall(b"250 ok\r\n")
            except OSError:  # the client hung up
                return

    def __enter__(self) -> "DripServer":
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.listener.close()


@pytest.mark.parametrize(
    "stall_at, unit, error",
    [
        ("greeting", "line", TransientMailError),
        ("greeting", "byte", TransientMailError),
        ("data-end", "line", OutcomeUnknownMailError),
    ],
)
def test_a_server_that_drips_for_ever_is_cut_off_at_the_send_deadline(
    stall_at: str, unit: str, error: type[Exception]
) -> None:
    """Each drip beats MAIL_TIMEOUT; the whole send still ends by 5 x MAIL_TIMEOUT."""
    with DripServer(stall_at, unit) as drip:
        mailer = Mailer(Settings(MAIL_PORT=drip.port, MAIL_TIMEOUT=1))
        started = time.monotonic()
        with pytest.raises(error) as caught:
            mailer.send(**MAIL, message_id="<drip@test>")
        took = time.monotonic() - started
    assert mailer.send_limit == 5
    assert took < mailer.send_limit + 5, f"the send took {took:.1f} s"
    assert drip.drips >= 5  # the server kept talking: no single step timed out
    if error is TransientMailError:  # failed before the data: safe to resend, said as such
        assert not isinstance(caught.value, OutcomeUnknownMailError)
        assert "within 5 s" in str(caught.value)
    else:
        assert mailer.unknown_outcomes == 1


def test_a_reused_connection_that_stalls_is_cut_off_and_not_retried() -> None:
    """The deadline covers a pooled connection too, and a send past it does not try again."""
    with DripServer("mail") as drip:
        mailer = Mailer(Settings(MAIL_PORT=drip.port, MAIL_TIMEOUT=1))
        mailer.send(**MAIL, message_id="<first@test>")
        started = time.monotonic()
        with pytest.raises(TransientMailError, match="within 5 s"):
            mailer.send(**MAIL, message_id="<second@test>")
        took = time.monotonic() - started
    assert took < mailer.send_limit + 5, f"the send took {took:.1f} s"
    assert drip.connections == 1  # the stalled pooled connection, and no fresh one after it
    assert mailer._idle.qsize() == 0  # the stalled connection was not put back
