"""Custom task events for the states Celery has no name for, so Flower lists them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tests.harness import wait_for
from tests.shopfixture import Shop


def test_deduplicated_and_dead_lettered_tasks_send_events(
    make_shop: Callable[..., Shop],
) -> None:
    shop = make_shop("redis")
    seen: list[dict[str, Any]] = []
    stop, ready = threading.Event(), threading.Event()

    def listen() -> None:
        with shop.app.connection_for_read() as conn:
            receiver = shop.app.events.Receiver(conn, handlers={"*": seen.append})
            consume_ready = receiver.on_consume_ready

            def on_ready(*args: Any, **kwargs: Any) -> None:
                consume_ready(*args, **kwargs)
                ready.set()  # its queue is bound: no event sent from now on is missed

            receiver.on_consume_ready = on_ready  # type: ignore[method-assign]
            while not stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(10), "the event receiver did not start"
    copies = [shop.task("send_receipt_consumer_dedupe").delay(8) for _ in range(2)]
    rejected = shop.task("reject_input").delay(9)
    with shop.worker(events=True):
        for handle in copies:
            handle.get(timeout=30)
        wait_for(lambda: any(e["type"] == "task-dead_lettered" for e in seen), 30,
                 "the dead-lettered event")
        wait_for(lambda: any(e["type"] == "task-deduplicated" for e in seen), 30,
                 "the deduplicated event")
    stop.set()
    dead = next(e for e in seen if e["type"] == "task-dead_lettered")
    assert dead["uuid"] == rejected.id and dead["reason"] == "permanent_error"
    assert "no e-mail address" in dead["error"]
    dedup = next(e for e in seen if e["type"] == "task-deduplicated")
    assert dedup["uuid"] in {h.id for h in copies}
    assert dedup["idempotency_key"] == "receipt:8"
