"""validate_mail: what a mail request must look like, and the error for each mistake."""

import unicodedata

import pytest

from kit.validation import (
    CONTROL_IN_BODY,
    LINE_BREAK_OR_CONTROL,
    LONE_SURROGATE,
    InvalidMail,
    Mail,
    validate_mail,
)

GOOD = {"to": "learner@example.com", "subject": "Your report", "body": "It is ready.\nBye"}


def test_a_good_request_becomes_a_mail() -> None:
    mail = validate_mail(dict(GOOD))
    assert mail == Mail(**GOOD)
    assert mail.as_task_data() == GOOD


def test_the_address_is_normalized() -> None:
    assert validate_mail({**GOOD, "to": "Learner@EXAMPLE.com"}).to == "Learner@example.com"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["to", "subject", "body"], "JSON object"),
        ("hello", "JSON object"),
        (None, "JSON object"),
        ({"subject": "s", "body": "b"}, "missing field.*to"),
        ({**GOOD, "cc": "x@example.com"}, "unknown field.*cc"),
        ({**GOOD, "to": 42}, "'to' must be a string"),
        ({**GOOD, "body": ["a"]}, "'body' must be a string"),
        ({**GOOD, "to": "not an address"}, "'to' is not a valid address"),
        ({**GOOD, "to": "a@example.com, b@example.com"}, "exactly one address"),
        ({**GOOD, "to": "a@example.com;b@example.com"}, "exactly one address"),
        ({**GOOD, "to": "Bob <bob@example.com>"}, "'to' is not a valid address"),
        ({**GOOD, "to": "a@example.com\r\nBcc: victim@example.com"}, "single line"),
        ({**GOOD, "subject": "Hi\r\nBcc: victim@example.com"}, "single line"),
        ({**GOOD, "subject": "Hi\nthere"}, "single line"),
        ({**GOOD, "subject": "Hi\u2028there"}, "single line"),
        ({**GOOD, "subject": "x" * 201}, "limit is 200"),
        ({**GOOD, "body": "x" * 10_001}, "limit is 10000"),
        ({**GOOD, "body": "nul\x00byte"}, "NUL"),
        ({**GOOD, "body": "bell\x07"}, "control characters"),
        ({**GOOD, "body": "next line\x85"}, "control characters"),
        ({**GOOD, "body": "para\u2029graph"}, "control characters"),
        ({**GOOD, "subject": "tab\there"}, "single line"),
        ({**GOOD, "body": "x" * 9_000 + "\ud800"}, "lone surrogates"),
        ({**GOOD, "subject": "\ud800"}, "lone surrogates"),
        ({**GOOD, "to": "x" * 250 + "@example.com"}, "longer than 254"),
    ],
)
def test_bad_requests_say_what_to_fix(data: object, message: str) -> None:
    with pytest.raises(InvalidMail, match=message):
        validate_mail(data)


def test_limits_are_settable() -> None:
    with pytest.raises(InvalidMail, match="limit is 3"):
        validate_mail({**GOOD, "subject": "four"}, max_subject=3)
    assert validate_mail({**GOOD, "body": "x" * 20}, max_body=20).body == "x" * 20


def test_body_keeps_tabs_and_line_breaks() -> None:
    body = "Dear learner,\r\n\tyour report is ready.\nBye"
    assert validate_mail({**GOOD, "body": body}).body == body


def test_the_character_classes_are_exactly_unicodes_categories() -> None:
    """The regexes stand for category lookups per character; check every code point."""
    for code in range(0x110000):
        char = chr(code)
        category = unicodedata.category(char)
        breaks = category in {"Cc", "Zl", "Zp"}
        assert bool(LONE_SURROGATE.match(char)) == (category == "Cs"), hex(code)
        assert bool(LINE_BREAK_OR_CONTROL.match(char)) == breaks, hex(code)
        assert bool(CONTROL_IN_BODY.match(char)) == (breaks and char not in "\t\r\n"), hex(code)


def test_an_internationalised_domain_is_sent_in_ascii() -> None:
    assert validate_mail({**GOOD, "to": "learner@bücher.example"}).to == (
        "learner@xn--bcher-kva.example"
    )


def test_a_non_ascii_local_part_is_refused_unless_the_server_takes_smtputf8() -> None:
    with pytest.raises(InvalidMail, match="MAIL_SMTPUTF8=true"):
        validate_mail({**GOOD, "to": "usér@example.com"})
    assert validate_mail({**GOOD, "to": "usér@example.com"}, smtputf8=True).to == (
        "usér@example.com"
    )
