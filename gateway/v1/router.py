"""The ecosystem's gateway API in one router: ``/v1/...`` and ``/internal/files/...``.

Each route names its caller through ``gateway.v1.caller`` except three, by design: the token
exchange (it takes an API key) and the signed upload and download URLs (the signature is the
credential). Errors on these paths take the ecosystem's shape (``gateway.errors``).
"""

from fastapi import APIRouter

from gateway.v1 import routes_auth, routes_files, routes_run, routes_secrets


def ecosystem_router() -> APIRouter:
    router = APIRouter()
    for part in (routes_auth.router, routes_run.router, routes_secrets.router, routes_files.router):
        router.include_router(part)
    return router
