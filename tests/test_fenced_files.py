"""The record of a job's output files is an execution's write like its events: fenced by its token."""

from pathlib import Path

import orjson
import pytest
import redis

from factory.jobs import InvocationRequest, JobRecord
from factory.registry import register_folders
from factory.settings import Settings
from factory.storage import LocalStorage
from factory.store import executions, keys, rqview
from tests.stack import enqueue_call
from worker.files import FileBridge
from worker.workspace import Workspace


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def _job_with_outputs(client: redis.Redis, settings: Settings) -> tuple[InvocationRequest, Workspace]:
    register_folders(client, settings)
    job_id = enqueue_call(client, settings, "counter", {"count": 1})
    call = rqview.read_call(client, job_id)
    assert call is not None
    workspace = Workspace(settings.state_dir, job_id)
    workspace.create()
    (workspace.outputs / "report.txt").write_text("made by an attempt")
    return InvocationRequest.model_validate(call.args[0]), workspace


def test_a_superseded_attempt_records_no_files(client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    request, workspace = _job_with_outputs(client, settings)
    bridge = FileBridge(settings, LocalStorage(tmp_path / "files"), client)
    lost = executions.claim(client, request.job_id, 2, lost_after_s=30)
    successor = executions.claim(client, request.job_id, 2, lost_after_s=30)  # the job passed on
    assert lost is not None and successor is not None

    assert bridge.store_outputs(request, workspace, lost.token) is None
    assert not client.exists(keys.files_key(request.job_id))
    record = JobRecord.from_hash(client.hgetall(keys.job_key(request.job_id)))  # type: ignore[arg-type]
    assert record.files is None

    event = bridge.store_outputs(request, workspace, successor.token)
    assert event is not None and orjson.loads(event)["type"] == "files"
    assert client.hkeys(keys.files_key(request.job_id)) == [b"report.txt"]


def test_no_files_are_recorded_without_a_token(client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    request, workspace = _job_with_outputs(client, settings)
    assert executions.claim(client, request.job_id, 1, lost_after_s=30) is not None
    bridge = FileBridge(settings, LocalStorage(tmp_path / "files"), client)
    assert bridge.store_outputs(request, workspace, "") is None
    assert not client.exists(keys.files_key(request.job_id))
