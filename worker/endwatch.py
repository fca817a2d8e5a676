"""The worker's watch on its running job: wakes it when the job's stream is ended, or handed to
the job's next attempt, by someone else (a cancel at a gateway, a reaper).

Every end of a stream is published on the job's channel by the very step that writes it
(``factory.store.eventlog``'s atomic append): the terminal event, or the ``retry`` event that hands the
job to its next attempt. The watch subscribes to the running job's channel on a connection of its
own, and its file descriptor wakes the worker's wait for the horse (``worker.engine``).

A message is a hint, never the verdict: whether the job left this execution is read from its
record (:func:`left_execution`; the horse's own terminal event is on the channel too). The record
is also read every time the subscription is confirmed, so nothing published before it is missed
(a subscription made after the cancel was published, one made again after an outage), and the
worker reads it with every heartbeat besides, should the subscription itself be lost.

Invariant: while :meth:`EndWatch.follow` holds a claim, the watch is subscribed to that job's
channel, or broken and subscribing again at the next :meth:`EndWatch.repair`.
"""

import logging

import orjson
import redis
from redis.client import PubSub

from factory.connections import RETRYABLE
from factory.events import is_terminal
from factory.store import executions, keys

logger = logging.getLogger(__name__)

RETRY_TYPE = "retry"  # the event that hands a job to its next attempt (``factory.store.eventlog.retry_event``)


def queue_read_of_record(pipe: redis.Redis, job_id: str) -> None:
    """Queue on ``pipe`` the read :func:`left_execution` answers from."""
    pipe.hmget(keys.job_key(job_id), ["terminal", "execution"])


def left_execution(reply: list[bytes | None], claim: executions.Claim) -> bool:
    """Whether the job's record (``reply`` to :func:`queue_read_of_record`) says the job left execution
    ``claim``: its stream ended, or it belongs to another execution (or to nobody: it no longer exists)."""
    terminal, execution = reply
    return terminal is not None or execution != claim.token.encode()


def ends_the_execution(batch: bytes) -> bool:
    """Whether a batch published on a job's channel holds an end of its stream or of its attempt."""
    try:  # a batch is its first seq, then one event a line; only the last can end anything
        event_type = orjson.loads(batch.rpartition(b"\n")[2]).get("type")
    except (ValueError, AttributeError):
        return True  # not a batch the append writes: let the record say
    return isinstance(event_type, str) and (is_terminal(event_type) or event_type == RETRY_TYPE)


class EndWatch:
    """One worker's subscription to the channel of the job its horse runs."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._pubsub: PubSub = client.pubsub()  # type: ignore[no-untyped-call]
        self._claim: executions.Claim | None = None
        self._channel = b""
        self._broken = False
        self.subscribed = False  # the subscription to the running job's channel is confirmed
        self.left = False  # the running job left this execution (read from its record)

    def follow(self, claim: executions.Claim) -> None:
        """Subscribe to the channel of the job ``claim`` runs; the confirmation comes through :meth:`poll`."""
        self._claim, self.left, self.subscribed = claim, False, False
        self._channel = keys.events_channel(claim.job_id).encode()
        self._subscribe()

    def fileno(self) -> int | None:
        """The descriptor that turns readable when a message arrives (None when not subscribed)."""
        if self._claim is None or self._broken or self._pubsub.connection is None:
            return None
        sock = self._pubsub.connection._sock
        return None if sock is None else sock.fileno()

    def poll(self) -> bool:
        """Read what arrived, without waiting; whether the followed job left its execution (False when
        the watch follows none)."""
        if self._claim is None or self._broken:
            return self._claim is not None and self.left
        check = False
        try:
            while not self.left and (message := self._pubsub.get_message(timeout=0.0)) is not None:
                if message["channel"] != self._channel:
                    continue  # the end of a job before
                if message["type"] == "subscribe":
                    self.subscribed = check = True  # anything published before it is in the record
                elif message["type"] == "message" and ends_the_execution(message["data"]):
                    check = True
            if check:
                self.left = self._read_record(self._claim)
        except RETRYABLE as exc:
            logger.warning("lost the subscription to the running job: %s", exc, extra={"job_id": self._claim.job_id})
            self._break()
        return self.left

    def repair(self) -> None:
        """Subscribe again after the subscription was lost (the worker calls it every heartbeat)."""
        if self._claim is not None and self._broken:
            self._subscribe()

    def stop(self) -> None:
        """Leave the job's channel (the confirmation is read, and dropped, with the next job's messages)."""
        claim, self._claim, self.left, self.subscribed = self._claim, None, False, False
        if claim is None or self._broken:
            return
        try:
            self._pubsub.unsubscribe(self._channel)  # type: ignore[no-untyped-call]
        except RETRYABLE:
            self._break()

    def close(self) -> None:
        self._pubsub.reset()

    def _subscribe(self) -> None:
        if self._broken:
            self._pubsub.reset()
            self._broken = False
        try:
            self._pubsub.subscribe(self._channel)
        except RETRYABLE as exc:
            job_id = self._claim.job_id if self._claim else None
            logger.warning("cannot subscribe to the running job: %s", exc, extra={"job_id": job_id})
            self._break()

    def _break(self) -> None:
        self._broken, self.subscribed = True, False
        try:
            self._pubsub.reset()
        except RETRYABLE:
            pass  # the connection is closed either way

    def _read_record(self, claim: executions.Claim) -> bool:
        with self.client.pipeline(transaction=False) as pipe:
            queue_read_of_record(pipe, claim.job_id)
            reply: list[bytes | None] = pipe.execute()[0]
        return left_execution(reply, claim)
