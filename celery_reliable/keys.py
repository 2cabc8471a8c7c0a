"""Idempotency keys and argument fingerprints.

A key names *an outcome*, and only the user knows which outcome a call stands
for.  Keys come, in order, from the per-call option, the task's template,
callable or method, an explicit opt-in to "same name and arguments, same
outcome" (:data:`ARGUMENTS`: a stable hash), else **the publish itself**: the
task id.  So with no declared key every copy of one message (redelivery,
rescue, retry, deferral, replay) succeeds once, and a second deliberate call
runs again: a periodic task or a repeated ``update_index(42)`` is never
skipped.  The store lets the body succeed at most once per key.

Arguments are first bound to the task's signature, so ``f(1)`` and
``f(order_id=1)`` are the same call.  The canonical form is JSON with sorted
keys: stable across processes and machines (never Python's ``hash()``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kombu.utils.json import JSONEncoder
from kombu.utils.json import loads as kombu_loads

from celery_reliable.errors import ArgumentsMismatch, IdempotencyKeyError, UnpersistableTask


class _Arguments:
    """The type of :data:`ARGUMENTS` (one instance; compared by identity)."""

    def __repr__(self) -> str:
        return "celery_reliable.ARGUMENTS"

    def __reduce__(self) -> str:
        return "ARGUMENTS"  # pickles as the module attribute: identity survives


#: ``idempotency_key=ARGUMENTS``: the call's key is a hash of the task name and its
#: arguments, so the same arguments stand for the same outcome (within the retention).
ARGUMENTS: Any = _Arguments()

KeySource = str | Callable[..., str] | _Arguments | None

MAX_KEY_LENGTH = 512
_FORMATTER = string.Formatter()
#: What ``kombu_dumps(..., sort_keys=True, separators=(",", ":"))`` builds on every call,
#: built once (an encoder keeps no state between calls): the text, and so every key and
#: fingerprint ever stored, stays the same.
_CANONICAL = JSONEncoder(sort_keys=True, separators=(",", ":"))
#: The same for kept results (every completion of a task that returns something).
_COMPACT = JSONEncoder(separators=(",", ":"))


def bind_arguments(
    fun: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Map a call's arguments to the function's parameter names, defaults applied."""
    plain = _plain_parameters(fun)
    if plain is not None:
        # The common case without inspect's bind (this runs on every publish): a
        # call that does not fit takes the slow path, which names the problem.
        names, defaults = plain
        if len(args) <= len(names):
            arguments = dict(zip(names, args, strict=False))
            fits = True
            for name, value in kwargs.items():
                if name in arguments or name not in defaults:
                    fits = False
                    break
                arguments[name] = value
            if fits:
                for name in names[len(args):]:
                    if name not in arguments:
                        default = defaults[name]
                        if default is inspect.Parameter.empty:
                            break
                        arguments[name] = default
                else:
                    return arguments
    signature = _signature(fun)
    if signature is None:  # builtins, C functions: fall back to the raw call
        return raw_arguments(args, kwargs)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ArgumentsMismatch(
            f"the arguments do not fit the task: {exc} (the task takes {signature}); "
            "no idempotency key can be derived, and the body could not run"
        ) from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
            arguments.update(arguments.pop(name))
    return arguments


