"""Deployment notifications: signed JSON POSTs to one webhook URL, retried with backoff.

Each event is ``{"event", "event_id", "timestamp", **payload}``. The ``event_id`` (a uuid4 hex) is
chosen once per event and sent unchanged on every retry, so a receiver that got the event
but whose answer was lost can recognise the repeat. With a secret, ``X-Webhook-Signature`` is
``sha256=<hex HMAC-SHA256 of the exact body bytes>``. Connection errors, timeouts, 5xx and 429
are retried (waits doubling from ``first_delay_s``, at least the answer's ``Retry-After``
when it gives seconds); any other answer is final. Sending blocks: call it from a background thread.
"""

import hashlib
import hmac
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Webhook-Signature"
MAX_RETRY_AFTER_S = 60.0


def webhook_signature(secret: str, body: bytes) -> str:
    """The ``X-Webhook-Signature`` value of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _retryable(status_code: int) -> bool:
    return status_code == 429 or status_code >= 500


def _retry_after_s(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("Retry-After", "0")), MAX_RETRY_AFTER_S)
    except ValueError:
        return 0.0  # an HTTP date: the backoff alone decides


class WebhookSender:
    """Sends events to one URL, signing them when a secret is set."""

    def __init__(
        self,
        url: str,
        secret: str | None,
        *,
        attempts: int = 5,
        first_delay_s: float = 0.5,
        timeout_s: float = 10.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.url = url
        self.secret = secret
        self.attempts = attempts
        self.first_delay_s = first_delay_s
        self.timeout_s = timeout_s

    def body(self, event: str, payload: dict[str, Any]) -> bytes:
        """The JSON body of a new event (a fresh event_id and the current time)."""
        message: dict[str, Any] = {
            "event": event,
            "event_id": uuid.uuid4().hex,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        message.update({key: value for key, value in payload.items() if key not in message})  # ours win
        return orjson.dumps(message)

    def send(self, event: str, payload: dict[str, Any]) -> bool:
        """POST the event until it is accepted (2xx) or cannot be; whether it was delivered."""
        body = self.body(event, payload)
        headers = {"Content-Type": "application/json"}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = webhook_signature(self.secret, body)
        with httpx.Client(timeout=self.timeout_s) as client:
            for attempt in range(1, self.attempts + 1):
                delay_s = self.first_delay_s * 2 ** (attempt - 1)
                try:
                    response = client.post(self.url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    logger.warning("webhook %s attempt %d/%d: %s", event, attempt, self.attempts, exc)
                else:
                    if response.is_success:
                        return True
                    logger.warning(
                        "webhook %s attempt %d/%d: HTTP %d", event, attempt, self.attempts, response.status_code
                    )
                    if not _retryable(response.status_code):
                        return False
                    delay_s = max(delay_s, _retry_after_s(response))
                if attempt < self.attempts:
                    time.sleep(delay_s)
        return False
