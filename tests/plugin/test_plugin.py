"""The plugin as pytest loads it: by its entry point, wrong expectations failing with a
message that shows what happened, and nothing in the way of a project's own fixtures."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_APP = '''
import pytest
from celery import Celery
from celery_reliable import PermanentError, ReliableTask

app = Celery("userapp", broker="memory://", set_as_current=False)
app.conf.reliable_retry_backoff_base = 0
sent = []

@app.task(base=ReliableTask, idempotency_key="receipt:{order_id}",
          retry_on=(ConnectionError,), max_attempts=2)
def send_receipt(order_id):
    if order_id == 13:
        raise ConnectionError("mailer timed out")
    sent.append(order_id)

@pytest.fixture
def reliable_celery_app():
    return app
'''


def test_wrong_expectations_fail_with_the_timeline_and_the_dlq(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(USER_APP)
    pytester.makepyfile(test_wrong='''
from conftest import send_receipt

def test_expects_a_clean_run(reliable, reliable_worker):
    result = send_receipt.delay(13)
    reliable.assert_timeline(result, "RECEIVED", "STARTED", "SUCCEEDED", timeout=5)

def test_expects_the_wrong_reason(reliable, reliable_worker):
    result = send_receipt.delay(13)
    reliable.assert_dead_lettered(result, reason="permanent_error", timeout=5)

def test_expects_a_dead_letter_that_is_not_there(reliable, reliable_worker):
    result = send_receipt.delay(14)
    reliable.assert_dead_lettered(result, timeout=5)

def test_expects_once_but_the_retention_window_ended(reliable_eager, reliable_clock):
    send_receipt.delay(16)
    reliable_clock.advance(86_401)  # past reliable_retention: the key may run again
    send_receipt.delay(16)
    reliable_eager.assert_ran_once(key="receipt:16")

def test_waits_without_a_worker(reliable):
    reliable.assert_ran_once(send_receipt.delay(15), timeout=0.3)
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines([
        "*timeline of conftest.send_receipt[[]*] (key 'receipt:13') differs",
        "*  expected: RECEIVED → STARTED → SUCCEEDED",
        "*  actual:   PENDING → RECEIVED → STARTED → RETRY_SCHEDULED → RECEIVED → STARTED"
        " → FAILED → DEAD_LETTERED",
        "*RETRY_SCHEDULED *attempt 1*ConnectionError: mailer timed out*",
    ])
    result.stdout.fnmatch_lines([
        "*the DLQ holds conftest.send_receipt[[]*] with reason 'attempts_exhausted', not"
        " 'permanent_error':",
        "*key 'receipt:13': reason 'attempts_exhausted', 2 attempt(s),"
        " ConnectionError: mailer timed out",
    ])
    result.stdout.fnmatch_lines([
        "*expected the DLQ to hold conftest.send_receipt[[]*] (key 'receipt:14'); it has no"
        " entry for that task.",
        "*the DLQ is empty",
        "*SUCCEEDED*",
    ])
    result.stdout.fnmatch_lines([
        "*expected key 'receipt:16' to run to success once; it succeeded 2 times (2 task(s))."
        " Its timeline:",
        "*+  0.000s  ????????  RECEIVED         attempt 1*",
        "*????????  SUCCEEDED        attempt 1*",
        "*????????  RECEIVED         attempt 1*",
        "*????????  SUCCEEDED        attempt 1*",
    ])
    result.stdout.fnmatch_lines([
        "*conftest.send_receipt[[]*] (key 'receipt:15') did not reach a terminal state"
        " within 0.3 s (now: PENDING). No worker is running: use the reliable_worker"
        " fixture*",
    ])


def test_the_plugin_is_inert_beside_a_projects_own_app_and_prefix(
    pytester: pytest.Pytester,
) -> None:
    """Loaded by its entry point (no -p), it adds no autouse fixture and no name a
    project may already use: this project's ``app`` and ``prefix`` stay its own."""
    pytester.makeconftest('''
import pytest

@pytest.fixture
def app():
    return "the project's app"

@pytest.fixture
def prefix():
    return "the project's prefix"
''')
    pytester.makepyfile(test_own='''
def test_own_fixtures(app, prefix, request):
    assert (app, prefix) == ("the project's app", "the project's prefix")
    assert not [f for f in request.fixturenames if f.startswith("reliable")]
    assert request.config.pluginmanager.get_plugin("celery_reliable") is not None
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_without_an_override_the_app_is_celery_contrib_pytests_celery_app(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_default='''
from celery_reliable import ReliableTask

def test_default_app(reliable, reliable_app, celery_app):
    assert reliable_app is celery_app

    @reliable_app.task(base=ReliableTask, idempotency_key="k:{n}", shared=False)
    def double(n):
        return 2 * n

    with reliable.worker():
        assert double.delay(21).get(timeout=10) == 42
        reliable.assert_ran_once(key="k:21")
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_without_pytest_celery_celery_contrib_pytest_is_registered_for_its_celery_app(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No plugin but ours loaded (as when pytest-celery is not installed): the plugin
    registers celery.contrib.pytest, so the default app still exists."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_alone='''
def test_alone(reliable_app, request):
    assert request.config.pluginmanager.get_plugin("celery") is None
    assert reliable_app.conf.broker_url == "memory://"
''')
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "celery_reliable.testing.plugin")
    result.assert_outcomes(passed=1)


def test_no_app_at_all_says_which_fixture_to_write(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_no_app='''
def test_no_app(reliable):
    pass
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:celery")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a fixture reliable_celery_app in conftest.py*"])
