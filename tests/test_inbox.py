"""The local inbox (kit/inbox.py): a real SMTP server that stores each message as one .eml file."""

import smtplib
import time
from pathlib import Path

import pytest
import yagmail

from kit.inbox import Inbox, make_controller, store
from kit.processes import free_port


@pytest.fixture
def server(tmp_path: Path):
    """An in-process inbox server on a free port."""
    port = free_port()
    controller = make_controller(tmp_path / "mail", port=port)
    controller.start()
    yield port
    controller.stop()


def send(port: int, to: str, subject: str, body: str) -> None:
    """Send through real yagmail over a real socket, as the worker does."""
    with yagmail.SMTP(
        "kit@mailasync.example",
        host="127.0.0.1",
        port=port,
        smtp_ssl=False,
        smtp_starttls=False,
        smtp_skip_login=True,
    ) as client:
        client.send(to=to, subject=subject, contents=yagmail.raw(body))


def test_mail_sent_with_yagmail_is_stored_and_readable(server: int, tmp_path: Path) -> None:
    send(server, "learner@example.com", "Hello", "Your report is ready")
    mails = Inbox(tmp_path / "mail").wait_for(1, timeout=10)
    assert len(mails) == 1
    mail = mails[0]
    assert (mail.to, mail.subject, mail.body) == (
        "learner@example.com",
        "Hello",
        "Your report is ready",
    )
    assert "kit@mailasync.example" in mail.sender
    assert mail.path.suffix == ".eml"


def test_messages_come_back_in_arrival_order(server: int, tmp_path: Path) -> None:
    """Sent one after another, read back in that order, each stamped with its arrival time."""
    before = time.time()
    for number in range(5):
        send(server, "learner@example.com", f"mail {number}", "body")
    mails = Inbox(tmp_path / "mail").wait_for(5, timeout=10)
    after = time.time()
    assert [mail.subject for mail in mails] == [f"mail {n}" for n in range(5)]
    # The arrival time read back from the file name is the real one, not just any number.
    assert all(before <= m.received_at <= after for m in mails), (before, mails, after)


def test_drill_addresses_are_refused(server: int, tmp_path: Path) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        with smtplib.SMTP("127.0.0.1", server) as client:
            client.sendmail("kit@mailasync.example", ["reject@example.com"], "Subject: x\r\n\r\nx")
    assert refused.value.recipients["reject@example.com"][0] == 550
    with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
        with smtplib.SMTP("127.0.0.1", server) as client:
            client.sendmail(
                "kit@mailasync.example", ["tempfail@example.com"], "Subject: x\r\n\r\nx"
            )
    assert deferred.value.recipients["tempfail@example.com"][0] == 451
    assert Inbox(tmp_path / "mail").count() == 0


def test_password_mode_refuses_a_wrong_login(tmp_path: Path) -> None:
    port = free_port()
    controller = make_controller(tmp_path / "mail", port=port, password="right")
    controller.start()
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("kit@mailasync.example", "wrong")
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.login("kit@mailasync.example", "right")
            client.sendmail("kit@mailasync.example", ["a@example.com"], "Subject: ok\r\n\r\nok")
    finally:
        controller.stop()
    assert Inbox(tmp_path / "mail").count() == 1


def test_store_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = store(tmp_path, b"Subject: x\r\n\r\nbody")
    assert path.read_bytes() == b"Subject: x\r\n\r\nbody"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_wait_for_times_out_with_a_count(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 mails"):
        Inbox(tmp_path).wait_for(1, timeout=0.2)
