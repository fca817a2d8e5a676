"""``python -m gateway``: serve the gateway with uvicorn on the configured host and port."""

import uvicorn

from factory.settings import Settings
from gateway.app import configure_logging


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings)
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        lifespan="on",
    )


if __name__ == "__main__":
    main()
