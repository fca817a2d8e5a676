"""EmbeddedRedis: a real redis-server started, reached, persisted and stopped."""

import os
import time
from pathlib import Path

import pytest
import redis

from factory_cli.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_redis_server, free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_finds_a_redis_server_binary() -> None:
    path = find_redis_server()
    assert path.is_file()
    assert os.access(path, os.X_OK)


def test_starts_quickly_and_answers(tmp_path: Path) -> None:
    started = time.monotonic()
    with EmbeddedRedis(tmp_path) as server:
        assert time.monotonic() - started < 5
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        client.close()
        pid = server.pid
        assert pid is not None
    assert not server.running
    assert not _alive(pid)


def test_key_persists_across_stop_and_start(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first:
        client = redis.Redis.from_url(first.url)
        client.set("kept", "across restarts")
        client.rpush("log", "a", "b")
        client.close()
    assert (tmp_path / "redis" / "appendonly.aof").is_file()
    with EmbeddedRedis(tmp_path) as second:
        client = redis.Redis.from_url(second.url)
        assert client.get("kept") == b"across restarts"
        assert client.lrange("log", 0, -1) == [b"a", b"b"]
        client.close()


def test_requested_port_and_extra_config(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedRedis(tmp_path, port, extra_config=["databases 64", "save ''"]) as server:
        assert server.port == port
        client = redis.Redis(port=port)
        assert client.config_get("databases") == {"databases": "64"}
        assert client.config_get("save") == {"save": ""}
        client.close()


def test_stop_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    server.stop()
    server.stop()
    with pytest.raises(EmbeddedRedisError):
        _ = server.url


def test_refuses_a_second_server_on_the_same_data(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        with pytest.raises(EmbeddedRedisError, match=f"pid {server.pid}"):
            EmbeddedRedis(tmp_path).start()
        assert server.running


def test_bad_config_fails_with_the_log_tail(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, extra_config=["no-such-directive yes"])
    with pytest.raises(EmbeddedRedisError, match="no-such-directive"):
        server.start()
    assert not server.running


def test_port_in_use_fails_clearly(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as taken:
        with pytest.raises(EmbeddedRedisError, match="(?i)address already in use"):
            EmbeddedRedis(tmp_path / "b", taken.port).start()
