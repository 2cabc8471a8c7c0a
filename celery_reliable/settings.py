"""The one table of ``reliable_*`` settings.

Every knob is a field of :class:`Settings`, with its default, its doc and its
validation in the field's metadata.  Validation, the docs page
(``docs/settings.md``) and start-up logging are generated from this table, so a
setting cannot exist in one place and be missing in another.

Settings are read from the Celery app's configuration as ``reliable_<name>``
(with Django's ``CELERY_`` namespace, ``CELERY_RELIABLE_<NAME>``).  A
``reliable_*`` key that is not in the table is an error at start-up, with the
closest known name suggested: a typo must not silently disable a guarantee.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from celery_reliable.errors import ConfigurationError
from celery_reliable.spelling import PREFIX, Spelling

Check = Callable[[str, Any], Any]
"""``check(name, value)``: the value converted, or an error naming ``name`` (the setting
as the user wrote it)."""


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name} must be a boolean (true/false), got {value!r}")


def _number(minimum: float, integer: bool = False) -> Check:
    def check(name: str, value: Any) -> float | int:
        try:
            number = int(value) if integer else float(value)
        except (TypeError, ValueError):
            kind = "an integer" if integer else "a number of seconds"
            raise ConfigurationError(f"{name} must be {kind}, got {value!r}") from None
        if isinstance(value, bool) or math.isnan(number) or number < minimum:
            raise ConfigurationError(f"{name} must be >= {minimum}, got {value!r}")
        return number

    return check


def _choice(*allowed: str) -> Check:
    def check(name: str, value: Any) -> str:
        if value not in allowed:
            raise ConfigurationError(
                f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
            )
        return str(value)

    return check


def _store_url(name: str, value: Any) -> str | None:
    if value is None:
        return None
    from celery_reliable.stores import known_schemes

    scheme = urlsplit(str(value)).scheme.split("+")[0]
    if scheme not in known_schemes():
        raise ConfigurationError(
            f"{name}={value!r} has an unknown scheme {scheme!r}; "
            f"use one of: {', '.join(sorted(known_schemes()))} "
            "(e.g. redis://127.0.0.1:6379/1 or sqlite:///reliable.db)"
        )
    return str(value)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in " {}\n"):
        raise ConfigurationError(
            f"{name} must be a non-empty string without spaces or braces, got {value!r}"
        )
    return value


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    """A list of shell-style name patterns, or one string of them separated by commas
    (how an environment variable or Django settings file may give it)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set, frozenset)) or not all(
        isinstance(p, str) for p in items
    ):
        raise ConfigurationError(
            f"{name} must be a list of task name patterns such as ['shop.*'], got {value!r}"
        )
    return tuple(p.strip() for p in items if p.strip())


def setting(default: Any, doc: str, check: Check, per_task: bool = False) -> Any:
    """Declare one row of the table (a dataclass field with its doc and validator)."""
    return field(default=default, metadata={"doc": doc, "check": check, "per_task": per_task})


#: Default of ``reliable_state_retention``: a day, like Celery's ``result_expires`` and
#: the completion memory.  Not a week: on Redis a finished task's states take about
#: 0.9 KB, a week of 100 tasks/s is 55 GB, often in the Redis that is also the broker.
STATE_RETENTION = 86400.0


