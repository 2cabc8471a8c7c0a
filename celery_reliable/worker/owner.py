"""Owner tokens: the name of one execution of a task, as its claim's lease holds it.

Every write that follows a claim (heartbeat, complete, release) is fenced by it,
so it must be unique to one execution: host, pid, a per-process random part
(pids are reused across restarts) and a serial.  Built from a per-process
prefix and a counter, because it is made for every task.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid

_prefix: tuple[int, str | None, str] | None = None
_serial = itertools.count(1)


def owner_token(hostname: str | None) -> str:
    """A new token for one execution on this host (``hostname``: the worker's name).

    The prefix is rebuilt when the pid changes (a forked child) or the worker's name
    does (two workers in one process, as in tests: each token names its own)."""
    global _prefix
    pid = os.getpid()
    if _prefix is None or _prefix[0] != pid or _prefix[1] != hostname:
        host = hostname or socket.gethostname()
        _prefix = (pid, hostname, f"{host}:{pid}:{uuid.uuid4().hex[:6]}:")
    return _prefix[2] + str(next(_serial))
