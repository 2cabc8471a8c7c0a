"""The stores: reachable, and kept by their servers (eviction, persistence: each store
judges its own server, ``Store.risks``)."""

from __future__ import annotations

from celery_reliable.doctor.deployment import Deployment
from celery_reliable.errors import StoreError
from celery_reliable.findings import Finding
from celery_reliable.runtime import runtime
from celery_reliable.states import state_store as open_states


def reachable(d: Deployment) -> list[Finding]:
    """The store answers and its schema is current: nothing reliable runs without it."""
    rt = runtime(d.app)
    try:
        rt.store.ping()
    except StoreError as exc:
        return [Finding(
            "store.unreachable", "error", str(exc),
            f"Start the store or correct {rt.spelling('store_url')}; a SQL store also needs "
            "`celery -A app reliable-store migrate`",
            "operating.md#store-unreachable",
        )]
    return []


def server(d: Deployment) -> list[Finding]:
    """The store's server settings (a store that cannot be reached: see ``reachable``)."""
    try:
        return runtime(d.app).store.risks()
    except StoreError:
        return []


def state_store(d: Deployment) -> list[Finding]:
    """A separate state store (``reliable_state_store_url``) that cannot be used: every
    transition is then dropped after the recorder's buffer fills, and timelines, stuck
    tasks and stats go blind; the tasks themselves are not affected."""
    s = d.settings
    if not s.state_enabled or not s.state_store_url or s.state_store_url == s.store_url:
        return []
    name = runtime(d.app).spelling("state_store_url")
    states = open_states(d.app)
    try:
        states.ping()
    except StoreError as exc:
        return [Finding(
            "states.unreachable", "error",
            f"the state store ({name}) cannot be used: {exc}: transitions are buffered, "
            "then dropped, so timelines, stuck tasks and stats miss them",
            f"Start it (a SQL one also needs `celery -A app reliable-store migrate`), "
            f"correct {name}, or remove it to record states in the store",
            "operating.md#state-store-unreachable",
        )]
    inner = getattr(states, "store", None)
    return inner.risks() if inner is not None else []
