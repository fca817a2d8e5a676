"""``python -m gateway``: serve the gateway with uvicorn on the configured host and port."""

import uvicorn

from factory.hardening import make_undumpable
from factory.settings import Settings
from gateway.app import configure_logging


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings)
    make_undumpable()  # prefab code running as this user cannot read this process's credentials
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        # Longer than clients keep idle connections, so a request never races the server's close.
        timeout_keep_alive=65,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