@dataclass(frozen=True)
class Settings:
    """Resolved ``reliable_*`` settings of one app (immutable; one per app)."""

    store_url: str | None = setting(
        None,
        "Where keys, leases and task records live: redis://, rediss://, postgresql+psycopg://, "
        "mysql+pymysql://, sqlite:/// or memory:// (tests only: not shared between processes).",
        _store_url,
    )
    key_prefix: str = setting(
        "reliable", "Namespace of every key/table row the store writes.", _text
    )
    retention: float = setting(
        86400.0,
        "Seconds a completed declared key (template, callable, per-call key or ARGUMENTS) "
        "is remembered: a copy or a second call arriving within it is skipped.",
        _number(1),
        per_task=True,
    )
    publish_key_retention: float = setting(
        7200.0,
        "Seconds the completion of a task without a declared key (keyed by its publish, "
        "the task id) is remembered: as long as a copy of that one message can still "
        "arrive (a redelivery after a lost acknowledgement comes within the Redis "
        "visibility_timeout, 1 h by default). Keep it above the visibility_timeout.",
        _number(1),
        per_task=True,
    )
    lease_seconds: float = setting(
        30.0,
        "Length of a claim's lease. It is renewed while the body runs; when the worker dies "
        "the lease lapses and the task is rescued. Crash recovery takes about this long.",
        _number(1),
        per_task=True,
    )
    claim_ahead: bool = setting(
        True,
        "In a solo-pool worker, send a task's claim when its message arrives and read the "
        "answer when the body starts, so Celery's own preparation hides the round trip. "
        "Off: the claim is made when the body starts (as in the other pools).",
        _bool,
    )
    persist_on_publish: bool = setting(
        True,
        "Write a durable task record before publishing, so the rescuer can republish what "
        "the broker loses. One store round trip per publish.",
        _bool,
        per_task=True,
    )
    dedupe_on_publish: bool = setting(
        True,
        "Publishing a key that is done or in flight returns the existing task's handle "
        "instead of a second message (not for a call that names its task id, as canvas "
        "members do, or carries callbacks: the claim answers those).",
        _bool,
        per_task=True,
    )
    on_store_down_at_publish: str = setting(
        "raise",
        "'raise': a publish fails with StoreUnavailable naming the task, its id and key: "
        "inside the caller's transaction it rolls it back; after a commit (Django's "
        "on_commit) the call is lost unless made again (docs/frameworks.md). 'publish': "
        "publish unrecorded (no rescue if the broker loses it), log and count it.",
        _choice("raise", "publish"),
    )
    store_down_retry_delay: float = setting(
        5.0,
        "Seconds before a task whose claim could not reach the store is tried again "
        "(doubled per try, jittered, capped at 60 s). The body never runs unguarded.",
        _number(0.1),
    )
    complete_timeout: float = setting(
        300.0,
        "Seconds a task whose body finished keeps trying to record its success while the "
        "store is unreachable, holding its lease (the message is acknowledged after). Past "
        "it the task gives up, logs and counts it, and may run again.",
        _number(1),
    )
    on_key_conflict: str = setting(
        "error",
        "Same key, different arguments: 'error' refuses the call (IdempotencyKeyConflict); "
        "'skip' treats it as a duplicate.",
        _choice("error", "skip"),
        per_task=True,
    )
    result_max_bytes: int = setting(
        4096,
        "Largest JSON result kept with a completed key; skipped copies return it.",
        _number(0, integer=True),
    )
    max_attempts: int = setting(
        5,
        "Attempts of a task failing with transient errors before it is dead-lettered with "
        "reason 'attempts_exhausted' (the first run counts).",
        _number(1, integer=True),
        per_task=True,
    )
    retry_backoff_base: float = setting(
        1.0,
        "Backoff before the second attempt; doubled per attempt, drawn with full jitter "
        "(uniform between 0 and the doubled value).",
        _number(0),
        per_task=True,
    )
    retry_backoff_cap: float = setting(
        300.0, "Upper bound of the retry backoff.", _number(0), per_task=True
    )
    retry_unclassified: str = setting(
        "retry",
        "An exception neither in retry_on, permanent_on nor decided by retry_classifier: "
        "'retry' (bounded by max_attempts) or 'fail' (dead-letter at once).",
        _choice("retry", "fail"),
        per_task=True,
    )
    retry_budget_ratio: float = setting(
        0.2,
        "Retries allowed per first attempt over the budget window, per scope (the task's "
        "dependency, else its name), shared by all workers.",
        _number(0),
        per_task=True,
    )
    retry_budget_floor: float = setting(
        1.0,
        "Retries per second always allowed per scope, so a quiet system can retry.",
        _number(0),
        per_task=True,
    )
    retry_budget_window: float = setting(
        10.0, "Seconds of history the retry budget looks at.", _number(1), per_task=True
    )
    on_retry_budget_exhausted: str = setting(
        "defer",
        "A retry the budget refuses: 'defer' (published again after about one window, its "
        "attempt not used) or 'dead_letter' (reason retry_budget_exhausted). Never dropped.",
        _choice("defer", "dead_letter"),
        per_task=True,
    )
    breaker_threshold: int = setting(
        5,
        "Consecutive transient failures of a dependency that open its circuit breaker.",
        _number(1, integer=True),
    )
    breaker_cool_down: float = setting(
        30.0,
        "Seconds an open breaker defers tasks before one probe may try the dependency.",
        _number(0.1),
    )
    default_time_limit: float = setting(
        1800.0,
        "Hard time limit given to a reliable task that has none (neither the task's "
        "time_limit nor task_time_limit): a hung body must end so its task can be retried. "
        "Enforced by the prefork pool.",
        _number(1),
    )
    default_soft_time_limit: float = setting(
        1740.0,
        "Soft time limit given to a reliable task that has none; SoftTimeLimitExceeded "
        "is a transient failure (retried).",
        _number(1),
    )
    rescue_enabled: bool = setting(
        True, "Run the rescuer in every worker (one sweeper at a time).", _bool
    )
    rescue_interval: float = setting(
        5.0, "Seconds between two sweeps of the rescuer.", _number(0.1)
    )
    rescue_after: float = setting(
        60.0,
        "Seconds a published task may wait for a worker before it is republished "
        "(doubled after each rescue, see rescue_backoff_cap). Make it longer than a normal "
        "queue wait: an early rescue costs an extra message, absorbed by the claim.",
        _number(0.1),
    )
    rescue_backoff_cap: float = setting(
        3600.0, "Upper bound of the doubled rescue_after.", _number(0.1)
    )
    rescue_batch: int = setting(
        500,
        "Records taken per sweep call and store shard; a sweep takes batch after batch "
        "while they come back full, for up to reliable_rescue_interval.",
        _number(1, integer=True),
    )
    max_rescues: int = setting(
        10,
        "Republishes of one task by the rescuer before it is dead-lettered with reason "
        "'never_received' (an unregistered task, a queue nobody consumes). The delay "
        "doubles each time, so 10 rescues span hours.",
        _number(1, integer=True),
    )
    max_lost_attempts: int = setting(
        3,
        "Runs lost with their worker (SIGKILL, OOM) before the task is dead-lettered with "
        "reason 'worker_lost' instead of being run again.",
        _number(1, integer=True),
        per_task=True,
    )
    beat_missed_slots: str = setting(
        "run_latest",
        "What a slot-keyed beat scheduler does with a schedule slot it reaches more than "
        "reliable_beat_slot_grace seconds late (no beat ran at its time): 'run_latest' "
        "runs the latest missed slot once, as Celery's beat does; 'skip' runs none and "
        "waits for the next slot.",
        _choice("run_latest", "skip"),
    )
    beat_slot_grace: float = setting(
        60.0,
        "Seconds after its scheduled time within which a beat slot is on time (see "
        "reliable_beat_missed_slots).",
        _number(0),
    )
    record_all_tasks: bool = setting(
        False,
        "Also record the transitions of tasks that are not ReliableTasks (third-party "
        "tasks), through Celery's signals; they are observed, not made reliable. Apps "
        "without any ReliableTask call celery_reliable.install(app).",
        _bool,
    )
    state_enabled: bool = setting(
        True, "Record every state transition of reliable tasks (timelines, stuck, stats).",
        _bool,
    )
    state_store_url: str | None = setting(
        None,
        "Where transitions are recorded; unset: the reliable_store_url store.",
        _store_url,
    )
    state_retention: float = setting(
        STATE_RETENTION,
        "Seconds a task's states are kept after its last transition. On Redis that is "
        "memory, about 0.9 KB per finished task: size it (docs/states.md).",
        _number(60),
    )
    state_flush: str = setting(
        "async",
        "'async': a background thread writes the buffered transitions every "
        "state_flush_interval (no cost on the task's path; a SIGKILL loses the last fraction "
        "of a second of history, never the task). 'sync': written before the call returns.",
        _choice("async", "sync"),
    )
    state_flush_interval: float = setting(
        0.2, "Seconds between two writes of the async buffer.", _number(0.01)
    )
    state_buffer_size: int = setting(
        10_000,
        "Transitions a process holds while the state store is slow or down; beyond it new "
        "ones are dropped and counted (the tasks are not affected).",
        _number(1, integer=True),
    )
    state_batch_size: int = setting(
        500,
        "Transitions written per state store call: one transaction on SQL; on Redis, "
        "scripts of 25 transitions, a round trip each, so that other clients are not held up.",
        _number(1, integer=True),
    )
    dlq_enabled: bool = setting(
        True,
        "Publish every dead letter to a DLQ queue on the broker (besides the index in the "
        "store). The original message is acknowledged only after that publish.",
        _bool,
        per_task=True,
    )
    dlq_queue: str = setting(
        "reliable.dlq",
        "The broker queue dead letters are published to (durable on RabbitMQ).",
        _text,
        per_task=True,
    )
    dlq_publish_eager: bool = setting(
        False,
        "Publish the dead letters of eager runs (task.apply(), task_always_eager) to the DLQ "
        "queue too. Off: they are indexed in the store only (worker '(eager)', which "
        "reliable-dlq reconcile leaves alone) and their error is raised to the caller, so "
        "tests never put dead letters on a real broker.",
        _bool,
    )
    dlq_traceback_max: int = setting(
        8192,
        "Characters of a traceback kept in a dead letter (the end of it: where it failed).",
        _number(0, integer=True),
    )
    dlq_resolved_retention: float = setting(
        3600.0,
        "Seconds a resolved dead letter (replayed and then succeeded, or whose key has "
        "succeeded since) stays listed after its replay (or its dead-lettering): then the "
        "sweeping worker forgets it. At most reliable_retention, the time a success is "
        "remembered by.",
        _number(0),
    )
    critical_tasks: tuple[str, ...] = setting(
        (),
        "Task name patterns (shell-style, e.g. ['shop.*', 'billing.charge']) that must be "
        "ReliableTasks: celery -A app reliable-check reports a registered task matching "
        "one that is not, and a pattern that matches no task.",
        _patterns,
    )
    check_max_prefetch: int = setting(
        32,
        "Messages one worker may hold prefetched (worker_prefetch_multiplier x "
        "worker_concurrency) before celery -A app reliable-check warns: each is an "
        "unacknowledged late-ack message a crash or a long task holds up.",
        _number(1, integer=True),
    )
    redis_shards: int = setting(
        1,
        "Redis store only: spread keys over this many hash-tag slots (Redis Cluster).",
        _number(1, integer=True),
    )

    def for_task(self, overrides: Mapping[str, Any]) -> Settings:
        """These settings with a task's per-task overrides applied (validated)."""
        if not overrides:
            return self
        return replace(self, **_validated(overrides, per_task_only=True))

    @property
    def heartbeat_interval(self) -> float:
        """Leases are renewed three times per lease, so one lost heartbeat is harmless."""
        return self.lease_seconds / 3


