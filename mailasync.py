"""The Celery app and the `sendMail` task: slow work, then one mail, in the background.

After "Slow HTTP response times? Celery to the rescue!"
(https://betterprogramming.pub/slow-http-response-times-celery-to-the-rescue-76346eb4212c).
From the repository root, one terminal each:

    (terminal 1)$ python3 -m kit.inbox --dir inbox      # the local inbox, a stand-in for Gmail
    (terminal 2)$ celery -A mailasync worker --loglevel=INFO
    (terminal 3)$ python3 app.py                        # Flask on 127.0.0.1:5000
    (terminal 4)$ python3
    >>> from mailasync import sendMail
    >>> sendMail.delay({"to": "you@example.com", "subject": "Hi", "body": "Done"})
    <AsyncResult: ...>                                  # returns at once
    # WORK_SECONDS later a new .eml file appears in inbox/

Each of the kit's additions to the article is one call below; kit/ explains them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from kit import guarantees, liveness, upkeep
from kit.mailer import Mailer, TransientMailError
from kit.settings import load_settings
from kit.tracking import AlreadySent, ClaimBusy, SentLedger
from kit.validation import check_mail
from kit.work import backoff, do_the_work

settings = load_settings()  # environment > default_settings.py > the defaults in kit/settings.py

app = Celery("mailasync", broker=settings.CELERY_BROKER_URL)
guarantees.json_only(app)  # never unpickle what arrives from the network
guarantees.nothing_lost(app)  # acknowledge after the task ran; requeue it if its worker dies
guarantees.bounded_publish(app, settings)  # 202 once RabbitMQ has it; 503 within a second if down
guarantees.tracked(app, settings)  # GET /tasks/<id> can read states, progress and results
guarantees.on_the_kits_queue(app, settings)  # CELERY_QUEUE, and its dead-letter queue for failures
liveness.install(app, settings)  # a dead or frozen worker's mail goes to another within minutes
upkeep.install(app, settings)  # old results and ledger entries expire, with no celery beat

yag = Mailer(settings)  # yagmail clients kept logged in; failures sorted into retry or give up
guarantees.close_at_worker_exit(yag)
# Which mails went out and which run may send now, so that no mail goes out twice;
# a claim outlives any send, which the mailer ends within 5 x MAIL_TIMEOUT.
ledger = SentLedger(app, lease=6 * settings.MAIL_TIMEOUT, expires=settings.LEDGER_EXPIRES)


@app.task(bind=True, base=guarantees.MailTask, name="mailasync.sendMail")
def sendMail(self: Task, data: dict[str, Any], work_done: bool = False) -> dict[str, Any]:  # noqa: N802 (the article's name)
    """Do WORK_SECONDS of work, then mail `data` ({"to", "subject", "body"}) once."""
    mail = check_mail(data, settings)  # anything that can publish to the queue can call this
    message_id = f"<{self.request.id}@mailasync>"  # the task id: the same on every retry
    if ledger.was_sent(self.request.id):  # redelivered after its mail went out
        return {"message_id": message_id, "duplicate": True}
    if not work_done:  # a retried send does not redo the work
        do_the_work(self, settings.WORK_SECONDS)
    try:
        with ledger.sending(self.request.id):  # one run at a time sends it; marked sent after
            yag.send(to=mail.to, subject=mail.subject, contents=mail.body, message_id=message_id)
    except AlreadySent:  # another run sent it while this one worked
        return {"message_id": message_id, "duplicate": True}
    except (TransientMailError, ClaimBusy, SoftTimeLimitExceeded) as error:  # not now: try later
        raise self.retry_later(  # self.retry, with the wait held by RabbitMQ, not the worker
            error,
            backoff(self.request.retries, settings),
            max_retries=settings.MAIL_RETRY_MAX,
            kwargs={"work_done": True},
        ) from error
    # No recipient in the result: the worker logs it, and logs are no place for addresses.
    return {"message_id": message_id, "sent_at": datetime.now(UTC).isoformat()}


def send_now(data: dict[str, Any]) -> dict[str, Any]:
    """The slow path the article starts from: the same work and send, inside the request."""
    mail = check_mail(data, settings)
    time.sleep(settings.WORK_SECONDS)
    message_id = f"<sync-{time.time_ns()}@mailasync>"
    yag.send(to=mail.to, subject=mail.subject, contents=mail.body, message_id=message_id)
    return {"to": mail.to, "message_id": message_id}
