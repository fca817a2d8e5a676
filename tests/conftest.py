"""Fixtures: a real redis-server on a free port for the session, and real factory processes.

Every test that needs its own processes gets its own Redis database, so queues, workers and
jobs of one test never meet another's.
"""

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from factory.settings import Settings
from factory_cli.embedded_redis import EmbeddedRedis
from tests.stack import ENV_DIR, PREFAB_DIRS, Gateway, Stack

DATABASES = 2048  # one per test that asks for Redis, never reused: above the suite's count of tests
_databases = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), extra_config=[f"databases {DATABASES}", "save ''"])
    with server:
        yield server


def _db_url(server: EmbeddedRedis) -> str:
    db = next(_databases)
    assert db < DATABASES, f"the suite asked for more than {DATABASES} Redis databases: raise DATABASES"
    return f"redis://127.0.0.1:{server.port}/{db}"


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """A fresh, empty database of the session's Redis, for one test."""
    url = _db_url(redis_server)
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    # In-process gateways run without workers: calls wait in the queue instead of answering NO_WORKER.
    return Settings(
        redis_url=redis_url,
        prefabs=PREFAB_DIRS,
        state_dir=tmp_path / "state",
        env_dir=ENV_DIR,
        log_json=False,
        queue_without_worker=True,
    )


@pytest.fixture
def make_stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """An empty stack on this test's database: start the gateways and workers the test needs."""
    stack = Stack(redis_url, tmp_path)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def shared_stack(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One gateway and two workers shared by a module's tests that do not disturb processes."""
    stack = Stack(_db_url(redis_server), tmp_path_factory.mktemp("stack"))
    gateway = stack.start_gateway()
    stack.env["FACTORY_PUBLIC_URL"] = gateway.url  # the base of output file URLs the workers hand out
    stack.start_worker()
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def gateway(shared_stack: Stack) -> Gateway:
    first = shared_stack.procs[0]
    assert isinstance(first, Gateway)
    return first
