"""Every Redis key, channel and queue name the factory uses, and nothing else.

All keys of one job share the hash tag ``{<job id>}`` so a Redis Cluster would keep them on
one slot (the atomic append script touches several of them at once). RQ's own keys, which the
factory writes too (``factory.store.rqview``), come last: their layout is RQ's.
"""

NAMESPACE = "factory"


def job_key(job_id: str) -> str:
    """Hash holding the job record (status, timestamps, output, error)."""
    return f"{NAMESPACE}:job:{{{job_id}}}"


def events_key(job_id: str) -> str:
    """List holding every event of the job, in order; event ``seq`` is its index + 1."""
    return f"{NAMESPACE}:events:{{{job_id}}}"


def events_channel(job_id: str) -> str:
    """Pub/sub channel on which each appended batch of events is published."""
    return f"{NAMESPACE}:channel:{{{job_id}}}"


def files_key(job_id: str) -> str:
    """Hash of the job's stored output files: name → stored file description."""
    return f"{NAMESPACE}:files:{{{job_id}}}"


def running_jobs_key() -> str:
    """Sorted set of running executions (``<job id>:<execution token>``) scored by when their heartbeat lapses (ms)."""
    return f"{NAMESPACE}:running"


def recent_jobs_key() -> str:
    """Sorted set of recent job ids scored by creation time (for listing)."""
    return f"{NAMESPACE}:recent"


def upload_key(file_id: str) -> str:
    """Hash describing an uploaded input file, until its retention ends."""
    return f"{NAMESPACE}:upload:{file_id}"


def sweep_lock_key() -> str:
    """Lock held by the one process sweeping stored files whose job or upload has expired."""
    return f"{NAMESPACE}:sweep-lock"


def reaper_lock_key() -> str:
    """Lock taken by the one process per interval that looks for lost jobs (lapsed heartbeats)."""
    return f"{NAMESPACE}:reaper-lock"


def deployments_key() -> str:
    """Hash of every deployment the factory knows: deployment id → its record (JSON); the catalog."""
    return f"{NAMESPACE}:deployments"


def deployments_version_key() -> str:
    """Counter bumped with every change of :func:`deployments_key`, so readers reload only on change."""
    return f"{NAMESPACE}:deployments-version"


def prefab_queue_name(base: str, prefab_id: str) -> str:
    """The RQ queue of one prefab's calls (RQ keeps it under ``rq:queue:<name>``)."""
    return f"{base}.{prefab_id}"


def deploy_queue_name(base: str) -> str:
    """The RQ queue of deployment builds, which every worker serves."""
    return f"{base}.deploy"


def doorbell_key(queue_name: str) -> str:
    """List an enqueue pushes a token onto, to wake the workers blocked on that queue."""
    return f"{NAMESPACE}:doorbell:{queue_name}"


def caller_secrets_key(caller_id: str, prefab_id: str) -> str:
    """Hash of one caller's secrets for one prefab: secret name → Fernet token (never a value in clear).

    Kept until the caller deletes them (user configuration, like an API key's own record).
    """
    return f"{NAMESPACE}:secrets:{caller_id}:{prefab_id}"


def quota_running_key(caller_id: str) -> str:
    """Sorted set of a caller's jobs that may still run, scored by when they must have ended (ms)."""
    return f"{NAMESPACE}:quota:running:{caller_id}"


def quota_rate_key(caller_id: str, minute: int) -> str:
    """Counter of a caller's calls in one minute (unix time // 60)."""
    return f"{NAMESPACE}:quota:rate:{caller_id}:{minute}"


def caller_files_key(caller_id: str, kind: str) -> str:
    """Sorted set of a caller's file ids of one kind (``permanent`` or ``temp``), scored by expiry (ms)."""
    return f"{NAMESPACE}:caller-files:{caller_id}:{kind}"


def session_files_key(caller_id: str, session_id: str) -> str:
    """Sorted set of the temporary file ids a caller uploaded for one session, scored by expiry (ms)."""
    return f"{NAMESPACE}:session-files:{caller_id}:{session_id}"


# Job statistics, written by the append script as a job ends (see factory/jobstats.py). They carry
# no job's hash tag: they are the factory's, not one job's. Under a Redis Cluster the append script
# would be given no stats keys (they are optional), and the counters would be empty.


def stats_outcomes_key() -> str:
    """Hash of ended (and retried) jobs: ``<prefab>\\t<function>\\t<version>\\t<outcome>\\t<code>`` → count."""
    return f"{NAMESPACE}:stats:outcomes"


def stats_durations_key() -> str:
    """Hash holding the job duration histogram: ``<labels>\\t<bucket index>`` → count, ``<labels>\\tsum`` → seconds."""
    return f"{NAMESPACE}:stats:durations"


def stats_first_event_key() -> str:
    """Hash holding the time-to-first-event histogram, laid out as :func:`stats_durations_key`."""
    return f"{NAMESPACE}:stats:first-event"


def workers_key() -> str:
    """Sorted set of worker names scored by the time (ms) their presence record lapses."""
    return f"{NAMESPACE}:workers"


def worker_key(name: str) -> str:
    """Hash describing one live worker process (what it serves, its process figures), with a short TTL."""
    return f"{NAMESPACE}:worker:{name}"


def worker_stop_key(name: str) -> str:
    """A stopping worker's mark: while it exists its takes take nothing (set with a TTL when it stops)."""
    return f"{NAMESPACE}:worker-stop:{name}"


# RQ's keys, as the factory's scripts build and read them: RQ's layout, which the factory does not
# choose. ``tests/test_rq_contract.py`` fails when the installed RQ lays its keys out otherwise.

RQ_JOB_PREFIX = "rq:job:"
RQ_QUEUE_PREFIX = "rq:queue:"
RQ_STARTED_PREFIX = "rq:wip:"  # StartedJobRegistry: members ``<job id>:<execution id>``
RQ_FINISHED_PREFIX = "rq:finished:"
RQ_FAILED_PREFIX = "rq:failed:"
RQ_CANCELED_PREFIX = "rq:canceled:"
RQ_WORKER_PREFIX = "rq:worker:"


def rq_job_key(job_id: str) -> str:
    """RQ's hash of a job: its call (``data``), timeout, status, times, origin queue."""
    return f"{RQ_JOB_PREFIX}{job_id}"


def rq_queue_key(name: str) -> str:
    """RQ's list of the ids waiting on a queue."""
    return f"{RQ_QUEUE_PREFIX}{name}"


def rq_queues_key() -> str:
    """RQ's set of every queue's key."""
    return "rq:queues"


def rq_registry_keys(name: str) -> tuple[str, str, str, str]:
    """RQ's started, finished, failed and canceled registries of a queue (sorted sets)."""
    return (
        f"{RQ_STARTED_PREFIX}{name}",
        f"{RQ_FINISHED_PREFIX}{name}",
        f"{RQ_FAILED_PREFIX}{name}",
        f"{RQ_CANCELED_PREFIX}{name}",
    )


def rq_worker_key(name: str) -> str:
    """RQ's hash describing one worker (``rq info`` reads it), with a short TTL."""
    return f"{RQ_WORKER_PREFIX}{name}"


def rq_workers_key() -> str:
    """RQ's set of every worker's key."""
    return "rq:workers"


def rq_queue_workers_key(queue_name: str) -> str:
    """RQ's set of the keys of the workers serving one queue."""
    return f"rq:workers:{queue_name}"
