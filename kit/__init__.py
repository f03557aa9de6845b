"""The kit behind the article's files: everything mailasync.py and app.py lean on.

One module a job, each readable in one sitting:

- ``settings``: the settings layers (environment > default_settings.py > defaults)
- ``validation``: what a mail request must look like, checked before anything is queued
- ``web``: reading and checking a JSON request, the JSON error answers
- ``guarantees``: the Celery settings behind "nothing lost" (JSON only, acks late, ...)
- ``work``: the task's slow part and its retry waits
- ``mailer``: yagmail over a small pool of open SMTP connections, failures sorted
- ``tracking``: the result backend, the sent-mail ledger, a task's status
- ``broker``: RabbitMQ or the embedded broker, and what to do when neither answers
- ``inbox``: the local SMTP inbox (``python3 -m kit.inbox``), the stand-in for a real mail service
- ``processes``: start and stop the inbox, workers and app in the background
- ``lab``: the notebooks' helpers
"""
