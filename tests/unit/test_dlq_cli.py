"""``celery -A app reliable-dlq ...`` on kombu's memory transport and the memory store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner, Result

from celery_reliable import PermanentError, ReliableTask
from celery_reliable.cli.dlq import reliable_dlq
from celery_reliable.states import recorder


@pytest.fixture
def app(app: Celery) -> Iterator[Celery]:
    """The conftest app with a shop of two tasks that always fail for good."""

    @app.task(base=ReliableTask, shared=False, name="shop.pay", idempotency_key="pay:{n}")
    def pay(n: int) -> None:
        raise PermanentError(f"card {n} declined" if n % 2 else f"bank {n} said no")

    @app.task(base=ReliableTask, shared=False, name="shop.ship", idempotency_key="ship:{n}",
              permanent_on=(ValueError,))
    def ship(n: int) -> None:
        raise ValueError(f"no address for {n}")

    yield app


def run(app: Celery, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(reliable_dlq, list(args), obj=SimpleNamespace(app=app),
                              input=stdin)


def seed(app: Celery) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {"shop.pay": [], "shop.ship": []}
    for n in range(6):
        ids["shop.pay"].append(app.tasks["shop.pay"].apply((n,)).id)
        ids["shop.ship"].append(app.tasks["shop.ship"].apply((n,)).id)
    recorder(app).flush(force=True)
    return ids


def listed(app: Celery, *args: str) -> list[dict[str, Any]]:
    result = run(app, "list", "--json", *args)
    assert result.exit_code == 0, result.output
    entries: list[dict[str, Any]] = json.loads(result.output)["entries"]
    return entries


def test_list_filters_paging_and_table(app: Celery) -> None:
    ids = seed(app)
    assert len(listed(app)) == 12
    assert {e["task_id"] for e in listed(app, "--task", "shop.ship")} == set(ids["shop.ship"])
    assert len(listed(app, "--exception", "PermanentError", "--text", "DECLINED")) == 3
    assert len(listed(app, "--reason", "permanent_error", "--since", "1h")) == 12
    assert listed(app, "--until", "2000-01-01T00:00:00") == []
    first = json.loads(run(app, "list", "--json", "--limit", "5").output)
    second = json.loads(run(app, "list", "--json", "--limit", "50", "--cursor",
                            first["cursor"]).output)
    assert len(first["entries"]) == 5 and len(second["entries"]) == 7
    table = run(app, "list", "--limit", "5")
    assert table.exit_code == 0 and "--cursor" in table.output and "shop.pay" in table.output
    assert run(app, "list", "--cursor", "nonsense").exit_code == 2
    assert run(app, "list", "--since", "last tuesday").exit_code == 2


def test_show(app: Celery) -> None:
    ids = seed(app)
    result = run(app, "show", ids["shop.pay"][1])
    assert result.exit_code == 0, result.output
    assert "card 1 declined" in result.output and "args:      [1]" in result.output
    assert "PermanentError: card 1 declined\n" in result.output  # the traceback's end
    assert "DEAD_LETTERED" in result.output
    shown = json.loads(run(app, "show", "--json", ids["shop.pay"][1]).output)
    assert shown["args"] == [1] and shown["timeline"][-1]["state"] == "DEAD_LETTERED"
    missing = run(app, "show", "no-such-id")
    assert missing.exit_code == 2 and "no dead letter with task id 'no-such-id'" in missing.output


def test_replay_exit_codes(app: Celery) -> None:
    ids = seed(app)
    assert run(app, "replay").exit_code == 2  # nothing chosen
    assert run(app, "replay", "--all", "--task", "shop.pay").exit_code == 2  # two ways
    dry = run(app, "replay", "--task", "shop.ship", "--dry-run", "--json")
    assert dry.exit_code == 0 and len(json.loads(dry.output)["would_replay"]) == 6
    done = run(app, "replay", ids["shop.pay"][0], "--json")
    assert done.exit_code == 0 and json.loads(done.output)["replayed"] == [ids["shop.pay"][0]]
    again = run(app, "replay", ids["shop.pay"][0])
    assert again.exit_code == 1 and "already replayed" in again.output
    assert run(app, "replay", "nope").exit_code == 2
    assert run(app, "replay", "--text", "nothing like this").exit_code == 1
    limited = run(app, "replay", "--all", "--limit", "3", "--rate", "1000/s", "--json")
    assert limited.exit_code == 0 and len(json.loads(limited.output)["replayed"]) == 3
    assert run(app, "replay", "--all", "--rate", "fast").exit_code == 2


def test_purge_asks_and_check(app: Celery) -> None:
    ids = seed(app)
    assert run(app, "check", "--older-than", "3600").exit_code == 0
    old = run(app, "check", "--older-than", "0")
    assert old.exit_code == 1 and "12 unresolved" in old.output
    declined = run(app, "purge", "--task", "shop.ship", stdin="n\n")
    assert declined.exit_code == 1 and len(listed(app)) == 12
    purged = run(app, "purge", "--task", "shop.ship", stdin="y\n")
    assert purged.exit_code == 0 and "discarded 6" in purged.output
    assert {e["task_id"] for e in listed(app)} == set(ids["shop.pay"])
    assert run(app, "purge", "--task", "shop.ship", "--yes").exit_code == 1  # none left
    assert run(app, "purge", "missing-id", "--yes").exit_code == 2
    assert run(app, "purge", "--all", "--yes", "--json").exit_code == 0
    assert listed(app) == []
    reconciled = run(app, "reconcile")
    assert reconciled.exit_code == 0 and "agree" in reconciled.output


def test_replay_of_an_unknown_id_is_one_message_like_show(app: Celery) -> None:
    ids = seed(app)
    for command in ("replay", "show", "purge"):
        result = run(app, command, "no-such-id")
        assert result.exit_code == 2, result.output
        assert result.output == ("error: no dead letter with task id 'no-such-id' "
                                 "(see `reliable-dlq list`)\n"), (command, result.output)
    mixed = run(app, "replay", ids["shop.pay"][0], "no-such-id")  # what was done, then why not
    assert mixed.exit_code == 2
    assert mixed.output.startswith("replayed 1 in ") and mixed.output.endswith(
        "error: no dead letter with task id 'no-such-id' (see `reliable-dlq list`)\n")


def test_purge_prompt_and_counts_read_as_sentences(app: Celery) -> None:
    ids = seed(app)
    one = run(app, "purge", ids["shop.pay"][0], stdin="y\n")
    assert one.exit_code == 0, one.output
    assert "Discard 1 dead letter? It cannot be replayed afterwards. [y/N]" in one.output
    assert "discarded 1 dead letter (" in one.output
    many = run(app, "purge", "--task", "shop.ship", stdin="y\n")
    assert "Discard 6 dead letters? They cannot be replayed afterwards. [y/N]" in many.output
    assert "discarded 6 dead letters (" in many.output and "(s)" not in many.output
    shown = run(app, "show", ids["shop.pay"][1])
    assert "(1 attempt, worker" in shown.output


def test_purge_replayed_discards_only_the_replayed_entries(app: Celery) -> None:
    ids = seed(app)
    replayed = ids["shop.pay"][:2]
    assert run(app, "replay", *replayed).exit_code == 0
    result = run(app, "purge", "--replayed", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(e["task_id"] for e in json.loads(result.output)["purged"]) == sorted(replayed)
    assert len(listed(app)) == 10 and listed(app, "--replayed") == []
    assert run(app, "purge", "--replayed", "--yes").exit_code == 1  # none left
