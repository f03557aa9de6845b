"""Bad input: whatever a client sends gets a 4xx with a JSON {"error"}, never a 5xx, never queued.

A written list of known tricks, then hypothesis-generated bodies, through Flask's test
client (fast, in this process, publishing to a queue nobody consumes so that the
queue's message count shows what was queued), and a few through the real server.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import time
import unicodedata
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit import broker
from kit.validation import InvalidMail, validate_mail

GOOD = {"to": "learner@example.com", "subject": "Report", "body": "Ready"}
JSON = "application/json"
LINE_BREAKERS = ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]
CONTROLS = ["\x00", "\x01", "\x08", "\x1b", "\x7f", "\x9b"]


def queued(queue: str) -> int:
    """Messages waiting in `queue` on this run's broker, RabbitMQ or embedded."""
    return broker.queue_depth(os.environ["CELERY_BROKER_URL"], queue)


def queued_once_settled(queue: str, expected: int, timeout: float = 5.0) -> int:
    """The queue's depth once it reaches `expected`, or after `timeout` (a publish is
    asynchronous: the broker may count it a moment after /send answered)."""
    deadline = time.monotonic() + timeout
    while (depth := queued(queue)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return depth


def purge(queue: str) -> None:
    with broker.connect(os.environ["CELERY_BROKER_URL"]) as connection:
        try:
            connection.default_channel.queue_purge(queue)
        except connection.channel_errors:  # never declared: nothing to purge
            pass


def with_field(name: str, value: Any) -> bytes:
    return json.dumps({**GOOD, name: value}).encode()


def written_list() -> list[tuple[str, bytes, str | None, int]]:
    """(what, body, content type, expected status) for every known trick."""
    cases: list[tuple[str, bytes, str | None, int]] = [
        ("deeply nested list", b"[" * 30_000 + b"]" * 30_000, JSON, 400),
        ("deeply nested object", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, JSON, 400),
        ("deep nesting in a field", with_field("body", [[[[[[[[[[]]]]]]]]]]), JSON, 400),
        ("huge body", json.dumps({**GOOD, "body": "x" * 100_000}).encode(), JSON, 413),
        ("huge junk", b"\xff" * 200_000, JSON, 413),
        ("text/plain", json.dumps(GOOD).encode(), "text/plain", 415),
        ("form", b"to=a%40example.com&subject=s&body=b", "application/x-www-form-urlencoded", 415),
        ("multipart", b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x", 415),
        ("no content type", json.dumps(GOOD).encode(), None, 415),
        ("json-ish type", json.dumps(GOOD).encode(), "application/jsonx", 415),
        ("empty body", b"", JSON, 400),
        ("invalid UTF-8", b'{"to": "\xff@example.com", "subject": "s", "body": "b"}', JSON, 400),
        (
            "UTF-8 surrogate",
            b'{"to": "a@example.com", "subject": "\xed\xa0\x80", "body": "b"}',
            JSON,
            400,
        ),  # noqa: E501
        (
            "Latin-1 declared",
            '{"subject": "caf\u00e9"}'.encode("latin-1"),
            JSON + "; charset=latin-1",
            400,
        ),  # noqa: E501
        ("UTF-16", json.dumps(GOOD).encode("utf-16"), JSON, 400),
        ("BOM", b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), JSON, 400),
        (
            "duplicate keys",
            b'{"to": "a@example.com", "to": "b@example.com", "subject": "s", "body": "b"}',
            JSON,
            400,
        ),  # noqa: E501
        ("raw NUL byte", b'{"to": "a@example.com",\x00 "subject": "s", "body": "b"}', JSON, 400),
        (
            "raw newline in a string",
            b'{"to": "a@example.com", "subject": "a\nb", "body": "b"}',
            JSON,
            400,
        ),  # noqa: E501
        ("trailing junk", json.dumps(GOOD).encode() + b" {}", JSON, 400),
        (
            "lone surrogate escape",
            b'{"to": "a@example.com", "subject": "\\ud800", "body": "b"}',
            JSON,
            400,
        ),  # noqa: E501
        (
            "lone low surrogate",
            b'{"to": "a@example.com", "subject": "s", "body": "\\udfff"}',
            JSON,
            400,
        ),  # noqa: E501
        ("NaN", b'{"to": "a@example.com", "subject": "s", "body": NaN}', JSON, 400),
        ("Infinity", b'{"to": "a@example.com", "subject": "s", "body": Infinity}', JSON, 400),
        ("-Infinity", b'{"to": "a@example.com", "subject": "s", "body": -Infinity}', JSON, 400),
        ("missing field", json.dumps({"to": "a@example.com", "subject": "s"}).encode(), JSON, 400),
        ("extra field", json.dumps({**GOOD, "cc": "x@example.com"}).encode(), JSON, 400),
        ("list of addresses", with_field("to", ["a@example.com", "b@example.com"]), JSON, 400),
        ("comma list", with_field("to", "a@example.com, b@example.com"), JSON, 400),
        ("semicolon list", with_field("to", "a@example.com;b@example.com"), JSON, 400),
        ("display name", with_field("to", "Bob <bob@example.com>"), JSON, 400),
        ("quoted display name", with_field("to", '"Bob" <bob@example.com>'), JSON, 400),
        ("no domain", with_field("to", "bob@"), JSON, 400),
        ("too long address", with_field("to", "a" * 250 + "@example.com"), JSON, 400),
        ("subject over the limit", with_field("subject", "s" * 201), JSON, 400),
        ("body over the limit", with_field("body", "b" * 10_001), JSON, 400),
    ]
    for value in ([], "str", 1, 1.5, None, True, [GOOD]):
        cases.append((f"non-object {value!r:.20}", json.dumps(value).encode(), JSON, 400))
    for name in ("to", "subject", "body"):
        for value in (1, 1.5, None, True, [], {}, ["x"], {"x": "y"}):
            cases.append((f"{name} is {value!r}", with_field(name, value), JSON, 400))
        for char in CONTROLS:
            value = f"a{char}b@example.com" if name == "to" else f"a{char}b"
            cases.append((f"{name} with {char!r}", with_field(name, value), JSON, 400))
    for name in ("to", "subject"):
        for char in LINE_BREAKERS:
            value = f"a@example.com{char}Bcc: x@example.com" if name == "to" else f"Hi{char}Bcc: x"
            cases.append((f"{name} with {char!r}", with_field(name, value), JSON, 400))
    for char in ("\u2028", "\u2029", "\x85", "\x0b", "\x0c"):
        cases.append((f"body with {char!r}", with_field("body", f"a{char}b"), JSON, 400))
    return cases


CASES = written_list()


@pytest.fixture(scope="module")
def fuzz_queue() -> Iterator[str]:
    """A queue of this module's own that no worker consumes, set before the app is loaded."""
    name = f"mailasync-fuzz-{uuid.uuid4().hex[:8]}"
    previous = os.environ.get("CELERY_QUEUE")
    os.environ["CELERY_QUEUE"] = name
    yield name
    with broker.connect(os.environ["CELERY_BROKER_URL"]) as connection:
        try:
            connection.default_channel.queue_delete(queue=name)
        except connection.channel_errors:
            pass
    if previous is None:
        os.environ.pop("CELERY_QUEUE", None)
    else:
        os.environ["CELERY_QUEUE"] = previous


@pytest.fixture(scope="module")
def client(fuzz_queue: str) -> Iterator[FlaskClient]:
    import mailasync

    importlib.reload(mailasync)
    import app as web_app

    importlib.reload(web_app)
    assert mailasync.settings.CELERY_QUEUE == fuzz_queue
    yield web_app.app.test_client()
    mailasync.app.close()


def post(client: FlaskClient, body: bytes, content_type: str | None = JSON) -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post("/send", data=body, headers=headers)


def assert_refused(response: Any, what: str = "") -> None:
    """A 4xx with a JSON body that says what is wrong."""
    assert 400 <= response.status_code < 500, (what, response.status_code, response.data[:300])
    assert response.mimetype == "application/json", what
    error = response.get_json()["error"]
    assert isinstance(error, str) and error, what


@pytest.mark.parametrize("what, body, content_type, status", CASES, ids=[c[0] for c in CASES])
def test_written_list_is_refused_with_a_json_error(
    client, fuzz_queue, what: str, body: bytes, content_type: str | None, status: int
) -> None:
    before = queued(fuzz_queue)
    for path in ("/send", "/send-sync"):
        headers = {"Content-Type": content_type} if content_type else {}
        response = client.post(path, data=body, headers=headers)
        assert response.status_code == status, (what, path, response.get_json())
        assert_refused(response, what)
    assert queued(fuzz_queue) == before


def test_the_good_mail_is_queued_so_the_count_above_means_something(client, fuzz_queue) -> None:
    """The queue count the refusals are checked against does see one mail queued."""
    before = queued(fuzz_queue)
    response = post(client, json.dumps(GOOD).encode())
    assert response.status_code == 202, response.get_json()
    assert queued_once_settled(fuzz_queue, before + 1) == before + 1


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
nasty_text = st.text(
    st.characters(codec=None, exclude_categories=())
    | st.sampled_from([c for c in LINE_BREAKERS + CONTROLS if len(c) == 1])
)
addresses = (
    st.emails()
    | nasty_text
    | st.tuples(
        st.emails(), st.sampled_from(LINE_BREAKERS + CONTROLS + [",", ";", " "]), st.text()
    ).map(lambda t: t[0] + t[1] + t[2])
    | st.builds(lambda name, a: f"{name} <{a}>", st.text(min_size=1), st.emails())
)


@FUZZ
@given(body=st.binary(max_size=2000))
def test_arbitrary_bytes_are_refused(client, fuzz_queue, body: bytes) -> None:
    assert_refused(post(client, body), repr(body[:80]))


@FUZZ
@given(value=json_values)
def test_arbitrary_json_values_are_refused(client, fuzz_queue, value: Any) -> None:
    assert_refused(post(client, json.dumps(value).encode()), repr(value)[:80])


@FUZZ
@given(to=addresses, subject=nasty_text, body=nasty_text)
def test_mails_with_arbitrary_strings_are_refused_unless_safe(
    client, fuzz_queue, to: str, subject: str, body: str
) -> None:
    data = {"to": to, "subject": subject, "body": body}
    raw = json.dumps(data).encode()  # escapes lone surrogates as \ud800, as a client might
    response = post(client, raw)
    assert response.status_code < 500, response.get_json()
    if response.status_code != 202:
        assert_refused(response, repr(data)[:120])
        return
    # Accepted: then it is safe to put in a header, whatever the validator thinks.
    mail = validate_mail(data)
    for header in (mail.to, mail.subject):
        assert not any(unicodedata.category(c) in {"Cc", "Zl", "Zp"} for c in header)
    assert "," not in mail.to and ";" not in mail.to and "<" not in mail.to
    assert "\x00" not in mail.body


def test_fuzzed_refusals_queued_nothing(client, fuzz_queue) -> None:
    """Fuzzed mails through /send leave exactly the accepted ones queued, not one more.

    The control for the fuzzers above, and self-contained, so that it gives the same
    verdict alone, first or last: it empties the queue, fuzzes, counts what /send
    accepted, and adds one good mail so that the count is shown to see a queued mail.
    """
    with pytest.raises(InvalidMail):  # the validator is the one in use, and it refuses
        validate_mail({"to": "a@example.com\r\nBcc: x@example.com", "subject": "s", "body": "b"})
    purge(fuzz_queue)
    answers: collections.Counter[int] = collections.Counter()

    @FUZZ
    @given(to=addresses, subject=nasty_text, body=nasty_text)
    def one_mail(to: str, subject: str, body: str) -> None:
        response = post(client, json.dumps({"to": to, "subject": subject, "body": body}).encode())
        answers[response.status_code] += 1

    one_mail()
    answers[post(client, json.dumps(GOOD).encode()).status_code] += 1
    refused = sum(n for code, n in answers.items() if 400 <= code < 500)
    assert refused > 0, f"the fuzzing refused nothing: {answers}"
    assert set(answers) <= {202} | set(range(400, 500)), answers
    assert queued_once_settled(fuzz_queue, answers[202]) == answers[202], answers
    purge(fuzz_queue)


# Through the real server -----------------------------------------------------------------


REAL_SERVER_CASES = [
    c
    for c in CASES
    if c[0]
    in {
        "deeply nested list",
        "huge body",
        "invalid UTF-8",
        "raw NUL byte",
        "duplicate keys",
        "lone surrogate escape",
        "NaN",
        "text/plain",
        "display name",
        "subject with '\\r\\n'",
    }
]


@pytest.mark.integration
def test_the_real_server_refuses_them_too(web, start_worker, mailbox, queue_name) -> None:
    start_worker()
    assert len(REAL_SERVER_CASES) == 10
    for what, body, content_type, status in REAL_SERVER_CASES:
        headers = {"Content-Type": content_type} if content_type else {}
        response = requests.post(f"{web.url}/send", data=body, headers=headers, timeout=10)
        assert response.status_code == status, (what, response.text)
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must still hold
        yield b'{"to": "a@example.com", "subject": "s", "body": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = requests.post(
        f"{web.url}/send", data=chunks(), headers={"Content-Type": JSON}, timeout=10
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]

    def valid_then_padding() -> Iterator[bytes]:  # its first 64 KiB alone are valid JSON
        yield json.dumps(GOOD).encode()
        for _ in range(100):
            yield b" " * 1024

    response = requests.post(
        f"{web.url}/send", data=valid_then_padding(), headers={"Content-Type": JSON}, timeout=10
    )
    assert response.status_code == 413, response.text
    time.sleep(1.5)  # WORK_SECONDS is 1: a wrongly queued mail would be here by now
    assert mailbox.count() == 0
    assert queued(queue_name) == 0
