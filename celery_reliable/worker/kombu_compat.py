"""The one workaround for a kombu bug that kills workers: applied only where it is needed.

kombu 5.7.0 (and every version since 5.3.2), Redis transport: a worker exits with
``Unrecoverable error: AttributeError("'NoneType' object has no attribute
'hostname'")`` when its broker connection is lost while a BRPOP is pending and
its channel holds unacknowledged messages, which is the normal state of a busy
worker (late acks, or early acks that failed with the connection).  The same
symptom was reported as celery/kombu#582; this is how it comes about now:

1. Celery's consumer catches the connection error and calls
   ``Connection.collect()``, which closes the channel.
2. ``Channel.close()`` first reads the pending BRPOP's reply (added by
   celery/kombu#1733 so that a message popped at shutdown is not lost).  On the
   dead connection that read raises a connection error, which ends ``close()``
   before the channel is marked closed; ``collect()`` ignores it and detaches
   the transport (``transport.client = None``).
3. Celery then calls ``connection.close()``, which closes the same channel
   again.  The drain is skipped this time, so the channel gives its
   unacknowledged messages back, which needs a new Redis client, whose address
   is read from the detached ``transport.client``: an ``AttributeError``, not a
   connection error, so Celery's ``ignore_errors`` lets it through and the
   worker exits.

Plain Celery workers die of it too (``bench/broker_restarts.py``; the numbers
are in docs/crash-recovery.md): it takes only a message in flight when the
connection drops, which a busy late-ack worker nearly always has.

The workaround: a connection error while draining the pending BRPOP means there
is nothing left to read, as kombu's own ``Empty`` does, so the first close goes
on and completes; the messages it cannot give back stay in the broker's
unacknowledged set (``visibility_timeout``), or were lost with a broker that
restarted empty, and our rescuer republishes those.  The reply the drain could
not read is lost with the connection with or without this; the rescuer brings
that task back too (``reliable_rescue_after``).

Why a patch of ``kombu.transport.redis.Channel.close``: there is no hook.
Celery sends no signal between the connection loss and the close, and kombu
documents a connection's ``transport`` as a default that the URL's scheme
overrides, so a transport subclass cannot be chosen for a ``redis://`` URL.
The wrapper only adds the drain's missing case and then calls kombu's own
``close()``.  It is installed once per process by the worker step of an app
whose broker uses kombu's Redis transport.  Remove it when kombu's close
handles the case itself: ``tests/chaos/test_broker_restarts.py`` fails without
it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from queue import Empty
from typing import Any

import kombu
from celery import Celery

from celery_reliable.runtime import runtime

logger = logging.getLogger("celery_reliable")

#: the first kombu release whose Redis ``Channel.close()`` drains a pending BRPOP
FIRST_AFFECTED = (5, 3, 2)
UPSTREAM = "celery/kombu#582"

_lock = threading.Lock()
_installed = False
#: the apps whose workers asked for the workaround, to count each absorbed error in
_apps: weakref.WeakSet[Celery] = weakref.WeakSet()


def uses_redis_transport(app: Celery) -> bool:
    """Whether the app's consumer connects with kombu's Redis transport (or a subclass:
    Sentinel), whatever the URL's spelling."""
    from kombu.transport import resolve_transport

    with app.connection_for_read() as connection:  # not connected: only its settings
        transport = resolve_transport(connection.transport_cls)
    return getattr(transport, "driver_type", None) == "redis"


def apply(app: Celery) -> bool:
    """Install the workaround for ``app``'s worker if it needs it; whether it applies."""
    global _installed
    if tuple(kombu.VERSION[:3]) < FIRST_AFFECTED or not uses_redis_transport(app):
        return False
    from kombu.transport import redis as kombu_redis

    channel = kombu_redis.Channel
    if not callable(getattr(channel, "_brpop_read", None)) or not hasattr(channel, "_in_poll"):
        logger.warning(
            "celery_reliable: kombu %s's Redis channel no longer has the BRPOP drain this "
            "workaround expects (%s); not applied: check that a worker survives a broker "
            "restart under load", kombu.__version__, UPSTREAM,
        )
        return False
    with _lock:
        _apps.add(app)
        if not _installed:
            channel.close = _closing(channel.close)  # type: ignore[method-assign]
            _installed = True
    logger.info(
        "celery_reliable: kombu %s Redis transport: a connection lost while a BRPOP is "
        "pending no longer stops the worker (%s)", kombu.__version__, UPSTREAM,
    )
    return True


def _closing(close: Any) -> Any:
    """kombu's ``Channel.close``, first draining a pending BRPOP on a dead connection."""

    def wrapper(channel: Any) -> None:
        if channel._in_poll:
            try:
                channel._brpop_read()  # resets _in_poll, so kombu's close skips it
            except Empty:
                pass
            except channel.connection_errors as exc:
                _absorbed(exc)
        close(channel)

    wrapper.__wrapped__ = close  # type: ignore[attr-defined]
    wrapper.__doc__ = close.__doc__
    return wrapper


def _absorbed(exc: BaseException) -> None:
    for app in list(_apps):
        runtime(app).count("broker_close_drain_lost")
    logger.warning(
        "celery_reliable: the broker connection was lost with a BRPOP pending (%s: %s); "
        "closing the channel anyway (a message that BRPOP took is rescued after "
        "reliable_rescue_after)", type(exc).__name__, exc,
    )
