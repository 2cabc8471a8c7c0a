from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from celery_reliable import keys
from celery_reliable.errors import IdempotencyKeyError


def send_receipt(order_id: int, email: str = "x@example.com", *, retry: bool = False) -> None: ...


def derive(source: keys.KeySource, *args: object, **kwargs: object) -> str:
    arguments = keys.bind_arguments(send_receipt, args, kwargs)
    return keys.derive_key("shop.send_receipt", source, arguments, args, kwargs)


def test_template_formats_positional_and_keyword_alike() -> None:
    assert derive("receipt:{order_id}", 42) == "receipt:42"
    assert derive("receipt:{order_id}", order_id=42) == "receipt:42"
    assert derive("r:{order_id}:{email}", 1) == "r:1:x@example.com"  # defaults apply


def test_callable_source_gets_the_call() -> None:
    assert derive(lambda order_id, **kw: f"cb:{order_id * 2}", 21) == "cb:42"


def test_hash_is_the_same_for_equivalent_calls() -> None:
    hashed = keys.ARGUMENTS
    assert derive(hashed, 42) == derive(hashed, order_id=42) == derive(hashed, 42, "x@example.com")
    assert derive(hashed, 42) != derive(hashed, 43)
    assert derive(hashed, 42).startswith("shop.send_receipt:")


def test_without_a_declared_key_the_key_is_the_publish() -> None:
    arguments = keys.bind_arguments(send_receipt, (42,), {})
    one = keys.derive_key("shop.send_receipt", None, arguments, (42,), {}, task_id="id-1")
    two = keys.derive_key("shop.send_receipt", None, arguments, (42,), {}, task_id="id-2")
    assert (one, two) == ("id-1", "id-2")  # same arguments, two publishes: two outcomes
    assert keys.is_publish_key(one, "id-1") and not keys.is_publish_key("receipt:42", "id-1")
    with pytest.raises(IdempotencyKeyError, match="task id of the publish"):
        derive(None, 42)


def test_the_arguments_marker_survives_pickling() -> None:
    import pickle

    assert pickle.loads(pickle.dumps(keys.ARGUMENTS)) is keys.ARGUMENTS


def test_hash_is_stable_across_processes() -> None:
    code = (
        "from celery_reliable import keys\n"
        "print(keys.argument_key('t', {'a': 1, 'b': [1, 2], 'c': {'z': 1, 'y': 2}}))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1
    reordered = {"c": {"y": 2, "z": 1}, "b": [1, 2], "a": 1}
    assert outputs.pop() == keys.derive_key("t", keys.ARGUMENTS, reordered, (), {})


def test_rich_argument_types_have_a_canonical_form() -> None:
    when = datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert keys.fingerprint({"at": when, "amount": Decimal("9.99")}) == keys.fingerprint(
        {"amount": Decimal("9.99"), "at": when}
    )


def test_canonical_text_is_what_it_always_was() -> None:
    """Keys and fingerprints already stored must keep matching: the text is kombu's
    JSON with sorted keys and no spaces, byte for byte, whatever builds it."""
    from kombu.utils.json import dumps as kombu_dumps

    arguments = {
        "when": datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc), "id": uuid.UUID(int=7),
        "amount": Decimal("9.99"), "text": "naïve ✓ \"quoted\"", "none": None,
        "nested": {"b": [1, 2.5, True], "a": {"z": b"raw"}}, "big": 2**70,
    }
    expected = kombu_dumps(arguments, sort_keys=True, separators=(",", ":"))
    assert keys.canonical(arguments) == expected
    assert keys.fingerprint({"order_id": 42}) == "2ba2950dab99043d"  # pinned: never changes


def test_template_naming_a_missing_argument_is_a_clear_error() -> None:
    expected = r"names 'order'.*takes \(order_id, email, retry\)"
    with pytest.raises(IdempotencyKeyError, match=expected):
        keys.check_template("receipt:{order}", send_receipt, "shop.send_receipt")
    with pytest.raises(IdempotencyKeyError, match="names 'order'"):
        derive("receipt:{order}", 1)


def test_positional_template_fields_are_refused() -> None:
    with pytest.raises(IdempotencyKeyError, match="must name arguments"):
        keys.check_template("receipt:{}", send_receipt, "shop.send_receipt")


def test_call_that_does_not_fit_the_signature() -> None:
    # A TypeError, as Celery raises for the same call: callers' `except TypeError` holds.
    with pytest.raises(TypeError, match="do not fit the task: too many positional") as caught:
        derive(None, 1, 2, 3, 4)
    assert isinstance(caught.value, IdempotencyKeyError)


@pytest.mark.parametrize("bad", ["", None, 42, "x" * 600])
def test_bad_keys_are_refused(bad: object) -> None:
    with pytest.raises(IdempotencyKeyError):
        keys.validate_key(bad, "shop.send_receipt")


def test_fingerprint_differs_with_arguments() -> None:
    one = keys.fingerprint(keys.bind_arguments(send_receipt, (1,), {}))
    same = keys.fingerprint(keys.bind_arguments(send_receipt, (), {"order_id": 1}))
    other = keys.fingerprint(keys.bind_arguments(send_receipt, (1, "y@example.com"), {}))
    assert one == same != other
    assert len(one) == 16


def test_results_round_trip_or_are_not_kept() -> None:
    assert keys.decode_result(keys.encode_result({"a": [1, 2]}, 100)) == {"a": [1, 2]}
    assert keys.encode_result(None, 100) == "null"
    assert keys.encode_result("x" * 200, 100) is None
    assert keys.encode_result(object(), 100) is None
    assert keys.decode_result(None) is None


def _plain(a: int, b: str = "x", c: object = None) -> None: ...


def _rich(a: int, /, b: str = "x", *rest: int, c: int = 1, **more: int) -> None: ...


@pytest.mark.parametrize("fun", [_plain, _rich])
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((1, "y"), {}), ((1,), {"b": "y"}), ((), {"a": 1}), ((1, "y", 3), {}),
     ((1,), {"c": 2}), ((), {"b": "y", "a": 1})],
)
def test_binding_without_inspect_agrees_with_inspect(
    fun: object, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    import inspect

    try:
        bound = inspect.signature(fun).bind(*args, **kwargs)  # type: ignore[arg-type]
    except TypeError:
        with pytest.raises(IdempotencyKeyError):
            keys.bind_arguments(fun, args, kwargs)  # type: ignore[arg-type]
        return
    bound.apply_defaults()
    expected = dict(bound.arguments)
    expected.update(expected.pop("more", {}))
    assert keys.bind_arguments(fun, args, kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "kwargs"), [((1, "y", 3, 4), {}), ((1,), {"a": 2}),
                                              ((), {"b": "y"}), ((1,), {"d": 1})])
def test_a_call_that_does_not_fit_is_refused_by_name(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    with pytest.raises(IdempotencyKeyError, match="the task takes"):
        keys.bind_arguments(_plain, args, kwargs)
