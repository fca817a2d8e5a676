"""The ecosystem API's services, opened by the app's lifespan next to the gateway's own."""

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from factory import sealing
from factory.settings import Settings
from gateway.files import FileService
from gateway.v1.files import EcosystemFiles
from gateway.v1.quotas import Quotas
from gateway.v1.secret_store import SecretStore
from gateway.v1.signed_urls import UrlSigner


@dataclass(frozen=True)
class Ecosystem:
    secrets: SecretStore
    quotas: Quotas
    files: EcosystemFiles


async def _ecosystem(request: Request) -> Ecosystem:
    ecosystem: Ecosystem = request.state.ecosystem
    return ecosystem


EcosystemDep = Annotated[Ecosystem, Depends(_ecosystem)]


def open_ecosystem(settings: Settings, client: aioredis.Redis, files: FileService) -> Ecosystem:
    """The ecosystem API's services over the gateway's Redis client and file service."""
    return Ecosystem(
        secrets=SecretStore(client, sealing.fernet(settings)),
        quotas=Quotas(settings, client),
        files=EcosystemFiles(files, client, UrlSigner(sealing.derived_key(settings, "signed urls"))),
    )
