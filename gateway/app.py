"""create_app(): the gateway's FastAPI application, served by ``python -m gateway`` (``gateway.__main__``:
uvicorn with the gateway's connection guard and without uvicorn's access log, the app writing its
own; under plain ``uvicorn --factory``, pass ``--no-access-log`` too).

The lifespan opens Redis (async for reads and the relay, sync for RQ's enqueue), deploys the
configured prefab folders (records only: no prefab code is imported here), follows the catalog
of deployments and starts the relay hub;
everything is handed to routes through lifespan state.
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import redis
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.exceptions import RedisError

from factory import logs
from factory.catalog import PrefabEntry
from factory.connections import redis_async, redis_sync
from factory.registry import register_folders
from factory.settings import Settings
from factory.storage import storage_from_settings
from factory.store.wire import AsyncWire
from gateway import errors, openapi, routes_deploy, routes_files, routes_invoke, routes_jobs, routes_meta, routes_ui
from gateway.access_log import AccessLog
from gateway.auth import Authenticator, requirement
from gateway.body_limit import BodyLimit
from gateway.catalog import CatalogView
from gateway.deps import GatewayState
from gateway.express import ExpressLane
from gateway.files import FileService
from gateway.housekeeping import reap_forever, sweep_forever
from gateway.jobs import JobService
from gateway.metrics import GatewayMetrics
from gateway.relay_hub import RelayHub
from gateway.v1.deps import open_ecosystem
from gateway.v1.router import ecosystem_router

logger = logging.getLogger(__name__)

# Each step of the shutdown is bounded: a step that never ends (a task whose cancel a library
# swallowed) must not keep the process from exiting; it is logged instead.
SHUTDOWN_STEP_S = 5.0


async def _bounded(step: Awaitable[None], what: str) -> None:
    try:
        async with asyncio.timeout(SHUTDOWN_STEP_S):
            await step
    except TimeoutError:
        logger.warning("%s did not end within %g s", what, SHUTDOWN_STEP_S)


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]


async def _register_folders(client: redis.Redis, settings: Settings) -> list[PrefabEntry]:
    """Deploy the configured prefab folders; with Redis away, the gateway starts anyway (the workers
    register them too, and ``/readyz`` says Redis is unreachable)."""
    try:
        return await asyncio.to_thread(register_folders, client, settings)
    except (RedisError, OSError) as exc:
        logger.warning("cannot record the prefab folders now: %s", exc)
        return []


def _lifespan(settings: Settings, authenticator: Authenticator | None) -> Lifespan:
    """Open Redis, the catalog, the relay hub, storage and the periodic chores; close them after."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        url = settings.require_redis_url()
        client = redis_async(url)
        sync_client = redis_sync(url)
        wire, enqueues = AsyncWire(url), AsyncWire(url)
        folders = await _register_folders(sync_client, settings)
        catalog = CatalogView(
            client, settings.queue_without_worker, lambda deployed: openapi.use_catalog(app, deployed)
        )
        with suppress(RedisError, OSError):  # else on the first call, once Redis answers
            await catalog.refresh()
        metrics = GatewayMetrics()
        hub = RelayHub(
            url,
            buffer_bytes=settings.reader_buffer_bytes,
            on_redis_error=metrics.redis_errors.labels(where="relay").inc,
        )
        await hub.start()
        storage = storage_from_settings(settings)
        files = FileService(settings, client, storage)
        state = GatewayState(
            settings=settings,
            redis=client,
            wire=wire,
            catalog=catalog,
            jobs=JobService(settings, client, sync_client, wire, enqueues, catalog),
            hub=hub,
            metrics=metrics,
            files=files,
            auth=authenticator,
            broken_folders=[entry for entry in folders if not entry.ok],
        )
        chores = [
            asyncio.create_task(sweep_forever(settings, storage, sync_client), name="retention-sweep"),
            asyncio.create_task(reap_forever(settings, sync_client, f"gateway-{uuid.uuid4().hex}"), name="reaper"),
            asyncio.create_task(catalog.follow(), name="catalog"),
        ]
        try:
            yield {"gateway": state, "ecosystem": open_ecosystem(settings, client, files)}
        finally:
            for chore in chores:
                chore.cancel()
            _, stuck = await asyncio.wait(chores, timeout=SHUTDOWN_STEP_S)
            for chore in stuck:
                logger.warning("background task %s did not stop within %g s", chore.get_name(), SHUTDOWN_STEP_S)
            await _bounded(hub.close(), "the relay hub's close")
            # The pool was passed in: not closed by default.
            await _bounded(client.aclose(close_connection_pool=True), "the Redis client's close")
            sync_client.close()
            wire.close()
            enqueues.close()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings default to the environment's."""
    settings = settings or Settings.from_env()
    authenticator = Authenticator.from_settings(settings)
    lifespan = _lifespan(settings, authenticator)
    app = FastAPI(
        title="prefab-factory",
        summary="Run prefab functions as jobs and stream their events over resumable SSE.",
        version="0.1.0",
        lifespan=lifespan,
        # App-wide, so every router (including ones added later) needs credentials; see gateway/auth.py.
        dependencies=[Depends(requirement(authenticator))] if authenticator else None,
        responses=errors.documented_responses(auth=authenticator is not None),
        docs_url=None,  # served by gateway.openapi from local files instead of a CDN
        redoc_url=None,
    )
    errors.install(app)
    openapi.install_docs(app)
    routes_ui.install_assets(app)
    app.include_router(routes_invoke.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_meta.router)
    app.include_router(routes_files.router)
    app.include_router(routes_deploy.router)
    app.include_router(routes_ui.router)
    app.include_router(ecosystem_router())
    # Uploads check their own limit (max_file_bytes, max_wheel_bytes) as they stream in.
    uploads = ("/files", "/internal/files/upload", "/internal/files/put/", "/v1/deploy")
    app.add_middleware(ExpressLane)  # the innermost: every middleware added after it wraps its answers too
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt_prefixes=uploads)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Internal-Token"],
            expose_headers=["X-Job-Id", "X-Job-Token", "Location", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(AccessLog)  # the outermost: its line comes once the response is complete
    return app


def configure_logging(settings: Settings) -> None:
    logs.configure("gateway", settings.log_level, settings.log_json)
