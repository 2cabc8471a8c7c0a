"""Where the real servers are, and one rule for when they are missing.

Locally a missing server skips the tests that need it, with the reason; under
``CI=true`` it is a failure: CI must never go green by skipping.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.harness import wait_for

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of one test's own, without persistence (as the shared one runs), so
    that stopping or restarting it disturbs no other test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, f"redis-server on port {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: what it held in memory is gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False


@contextmanager
def private_redis(port: int) -> Iterator[PrivateRedis]:
    """A :class:`PrivateRedis` on ``port`` for the ``with`` block."""
    server = PrivateRedis(port).start()
    try:
        yield server
    finally:
        server.stop()
