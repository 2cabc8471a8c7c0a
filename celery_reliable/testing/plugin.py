"""The pytest plugin (entry point ``pytest11``: ``celery_reliable``).

Inert unless a test asks for one of its fixtures: loading it imports nothing of
Celery's worker and registers no autouse fixture, and every name starts with
``reliable`` so it cannot shadow a project's own ``app`` or ``prefix``.

Point it at your app once, in ``conftest.py``::

    @pytest.fixture
    def reliable_celery_app():
        from proj.celery import app
        return app

Without that fixture, ``celery_app`` of :mod:`celery.contrib.pytest` is used (an app
on the memory broker, configured by your ``celery_config`` fixture).  The store is
``memory://`` unless ``--reliable-store-url`` or ``CELERY_RELIABLE_TEST_STORE_URL``
names one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from celery import Celery

    from celery_reliable.testing.clock import Clock
    from celery_reliable.testing.harness import Harness

OPTION = "--reliable-store-url"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("celery_reliable").addoption(
        OPTION, default=None, metavar="URL",
        help="store the reliable fixtures run on (redis://, postgresql+psycopg://, "
             "sqlite:///...), each test under a prefix of its own; default memory://, "
             "or $CELERY_RELIABLE_TEST_STORE_URL",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Make Celery's own fixtures (``celery_app``, ``celery_config``...) available when
    no plugin gave them: pytest-celery registers :mod:`celery.contrib.pytest` as plugin
    ``celery``; without pytest-celery nothing does."""
    manager = config.pluginmanager
    if manager.get_plugin("celery") is None and not manager.is_blocked("celery"):
        manager.import_plugin("celery.contrib.pytest")


@pytest.fixture(scope="session")
def reliable_store_url(request: pytest.FixtureRequest) -> str:
    """The store URL of this run: ``--reliable-store-url``, else
    ``$CELERY_RELIABLE_TEST_STORE_URL``, else ``memory://``."""
    from celery_reliable.testing.harness import store_url_from_env

    return str(request.config.getoption(OPTION) or store_url_from_env())


@pytest.fixture
def reliable_celery_app(request: pytest.FixtureRequest) -> Celery:
    """Your Celery app: override this fixture to return it.  The default is the
    ``celery_app`` fixture of :mod:`celery.contrib.pytest`."""
    try:
        app: Celery = request.getfixturevalue("celery_app")
    except pytest.FixtureLookupError:
        pytest.fail(
            "the reliable fixtures need your Celery app: define a fixture "
            "reliable_celery_app in conftest.py that returns it (or leave "
            "celery.contrib.pytest's celery_app available: do not block plugin 'celery')",
            pytrace=False,
        )
    return app


@pytest.fixture
def reliable(reliable_celery_app: Celery, reliable_store_url: str) -> Iterator[Harness]:
    """The app on a fresh store for this test: a :class:`~celery_reliable.testing.Harness`
    (``reliable.worker()``, ``reliable.clock``, ``reliable.assert_ran_once(...)``...)."""
    from celery_reliable.testing.harness import use_store

    with use_store(reliable_celery_app, reliable_store_url) as harness:
        yield harness


@pytest.fixture
def reliable_app(reliable: Harness) -> Celery:
    """Your app, on this test's store."""
    return reliable.app


@pytest.fixture
def reliable_worker(reliable: Harness) -> Iterator[Any]:
    """A real worker for the app, in a thread, for this test (Celery's WorkController)."""
    with reliable.worker() as worker:
        yield worker


@pytest.fixture
def reliable_eager(reliable: Harness) -> Iterator[Harness]:
    """The harness with ``task_always_eager`` on: ``delay()`` runs the task at once."""
    from celery_reliable.testing.overrides import Overrides

    overrides = Overrides(reliable.app)
    overrides.celery("task_always_eager", True)
    reliable.eager = True
    try:
        yield reliable
    finally:
        reliable.eager = False
        overrides.restore()


@pytest.fixture
def reliable_clock(reliable: Harness) -> Clock:
    """The clock the memory store reads: ``reliable_clock.advance(31)`` lapses a lease."""
    return reliable.clock
