"""What a Redis server's own settings say about keeping what it is given: eviction and
persistence.  The Redis store judges its server with it (``RedisBase.risks``), the
deployment doctor judges the broker's (``doctor/broker.py``), in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from celery_reliable.findings import Finding


@dataclass(frozen=True)
class ServerFacts:
    """The settings read from one server; ``None``: the server would not say (managed
    services often refuse ``CONFIG``)."""

    policy: str
    maxmemory: int
    aof: bool | None
    save: str | None

    @classmethod
    def read(cls, client: redis.Redis) -> ServerFacts:
        """``INFO memory``/``persistence`` and ``CONFIG GET save``: one call each."""
        memory = client.info("memory")
        persistence = client.info("persistence")
        aof = persistence.get("aof_enabled")
        try:
            save: str | None = str(client.config_get("save").get("save"))
        except redis.ResponseError:  # CONFIG renamed or refused
            save = None
        return cls(
            policy=str(memory.get("maxmemory_policy", "noeviction")),
            maxmemory=int(memory.get("maxmemory", 0) or 0),
            aof=None if aof is None else bool(int(aof)),
            save=save,
        )


def store_findings(url: str, facts: ServerFacts) -> list[Finding]:
    """A store's server: any eviction drops keys, leases and records (they carry a
    TTL); without persistence a restart forgets them, without AOF the last minutes."""
    found = []
    if facts.maxmemory and facts.policy != "noeviction":
        found.append(Finding(
            "store.eviction", "error",
            f"Redis store {url} may evict keys (maxmemory {facts.maxmemory} bytes, "
            f"maxmemory-policy {facts.policy}): completed keys, leases and task records all "
            "carry a TTL, so under memory pressure they can be dropped, and then a "
            "duplicate runs or a lost task is not rescued",
            "Set maxmemory-policy noeviction (writes then fail loudly when it is full), "
            "or give the store a Redis of its own",
            "operating.md#store-eviction",
        ))
    found.extend(_persistence("store", url, facts, (
        "it forgets which keys completed and every task record, so duplicates can run "
        "and lost tasks cannot be rescued"),
        "Turn on appendonly (appendonly yes, appendfsync everysec), or use a SQL store"))
    return found


def broker_findings(url: str, facts: ServerFacts) -> list[Finding]:
    """A Redis broker's server: queues are keys without a TTL, so only an ``allkeys-*``
    policy evicts them; a restart without AOF loses what was queued since the last
    snapshot, without any persistence every queue (the DLQ queue included)."""
    found = []
    if facts.maxmemory and facts.policy.startswith("allkeys-"):
        found.append(Finding(
            "broker.eviction", "error",
            f"Redis broker {url} may evict queues (maxmemory {facts.maxmemory} bytes, "
            f"maxmemory-policy {facts.policy}): a queue is one key, and evicting it drops "
            "every message in it",
            "Set maxmemory-policy noeviction (or a volatile-* policy: queues carry no TTL)",
            "operating.md#broker-eviction",
        ))
    found.extend(_persistence("broker", url, facts, (
        "the queued and unacknowledged messages and the DLQ queue are lost; reliable "
        "tasks recorded on publish are republished by the rescuer, other tasks are gone"),
        "Turn on appendonly (appendonly yes, appendfsync everysec)"))
    return found


def _persistence(role: str, url: str, facts: ServerFacts, loss: str, fix: str) -> list[Finding]:
    if facts.aof is not False:
        return []  # AOF on, or the server would not say (managed: replicated)
    docs = f"operating.md#{role}-persistence"
    if facts.save == "":
        return [Finding(
            f"{role}.persistence", "error",
            f"Redis {role} {url} does not persist (appendonly no, save \"\"): when it "
            f"restarts {loss}", fix, docs,
        )]
    snapshots = f"save \"{facts.save}\"" if facts.save else "save unknown"
    return [Finding(
        f"{role}.persistence", "warning",
        f"Redis {role} {url} persists by RDB snapshots alone (appendonly no, {snapshots}): "
        f"a crash loses what was written since the last snapshot, often minutes; then "
        f"{loss}", fix, docs,
    )]
