"""Retry budgets and circuit breakers of the Redis store, shared by every worker: per
second counters with a TTL, and one hash per breaker; a script each."""

from __future__ import annotations

from celery_reliable.stores.model import BreakerCheck
from celery_reliable.stores.redis_base import RedisBase, guarded, ms


class RedisLimits(RedisBase):
    def _budget_base(self, scope: str) -> str:
        return f"{{{self.prefix}:budget:{scope}}}:"

    @guarded
    def budget_deposit(self, scope: str, first_attempts: int) -> None:
        self._run("budget_deposit", [], [self._budget_base(scope), first_attempts, 60])

    @guarded
    def budget_withdraw(self, scope: str, ratio: float, floor: float, window: float) -> bool:
        return bool(
            self._run("budget_withdraw", [], [self._budget_base(scope), ratio, floor,
                                              int(window)])
        )

    @guarded
    def breaker_check(self, name: str, owner: str, probe_ttl: float) -> BreakerCheck:
        allowed, state, wait, failures = self._run(
            "breaker_check", [f"{{{self.prefix}:breaker:{name}}}"], [owner, ms(probe_ttl)]
        )
        return BreakerCheck(bool(allowed), state, int(wait) / 1000, int(failures))

    @guarded
    def breaker_report(self, name: str, ok: bool, threshold: int, cool_down: float) -> str:
        state = self._run(
            "breaker_report", [f"{{{self.prefix}:breaker:{name}}}"],
            ["1" if ok else "0", threshold, ms(cool_down)],
        )
        return str(state)
