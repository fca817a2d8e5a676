"""EventPublisher: moves a job's events from the running function to Redis.

The function runs on the work horse's main thread and hands each encoded event to
:meth:`EventPublisher.publish`; a background thread sends whatever has accumulated while its
previous write was in flight as one atomic append (``factory.store.eventlog``). A slow generator
thus pays one round trip per event with no added latency, and a fast one gets batches of up to
:data:`MAX_BATCH` events per round trip. The queue is bounded, so a stalled Redis slows the
generator down instead of filling memory. The first event is written on the caller's thread,
at once (there is nothing in flight to batch it behind, and a thread start and hand-off would
only delay the moment a caller waits for); the thread starts with the second. A job whose only
event is its terminal one (a plain function) is written on the caller's thread too.

A write that fails for lack of Redis is retried with backoff, for up to ``redis_outage_s``;
retries are safe because each batch carries an id the append script deduplicates. Past that
bound the publisher stops (:class:`PublisherUnavailable` in :attr:`EventPublisher.failure`) and
the runner ends the job with ``REDIS_UNAVAILABLE`` once Redis is back.

Every write carries the execution's token, so once the job belongs to another execution (this
one was declared lost) the script refuses it and the publisher closes like after a terminal.
The last batch of an execution either ends the job (terminal) or hands it to its next attempt
(retry mode); see ``factory.store.eventlog``.
"""

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from factory.connections import RETRYABLE
from factory.events import EVENT_LIMIT, ErrorInfo, error_event
from factory.jobs import JobStatus, now_ms, terminal_fields
from factory.store.eventlog import AppendResult, Mode, Outcome, append_args, append_keys, parse_append
from factory.store.scripts import APPEND
from factory.store.wire import Wire

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
QUEUE_SIZE = 10_000


class PublisherUnavailable(RuntimeError):
    """Redis stayed unreachable for longer than the configured outage bound."""


@dataclass(frozen=True)
class _Terminal:
    """The execution's last batch: its event, the record fields it writes, and whether it ends the job."""

    event: bytes
    fields: dict[str, bytes]
    mode: Mode = Mode.TERMINAL


class _Pending:
    """The events waiting for the publisher's thread: a producer adds many under one lock, the
    thread takes up to a batch under one; adding waits while ``limit`` wait (a message of events
    is added whole, so the bound is exceeded by one message at most). Once closed, it holds nothing."""

    def __init__(self, limit: int) -> None:
        self._items: deque[bytes | _Terminal] = deque()
        self._cond = threading.Condition()
        self._limit = limit
        self._closed = False

    def put(self, items: Iterable[bytes | _Terminal]) -> None:
        with self._cond:
            while len(self._items) >= self._limit and not self._closed:
                self._cond.wait()
            if self._closed:
                return
            was_empty = not self._items
            self._items.extend(items)
            if was_empty:
                self._cond.notify_all()

    def take(self, most: int) -> list[bytes | _Terminal]:
        """At least one item (waiting for it), at most ``most``, in order."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            items = self._items
            if len(items) <= most:
                batch = list(items)
                items.clear()
            else:
                batch = [items.popleft() for _ in range(most)]
            self._cond.notify_all()  # room again for a producer waiting on the bound
            return batch

    def close(self) -> None:
        """Drop what waits and refuse more, so a producer waiting on the bound wakes up."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()


