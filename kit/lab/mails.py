"""Mails for the notebooks and tests: numbered payloads, and waiting for them to arrive."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable

from tqdm import tqdm

from kit.inbox import Inbox, ReceivedMail
from kit.lab.timing import BAR_FORMAT

SUBJECT_NUMBER = re.compile(r"#(\d+)\b")


def mail(i: int = 0, prefix: str = "Report", to: str | None = None) -> dict[str, str]:
    """Task data for mail number i (to learner<i>@example.com unless `to`); #i in the subject."""
    return {
        "to": to or f"learner{i}@example.com",
        "subject": f"{prefix} #{i}",
        "body": f"Mail number {i}: your report is ready.",
    }


def arrival_order(mails: Iterable[ReceivedMail]) -> list[int]:
    """The #numbers in the subjects, in the order the inbox stored the mails."""
    order = []
    for received in mails:
        found = SUBJECT_NUMBER.search(received.subject)
        if found:
            order.append(int(found.group(1)))
    return order


def wait_for_mail(
    inbox: Inbox, count: int, timeout: float = 60.0, desc: str = "mails in the inbox"
) -> list[ReceivedMail]:
    """Wait until the inbox holds `count` mails, with a progress bar; return them all."""
    deadline = time.monotonic() + timeout
    with tqdm(
        total=count, desc=desc, file=sys.stdout, ncols=80, mininterval=0.5, bar_format=BAR_FORMAT
    ) as bar:
        while (seen := inbox.count()) < count:
            if seen > bar.n:
                bar.update(seen - bar.n)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{seen} of {count} mails arrived within {timeout} s")
            time.sleep(0.05)
        bar.update(count - bar.n)
    return inbox.messages()
