"""``celery -A app reliable-store migrate|check`` on SQLite files (the operator's first
commands against a SQL store) and on a store that cannot be reached."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery
from click.testing import CliRunner, Result

from celery_reliable.cli.store import reliable_store
from celery_reliable.errors import StoreError
from celery_reliable.runtime import reset
from celery_reliable.states import state_store
from celery_reliable.states.stores import open_state_store
from celery_reliable.stores import open_store


@pytest.fixture
def make_app() -> Iterator[Callable[..., Celery]]:
    apps: list[Celery] = []

    def build(**conf: object) -> Celery:
        app = Celery("store_cli", broker="memory://", set_as_current=False)
        app.conf.update(conf)
        apps.append(app)
        return app

    yield build
    for app in apps:
        reset(app)


def run(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(reliable_store, list(args), obj=SimpleNamespace(app=app))


def test_migrate_creates_the_schema_once_and_check_then_passes(
    make_app: Callable[..., Celery], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'reliable.db'}"
    app = make_app(reliable_store_url=url)
    with pytest.raises(StoreError, match="reliable-store migrate"):
        open_store(url).ping()  # a worker is refused until the schema exists
    refused = run(app, "check")
    assert refused.exit_code == 2 and "reliable-store migrate" in refused.output
    created = run(app, "migrate")  # says what it did: versions and tables
    assert created.exit_code == 0, created.output
    assert f"store {url}: migrated from no schema to version 5" in created.output
    assert "created 11 tables: reliable_breakers, reliable_budget, reliable_clock," in (
        created.output
    )
    assert "5: lease clock" in created.output and "up to date" not in created.output
    again = run(app, "migrate")  # idempotent: a step run twice does nothing the second time
    assert again.exit_code == 0, again.output
    assert again.output == f"store {url}: schema version 5, already up to date\n"
    open_store(url).ping()
    state_store(app).stuck(60)  # the states share the store's database and schema
    checked = run(app, "check")
    assert checked.exit_code == 0, checked.output
    assert "reachable, 0 task records in flight" in checked.output


def test_migrate_also_creates_a_separate_state_store(
    make_app: Callable[..., Celery], tmp_path: Path
) -> None:
    states_url = f"sqlite:///{tmp_path / 'states.db'}"
    app = make_app(reliable_store_url=f"sqlite:///{tmp_path / 'reliable.db'}",
                   reliable_state_store_url=states_url)
    assert run(app, "migrate").exit_code == 0
    open_state_store(states_url).stuck(60)  # would be refused without its schema


def test_migrate_names_a_store_it_cannot_reach(make_app: Callable[..., Celery]) -> None:
    app = make_app(reliable_store_url="redis://127.0.0.1:1/0")  # nothing listens there
    result = run(app, "migrate")
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "127.0.0.1:1" in result.output


def test_migrate_on_a_store_without_schema_says_so(make_app: Callable[..., Celery]) -> None:
    result = run(make_app(reliable_store_url="memory://"), "migrate")
    assert result.exit_code == 0, result.output
    assert result.output == ("store memory://: nothing to migrate "
                             "(this kind of store has no schema)\n")
