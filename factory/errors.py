"""The factory's exceptions.

::

    FactoryError                 (code, message, details; HTTP status via the gateway)
     ├── BadRequest              400 BAD_REQUEST
     │    └── MissingSecret      400 MISSING_SECRET
     ├── Unauthenticated         401 UNAUTHENTICATED
     ├── PermissionDenied        403 PERMISSION_DENIED
     ├── NotFound                404 NOT_FOUND
     │    ├── PrefabNotFound
     │    └── JobNotFound
     ├── PayloadTooLarge         413 PAYLOAD_TOO_LARGE
     ├── ValidationFailed        422 VALIDATION_ERROR
     ├── QuotaExceeded           429 QUOTA_EXCEEDED
     ├── ServiceUnavailable      503 SERVICE_UNAVAILABLE
     │    ├── PrefabUnavailable  503 PREFAB_UNAVAILABLE (the version failed to deploy, or is building)
     │    └── NoWorker           503 NO_WORKER (no live worker serves the prefab)
     └── ManifestError           a prefab folder that cannot be served (never sent to callers)

The gateway maps them to HTTP in one exception handler; nothing else knows status codes.
"""

from typing import Any


class FactoryError(Exception):
    """Base class: a machine-readable code, a human message and optional details."""

    code = "INTERNAL_SERVER_ERROR"
    status_code = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(FactoryError):
    code = "BAD_REQUEST"
    status_code = 400


class Unauthenticated(FactoryError):
    code = "UNAUTHENTICATED"
    status_code = 401


class PermissionDenied(FactoryError):
    code = "PERMISSION_DENIED"
    status_code = 403


class NotFound(FactoryError):
    code = "NOT_FOUND"
    status_code = 404


class PrefabNotFound(NotFound):
    """No loaded prefab or function by that name."""


class JobNotFound(NotFound):
    """No job by that id, or its retention has ended."""


class PayloadTooLarge(FactoryError):
    code = "PAYLOAD_TOO_LARGE"
    status_code = 413


class ValidationFailed(FactoryError):
    code = "VALIDATION_ERROR"
    status_code = 422


class ServiceUnavailable(FactoryError):
    code = "SERVICE_UNAVAILABLE"
    status_code = 503

    def __init__(self, message: str, details: Any = None, retry_after_s: int | None = None) -> None:
        super().__init__(message, details)
        self.retry_after_s = retry_after_s


class ManifestError(FactoryError):
    """A prefab folder that cannot be served: its path and the reason."""


class PrefabUnavailable(ServiceUnavailable):
    """The prefab version exists but cannot run: it failed to deploy (the reason says why) or is building."""

    code = "PREFAB_UNAVAILABLE"


class NoWorker(ServiceUnavailable):
    """No live worker serves the prefab, so a job would wait with nobody to run it."""

    code = "NO_WORKER"


class MissingSecret(BadRequest):
    """A required secret the caller has not configured; ``details`` names it and how to get it."""

    code = "MISSING_SECRET"


class QuotaExceeded(FactoryError):
    """A caller's quota is used up; ``details`` holds ``limit``, ``used`` and ``quota_type``."""

    code = "QUOTA_EXCEEDED"
    status_code = 429
