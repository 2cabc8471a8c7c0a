"""The rule the Celery compatibility job fails on (tests/compat/compare.py)."""

from __future__ import annotations

import pytest

from tests.compat.compare import counts, differences, parse_allowed, unused

T = "t/integration/test_tasks.py::test_tasks::"


def _outcomes(**tests: str) -> dict[str, dict[str, str]]:
    return {T + name: {"outcome": outcome, "message": f"{name} {outcome}"}
            for name, outcome in tests.items()}


def test_only_tests_passing_plain_and_not_reliable_are_differences() -> None:
    plain = _outcomes(a="passed", b="passed", c="failed", d="passed", e="skipped")
    reliable = _outcomes(a="passed", b="failed", c="failed", e="passed")  # d missing
    found = differences(plain, reliable, [])
    assert [(d.test, d.reliable) for d in found] == [(T + "b", "failed"), (T + "d", "missing")]
    assert all(d.allowed is None for d in found)


def test_an_allowed_entry_covers_its_tests_and_says_why() -> None:
    allowed = parse_allowed(
        "# comment\n\n"
        f"{T}b | retried where Celery fails at once\n"
        "*::test_group::* | never here\n"
    )
    found = differences(_outcomes(b="passed", d="passed"), _outcomes(b="error", d="failed"),
                        allowed)
    assert [(d.test, d.allowed.reason if d.allowed else None) for d in found] == [
        (T + "b", "retried where Celery fails at once"), (T + "d", None)]


def test_entries_without_a_reason_are_refused() -> None:
    with pytest.raises(ValueError, match=r"allowed\.txt:2: .* names the test and says why"):
        parse_allowed("# ok\nt/integration/test_tasks.py::x\n")
    with pytest.raises(ValueError, match=r"allowed\.txt:1"):
        parse_allowed("t/x |  \n")


def test_unused_entries_are_the_ones_whose_test_passes_now() -> None:
    allowed = parse_allowed(f"{T}a | fixed since\n{T}b | still differs\n*other* | not run\n")
    plain = _outcomes(a="passed", b="passed")
    found = differences(plain, _outcomes(a="passed", b="failed"), allowed)
    assert [rule.pattern for rule in unused(allowed, found, plain)] == [T + "a"]


def test_counts_has_every_column() -> None:
    assert counts(_outcomes(a="passed", b="xfailed", c="passed")) == {
        "passed": 2, "failed": 0, "error": 0, "skipped": 0, "xfailed": 1, "xpassed": 0}
