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
