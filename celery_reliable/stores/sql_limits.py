"""Retry budgets and circuit breakers of the SQL store, shared by every worker.

Redis keeps a budget's per-second counters with a TTL; here they are rows,
and whoever touches a scope drops its old seconds.  A scope's withdrawals
serialize on a lock row, a breaker on its own row (``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from sqlalchemy import Connection, delete, func, select, update

from celery_reliable.stores import decisions
from celery_reliable.stores.model import BreakerCheck
from celery_reliable.stores.sql_base import SQLBase

#: Seconds of retry-budget counters kept (Redis keeps them as long): windows up to this.
BUDGET_KEEP = 60
_BUDGET_LOCK = 0  # the epoch second of each scope's lock row


class SQLLimits(SQLBase):
    def _count(self, conn: Connection, scope: str, second: int, **increments: int) -> None:
        """Add to the scope's counters of one second (an UPDATE also locks the row)."""
        b = self.schema.budget
        row = (b.c.scope == scope) & (b.c.epoch_second == second)
        added = {name: b.c[name] + n for name, n in increments.items()}
        if not conn.execute(update(b).where(row).values(added)).rowcount:
            fresh = {"scope": scope, "epoch_second": second, "firsts": 0, "retries": 0}
            self.insert_new(conn, b, [{**fresh, **increments}])

    def _trim_budget(self, conn: Connection, scope: str, now: int) -> None:
        # Redis lets these counters expire; here whoever touches a scope drops its old seconds.
        b = self.schema.budget
        old = b.c.epoch_second.between(_BUDGET_LOCK + 1, now - BUDGET_KEEP)
        conn.execute(delete(b).where(b.c.scope == scope, old))

    def budget_deposit(self, scope: str, first_attempts: int) -> None:
        def work(conn: Connection) -> None:
            now = int(time.time())
            self._count(conn, scope, now, firsts=first_attempts)
            self._trim_budget(conn, scope, now)

        self._write(work)

    def budget_withdraw(self, scope: str, ratio: float, floor: float, window: float) -> bool:
        """Withdrawals of one scope serialize on its lock row: two never take the last retry."""
        b = self.schema.budget

        def work(conn: Connection) -> bool:
            self._count(conn, scope, _BUDGET_LOCK, retries=0)
            now = int(time.time())
            seconds = b.c.epoch_second.between(now - int(window) + 1, now)
            sums = select(func.coalesce(func.sum(b.c.firsts), 0),
                          func.coalesce(func.sum(b.c.retries), 0))
            firsts, retries = (int(n) for n in conn.execute(
                sums.where(b.c.scope == scope, seconds)).one())
            if retries >= ratio * firsts + floor * window:
                return False
            self._count(conn, scope, now, retries=1)
            self._trim_budget(conn, scope, now)
            return True

        return self._write(work)

    def _lock_breaker(self, conn: Connection, name: str) -> decisions.Breaker | None:
        b = self.schema.breakers
        query = select(b.c.state, b.c.failures, b.c.open_until, b.c.probe, b.c.probe_until)
        row = conn.execute(query.where(b.c.name == name).with_for_update()).mappings().first()
        return None if row is None else decisions.Breaker(**row)

    def breaker_check(self, name: str, owner: str, probe_ttl: float) -> BreakerCheck:
        b = self.schema.breakers

        def work(conn: Connection) -> BreakerCheck:
            check, probing = decisions.breaker_check(
                self._lock_breaker(conn, name), owner, probe_ttl, time.time()
            )
            if probing is not None:
                conn.execute(update(b).where(b.c.name == name).values(asdict(probing)))
            return check

        return self._write(work)

    def breaker_report(self, name: str, ok: bool, threshold: int, cool_down: float) -> str:
        b = self.schema.breakers

        def work(conn: Connection) -> str:
            current = self._lock_breaker(conn, name)
            breaker = decisions.breaker_report(current, ok, threshold, cool_down, time.time())
            if current is None:
                self.insert_new(conn, b, [{"name": name, **asdict(breaker)}])
            else:
                conn.execute(update(b).where(b.c.name == name).values(asdict(breaker)))
            return breaker.state

        return self._write(work)
