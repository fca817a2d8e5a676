"""Redis clients for each side: sync for workers, async for gateways. No module-level clients.

Both retry a failed command a few times with exponential backoff, so a brief Redis restart is
ridden out; a longer outage surfaces as ``redis.ConnectionError`` to the caller, which decides
(the gateway answers 503, the publisher keeps retrying up to its own bound).
"""

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.typing import EncodableT
from redis.utils import HIREDIS_AVAILABLE

RETRYABLE = (RedisConnectionError, RedisTimeoutError, ConnectionResetError)
_HIREDIS = HiredisRespSerializer() if HIREDIS_AVAILABLE else None


def _hiredis_packing(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` packing commands with hiredis, as redis-py's sync connections do.

    redis-py's asyncio connections pack every argument in Python; a job's enqueue (a MULTI of
    some seventy arguments) spent more CPU there than in anything else the gateway does for it.
    """
    if _HIREDIS is None:
        return connection_class

    def pack_command(self: AbstractConnection, *args: EncodableT) -> list[bytes]:
        return _HIREDIS.pack(*args)  # type: ignore[arg-type,no-any-return]

    return type(f"Hiredis{connection_class.__name__}", (connection_class,), {"pack_command": pack_command})


def redis_sync(url: str, *, socket_timeout_s: float | None = 10.0) -> redis.Redis:
    """A blocking client (workers, CLI, RQ). ``socket_timeout_s=None`` for blocking pops."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=2.0,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3, supported_errors=RETRYABLE),
        driver_info=None,  # no CLIENT SETINFO: two round trips saved on every new connection
    )


def redis_async(url: str, *, max_connections: int = 200) -> aioredis.Redis:
    """An asyncio client (gateway) whose commands fail fast while Redis is down."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        health_check_interval=10,
        retry=AsyncRetry(
            ExponentialBackoff(cap=0.5, base=0.05),
            retries=2,
            supported_errors=(RedisConnectionError, RedisTimeoutError),
        ),
        driver_info=None,
    )
    pool.connection_class = _hiredis_packing(pool.connection_class)
    return aioredis.Redis(connection_pool=pool)
