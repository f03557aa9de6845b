"""The kit's settings, read once in layers: environment > default_settings.py > defaults.

The built-in defaults send mail to the kit's local inbox (``python3 -m kit.inbox`` on
127.0.0.1:8025, no TLS, no login), so nothing needs a real account. Copy
``default_settings.py.example`` to ``default_settings.py`` to use Gmail; an
environment variable of the same name wins over both.
"""

from __future__ import annotations

import ipaddress
import os
import runpy
import stat
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".mailasync"
SETTINGS_FILE = ROOT / "default_settings.py"
SECURITY_CHOICES = ("ssl", "starttls", "none")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and the fix."""


@dataclass(frozen=True)
class Settings:
    """Every setting the kit reads. Field names match the environment variables."""

    CELERY_BROKER_URL: str = "pyamqp://guest@localhost//"
    CELERY_RESULT_BACKEND: str = f"file://{STATE_DIR / 'results'}"
    CELERY_QUEUE: str = "mailasync"
    MAIL_USERNAME: str = "kit@mailasync.example"
    MAIL_PASSWORD: str = ""
    MAIL_HOST: str = "127.0.0.1"
    MAIL_PORT: int = 8025
    MAIL_SECURITY: str = "none"
    MAIL_TIMEOUT: float = 10.0
    MAIL_MAX_CONNECTIONS: int = 10
    # Waits of 5 s doubling to 10 min, 18 retries: a mail outlives 1 to 2 hours of outage.
    MAIL_RETRY_MAX: int = 18
    MAIL_RETRY_BACKOFF: float = 5.0
    MAIL_RETRY_BACKOFF_MAX: float = 600.0
    WORK_SECONDS: float = 5.0
    PUBLISH_TIMEOUT: float = 1.0
    # RabbitMQ's consumer_timeout (30 min by default): no mail is held unacknowledged near it.
    BROKER_CONSUMER_TIMEOUT: float = 1800.0
    # AMQP heartbeat, every pool: how soon RabbitMQ notices a frozen worker (about this long).
    BROKER_HEARTBEAT: float = 60.0
    # How long task results, and the sent-mail ledger, are kept (no celery beat needed).
    RESULT_EXPIRES: float = 24 * 3600.0
    LEDGER_EXPIRES: float = 7 * 24 * 3600.0
    MAX_SUBJECT_LENGTH: int = 200
    MAX_BODY_LENGTH: int = 10_000
    MAIL_SMTPUTF8: bool = False

    def __repr__(self) -> str:
        parts = []
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "MAIL_PASSWORD":
                value = "***" if value else ""
            elif field.name.endswith("_URL") or field.name == "CELERY_RESULT_BACKEND":
                value = shown(value)
            parts.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    @property
    def uses_local_inbox(self) -> bool:
        """True when mail goes to a server on this machine (the kit's inbox)."""
        return is_loopback(self.MAIL_HOST)


def mask_url(url: str) -> str:
    """Hide the password in a URL such as amqp://user:secret@host//."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def shown(url: str) -> str:
    """A URL as the kit prints it: password masked, the repository's folder as <repo>."""
    return mask_url(url).replace(str(ROOT), "<repo>")


def is_loopback(host: str) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_placeholder(value: str) -> bool:
    """True for the example file's fill-me-in values, such as <your-app-password>."""
    value = value.strip()
    return (value.startswith("<") and value.endswith(">")) or value.lower() in {
        "you@gmail.com",
        "your-app-password",
        "changeme",
    }


def read_settings_file(path: Path) -> dict[str, Any]:
    """Return the upper-case names defined in a default_settings.py, or {} if absent.

    The file holds a password, so it must be private to its owner, and it is run
    without an import: an import would leave a .pyc copy of the password behind
    in __pycache__, there even after the file is deleted.
    """
    if not path.is_file():
        return {}
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingsError(
            f"{path.name} can be read by other users (mode {stat.filemode(mode)}) and may hold "
            f"your mail password: make it private with  chmod 600 {path}"
        )
    defined = runpy.run_path(str(path), run_name="default_settings")
    return {name: value for name, value in defined.items() if name.isupper()}


def private_folder(path: Path) -> Path:
    """Create `path` (and its parents) readable by its owner only; logs and mail go there."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def convert(name: str, raw: Any, kind: type) -> Any:
    """Turn a raw setting into the field's type, or say which setting is wrong."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word in TRUE_WORDS | FALSE_WORDS:
            return word in TRUE_WORDS
        raise SettingsError(f"{name}={raw!r}: use true or false (1/0, yes/no, on/off).")
    if isinstance(raw, kind) and not isinstance(raw, bool):
        return raw
    try:
        return kind(str(raw).strip())
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} is not a valid {kind.__name__}; fix it in the "
            f"environment or in default_settings.py."
        ) from None


