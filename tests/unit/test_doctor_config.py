"""The deployment doctor's checks that judge the configuration alone: each fires on the
configuration that loses or repeats work, and stays quiet on a safe one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from celery_reliable import ReliableTask
from celery_reliable.doctor import broker, results, tasks, worker
from celery_reliable.doctor.deployment import Deployment
from celery_reliable.errors import ConfigurationError
from celery_reliable.findings import Finding
from celery_reliable.runtime import reset, runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_app() -> Iterator[Celery]:
    """An app naming a Redis broker it never connects to: the visibility checks only
    read the configuration."""
    app = Celery("doctor", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.reliable_store_url = "memory://"
    yield app
    reset(app)


def checks(found: list[Finding]) -> list[str]:
    return [f"{f.check}:{f.severity}" for f in found]


def test_a_visibility_timeout_below_a_plain_tasks_time_limit_is_an_error(
    redis_app: Celery,
) -> None:
    redis_app.conf.broker_transport_options = {"visibility_timeout": 300}

    @redis_app.task(shared=False, name="shop.export", acks_late=True, time_limit=600)
    def export() -> None: ...

    found = broker.visibility_timeout(Deployment.of(redis_app))
    assert checks(found) == ["broker.visibility_timeout:error"]
    assert "shop.export's time limit (acks_late) (600 s)" in found[0].problem
    assert "above 660 s" in found[0].fix


def test_only_reliable_holds_over_the_timeout_are_a_warning_and_name_the_default(
    redis_app: Celery,
) -> None:
    """The worker gives a reliable task without a time limit the default (1800 s): the
    doctor judges that limit, which the task does not carry until a worker starts."""
    redis_app.conf.broker_transport_options = {"visibility_timeout": 1000}

    @redis_app.task(base=ReliableTask, shared=False, name="shop.receipt")
    def receipt() -> None: ...

    found = broker.visibility_timeout(Deployment.of(redis_app))
    assert checks(found) == ["broker.visibility_timeout:warning"]
    assert "shop.receipt's time limit (1800 s)" in found[0].problem
    assert receipt.time_limit is None  # judged, not changed


def test_the_default_visibility_timeout_covers_every_reliable_hold(redis_app: Celery) -> None:
    @redis_app.task(base=ReliableTask, shared=False, name="shop.report", time_limit=5000,
                    dependency="warehouse")
    def report() -> None: ...

    assert broker.visibility_timeout(Deployment.of(redis_app)) == []
    assert "broker_transport_options" not in redis_app.conf or not (
        redis_app.conf.broker_transport_options)  # the doctor set nothing


def test_plain_retries_over_a_short_timeout_are_found(redis_app: Celery) -> None:
    redis_app.conf.broker_transport_options = {"visibility_timeout": 120}

    @redis_app.task(shared=False, name="shop.sync", autoretry_for=(OSError,))
    def sync() -> None: ...

    found = broker.visibility_timeout(Deployment.of(redis_app))
    assert checks(found) == ["broker.visibility_timeout:error"]
    assert "default_retry_delay" in found[0].problem


def test_a_publish_key_retention_within_the_timeout_is_an_error(redis_app: Celery) -> None:
    redis_app.conf.broker_transport_options = {"visibility_timeout": 7200}

    @redis_app.task(base=ReliableTask, shared=False, name="shop.receipt")
    def receipt() -> None: ...

    found = broker.visibility_timeout(Deployment.of(redis_app))
    assert checks(found) == ["broker.publish_key_retention:error"]
    redis_app.conf.reliable_publish_key_retention = 8000
    reset(redis_app)
    assert broker.visibility_timeout(Deployment.of(redis_app)) == []


def test_the_visibility_check_is_for_redis_brokers_only(app: Celery) -> None:
    app.conf.broker_transport_options = {"visibility_timeout": 1}

    @app.task(shared=False, acks_late=True, time_limit=600)
    def export() -> None: ...

    assert broker.visibility_timeout(Deployment.of(app)) == []


@pytest.mark.parametrize(("multiplier", "concurrency", "fires"), [
    (4, 8, False), (4, 16, True), (1, 32, False), (0, 1, True),
])
def test_prefetch_times_concurrency_over_the_limit_warns(
    app: Celery, multiplier: int, concurrency: int, fires: bool
) -> None:
    app.conf.worker_prefetch_multiplier = multiplier
    app.conf.worker_concurrency = concurrency
    found = worker.prefetch(Deployment.of(app))
    assert checks(found) == (["worker.prefetch:warning"] if fires else [])


def test_prefetch_judges_the_concurrency_the_workers_are_started_with(app: Celery) -> None:
    app.conf.worker_prefetch_multiplier = 4
    assert worker.prefetch(Deployment.of(app, concurrency=8)) == []
    found = worker.prefetch(Deployment.of(app, concurrency=9))
    assert "36 messages" in found[0].problem and "--concurrency" in found[0].problem
    app.conf.reliable_check_max_prefetch = 40
    reset(app)
    assert worker.prefetch(Deployment.of(app, concurrency=9)) == []


def test_soft_shutdown_off_warns(app: Celery) -> None:
    assert checks(worker.soft_shutdown(Deployment.of(app))) == ["worker.soft_shutdown:warning"]
    app.conf.worker_soft_shutdown_timeout = 30
    assert worker.soft_shutdown(Deployment.of(app)) == []


def test_soft_shutdown_skipped_on_idle_with_redis_warns(redis_app: Celery) -> None:
    """With Redis an idle worker holding only ETA messages must soft-shut-down too."""
    redis_app.conf.worker_soft_shutdown_timeout = 30
    found = worker.soft_shutdown(Deployment.of(redis_app))
    assert checks(found) == ["worker.soft_shutdown_on_idle:warning"]
    redis_app.conf.worker_enable_soft_shutdown_on_idle = True
    assert worker.soft_shutdown(Deployment.of(redis_app)) == []


def test_running_tasks_kept_on_connection_loss_warn(app: Celery) -> None:
    found = worker.connection_loss(Deployment.of(app))
    assert checks(found) == ["worker.connection_loss:warning"]
    app.conf.worker_cancel_long_running_tasks_on_connection_loss = True
    assert worker.connection_loss(Deployment.of(app)) == []


@pytest.mark.parametrize(("backend", "expires", "fires"), [
    ("redis://127.0.0.1:1/2", None, True), ("redis://127.0.0.1:1/2", 0, True),
    ("redis://127.0.0.1:1/2", 86400, False), (None, None, False),
])
def test_a_result_backend_without_expiry_warns(
    app: Celery, backend: str | None, expires: int | None, fires: bool
) -> None:
    app.conf.result_backend, app.conf.result_expires = backend, expires
    found = results.expiry(Deployment.of(app))
    assert checks(found) == (["results.expiry:warning"] if fires else [])


def test_critical_tasks_that_are_not_reliable_are_errors(app: Celery) -> None:
    app.conf.reliable_critical_tasks = ["shop.*", "billing.charge", "bilings.*"]

    @app.task(base=ReliableTask, shared=False, name="shop.receipt")
    def receipt() -> None: ...

    @app.task(shared=False, name="shop.invoice")
    def invoice() -> None: ...

    @app.task(base=ReliableTask, shared=False, name="billing.charge")
    def charge() -> None: ...

    @app.task(shared=False, name="reports.daily")
    def daily() -> None: ...

    found = tasks.critical(Deployment.of(app))
    assert checks(found) == ["tasks.critical:error", "tasks.critical_unmatched:warning"]
    assert found[0].problem.startswith("shop.invoice matches reliable_critical_tasks but is "
                                       "not a ReliableTask")
    assert "'bilings.*'" in found[1].problem


def test_critical_tasks_that_are_all_reliable_pass(app: Celery) -> None:
    app.conf.reliable_critical_tasks = "shop.*"  # one string, as an environment gives it

    @app.task(base=ReliableTask, shared=False, name="shop.receipt")
    def receipt() -> None: ...

    assert runtime(app).settings.critical_tasks == ("shop.*",)
    assert tasks.critical(Deployment.of(app)) == []


def test_critical_tasks_must_be_patterns(app: Celery) -> None:
    app.conf.reliable_critical_tasks = 5
    with pytest.raises(ConfigurationError, match=r"reliable_critical_tasks must be a list"):
        runtime(app)


def test_every_docs_link_of_a_finding_names_a_section_that_exists() -> None:
    """A finding's link is a page and a heading's anchor (as mkdocs makes it): a renamed
    heading must not leave the operator on the top of a page."""
    sources = "\n".join(p.read_text() for p in (ROOT / "celery_reliable").rglob("*.py"))
    links = set(re.findall(r'"(\w+\.md)#([\w-]+)"', sources))
    assert ("operating.md", "visibility-timeout") in links
    missing = []
    for page, anchor in sorted(links):
        headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / page).read_text(), re.M)
        slugs = {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", h).strip().lower())
                 for h in headings}
        if anchor not in slugs:
            missing.append(f"{page}#{anchor}")
    assert missing == [], missing
