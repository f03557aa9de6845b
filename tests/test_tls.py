"""The mail server is verified before the password goes out: TLS with a local inbox and a test CA.

Each test serves the kit's inbox over TLS (implicit, as on port 465, or STARTTLS, as
on 587) with a certificate from a throwaway CA (trustme). A client that does not
trust that CA must fail before the login; one that trusts it through SSL_CERT_FILE
must deliver the mail.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trustme
from aiosmtpd.controller import Controller

from conftest import wait_for_state
from kit.inbox import Inbox, make_controller
from kit.mailer import Mailer, PermanentMailError, TransientMailError, classify
from kit.processes import free_port, start_app, start_inbox
from kit.settings import Settings, SettingsError, load_settings

PASSWORD = "app-password-for-tls-test"
MAIL = {"to": "learner@example.com", "subject": "Over TLS", "contents": "Sent encrypted."}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority of this module's own, trusted by nothing on the machine."""
    return trustme.CA()


@pytest.fixture
def trusted_ca(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SSL_CERT_FILE pointing at the test CA: what a user does for a private mail server."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    return path


def serve(folder: Path, ca: trustme.CA, mode: str, *names: str) -> tuple[Controller, int]:
    """Start an in-process TLS inbox whose certificate names `names`; return (controller, port)."""
    port = free_port()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(tls)
    controller = make_controller(folder, port=port, password=PASSWORD, tls=tls, tls_mode=mode)
    controller.start()
    return controller, port


@pytest.fixture(params=["ssl", "starttls"])
def tls_inbox(request: pytest.FixtureRequest, ca: trustme.CA, tmp_path: Path) -> Iterator:
    """A TLS inbox for 127.0.0.1 in each mode; yields (mode, port, authenticator, folder)."""
    controller, port = serve(tmp_path / "mail", ca, request.param, "127.0.0.1")
    yield request.param, port, controller.SMTP_kwargs["authenticator"], tmp_path / "mail"
    controller.stop()


def mailer(mode: str, port: int, host: str = "127.0.0.1") -> Mailer:
    return Mailer(
        Settings(
            MAIL_HOST=host,
            MAIL_PORT=port,
            MAIL_SECURITY=mode,
            MAIL_USERNAME="kit@mailasync.example",
            MAIL_PASSWORD=PASSWORD,
            MAIL_TIMEOUT=5,
        )
    )


def test_an_untrusted_server_never_sees_the_login(tls_inbox, monkeypatch) -> None:
    mode, port, authenticator, folder = tls_inbox
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(PermanentMailError, match="certificate is not trusted") as caught:
        mailer(mode, port).send(**MAIL, message_id="<untrusted@test>")
    assert "SSL_CERT_FILE" in str(caught.value) and PASSWORD not in str(caught.value)
    assert authenticator.attempts == 0
    assert Inbox(folder).count() == 0


def test_a_server_trusted_through_a_ca_receives_the_mail(tls_inbox, trusted_ca) -> None:
    mode, port, authenticator, folder = tls_inbox
    sender = mailer(mode, port)
    sender.send(**MAIL, message_id="<trusted@test>")
    [received] = Inbox(folder).wait_for(1, timeout=10)
    assert received.subject == "Over TLS" and authenticator.attempts == 1
    sender.close()


def test_a_certificate_for_another_name_is_refused(ca, trusted_ca, tmp_path: Path) -> None:
    controller, port = serve(tmp_path / "mail", ca, "ssl", "mail.example.org")
    try:
        with pytest.raises(PermanentMailError, match="not trusted") as caught:
            mailer("ssl", port).send(**MAIL, message_id="<other-name@test>")
        assert "127.0.0.1" in str(caught.value) or "match" in str(caught.value).lower()
        assert controller.SMTP_kwargs["authenticator"].attempts == 0
    finally:
        controller.stop()


def test_ssl_against_a_starttls_server_fails_for_good_with_a_hint(ca, trusted_ca, tmp_path) -> None:
    controller, port = serve(tmp_path / "mail", ca, "starttls", "127.0.0.1")
    try:
        with pytest.raises(PermanentMailError, match="MAIL_SECURITY"):
            mailer("ssl", port).send(**MAIL, message_id="<wrong-mode@test>")
    finally:
        controller.stop()


def test_starttls_against_a_plain_server_fails_for_good_with_a_hint(tmp_path: Path) -> None:
    port = free_port()
    controller = make_controller(tmp_path / "mail", port=port)  # no TLS at all
    controller.start()
    try:
        with pytest.raises(PermanentMailError, match="MAIL_SECURITY"):
            mailer("starttls", port).send(**MAIL, message_id="<no-starttls@test>")
    finally:
        controller.stop()


def test_too_many_logins_is_transient_and_a_bad_login_permanent() -> None:
    busy = classify(smtplib.SMTPAuthenticationError(454, b"4.7.0 Too many login attempts"))
    wrong = classify(smtplib.SMTPAuthenticationError(535, b"5.7.8 Bad credentials"))
    assert isinstance(busy, TransientMailError) and "454" in str(busy)
    assert isinstance(wrong, PermanentMailError) and "MAIL_PASSWORD" in str(wrong)


def test_a_password_over_plain_smtp_to_another_host_is_refused_at_start_up() -> None:
    environ = {
        "MAIL_HOST": "smtp.example.org",
        "MAIL_PORT": "25",
        "MAIL_SECURITY": "none",
        "MAIL_USERNAME": "me@example.org",
        "MAIL_PASSWORD": PASSWORD,
    }
    with pytest.raises(SettingsError, match="MAIL_SECURITY=none") as caught:
        load_settings(environ, settings_file=Path("/nonexistent"))
    assert PASSWORD not in str(caught.value)
    load_settings({**environ, "MAIL_SECURITY": "starttls"}, settings_file=Path("/nonexistent"))


@pytest.mark.integration
def test_the_task_fails_for_good_naming_the_certificate(
    ca, start_worker, queue_name, tmp_path: Path
) -> None:
    """End to end: /send, a worker, and a mail server whose certificate nothing trusts."""
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    server = start_inbox(tmp_path / "tls-inbox", password=PASSWORD, tls_pem=pem)
    env = {**server.env, "MAIL_USERNAME": "kit@mailasync.example", "MAIL_PASSWORD": PASSWORD}
    start_worker(env=env)
    web = start_app(env=env)
    try:
        body = {"to": "learner@example.com", "subject": "Over TLS", "body": "Sent encrypted."}
        task_id = requests.post(f"{web.url}/send", json=body, timeout=10).json()["task_id"]
        status = wait_for_state(web.url, task_id)[-1]
    finally:
        web.stop()
        server.stop()
    assert status["state"] == "FAILURE", status
    assert "certificate is not trusted" in status["error"], status
    assert "login attempt" not in server.log_text()
    assert Inbox(tmp_path / "tls-inbox").count() == 0