class EventPublisher:
    """Appends and publishes one job's events, batching behind in-flight writes."""

    def __init__(
        self,
        wire: Wire,
        job_id: str,
        *,
        max_events: int,
        retention_s: int,
        redis_outage_s: float,
        token: str,
    ) -> None:
        self._wire = wire
        self._keys = append_keys(job_id)
        self._job_id = job_id
        self._token = token
        self._max_events = max_events
        self._retention_s = retention_s
        self._redis_outage_s = redis_outage_s
        self._queue = _Pending(QUEUE_SIZE)
        self._batch_prefix = uuid.uuid4().hex[:12]
        self._batches = 0
        self.ended = threading.Event()
        self.final: AppendResult | None = None
        self.failure: BaseException | None = None
        self.last_seq = 0
        self._thread: threading.Thread | None = None  # made for a second batch: a lone first event needs none

    def publish(self, event: bytes) -> None:
        """Write the job's first event at once; queue each later one (blocks while the queue is full)."""
        self.publish_many([event])

    def publish_many(self, events: list[bytes]) -> None:
        """:meth:`publish` of several events in order, queued under one lock."""
        if self.ended.is_set() or not events:
            return  # the log closed (or the publisher stopped): the caller sees ``ended`` and stops
        if self._thread is None:
            if self._batches == 0:  # nothing in flight to batch behind: no thread start or hand-off for it
                first, events = events[0], events[1:]
                self._guarded(lambda: self._send([first]))
                if not events or self.ended.is_set():
                    return
            self._thread = threading.Thread(target=self._run, name=f"publisher-{self._job_id}", daemon=True)
            self._thread.start()
        self._queue.put(events)

    def finish(self, event: bytes, fields: dict[str, bytes], mode: Mode = Mode.TERMINAL) -> AppendResult | None:
        """Queue the last event (terminal, or ``retry`` with ``Mode.RETRY``), wait until all is written; its outcome.

        Once the publisher has stopped (the log closed, or Redis stayed away), nothing more is written.
        """
        if self.ended.is_set():
            return self.final
        self._queue.put([_Terminal(event, fields, mode)])
        if self._thread is None:
            self._run()  # nothing was published before: no thread to hand it to
        else:
            self._thread.join()
        return self.final

    def _run(self) -> None:
        self._guarded(self._write_queued)

    def _write_queued(self) -> bool:
        while True:  # nothing is queued after a terminal: a batch holds one only as its last
            if self._send(self._queue.take(MAX_BATCH)):
                return True

    def _guarded(self, write: Callable[[], bool]) -> None:
        """Run ``write``; whatever stops it is recorded, so the producer sees ``ended`` and why."""
        try:
            write()
        except BaseException as exc:
            self.failure = exc
            self.ended.set()
            self._drain()  # a producer blocked on the full queue must wake up and see ``ended``
            if isinstance(exc, PublisherUnavailable):
                logger.error("event publisher stopped: %s", exc, extra={"job_id": self._job_id})
            else:
                logger.exception("event publisher stopped", extra={"job_id": self._job_id})

    def _send(self, batch: list[bytes | _Terminal]) -> bool:
        """Write one batch; True once the job's log is closed (terminal written or found)."""
        last = batch[-1]
        terminal = last if isinstance(last, _Terminal) else None
        events = [item.event if isinstance(item, _Terminal) else item for item in batch]
        result = self._append(events, terminal.fields if terminal else None, terminal.mode if terminal else Mode.EVENT)
        if result.outcome is Outcome.LIMIT_REACHED:
            message = f"the job exceeded its limit of {self._max_events} events"
            fields = terminal_fields(JobStatus.FAILED, now_ms(), None, ErrorInfo(code=EVENT_LIMIT, message=message))
            result = self._append([error_event(EVENT_LIMIT, message)], fields, Mode.TERMINAL)
            terminal = _Terminal(b"", fields)
        self.last_seq = result.last_seq
        if terminal is None and result.outcome in (Outcome.APPENDED, Outcome.DUPLICATE):
            return False
        self.final = result
        self.ended.set()
        self._drain()
        return True

    def _append(self, events: list[bytes], fields: dict[str, bytes] | None, mode: Mode) -> AppendResult:
        self._batches += 1
        args = append_args(
            events,
            batch_id=f"{self._batch_prefix}:{self._batches}",
            max_events=self._max_events,
            retention_s=self._retention_s,
            terminal_fields=fields,
            mode=mode,
            token=self._token,
        )
        deadline = time.monotonic() + self._redis_outage_s
        delay_s = 0.05
        while True:
            try:
                return parse_append(self._wire.run_script(APPEND, self._keys, args))
            except RETRYABLE as exc:
                if time.monotonic() + delay_s > deadline:
                    raise PublisherUnavailable(f"Redis unreachable for {self._redis_outage_s:.0f} s") from exc
                logger.warning(
                    "Redis unreachable, retrying the append in %.2f s", delay_s, extra={"job_id": self._job_id}
                )
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 1.0)

    def _drain(self) -> None:
        """Discard anything queued after the log closed, so a blocked producer wakes up."""
        self._queue.close()
