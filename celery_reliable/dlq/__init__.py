"""Dead letters: the DLQ queue on the broker, its index in the store, and replay.

* :mod:`.message` builds and reads the dead-letter message;
* :mod:`.publisher` publishes it with broker confirms;
* :mod:`.routing` is the one path every final failure takes;
* :mod:`.broker` takes messages off the DLQ queue (replay, purge, reconcile);
* :mod:`.api` is what the CLI calls (:class:`DeadLetters`), with
  its results in :mod:`.model` and :mod:`.reconcile` keeping queue and index agreed;
* :mod:`.signals` the alerting hook, :mod:`.events` custom task events;
* :mod:`.poison` dead-letters messages a worker cannot even decode.
"""

from __future__ import annotations

from celery_reliable.dlq.api import DeadLetters

__all__ = ["DeadLetters"]
