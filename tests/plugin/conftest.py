from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from tests.plugin import usershop


@pytest.fixture
def reliable_celery_app() -> Celery:
    """What a user writes once: the plugin's fixtures run this app."""
    return usershop.app


@pytest.fixture
def mailer() -> Iterator[usershop.Mailer]:
    """The user's own fake of the side effect, fresh per test."""
    usershop.mailer.__init__()  # type: ignore[misc]
    yield usershop.mailer
