"""How every ``celery -A app reliable-*`` command ends on a configuration error or a
forgotten ``-A``: one ``error:`` line on standard error, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from celery import Celery
from click.testing import CliRunner

from celery_reliable import ReliableTask
from celery_reliable.cli.dlq import reliable_dlq
from celery_reliable.cli.states import reliable_tasks
from celery_reliable.cli.store import reliable_store
from celery_reliable.runtime import reset

#: Every sub-command, with the arguments it needs to get past click's own checks.
COMMANDS: list[tuple[click.Group, list[str]]] = [
    (reliable_store, ["migrate"]),
    (reliable_store, ["check"]),
    (reliable_tasks, ["timeline", "some-id"]),
    (reliable_tasks, ["stuck"]),
    (reliable_tasks, ["stats"]),
    (reliable_tasks, ["prune"]),
    (reliable_dlq, ["list"]),
    (reliable_dlq, ["show", "some-id"]),
    (reliable_dlq, ["replay", "--all"]),
    (reliable_dlq, ["purge", "--all", "--yes"]),
    (reliable_dlq, ["reconcile"]),
    (reliable_dlq, ["check", "--older-than", "1"]),
]
IDS = [f"{group.name} {args[0]}" for group, args in COMMANDS]


@pytest.fixture
def misconfigured() -> Iterator[Celery]:
    """An app whose one reliable task has a key template naming a missing argument."""
    app = Celery("badkeys", broker="memory://", set_as_current=False)
    app.conf.reliable_store_url = "memory://"

    @app.task(base=ReliableTask, shared=False, name="shop.receipt",
              idempotency_key="receipt:{order}")
    def receipt(order_id: int) -> None:
        pass

    yield app
    reset(app)


def _single_error(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


@pytest.mark.parametrize(("group", "args"), COMMANDS, ids=IDS)
def test_a_bad_key_template_is_one_error_line_and_exit_2(
    misconfigured: Celery, group: click.Group, args: list[str]
) -> None:
    result = CliRunner().invoke(group, args, obj=SimpleNamespace(app=misconfigured))
    assert result.exit_code == 2, result.output
    line = _single_error(result.output)
    assert "receipt:{order}" in line and "order_id" in line


@pytest.mark.parametrize(("group", "args"), COMMANDS, ids=IDS)
def test_an_invalid_setting_is_one_error_line_and_exit_2(
    group: click.Group, args: list[str]
) -> None:
    app = Celery("badsetting", broker="memory://", set_as_current=False)
    app.conf.reliable_store_url = "memory://"
    app.conf.reliable_lease_second = 10
    try:
        result = CliRunner().invoke(group, args, obj=SimpleNamespace(app=app))
    finally:
        reset(app)
    assert result.exit_code == 2, result.output
    assert "reliable_lease_seconds" in _single_error(result.output)


def test_without_dash_a_the_error_names_dash_a(tmp_path: Path) -> None:
    """The real ``celery`` entry point, run where no app module is: Celery falls back to
    its default app, which has no store; the error is that -A is missing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    celery = Path(sys.executable).with_name("celery")
    done = subprocess.run([str(celery), "reliable-dlq", "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    line = _single_error(done.stderr)
    assert "-A" in line and "celery -A proj reliable-dlq list" in line
    assert "reliable_store_url" not in line
