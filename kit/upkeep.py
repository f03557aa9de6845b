"""Housekeeping without celery beat: old results, ledger entries and temporary files go."""

from __future__ import annotations

from celery import Celery

from kit.settings import Settings


def install(app: Celery, settings: Settings) -> None:
    """Expire results after RESULT_EXPIRES and ledger entries after LEDGER_EXPIRES."""
    app.conf.result_expires = settings.RESULT_EXPIRES
