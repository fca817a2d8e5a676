"""create_app(): the gateway's FastAPI application, started with ``uvicorn --factory``.

The lifespan opens Redis (async for reads and the relay, sync for RQ's enqueue), loads the
catalog from the manifests alone (no prefab code is imported here) and starts the relay hub;
everything is handed to routes through lifespan state.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from factory import logs
from factory.catalog import Catalog
from factory.connections import redis_async, redis_sync
from factory.settings import Settings
from factory.storage import storage_from_settings
from gateway import errors, routes_files, routes_invoke, routes_jobs, routes_meta, routes_ui
from gateway.auth import Authenticator, requirement
from gateway.body_limit import BodyLimit
from gateway.deps import GatewayState
from gateway.files import FileService
from gateway.housekeeping import reap_forever, sweep_forever
from gateway.jobs import JobService
from gateway.metrics import GatewayMetrics
from gateway.relay_hub import RelayHub

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[dict[str, GatewayState]]]


def _lifespan(settings: Settings, authenticator: Authenticator | None) -> Lifespan:
    """Open Redis, the catalog, the relay hub, storage and the periodic chores; close them after."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, GatewayState]]:
        url = settings.require_redis_url()
        client = redis_async(url)
        sync_client = redis_sync(url)
        catalog = Catalog.discover(settings.prefabs)
        hub = RelayHub(client, buffer_bytes=settings.reader_buffer_bytes)
        await hub.start()
        storage = storage_from_settings(settings)
        state = GatewayState(
            settings=settings,
            redis=client,
            catalog=catalog,
            jobs=JobService(settings, client, sync_client, catalog),
            hub=hub,
            metrics=GatewayMetrics(),
            files=FileService(settings, client, storage),
            auth=authenticator,
        )
        chores = [
            asyncio.create_task(sweep_forever(settings, storage, sync_client), name="retention-sweep"),
            asyncio.create_task(reap_forever(settings, sync_client, f"gateway-{uuid.uuid4().hex}"), name="reaper"),
        ]
        try:
            yield {"gateway": state}
        finally:
            for chore in chores:
                chore.cancel()
                with suppress(asyncio.CancelledError):
                    await chore
            await hub.close()
            await client.aclose(close_connection_pool=True)  # the pool was passed in: not closed by default
            sync_client.close()

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
    )
    errors.install(app)
    app.include_router(routes_invoke.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_meta.router)
    app.include_router(routes_files.router)
    app.include_router(routes_ui.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt_prefixes=("/files",))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["X-Job-Id", "X-Job-Token", "Location", "Retry-After"],
            max_age=600,
        )
    return app


def configure_logging(settings: Settings) -> None:
    logs.configure("gateway", settings.log_level, settings.log_json)
