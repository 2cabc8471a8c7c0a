"""pytest plugin loaded into Celery's own integration suite by ``run_celery_suite.py``.

Loaded with ``-p reliable_compat_plugin`` (its folder on ``PYTHONPATH``) into both
runs, so the plain and the ReliableTask run differ only in what
``COMPAT_TASK_CLS`` asks for:

- ``celery_parameters`` (Celery's documented fixture for the test app's
  ``Celery(...)`` arguments) gets ``task_cls`` and the settings our tasks need;
  Celery's ``t/integration/conftest.py`` defines ``celery_config`` but not this one;
- Celery's ``flaky``/``timeout`` markers are capped (``COMPAT_RERUNS``,
  ``COMPAT_TIMEOUT``) so a test that hangs under one run costs seconds, not
  5 reruns of 300 s;
- every test's final outcome is written to ``COMPAT_OUTCOMES`` (JSON, rewritten after
  each test), the input of the comparison.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest


def _reliable_parameters() -> dict[str, Any]:
    task_cls = os.environ.get("COMPAT_TASK_CLS")
    if not task_cls:
        return {}
    # Celery(**kwargs) sets unknown keyword arguments as configuration: the store of
    # the run's private Redis, a prefix of its own.
    return {
        "task_cls": task_cls,
        "reliable_store_url": os.environ["COMPAT_STORE_URL"],
        "reliable_key_prefix": "compat",
    }


class _Parameters:
    """Holds the fixture; registered in ``pytest_configure``, after the ``pytest11``
    entry points (pytest-celery re-exports ``celery.contrib.pytest``), so that among
    plugins ours is the last definition, the one pytest uses."""

    @pytest.fixture(scope="session")
    def celery_parameters(self) -> dict[str, Any]:
        return _reliable_parameters()


def _check_fixture_is_ours(session: pytest.Session) -> None:
    """Fail loudly if another plugin's ``celery_parameters`` shadows ours: a
    "ReliableTask" run of plain tasks would compare plain with plain."""
    defs = session._fixturemanager.getfixturedefs("celery_parameters", session)
    owner = getattr(defs[-1].func, "__module__", None) if defs else None
    if owner != __name__:
        raise pytest.UsageError(
            f"celery_parameters comes from {owner}, not {__name__}: "
            "the comparison would not test ReliableTask"
        )


def _capped(marker: pytest.Mark, option: str, cap: int) -> pytest.MarkDecorator:
    args, kwargs = marker.args, dict(marker.kwargs)
    if option in kwargs:
        kwargs[option] = min(kwargs[option], cap)
    elif args:  # pytest.mark.timeout(300)
        args = (min(args[0], cap), *args[1:])
    else:
        kwargs[option] = cap
    return getattr(pytest.mark, marker.name)(*args, **kwargs)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    _check_fixture_is_ours(session)
    caps = {
        "flaky": ("reruns", int(os.environ.get("COMPAT_RERUNS", "1"))),
        "timeout": ("timeout", int(os.environ.get("COMPAT_TIMEOUT", "60"))),
    }
    for item in items:
        for name, (option, cap) in caps.items():
            marker = item.get_closest_marker(name)
            if marker is not None:
                # In front of the item's own markers: the closest one wins.
                item.add_marker(_capped(marker, option, cap), append=False)


class _Outcomes:
    """The last attempt of each test: failed if any phase (or subtest) failed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tests: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.outcome == "rerun":  # pytest-rerunfailures: the attempt is discarded
            self.tests.pop(report.nodeid, None)
            return
        entry = self.tests.setdefault(
            report.nodeid, {"outcome": "passed", "message": "", "seconds": 0.0})
        entry["seconds"] = round(entry["seconds"] + report.duration, 2)
        if hasattr(report, "wasxfail"):
            entry["outcome"] = "xfailed" if report.skipped else "xpassed"
        elif report.failed:
            entry["outcome"] = "failed" if report.when == "call" else "error"
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash else str(report.longrepr)
            if not entry["message"]:  # the first failure, not "contains 1 failed subtest"
                entry["message"] = message[:500]
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"

    def pytest_runtest_logfinish(self) -> None:
        # After every test: a run stopped over its budget still leaves what it ran.
        partial = f"{self.path}.partial"
        with open(partial, "w") as out:
            json.dump(self.tests, out, indent=1, sort_keys=True)
        os.replace(partial, self.path)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Parameters(), "reliable_compat_parameters")
    path = os.environ.get("COMPAT_OUTCOMES")
    if path:
        config.pluginmanager.register(_Outcomes(path), "reliable_compat_outcomes")
