"""Helpers the notebooks import, so no cell pastes kit code.

    >>> from kit import lab
    >>> kit = lab.start_kit("02", work_seconds=1, app=True)
    >>> kit.mailasync.sendMail.delay(lab.mail(1))
    >>> lab.wait_for_mail(kit.inbox, 1)
    >>> kit.stop()

One module a job:

- ``session``: ``start_kit(name, work_seconds=None, workers=1, pool="threads",
  concurrency=1, app=False, env=None) -> Kit``, a notebook's own queue, inbox,
  workers and web app, stopped by ``kit.stop()`` or at kernel exit; ``show_log``.
- ``timing``: ``timed``, ``time_calls``, ``percentile``, ``percentiles`` (a ``Table``),
  ``latency_chart``.
- ``mails``: ``mail(i, prefix)`` (numbered task data), ``arrival_order``, ``wait_for_mail``.
- ``doctor``: ``versions()``, ``check_setup()``, ``checks_table()`` and
  ``embedded_limits()`` for notebook 00.
- ``timeline``: which worker slot ran which mail when, from Celery's events (notebook 05).

No helper prints a password: settings are shown through ``Settings.__repr__``
and ``mask_url``, which hide them.
"""

from kit.lab.doctor import Check, check_setup, checks_table, embedded_limits, versions
from kit.lab.mails import arrival_order, mail, wait_for_mail
from kit.lab.session import Kit, load_mailasync, show_log, start_kit
from kit.lab.timing import Table, latency_chart, percentile, percentiles, time_calls, timed

__all__ = [
    "Check",
    "Kit",
    "Table",
    "arrival_order",
    "check_setup",
    "checks_table",
    "embedded_limits",
    "latency_chart",
    "load_mailasync",
    "mail",
    "percentile",
    "percentiles",
    "show_log",
    "start_kit",
    "time_calls",
    "timed",
    "versions",
    "wait_for_mail",
]
