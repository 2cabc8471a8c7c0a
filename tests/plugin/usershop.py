"""A user's app, as a Django or Flask project has it: a module global with its tasks.

Its store is the "development store"; the plugin's fixtures must never touch it
(the URL names a port nothing listens on: a test that reached it would fail).
"""

from __future__ import annotations

import threading

from celery import Celery

from celery_reliable import PermanentError, ReliableTask

app = Celery("usershop", broker="memory://", set_as_current=False)
app.conf.reliable_store_url = "redis://127.0.0.1:1/1"
app.conf.reliable_retry_backoff_base = 0  # retries at once: tests do not wait for backoff
app.conf.task_default_queue = "usershop"


class Mailer:
    """The side effect the guarantees are about: a receipt mailed, counted per order."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.failures_left = 0  # transient failures to raise before a send works
        self.refuse = False  # a permanent refusal (bad address)
        self._lock = threading.Lock()

    def send(self, order_id: int) -> None:
        with self._lock:
            if self.refuse:
                raise PermanentError(f"mailer refused the address of order {order_id}")
            if self.failures_left:
                self.failures_left -= 1
                raise ConnectionError("mailer timed out")
            self.sent.append(order_id)


mailer = Mailer()


@app.task(base=ReliableTask, idempotency_key="receipt:{order_id}",
          retry_on=(ConnectionError,), max_attempts=4,
          shared=False)  # registered in this app only, not in every app the suite makes
def send_receipt(order_id: int) -> str:
    mailer.send(order_id)
    return f"receipt {order_id} sent"
