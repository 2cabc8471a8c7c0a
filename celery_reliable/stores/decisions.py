"""What an operation does to a key, as pure functions of the key's current state.

The memory and SQL stores call these inside their lock or transaction and then
write what they say; the Redis scripts (``lua/``) do the same in Lua.  Keeping
the rules in one place keeps the backends from drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from celery_reliable.stores.model import (
    BreakerCheck,
    Claim,
    ClaimStatus,
    KeyState,
    PublishOutcome,
    PublishStatus,
)


@dataclass(frozen=True)
class LeaseClock:
    """The store's lease clock, as stored: wall time minus every silence it excused.

    Leases and rescue deadlines are measured on it, so a lease cannot lapse while
    nobody could renew it (see :meth:`Store.lease_now`).
    """

    seen: float
    """Wall time of the latest operation (to within :func:`refresh_every`)."""
    paused: float = 0.0
    """Seconds of silence excused so far: lease time is wall time minus this."""


def refresh_every(outage_after: float) -> float:
    """How stale ``seen`` may grow before an operation writes it again: often enough
    that steady traffic never looks like a silence, seldom enough to cost nothing."""
    return min(1.0, outage_after / 4)


def lease_clock(
    current: LeaseClock | None, wall: float, outage_after: float
) -> tuple[float, LeaseClock | None]:
    """The paused seconds at ``wall``, and the clock to write (None: leave it).

    A silence (no operation since ``seen``) longer than ``outage_after`` is excused
    whole: whoever held a lease when it began gets back the time it had left.  A
    shorter one counts.  Readers that write nothing (a lookup) get the same answer
    the next writer will store.
    """
    if current is None:
        return 0.0, LeaseClock(wall)
    silence = wall - current.seen
    if silence > outage_after:
        after = LeaseClock(wall, current.paused + silence)
        return after.paused, after
    if silence >= refresh_every(outage_after):
        return current.paused, LeaseClock(wall, current.paused)
    return current.paused, None


@dataclass(frozen=True)
class PublishDecision:
    outcome: PublishOutcome
    write: KeyState | None = None
    """The key state to write, if any."""

    @property
    def persist(self) -> bool:
        """Write the task record: the message is going to the broker."""
        return self.outcome.status is PublishStatus.NEW


def publish(
    current: KeyState | None, fingerprint: str, task_id: str, dedupe: bool
) -> PublishDecision:
    if current is not None and dedupe and current.state != "dead":
        if current.fingerprint != fingerprint:
            return PublishDecision(PublishOutcome(PublishStatus.CONFLICT, current.task_id))
        status = PublishStatus.DONE if current.state == "done" else PublishStatus.IN_FLIGHT
        return PublishDecision(PublishOutcome(status, current.task_id))
    new = PublishOutcome(PublishStatus.NEW, task_id)
    # A done key is never downgraded: a copy published without dedupe is skipped
    # by its claim.  A running key is left to its owner (a retry re-persists).
    if current is None or current.state == "dead":
        return PublishDecision(new, KeyState("queued", fingerprint, task_id))
    if (current.state == "queued" and current.task_id == task_id
            and current.fingerprint != fingerprint):
        # The same task published again with other arguments (a replay with corrected
        # ones): its newest arguments are the task's, and older copies are superseded.
        return PublishDecision(new, replace(current, fingerprint=fingerprint))
    return PublishDecision(new)


def lookup(current: KeyState | None, fingerprint: str, now: float) -> PublishOutcome:
    """Without a record, only done keys and live leases prove the task exists."""
    if current is None or current.state in ("queued", "dead"):
        return PublishOutcome(PublishStatus.NEW)
    if current.fingerprint != fingerprint:
        return PublishOutcome(PublishStatus.CONFLICT, current.task_id)
    if current.state == "done":
        return PublishOutcome(PublishStatus.DONE, current.task_id)
    if (current.lease_until or 0) > now:
        return PublishOutcome(PublishStatus.IN_FLIGHT, current.task_id)
    return PublishOutcome(PublishStatus.NEW)


@dataclass(frozen=True)
class ClaimDecision:
    claim: Claim
    write: KeyState | None = None
    """The key state to write, if any."""
    drop_copy: bool = False
    """Delete the claiming copy's record: it was absorbed (a done key, a dead letter)."""
    forget_key: bool = False
    """Delete the key: a republished copy of a dead-lettered task left it queued."""

    @property
    def runs(self) -> bool:
        """The record moves to running, due at the lease's end."""
        return self.claim.runs


