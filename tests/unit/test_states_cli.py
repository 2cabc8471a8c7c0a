"""``celery -A app reliable-tasks ...`` and the query API behind it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from celery import Celery
from click.testing import CliRunner, Result

from celery_reliable.cli.states import reliable_tasks
from celery_reliable.errors import ConfigurationError
from celery_reliable.runtime import reset as reset_runtime
from celery_reliable.states import State, Transition, queries, reset, state_store

S = State
NAME = "shop.send_receipt"


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("states_cli", set_as_current=False)
    app.conf.reliable_store_url = "memory://"
    now = time.time()
    steps = [S.PENDING, S.RECEIVED, S.STARTED, S.RETRY_SCHEDULED, S.RECEIVED, S.STARTED]
    batch = [Transition("t1", NAME, "receipt:1", s, attempt=1 if i < 4 else 2,
                        at=now - 600 + i, worker="w1@host") for i, s in enumerate(steps)]
    batch[3] = Transition("t1", NAME, "receipt:1", S.RETRY_SCHEDULED, at=now - 597,
                          error_type="ConnectionError", error_message="mailer down",
                          detail={"countdown": 2.0})
    batch += [Transition("t2", NAME, "receipt:1", s, at=now - 30 + i)
              for i, s in enumerate([S.PENDING, S.RECEIVED, S.DEDUPLICATED])]
    batch += [Transition("t3", "shop.refund", "refund:9", s, at=now - 20 + i)
              for i, s in enumerate([S.PENDING, S.RECEIVED, S.STARTED, S.FAILED,
                                     S.DEAD_LETTERED])]
    assert not state_store(app).record(batch).rejected
    yield app
    reset(app)


def run(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(reliable_tasks, list(args), obj=SimpleNamespace(app=app))


def test_timeline_of_a_task(app: Celery) -> None:
    result = run(app, "timeline", "t1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "shop.send_receipt[t1] key 'receipt:1'"
    assert lines[1].split() == ["time", "(UTC)", "elapsed", "state", "attempt", "worker", "error",
                                "detail"]
    assert [line.split()[3] for line in lines[2:]] == [
        "PENDING", "RECEIVED", "STARTED", "RETRY_SCHEDULED", "RECEIVED", "STARTED"]
    assert "ConnectionError: mailer down" in lines[5]
    assert '{"countdown": 2.0}' in lines[5]


def test_a_multi_line_error_stays_in_its_cell(app: Celery) -> None:
    message = ("payment refused:\n  Traceback (most recent call last):\n    File \"pay.py\""
               ", line 3\n" + "x" * 200)
    now = time.time()
    assert not state_store(app).record([
        Transition("t4", NAME, "receipt:4", S.PENDING, at=now - 2),
        Transition("t4", NAME, "receipt:4", S.RECEIVED, at=now - 1),
        Transition("t4", NAME, "receipt:4", S.STARTED, at=now - 0.5),
        Transition("t4", NAME, "receipt:4", S.FAILED, at=now, error_type="ValueError",
                   error_message=message),
    ]).rejected
    result = run(app, "timeline", "t4")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 + 4  # heading, column names, one line per transition
    assert "ValueError: payment refused: Traceback (most recent call last): File" in lines[-1]
    assert lines[-1].endswith("...") and len(lines[-1]) < 200
    [failed] = [t for t in json.loads(run(app, "timeline", "t4", "--json").output)
                if t["state"] == "FAILED"]
    assert failed["error_message"] == message  # the whole of it


def test_timeline_by_key_as_json(app: Celery) -> None:
    result = run(app, "timeline", "--key", "receipt:1", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert [t["task_id"] for t in found] == ["t1"] * 6 + ["t2"] * 3
    assert found[3]["state"] == "RETRY_SCHEDULED"
    assert found[3]["detail"] == {"countdown": 2.0}
    assert found[5]["attempt"] == 2


def test_an_unknown_task_exits_1(app: Celery) -> None:
    result = run(app, "timeline", "nope")
    assert result.exit_code == 1
    assert "no such task" in result.output


@pytest.mark.parametrize("args", [
    ["timeline"], ["timeline", "t1", "--key", "k"], ["stuck", "--older-than", "-1"],
    ["stuck", "--state", "SLEEPING"], ["stats", "--window", "0"],
])
def test_a_bad_argument_exits_2(app: Celery, args: list[str]) -> None:
    result = run(app, *args)
    assert result.exit_code == 2, result.output
    assert "Error" in result.output


def test_an_unreachable_store_exits_2_with_a_clear_message() -> None:
    app = Celery("states_down", set_as_current=False)
    app.conf.reliable_store_url = "redis://127.0.0.1:1/0"
    try:
        result = run(app, "stuck")
    finally:
        reset(app)
    assert result.exit_code == 2
    assert "error: Redis store redis://127.0.0.1:1/0 is unreachable" in result.output


def test_stuck_lists_the_oldest_first(app: Celery) -> None:
    result = run(app, "stuck", "--older-than", "300")
    assert result.exit_code == 1, result.output  # found some: a cron job alerts
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["task", "name", "state", "since"]
    assert lines[1].split()[:3] == ["t1", NAME, "STARTED"]
    assert len(lines) == 2
    found = run(app, "stuck", "--older-than", "1", "--json")
    assert found.exit_code == 1
    as_json = json.loads(found.output)
    assert [(c["task_id"], c["state"]) for c in as_json] == [("t1", "STARTED")]
    assert as_json[0]["age"] >= 594
    empty = run(app, "stuck", "--older-than", "300", "--state", "pending")
    assert empty.exit_code == 0
    assert "no task has been in a non-terminal state for more than 300 s" in empty.output


def test_stats_per_name_with_the_failure_rate(app: Celery) -> None:
    result = run(app, "stats", "--window", "3600")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["task", "PENDING", "RECEIVED", "STARTED", "RETRY_SCHEDULED",
                                "FAILED", "DEAD_LETTERED", "DEDUPLICATED", "failure", "rate"]
    assert lines[2].split() == ["shop.refund", "1", "1", "1", "0", "1", "1", "0", "100.0%"]
    assert lines[3].split() == [NAME, "2", "3", "2", "1", "0", "0", "1", "-"]
    assert lines[4].split()[0] == "(all)"
    data = json.loads(run(app, "stats", "--json").output)
    assert data["totals"]["PENDING"] == 3
    assert data["failure_rate"] == 1.0
    assert data["failure_rate_by_name"] == {NAME: None, "shop.refund": 1.0}


def test_prune_forgets_tasks_past_the_retention(app: Celery) -> None:
    app.conf.reliable_state_retention = 300
    reset(app)
    reset_runtime(app)  # settings are read once per app
    state_store(app).record([Transition("old", NAME, "k", S.PENDING, at=time.time() - 900)])
    result = run(app, "prune", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "forgot 1 tasks"
    assert queries.timeline(app, task_id="old") == []


def test_the_query_api_refuses_bad_arguments(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match="a task id or an idempotency key"):
        queries.timeline(app)
    with pytest.raises(ConfigurationError):
        queries.stuck(app, -1)
    with pytest.raises(ConfigurationError):
        queries.stats(app, 0)
    assert [c.task_id for c in queries.stuck(app, 300, ["started"])] == ["t1"]