def load_settings(
    environ: Mapping[str, str] | None = None, settings_file: Path | None = None
) -> Settings:
    """Read the settings and check them, raising SettingsError with the fix."""
    environ = os.environ if environ is None else environ
    if settings_file is None:
        settings_file = Path(environ.get("MAILASYNC_SETTINGS_FILE", SETTINGS_FILE))
    from_file = read_settings_file(settings_file)
    values: dict[str, Any] = {}
    for field in fields(Settings):
        kind = type(field.default)
        if field.name in environ:
            values[field.name] = convert(field.name, environ[field.name], kind)
        elif field.name in from_file:
            values[field.name] = convert(field.name, from_file[field.name], kind)
    settings = Settings(**values)
    check(settings)
    return settings


def longest_task_run(settings: Settings) -> float:
    """Seconds one run of sendMail can hold its message: the work, then a send of at
    most five SMTP steps of MAIL_TIMEOUT each, with a margin (the task's time limit)."""
    return settings.WORK_SECONDS + 6 * settings.MAIL_TIMEOUT + 30


def retry_window(settings: Settings) -> tuple[float, float]:
    """Shortest and longest time (seconds) from a mail's first failed send to giving up.

    Wait n is drawn between half and all of min(BACKOFF * 2**n, BACKOFF_MAX).
    """
    ceilings = [
        min(settings.MAIL_RETRY_BACKOFF_MAX, settings.MAIL_RETRY_BACKOFF * 2**retry)
        for retry in range(settings.MAIL_RETRY_MAX)
    ]
    return sum(ceilings) / 2, sum(ceilings)


def check_held_below_consumer_timeout(settings: Settings) -> None:
    """No run nor wait may come near RabbitMQ's consumer_timeout, which would close the
    worker's channel and hand every mail it holds to another worker."""
    limit = settings.BROKER_CONSUMER_TIMEOUT
    if longest_task_run(settings) >= limit / 2:
        raise SettingsError(
            f"WORK_SECONDS={settings.WORK_SECONDS:g} with MAIL_TIMEOUT={settings.MAIL_TIMEOUT:g} "
            f"lets one task run {longest_task_run(settings):.0f} s, too near RabbitMQ's "
            f"consumer_timeout (BROKER_CONSUMER_TIMEOUT={limit:g} s): shorten them, or raise "
            "consumer_timeout in rabbitmq.conf and BROKER_CONSUMER_TIMEOUT with it."
        )
    if settings.MAIL_RETRY_BACKOFF_MAX >= limit / 2:
        raise SettingsError(
            f"MAIL_RETRY_BACKOFF_MAX={settings.MAIL_RETRY_BACKOFF_MAX:g} s is too near RabbitMQ's "
            f"consumer_timeout (BROKER_CONSUMER_TIMEOUT={limit:g} s): keep it under {limit / 2:g}."
        )
    longest_redelivery = retry_window(settings)[1] + limit + longest_task_run(settings)
    if settings.LEDGER_EXPIRES <= longest_redelivery:
        raise SettingsError(
            f"LEDGER_EXPIRES={settings.LEDGER_EXPIRES:g} s: the sent-mail ledger must outlive any "
            f"redelivery of a mail (here up to {longest_redelivery:.0f} s); raise it."
        )


def check(settings: Settings) -> None:
    """Refuse settings that cannot work, naming the one to fix."""
    if settings.MAIL_SECURITY not in SECURITY_CHOICES:
        raise SettingsError(
            f"MAIL_SECURITY={settings.MAIL_SECURITY!r}: use one of {', '.join(SECURITY_CHOICES)}."
        )
    if not 0 < settings.MAIL_PORT < 65536:
        raise SettingsError(f"MAIL_PORT={settings.MAIL_PORT} is not a TCP port (1-65535).")
    for name in ("WORK_SECONDS", "MAIL_RETRY_BACKOFF", "MAIL_RETRY_BACKOFF_MAX", "MAIL_RETRY_MAX"):
        if getattr(settings, name) < 0:
            raise SettingsError(f"{name} must be zero or more.")
    for name in (
        "MAIL_TIMEOUT",
        "PUBLISH_TIMEOUT",
        "MAIL_MAX_CONNECTIONS",
        "BROKER_CONSUMER_TIMEOUT",
        "BROKER_HEARTBEAT",
        "RESULT_EXPIRES",
        "LEDGER_EXPIRES",
    ):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"{name} must be more than zero.")
    check_held_below_consumer_timeout(settings)
    if is_placeholder(settings.MAIL_USERNAME):
        raise SettingsError(
            "MAIL_USERNAME is still the example's placeholder: put your address in "
            "default_settings.py, or delete that file to use the local inbox."
        )
    if settings.uses_local_inbox:
        return
    if settings.MAIL_PASSWORD and settings.MAIL_SECURITY == "none":
        raise SettingsError(
            f"MAIL_SECURITY=none would send MAIL_PASSWORD unencrypted to {settings.MAIL_HOST}: "
            "use ssl (port 465) or starttls (port 587); none is only for a server on this machine."
        )
    if not settings.MAIL_PASSWORD or is_placeholder(settings.MAIL_PASSWORD):
        raise SettingsError(
            f"MAIL_PASSWORD is not set for {settings.MAIL_HOST}: put an app password in "
            "default_settings.py (Gmail: myaccount.google.com/apppasswords, with 2-step "
            "verification on), or set MAIL_HOST=127.0.0.1 to use the local inbox."
        )
