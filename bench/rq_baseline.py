"""Plain RQ, for comparison: the same forking ``rq.Worker`` class the factory's worker extends,
the same JSON serializer, and a task that only records when it ran.

``python -m bench.rq_baseline URL`` runs one worker on the bench's RQ queue.
"""

import sys
import time

import redis
from rq import Queue, Worker, get_current_job
from rq.serializers import JSONSerializer

from bench import keys

TASK = "bench.rq_baseline.mark"


def mark(sent_ns: int, key: str) -> None:
    """Push ``"<sent_ns> <start_ns> <end_ns>"`` onto ``key``."""
    start_ns = time.time_ns()
    job = get_current_job()
    assert job is not None
    job.connection.rpush(key, f"{sent_ns} {start_ns} {time.time_ns()}")


def enqueue(client: redis.Redis, key: str) -> None:
    queue = Queue(keys.rq_queue(), connection=client, serializer=JSONSerializer)
    queue.enqueue_call(TASK, args=[time.time_ns(), key], result_ttl=600)


def main() -> None:
    client = redis.Redis.from_url(sys.argv[1], socket_timeout=None)
    queue = Queue(keys.rq_queue(), connection=client, serializer=JSONSerializer)
    worker = Worker([queue], connection=client, serializer=JSONSerializer, job_monitoring_interval=5)
    worker.work(with_scheduler=False, logging_level="INFO")


if __name__ == "__main__":
    main()
