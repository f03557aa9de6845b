"""Check a mail request before anything is queued or sent.

The same check runs in the web app (to answer 400 at once) and in the task
(because anything that can publish to the queue can call it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email

from kit.settings import Settings

FIELDS = ("to", "subject", "body")
MAX_ADDRESS_LENGTH = 254
# Unicode's categories as character ranges, fixed by its stability policy:
# Cs (surrogates), Cc (C0 and C1 controls, DEL), Zl and Zp (line and paragraph
# separators). One regex search is far cheaper than a category lookup per
# character on a 10,000-character body.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
LINE_BREAK_OR_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CONTROL_IN_BODY = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")


class InvalidMail(ValueError):
    """The request cannot be sent as it is; the message says what to fix."""


@dataclass(frozen=True)
class Mail:
    """A checked mail request: one recipient, a one-line subject, a text body."""

    to: str
    subject: str
    body: str

    def as_task_data(self) -> dict[str, str]:
        """The plain JSON data that crosses the queue."""
        return {"to": self.to, "subject": self.subject, "body": self.body}


def validate_mail(
    data: Any, max_subject: int = 200, max_body: int = 10_000, smtputf8: bool = False
) -> Mail:
    """Return a Mail built from `data`, or raise InvalidMail saying what is wrong.

    `smtputf8`: the mail server accepts SMTPUTF8, so a local part (before the @)
    may hold non-ASCII letters; without it such an address is refused here,
    before the 202, since the send could only fail later.
    """
    if not isinstance(data, dict):
        raise InvalidMail('send a JSON object such as {"to": ..., "subject": ..., "body": ...}')
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise InvalidMail(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(set(map(str, data)) - set(FIELDS))
    if unknown:
        raise InvalidMail(f"unknown field(s): {', '.join(unknown)}; send only to, subject, body")
    for name in FIELDS:
        if not isinstance(data[name], str):
            raise InvalidMail(f"{name!r} must be a string")
        if "\x00" in data[name]:
            raise InvalidMail(f"{name!r} must not contain NUL characters")
        if LONE_SURROGATE.search(data[name]):
            raise InvalidMail(f"{name!r} must be valid Unicode (no lone surrogates)")
    to, subject, body = data["to"], data["subject"], data["body"]
    for name, value in (("to", to), ("subject", subject)):
        if LINE_BREAK_OR_CONTROL.search(value):
            raise InvalidMail(f"{name!r} must be a single line (no CR, LF or control characters)")
    if CONTROL_IN_BODY.search(body):
        raise InvalidMail("'body' must not contain control characters other than tab and newline")
    if len(subject) > max_subject:
        raise InvalidMail(f"'subject' is {len(subject)} characters; the limit is {max_subject}")
    if len(body) > max_body:
        raise InvalidMail(f"'body' is {len(body)} characters; the limit is {max_body}")
    return Mail(to=validate_address(to, smtputf8), subject=subject, body=body)


def check_mail(data: Any, settings: Settings) -> Mail:
    """Check a mail against the limits in `settings`: the one check the app and the task share."""
    return validate_mail(
        data, settings.MAX_SUBJECT_LENGTH, settings.MAX_BODY_LENGTH, settings.MAIL_SMTPUTF8
    )


def validate_address(to: str, smtputf8: bool = False) -> str:
    """Return exactly one valid address, its domain in ASCII (an IDN as punycode)."""
    if len(to) > MAX_ADDRESS_LENGTH:
        raise InvalidMail(f"'to' is longer than {MAX_ADDRESS_LENGTH} characters")
    if "," in to or ";" in to:
        raise InvalidMail("'to' must be exactly one address, not a list")
    try:
        address = validate_email(to.strip(), check_deliverability=False, allow_smtputf8=smtputf8)
    except EmailNotValidError as error:
        message = f"'to' is not a valid address: {error}"
        if not smtputf8 and not to.split("@")[0].isascii():
            message += " (set MAIL_SMTPUTF8=true if your mail server accepts SMTPUTF8)"
        raise InvalidMail(message) from None
    return address.ascii_email or address.normalized
