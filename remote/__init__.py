"""Remote agents on Celery with a Redis broker (issue 12).

:mod:`remote.contract` is what maintd (``daemon/celery_runner.py``) and ``maintd-agent``
(:mod:`remote.worker`, :mod:`remote.task`) agree on: the Celery app's settings, the task,
its argument and result, the queues and the log streams. Nothing here imports trio.
"""
