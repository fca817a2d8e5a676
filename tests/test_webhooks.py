"""Deployment webhooks against a real HTTP server on loopback."""

import json
import logging
from collections.abc import Iterator

import pytest

from factory.webhooks import SIGNATURE_HEADER, WebhookSender, webhook_signature
from factory_cli.embedded_redis import free_port
from tests.webhook_receiver import Receiver, webhook_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as state:
        yield state


def test_retries_503_then_delivers_one_signed_event(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [503, 503]
    sender = WebhookSender(receiver.url, "hook-secret", attempts=5, first_delay_s=0.01)
    with caplog.at_level(logging.WARNING, logger="factory.webhooks"):
        assert sender.send("deployment.success", {"prefab_id": "p", "version": "1.0.0", "manifest": {"id": "p"}})
    assert len(receiver.received) == 3
    event_ids = set()
    for headers, body in receiver.received:
        assert headers[SIGNATURE_HEADER] == webhook_signature("hook-secret", body)
        event = json.loads(body)
        event_ids.add(event["event_id"])
        assert event["event"] == "deployment.success" and event["manifest"] == {"id": "p"}
        assert event["timestamp"].endswith("Z")
    assert len(event_ids) == 1 and len(event_ids.pop()) == 32
    assert len([r for r in caplog.records if "HTTP 503" in r.getMessage()]) == 2


def test_a_client_error_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400]
    assert not WebhookSender(receiver.url, None, attempts=5, first_delay_s=0.01).send("deployment.failed", {})
    assert len(receiver.received) == 1
    assert SIGNATURE_HEADER not in receiver.received[0][0]


def test_429_is_retried_and_the_payload_cannot_override_the_envelope(receiver: Receiver) -> None:
    receiver.statuses = [429]
    sender = WebhookSender(receiver.url, None, attempts=2, first_delay_s=0.01)
    assert sender.send("deployment.started", {"event": "forged", "prefab_id": "p"})
    assert [json.loads(body)["event"] for _, body in receiver.received] == ["deployment.started"] * 2


def test_an_unreachable_url_fails_after_every_attempt(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    with caplog.at_level(logging.WARNING, logger="factory.webhooks"):
        assert not WebhookSender(url, "s", attempts=3, first_delay_s=0.01, timeout_s=2).send("deployment.failed", {})
    assert len([r for r in caplog.records if r.name == "factory.webhooks"]) == 3
