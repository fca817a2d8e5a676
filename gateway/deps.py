"""Annotated dependencies: what a route needs, read from the app's lifespan state."""

from dataclasses import dataclass, field
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from factory.catalog import PrefabEntry
from factory.settings import Settings
from factory.store.wire import AsyncWire
from gateway.auth import Authenticator
from gateway.catalog import CatalogView
from gateway.files import FileService
from gateway.jobs import JobService
from gateway.metrics import GatewayMetrics
from gateway.relay_hub import RelayHub


@dataclass
class GatewayState:
    """Everything the lifespan opens, handed to routes through ``request.state``."""

    settings: Settings
    redis: aioredis.Redis
    wire: AsyncWire  # the log reads' lean connection (``factory.store.wire``); the enqueue has its own
    catalog: CatalogView
    jobs: JobService
    hub: RelayHub
    metrics: GatewayMetrics
    files: FileService
    auth: Authenticator | None = None
    broken_folders: list[PrefabEntry] = field(default_factory=list)  # configured folders that cannot be served


async def _state(request: Request) -> GatewayState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a hop per request.
    state: GatewayState = request.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(_state)]
