"""The lean Redis connections (``factory.store.wire``), against the real Redis: what a URL says is
obeyed, replies go to their own commands, and a connection that failed is never used again."""

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress

import pytest
import redis
from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from factory.store.scripts import sha
from factory.store.wire import CONNECT_TIMEOUT_S, AsyncWire, LuaScript, Wire, failure

ECHO_FIRST_ARG = LuaScript("return ARGV[1]", sha("return ARGV[1]"))


@pytest.fixture
def admin(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def wire(redis_url: str) -> Iterator[Wire]:
    client = Wire(redis_url)
    yield client
    client.close()


def test_a_script_runs_by_its_sha_and_again_once_redis_lost_it(wire: Wire, admin: redis.Redis) -> None:
    assert wire.run_script(ECHO_FIRST_ARG, [], ["one"]) == b"one"
    admin.script_flush()
    assert wire.run_script(ECHO_FIRST_ARG, [], ["two"]) == b"two"  # NOSCRIPT: sent with its source, loaded
    assert admin.script_exists(ECHO_FIRST_ARG.sha) == [True]


def test_an_error_reply_raises_and_the_connection_goes_on(wire: Wire) -> None:
    with pytest.raises(ResponseError, match="unknown command"):
        wire.call("NO-SUCH-COMMAND")
    assert wire.call("ECHO", "still here") == b"still here"


def test_the_url_picks_the_database_user_and_name(redis_url: str, admin: redis.Redis) -> None:
    user, password = f"wire-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    try:
        host_port, db = redis_url.removeprefix("redis://").rsplit("/", 1)
        named = Wire(f"redis://{user}:{password}@{host_port}/{db}?client_name=wire-test")
        named.call("SET", "written-by-wire", "1")
        assert named.call("ACL", "WHOAMI") == user.encode()
        assert named.call("CLIENT", "GETNAME") == b"wire-test"
        assert admin.get("written-by-wire") == b"1"  # the test's database, not db 0
        named.close()
        with pytest.raises(RedisConnectionError, match="refused"):
            Wire(f"redis://{user}:wrong@{host_port}/{db}").call("PING")
    finally:
        admin.acl_deluser(user)


def test_a_killed_connection_fails_once_and_the_next_call_connects_afresh(wire: Wire, admin: redis.Redis) -> None:
    first_id = wire.call("CLIENT", "ID")
    admin.execute_command("CLIENT", "KILL", "ID", first_id)
    with pytest.raises(RedisConnectionError):
        wire.call("PING")
    assert wire.call("CLIENT", "ID") != first_id


def test_a_late_reply_drops_the_connection_so_no_reply_goes_to_the_wrong_command(
    redis_url: str, admin: redis.Redis
) -> None:
    impatient = Wire(redis_url, reply_timeout_s=0.3)
    first_id = impatient.call("CLIENT", "ID")
    admin.client_pause(3000, all=False)  # holds writes (SET) at the server
    try:
        with pytest.raises(RedisTimeoutError):
            impatient.call("SET", "held", "1")
    finally:
        admin.client_unpause()
    assert impatient.call("ECHO", "mine") == b"mine"  # not the held SET's late OK
    assert impatient.call("CLIENT", "ID") != first_id
    impatient.close()


def test_a_forked_child_makes_its_own_connection(wire: Wire) -> None:
    parent_id = wire.call("CLIENT", "ID")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its connection's id, then leave at once
        try:
            os.write(write_end, str(wire.call("CLIENT", "ID")).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_id = int(os.read(read_end, 64))
    os.waitpid(pid, 0)
    assert child_id != parent_id
    assert wire.call("CLIENT", "ID") == parent_id  # the parent's connection is untouched


def test_async_replies_go_to_their_own_commands_when_many_share_the_connection(redis_url: str) -> None:
    async def main() -> None:
        wire = AsyncWire(redis_url)
        try:
            replies = await asyncio.gather(*(wire.call("ECHO", f"caller {n}") for n in range(200)))
            assert replies == [f"caller {n}".encode() for n in range(200)]
            assert len({await wire.call("CLIENT", "ID") for _ in range(3)}) == 1  # one connection, kept
        finally:
            wire.close()

    asyncio.run(main())


def test_async_scripts_errors_and_lost_connections(redis_url: str, admin: redis.Redis) -> None:
    async def main() -> None:
        wire = AsyncWire(redis_url, reply_timeout_s=0.3)
        try:
            assert await wire.run_script(ECHO_FIRST_ARG, [], ["one"]) == b"one"
            admin.script_flush()
            assert await wire.run_script(ECHO_FIRST_ARG, [], ["two"]) == b"two"
            with pytest.raises(ResponseError, match="unknown command"):
                await wire.call("NO-SUCH-COMMAND")
            first_id = await wire.call("CLIENT", "ID")
            admin.execute_command("CLIENT", "KILL", "ID", first_id)
            with pytest.raises(RedisConnectionError):
                await wire.call("PING")
            second_id = await wire.call("CLIENT", "ID")
            assert second_id != first_id
            admin.client_pause(3000, all=False)
            try:
                held = asyncio.ensure_future(wire.call("SET", "held", "1"))
                await asyncio.sleep(0)
                with pytest.raises(RedisTimeoutError):
                    await wire.call("SET", "held-too", "1")
                with pytest.raises((RedisTimeoutError, RedisConnectionError)):
                    await held  # waited on the dropped connection: failed, never answered by another's reply
            finally:
                admin.client_unpause()
            assert await wire.call("ECHO", "mine") == b"mine"
            assert await wire.call("CLIENT", "ID") not in (first_id, second_id)
        finally:
            wire.close()

    asyncio.run(main())


def test_error_replies_are_raised_as_redis_py_raises_them() -> None:
    """A server still loading its data, or full, answers with an error callers retry (redis-py's
    ``ConnectionError`` subclasses), not one that ends a job or a stream."""
    assert isinstance(failure(ResponseError("LOADING Redis is loading the dataset in memory")), BusyLoadingError)
    assert isinstance(failure(ResponseError("ERR max number of clients reached")), RedisConnectionError)
    assert isinstance(failure(ResponseError("NOSCRIPT No matching script")), NoScriptError)
    assert type(failure(ResponseError("ERR unknown command 'X'"))) is ResponseError


class SilentServer:
    """A TCP server that accepts connections and never answers; counts and watches them."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                self.accepted.append(self.listener.accept()[0])

    def all_closed_by_the_client(self) -> bool:
        for sock in self.accepted:
            sock.settimeout(10)
            with suppress(ConnectionResetError):
                while sock.recv(4096):  # the greeting the client sent, then its end
                    pass
        return True

    def close(self) -> None:
        self.listener.close()
        for sock in self.accepted:
            sock.close()


def test_callers_share_one_connection_attempt_and_a_failed_one_is_closed() -> None:
    """Against a server that never answers the greeting, twenty callers at once fail together after
    one connect timeout (not one after another), and the connection that failed is closed."""
    server = SilentServer()

    async def main() -> None:
        wire = AsyncWire(f"redis://127.0.0.1:{server.port}/0?client_name=waits-forever")
        started = time.monotonic()
        outcomes = await asyncio.gather(*(wire.call("PING") for _ in range(20)), return_exceptions=True)
        assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes), outcomes
        assert time.monotonic() - started < 2 * CONNECT_TIMEOUT_S
        assert len(server.accepted) == 1
        wire.close()

    try:
        asyncio.run(main())
        assert server.all_closed_by_the_client()
    finally:
        server.close()