def raw_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call as given, for what has no signature to bind to (or may not fit it)."""
    return {**{str(i): a for i, a in enumerate(args)}, **kwargs}


@functools.lru_cache(maxsize=1024)
def _plain_parameters(fun: Callable[..., Any]) -> tuple[tuple[str, ...], dict[str, Any]] | None:
    """(names, name -> default or ``Parameter.empty``) when every parameter may be
    passed by position or by name (no ``*args``, ``**kwargs`` or keyword-only)."""
    signature = _signature(fun)
    if signature is None:
        return None
    params = list(signature.parameters.values())
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params), {p.name: p.default for p in params}


@functools.lru_cache(maxsize=1024)
def _signature(fun: Callable[..., Any]) -> inspect.Signature | None:
    """Signatures are computed once per task: this runs on every publish."""
    try:
        return inspect.signature(fun)
    except (TypeError, ValueError):
        return None


def canonical(arguments: Mapping[str, Any]) -> str:
    """Deterministic text of bound arguments (kombu's JSON handles dates, UUIDs, decimals)."""
    try:
        text = _CANONICAL.encode(arguments)
    except (TypeError, ValueError) as exc:
        raise UnpersistableTask(
            f"the arguments cannot be serialized to derive an idempotency key ({exc}); pass "
            "plain data (ids, strings, numbers) instead of objects"
        ) from None
    return text


def fingerprint(arguments: Mapping[str, Any], text: str | None = None) -> str:
    """A short digest of the arguments, stored with the key to catch key reuse (64 bits).

    ``text``: their :func:`canonical` text, when the caller has it already (it costs
    as much as serializing the arguments: 90 us for a list of 200 small dicts)."""
    text = canonical(arguments) if text is None else text
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def template_fields(template: str) -> list[str]:
    """The argument names a key template refers to (``"receipt:{order_id}"`` -> order_id)."""
    names = []
    for _, field_name, _, _ in _FORMATTER.parse(template):
        if field_name is None:
            continue
        root = field_name.split(".")[0].split("[")[0]
        if not root or root.isdigit():
            raise IdempotencyKeyError(
                f"idempotency_key template {template!r} must name arguments, "
                "e.g. 'receipt:{order_id}', not positional fields like '{}' or '{0}'"
            )
        names.append(root)
    return names


def check_template(template: str, fun: Callable[..., Any], task_name: str) -> None:
    """Fail at task definition when a template names an argument the task does not take."""
    try:
        params = inspect.signature(fun).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for name in template_fields(template):
        if name not in params:
            raise IdempotencyKeyError(
                f"idempotency_key template {template!r} names {name!r}, but {task_name} takes "
                f"({', '.join(params)}); use one of those names"
            )


def check_excluded(
    names: str | Sequence[str], fun: Callable[..., Any], task_name: str
) -> tuple[str, ...]:
    """The names of ``fingerprint_exclude``, refused at task definition unless the task
    takes each of them (a typo would leave the argument in, and the conflict with it)."""
    excluded = (names,) if isinstance(names, str) else tuple(names)
    for name in excluded:
        if not isinstance(name, str):
            raise IdempotencyKeyError(
                f"fingerprint_exclude of {task_name} must name arguments (strings), got "
                f"{name!r}"
            )
    try:
        params = inspect.signature(fun).parameters
    except (TypeError, ValueError):
        return excluded
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return excluded
    for name in excluded:
        if name not in params:
            raise IdempotencyKeyError(
                f"fingerprint_exclude of {task_name} names {name!r}, but {task_name} takes "
                f"({', '.join(params) or 'no arguments'}); use one of those names"
            )
    return excluded


def identity(arguments: Mapping[str, Any], excluded: Sequence[str]) -> Mapping[str, Any]:
    """The arguments that stand for the outcome: all but the ``excluded`` ones, which
    neither the fingerprint nor an :data:`ARGUMENTS` key sees."""
    if not excluded:
        return arguments
    return {name: value for name, value in arguments.items() if name not in excluded}


def derive_key(
    task_name: str,
    source: KeySource,
    arguments: Mapping[str, Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    text: str | None = None,
    task_id: str | None = None,
) -> str:
    """The idempotency key of one call: from the task's template or callable, a hash of
    the arguments for :data:`ARGUMENTS`, else the publish's own ``task_id`` (``text``:
    the arguments' :func:`canonical` text, as in :func:`fingerprint`)."""
    if source is None:
        if task_id is None:
            raise IdempotencyKeyError(
                f"{task_name} declares no idempotency key, so its key is the task id of the "
                "publish, and none was given"
            )
        return validate_key(task_id, task_name)
    if isinstance(source, _Arguments):
        return argument_key(task_name, arguments, text)
    if callable(source):
        key = source(*args, **kwargs)
    else:
        try:
            key = source.format_map(_Strict(arguments, source, task_name))
        except (AttributeError, IndexError, KeyError) as exc:
            raise IdempotencyKeyError(
                f"idempotency_key template {source!r} of {task_name} cannot be formatted: {exc}"
            ) from None
    return validate_key(key, task_name)


def argument_key(task_name: str, arguments: Mapping[str, Any], text: str | None = None) -> str:
    """``<task name>:<128-bit hash of the canonical arguments>`` (:data:`ARGUMENTS`)."""
    text = canonical(arguments) if text is None else text
    digest = hashlib.sha256(f"{task_name}\n{text}".encode()).hexdigest()
    return f"{task_name}:{digest[:32]}"


def is_publish_key(key: str, task_id: str) -> bool:
    """Whether ``key`` is the default key of the publish ``task_id`` (no key declared).

    Every copy of one message keeps its task id (redelivery, retry, deferral, rescue,
    replay), so the test holds for all of them."""
    return key == task_id


def validate_key(key: Any, task_name: str) -> str:
    if not isinstance(key, str) or not key:
        raise IdempotencyKeyError(
            f"the idempotency key of {task_name} must be a non-empty string, got {key!r}"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise IdempotencyKeyError(
            f"the idempotency key of {task_name} is {len(key)} characters long; "
            f"keep it under {MAX_KEY_LENGTH} (hash long parts yourself)"
        )
    return key


class _Strict(dict[str, Any]):
    """format_map mapping whose missing names raise an error naming the signature."""

    def __init__(self, arguments: Mapping[str, Any], template: str, task_name: str) -> None:
        super().__init__(arguments)
        self.template = template
        self.task_name = task_name

    def __missing__(self, name: str) -> Any:
        raise IdempotencyKeyError(
            f"idempotency_key template {self.template!r} names {name!r}, but {self.task_name} "
            f"was called with ({', '.join(self) or 'no arguments'})"
        )


def encode_result(result: Any, max_bytes: int) -> str | None:
    """JSON text of a result to keep with a completed key, or None if it cannot be kept."""
    if result is None:  # the common case, on every completion
        return "null"
    try:
        text = _COMPACT.encode(result)
    except (TypeError, ValueError):
        return None
    return text if len(text.encode()) <= max_bytes else None


def decode_result(text: str | None) -> Any:
    """The first run's result as the skipped copy returns it (None when it was not kept)."""
    return None if text is None else kombu_loads(text)
