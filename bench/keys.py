"""Redis names used by the bench's own baselines (the factory's come from ``factory.store.keys``).

Kept in one place for the same reason as ``factory/store/keys.py``: no key literal elsewhere.
"""

NAMESPACE = "bench"


def marks_key(system: str) -> str:
    """List of ``"<sent_ns> <start_ns> <end_ns>"`` lines pushed by baseline tasks of ``system``."""
    return f"{NAMESPACE}:marks:{system}"


def pubsub_channel() -> str:
    """Channel of the raw publish → subscribe ceiling."""
    return f"{NAMESPACE}:pubsub"


def rq_queue() -> str:
    return f"{NAMESPACE}-rq"


def celery_queue() -> str:
    return f"{NAMESPACE}-celery"


def peer_queue() -> str:
    """Celery queue of the peer stack (FastAPI + Celery + a Redis list and channel per job)."""
    return f"{NAMESPACE}-peer"


def peer_events_key(job_id: str) -> str:
    """List of a peer-stack job's events, compact JSON, in order (its index is its position + 1)."""
    return f"{NAMESPACE}:peer:{job_id}:events"


def peer_channel(job_id: str) -> str:
    """Pub/sub channel of a peer-stack job: messages ``<index>\\n<event JSON>``."""
    return f"{NAMESPACE}:peer:{job_id}:channel"
