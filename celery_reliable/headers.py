"""The message headers ReliableTask adds to a task's message.

Headers, not properties or the body: they are what every kombu transport keeps,
and Celery hands them to the body as ``self.request.headers``.
"""

HEADER_KEY = "reliable_key"
"""The call's idempotency key."""
HEADER_FINGERPRINT = "reliable_fp"
"""A digest of the call's arguments (same key, other arguments: a conflict)."""
HEADER_DEFERS = "reliable_defers"
"""How often the task was deferred (not an attempt: a deferral does not count)."""
HEADER_SLOT = "reliable_slot"
"""The schedule slot of a call published by celery beat (``beat:<entry>:<time>``): the
call's key unless it declares one per call, so each slot runs once whatever the number
of beat processes."""
BEAT_HEADER = "celery_beat_task"
"""Celery's own header on every message published by celery beat (Celery >= 5.5)."""
