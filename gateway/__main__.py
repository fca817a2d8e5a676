"""``python -m gateway``: serve the gateway with uvicorn on the configured host and port.

The server runs :mod:`gateway.http_guard`'s protocol (limits on request heads and connections, a
head-read timeout) after raising the open-file limit. Its access log is the app's
(:mod:`gateway.access_log`): uvicorn's is off.
"""

import uvicorn

from factory.hardening import make_undumpable
from factory.settings import Settings
from gateway.app import configure_logging
from gateway.http_guard import ConnectionGuard, HeadLimits, protocol_for, raise_file_limit


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings)
    make_undumpable()  # prefab code running as this user cannot read this process's credentials
    head = HeadLimits(settings.max_header_bytes, settings.max_headers, settings.header_timeout_s)
    guard = ConnectionGuard.for_file_limit(
        raise_file_limit(),
        max_connections=settings.max_connections,
        max_per_client=settings.max_connections_per_client,
        head=head,
    )
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
        http=protocol_for(guard),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        # Longer than clients keep idle connections, so a request never races the server's close.
        timeout_keep_alive=max(1, round(settings.keepalive_timeout_s)),
        lifespan="on",
        access_log=False,  # gateway.access_log writes it, once each response is complete
    )


if __name__ == "__main__":
    main()