def rows() -> Iterator[tuple[str, Any, str, bool]]:
    """(setting name, default, doc, per-task) for each row: the docs and CLI read this."""
    for f in fields(Settings):
        yield PREFIX + f.name, f.default, f.metadata["doc"], f.metadata["per_task"]


def markdown_table() -> str:
    """The settings table of ``docs/settings.md`` (a test keeps the page in sync)."""
    lines = ["| setting | default | per task | what it does |", "|---|---|---|---|"]
    for name, default, doc, per_task in rows():
        lines.append(f"| `{name}` | `{default!r}` | {'yes' if per_task else ''} | {doc} |")
    return "\n".join(lines) + "\n"


def per_task_names() -> frozenset[str]:
    return frozenset(f.name for f in fields(Settings) if f.metadata["per_task"])


def _validated(
    values: Mapping[str, Any], per_task_only: bool = False,
    written: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``values`` (by field name) checked; ``written``: the configuration key each came
    from, as the user wrote it, for the errors (else ``reliable_<name>``)."""
    known = {f.name: f for f in fields(Settings)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        shown = (written or {}).get(name) or PREFIX + name
        f = known.get(name)
        if f is None or (per_task_only and not f.metadata["per_task"]):
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {Spelling.of_key(shown, name)(close[0])}?" if close else ""
            raise ConfigurationError(f"unknown setting {shown}{hint}")
        nullable = value is None and f.default is None
        out[name] = value if nullable else f.metadata["check"](shown, value)
    return out


def from_conf(conf: Mapping[str, Any], namespace: str | None = None) -> Settings:
    """Validate every ``reliable_*`` key of a Celery configuration mapping.

    Raises :class:`ConfigurationError` naming the first bad setting as the user
    wrote it (``namespace``: the app's Celery namespace, which spells the names of
    settings the configuration does not have; see :mod:`celery_reliable.spelling`).
    """
    values: dict[str, Any] = {}
    written: dict[str, str] = {}
    for key in list(conf.keys()):
        lowered = str(key).lower()
        for prefix in (PREFIX, "celery_" + PREFIX):
            if lowered.startswith(prefix):
                values[lowered[len(prefix):]] = conf[key]
                written[lowered[len(prefix):]] = str(key)
    settings = Settings(**_validated(values, written=written))
    default = Spelling.of_namespace(namespace)
    _check_consistency(settings, lambda name: written.get(name) or default(name))
    return settings


def _check_consistency(s: Settings, shown: Callable[[str], str]) -> None:
    if s.default_soft_time_limit >= s.default_time_limit:
        raise ConfigurationError(
            f"{shown('default_soft_time_limit')} ({s.default_soft_time_limit}) must be below "
            f"{shown('default_time_limit')} ({s.default_time_limit}), so the body can clean up"
        )
    if s.rescue_backoff_cap < s.rescue_after:
        raise ConfigurationError(
            f"{shown('rescue_backoff_cap')} ({s.rescue_backoff_cap}) is below "
            f"{shown('rescue_after')} ({s.rescue_after}); raise the cap or lower "
            f"{shown('rescue_after')}"
        )
