"""Mailer: yagmail over reused SMTP connections, and failures sorted into two kinds."""

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
