from __future__ import annotations

import pytest
from celery import Celery

from celery_reliable.errors import ConfigurationError
from celery_reliable.runtime import reset, runtime
from celery_reliable.settings import Settings, from_conf, rows


def test_defaults() -> None:
    settings = from_conf({})
    assert settings == Settings()
    assert settings.lease_seconds == 30 and settings.retention == 86400
    assert settings.heartbeat_interval == 10


def test_values_are_coerced_from_environment_strings() -> None:
    settings = from_conf({"reliable_lease_seconds": "12", "reliable_persist_on_publish": "false"})
    assert settings.lease_seconds == 12.0
    assert settings.persist_on_publish is False


def test_typo_names_the_setting_and_suggests() -> None:
    expected = r"reliable_lease_second.*did you mean reliable_lease_seconds"
    with pytest.raises(ConfigurationError, match=expected):
        from_conf({"reliable_lease_second": 10})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("reliable_store_url", "mongodb://x", "unknown scheme 'mongodb'"),
        ("reliable_lease_seconds", "soon", "must be a number"),
        ("reliable_lease_seconds", 0, "must be >= 1"),
        ("reliable_on_key_conflict", "ignore", "must be one of 'error', 'skip'"),
        ("reliable_persist_on_publish", "maybe", "must be a boolean"),
        ("reliable_key_prefix", "a b", "without spaces"),
    ],
)
def test_invalid_values_name_the_setting(name: str, value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        from_conf({name: value})
    assert name in str(info.value)


def test_django_namespace_keys_are_read() -> None:
    app = Celery("django_style", set_as_current=False)

    class DjangoSettings:
        CELERY_BROKER_URL = "memory://"
        CELERY_RELIABLE_STORE_URL = "memory://"
        CELERY_RELIABLE_LEASE_SECONDS = 7

    app.config_from_object(DjangoSettings, namespace="CELERY")
    try:
        assert runtime(app).settings.lease_seconds == 7
        assert runtime(app).settings.store_url == "memory://"
    finally:
        reset(app)


def test_inconsistent_rescue_settings() -> None:
    with pytest.raises(ConfigurationError, match="rescue_backoff_cap"):
        from_conf({"reliable_rescue_after": 100, "reliable_rescue_backoff_cap": 10})


def test_per_task_overrides_are_validated() -> None:
    settings = from_conf({})
    assert settings.for_task({"lease_seconds": "5"}).lease_seconds == 5
    with pytest.raises(ConfigurationError, match="unknown setting reliable_store_url"):
        settings.for_task({"store_url": "memory://"})


def test_every_row_is_documented() -> None:
    for name, _default, doc, _per_task in rows():
        assert name.startswith("reliable_") and len(doc) > 20


def django_app(**settings: object) -> Celery:
    """An app configured as Django's docs do: a settings module read with namespace
    ``CELERY`` (a module object stands for ``django.conf:settings``)."""
    import types

    module = types.ModuleType("proj.settings")
    module.CELERY_BROKER_URL = "memory://"  # type: ignore[attr-defined]
    for name, value in settings.items():
        setattr(module, name, value)
    app = Celery("proj", set_as_current=False)
    app.config_from_object(module, namespace="CELERY")
    return app


@pytest.mark.parametrize("settings, expected", [
    ({"CELERY_RELIABLE_LEASE_SECOND": 10},
     "unknown setting CELERY_RELIABLE_LEASE_SECOND; did you mean CELERY_RELIABLE_LEASE_SECONDS?"),
    ({"CELERY_RELIABLE_LEASE_SECONDS": "soon"},
     "CELERY_RELIABLE_LEASE_SECONDS must be a number of seconds, got 'soon'"),
    ({"CELERY_RELIABLE_RESCUE_AFTER": 7200},
     "CELERY_RELIABLE_RESCUE_BACKOFF_CAP (3600.0) is below CELERY_RELIABLE_RESCUE_AFTER"),
])
def test_a_django_settings_error_names_the_setting_as_written(
    settings: dict[str, object], expected: str
) -> None:
    app = django_app(**settings)
    try:
        with pytest.raises(ConfigurationError) as error:
            runtime(app)
        assert expected in str(error.value)
        assert "reliable_" not in str(error.value)  # no name the user did not write
    finally:
        reset(app)


def test_a_missing_store_url_in_a_django_app_names_the_django_setting() -> None:
    from celery_reliable.states import state_store

    app = django_app()
    try:
        with pytest.raises(ConfigurationError) as error:
            _ = runtime(app).store
        message = str(error.value)
        assert message.startswith("CELERY_RELIABLE_STORE_URL is not set; add "
                                  "CELERY_RELIABLE_STORE_URL = 'redis://")
        assert "namespace='CELERY'" in message and "app.conf" not in message
        with pytest.raises(ConfigurationError, match="neither CELERY_RELIABLE_STATE_STORE_URL "
                                                     "nor CELERY_RELIABLE_STORE_URL is set"):
            state_store(app)
    finally:
        reset(app)


def test_a_plain_app_is_told_the_app_conf_names() -> None:
    app = Celery("plain", broker="memory://", set_as_current=False)
    try:
        with pytest.raises(ConfigurationError,
                           match=r"reliable_store_url is not set; set it on the app, e\.g\. "
                                 r"app\.conf\.reliable_store_url = "):
            _ = runtime(app).store
    finally:
        reset(app)
