"""Where the real servers are, and one rule for when they are missing.

Locally a missing server skips the tests that need it, with the reason; under
``CI=true`` it is a failure: CI must never go green by skipping.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class Server:
    name: str
    host: str
    port: int
    url: str
    start: str

    def reachable(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def require(self) -> str:
        """The server's URL, or skip (locally) / fail (CI) naming how to start it."""
        if not self.reachable():
            message = (
                f"{self.name} is not running on {self.host}:{self.port}; start it: {self.start}"
            )
            if IN_CI:
                pytest.fail(f"CI=true and {message}", pytrace=False)
            pytest.skip(message)
        return self.url


REDIS = Server(
    "Redis", "127.0.0.1", 6379, os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379"),
    'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
)
RABBITMQ = Server(
    "RabbitMQ", "127.0.0.1", 5672,
    os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    "rabbitmq-server -detached",
)
POSTGRES = Server(
    "PostgreSQL", "127.0.0.1", 5432,
    os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
)
MARIADB = Server(
    "MariaDB", "127.0.0.1", 3306,
    os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
)