def may_be_dead_letter(current: KeyState | None, task_id: str) -> bool:
    """Whether a claim must ask if ``task_id`` is an unreplayed dead letter.

    Dead-lettering forgets the key of its task, so only a key without state, or
    one queued for this very task (a stale copy republished itself, deferred by
    the retry budget or a busy key, after the dead letter), can hide one.  Every
    other state answers for itself; the stores skip the lookup then.
    """
    return current is None or (current.state == "queued" and current.task_id == task_id)


def claim(
    current: KeyState | None, fingerprint: str, task_id: str, owner: str, lease: float,
    max_lost: int, now: float, dead_lettered: bool = False,
) -> ClaimDecision:
    """``dead_lettered``: ``task_id`` is a dead letter not replayed since (asked only
    when :func:`may_be_dead_letter`)."""
    lost = 0
    status = ClaimStatus.CLAIMED
    if dead_lettered and may_be_dead_letter(current, task_id):
        # A stale copy: absorbed, and what its republishing wrote is removed so the
        # rescuer does not bring it back.
        return ClaimDecision(Claim(ClaimStatus.DEAD_LETTERED, task_id), drop_copy=True,
                             forget_key=current is not None)
    if current is not None:
        if current.fingerprint != fingerprint:
            if current.task_id == task_id:
                # This very task, published again with other arguments since this copy
                # (a replay with corrected ones): the copy is stale, nothing is written.
                return ClaimDecision(Claim(ClaimStatus.SUPERSEDED, task_id))
            return ClaimDecision(Claim(ClaimStatus.CONFLICT, current.task_id))
        if current.state == "done":
            done = Claim(ClaimStatus.DONE, current.task_id, current.result)
            # Every copy of a done key is absorbed, its record with it; also a record of
            # the very task that completed, written by a later publish of its id (a
            # canvas re-sending a frozen signature, a forced replay): nobody runs it now.
            return ClaimDecision(done, drop_copy=True)
        lost = current.lost
        if current.state == "dead":
            return ClaimDecision(Claim(ClaimStatus.LOST_TOO_OFTEN, current.task_id, lost=lost))
        if current.state == "running" and current.owner != owner:
            # (An owner names one execution: the same owner is this very claim made
            # again, its first answer lost with the connection; it keeps its lease.)
            left = (current.lease_until or 0) - now
            if left > 0:
                busy = Claim(ClaimStatus.BUSY, current.task_id, lost=lost, lease_left=left)
                return ClaimDecision(busy)
            lost += 1
            status = ClaimStatus.TAKEN_OVER
            if lost >= max_lost:
                # The key stays dead so stale copies the broker still holds are absorbed.
                return ClaimDecision(
                    Claim(ClaimStatus.LOST_TOO_OFTEN, current.task_id, lost=lost),
                    KeyState("dead", fingerprint, current.task_id, lost=lost),
                )
    running = KeyState("running", fingerprint, task_id, owner, now + lease, lost)
    return ClaimDecision(Claim(status, task_id, lost=lost), running)


@dataclass(frozen=True)
class Breaker:
    """A circuit breaker's stored state (the SQL row, the memory entry)."""

    state: str = "closed"
    failures: int = 0
    open_until: float = 0.0
    probe: str | None = None
    probe_until: float = 0.0


def breaker_check(
    current: Breaker | None, owner: str, probe_ttl: float, now: float
) -> tuple[BreakerCheck, Breaker | None]:
    """The answer, and the breaker to write when this caller takes the probe."""
    if current is None or current.state == "closed":
        return BreakerCheck(True, "closed", failures=current.failures if current else 0), None
    if now < current.open_until:
        return BreakerCheck(False, "open", current.open_until - now, current.failures), None
    if current.probe not in (None, owner) and current.probe_until > now:
        wait = current.probe_until - now
        return BreakerCheck(False, "probing", wait, current.failures), None
    probing = replace(current, probe=owner, probe_until=now + probe_ttl)
    return BreakerCheck(True, "half_open", failures=current.failures), probing


def breaker_report(
    current: Breaker | None, ok: bool, threshold: int, cool_down: float, now: float
) -> Breaker:
    """The breaker after a call's outcome (see :meth:`Store.breaker_report`)."""
    current = current or Breaker()
    if ok:
        return replace(current, state="closed", failures=0, probe=None)
    failures = current.failures + 1
    if current.state == "open" or failures >= threshold:
        return replace(current, state="open", failures=failures, open_until=now + cool_down,
                       probe=None)
    return replace(current, failures=failures)
