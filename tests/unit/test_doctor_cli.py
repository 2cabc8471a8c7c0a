"""``celery -A app reliable-check`` (and its ``reliable-store check`` alias): exit codes,
``--strict`` and ``--json``, on a memory broker and store (nothing to reach but the
configuration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from celery import Celery
from click.testing import CliRunner, Result

from celery_reliable import ReliableTask
from celery_reliable.cli.check import reliable_check
from celery_reliable.cli.store import reliable_store
from celery_reliable.runtime import reset
from tests.servers import free_port

#: what a careful deployment sets: no warning is left
SAFE = {"worker_soft_shutdown_timeout": 30,
        "worker_cancel_long_running_tasks_on_connection_loss": True}


@pytest.fixture
def make_app() -> Iterator[Callable[..., Celery]]:
    apps: list[Celery] = []

    def build(**conf: object) -> Celery:
        app = Celery("doctor_cli", broker="memory://", set_as_current=False)
        app.conf.update({"reliable_store_url": "memory://", **conf})

        @app.task(base=ReliableTask, shared=False, name="shop.receipt")
        def receipt() -> None: ...

        apps.append(app)
        return app

    yield build
    for app in apps:
        reset(app)


def run(app: Celery, *args: str, command: click.Command = reliable_check) -> Result:
    return CliRunner().invoke(command, list(args), obj=SimpleNamespace(app=app))


def test_a_clean_deployment_exits_0(make_app: Callable[..., Celery]) -> None:
    result = run(make_app(**SAFE))
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.stdout and "reliable tasks: shop.receipt" in result.stdout


def test_warnings_exit_0_unless_strict(make_app: Callable[..., Celery]) -> None:
    app = make_app(worker_cancel_long_running_tasks_on_connection_loss=True)
    result = run(app)
    assert result.exit_code == 0, result.output
    assert "warning: [worker.soft_shutdown]" in result.stderr
    assert "  fix: Set worker_soft_shutdown_timeout" in result.stderr
    assert "  docs: docs/operating.md#soft-shutdown" in result.stderr
    assert run(app, "--strict").exit_code == 1


def test_an_error_exits_1_and_json_lists_every_finding(
    make_app: Callable[..., Celery],
) -> None:
    app = make_app(reliable_critical_tasks=["shop.*"], **SAFE)

    @app.task(shared=False, name="shop.invoice")
    def invoice() -> None: ...

    result = run(app, "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["errors"], report["warnings"]) == (1, 0)
    (finding,) = report["findings"]
    assert finding["check"] == "tasks.critical" and finding["severity"] == "error"
    assert set(finding) == {"check", "severity", "problem", "fix", "docs"}
    assert finding["docs"] == "docs/operating.md#critical-tasks"
    assert report["reliable_tasks"] == ["shop.receipt"]
    assert report["settings"]["reliable_critical_tasks"] == ["shop.*"]


def test_an_unreachable_store_exits_2_and_the_other_findings_are_still_reported(
    make_app: Callable[..., Celery],
) -> None:
    app = make_app(reliable_store_url=f"redis://127.0.0.1:{free_port()}/1")
    result = run(app, "--json")
    assert result.exit_code == 2, result.output
    found = [f["check"] for f in json.loads(result.stdout)["findings"]]
    assert found[0] == "store.unreachable" and "worker.soft_shutdown" in found


def test_an_invalid_setting_exits_2_with_one_line(make_app: Callable[..., Celery]) -> None:
    result = run(make_app(reliable_critical_tasks=3))
    assert result.exit_code == 2
    assert result.output.startswith("error: reliable_critical_tasks must be a list")


def test_reliable_store_check_runs_the_same_checks(make_app: Callable[..., Celery]) -> None:
    app = make_app(worker_cancel_long_running_tasks_on_connection_loss=True)
    alias = run(app, "check", "--json", command=reliable_store)
    assert alias.exit_code == 0, alias.output
    assert [f["check"] for f in json.loads(alias.stdout)["findings"]] == [
        "worker.soft_shutdown"]
    assert run(app, "check", "--strict", command=reliable_store).exit_code == 1


def test_the_celery_command_runs_it_from_the_entry_point(tmp_path: Path) -> None:
    """``celery -A app reliable-check`` as an operator types it: the sub-command is
    registered on ``celery.commands``, and a configuration Celery applies only when
    the worker starts (our default time limit) is judged all the same."""
    (tmp_path / "doctor_app.py").write_text(
        "from celery import Celery\n"
        "from celery_reliable import ReliableTask\n"
        "app = Celery('doctor_app', broker='redis://127.0.0.1:1/0')\n"
        "app.conf.reliable_store_url = 'memory://'\n"
        "app.conf.broker_transport_options = {'visibility_timeout': 600}\n"
        "@app.task(base=ReliableTask, name='shop.receipt')\n"
        "def receipt():\n"
        "    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    celery = Path(sys.executable).with_name("celery")
    done = subprocess.run([str(celery), "-A", "doctor_app", "reliable-check", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    found = {f["check"]: f for f in json.loads(done.stdout)["findings"]}
    assert found["broker.unreachable"]["severity"] == "error"  # nothing listens on :1
    assert found["broker.visibility_timeout"]["severity"] == "warning"
    assert "shop.receipt's time limit (1800 s)" in found["broker.visibility_timeout"]["problem"]
