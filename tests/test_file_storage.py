"""File storage pieces without processes: retention sweep, name sanitising, references, keys."""

import json
import os
import time
from pathlib import Path

import pytest
import redis

from factory.errors import ValidationFailed
from factory.filerefs import UploadRecord, parse_ref, sanitize_name, unique_name
from factory.jobs import JobRecord, JobStatus
from factory.manifest import load_manifest
from factory.retention import sweep_storage, sweep_workspaces
from factory.storage import LocalStorage, check_key
from factory.store import keys
from factory.validation import validate_file_groups


def test_retention_sweep_removes_only_expired_files(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    storage = LocalStorage(tmp_path / "files")
    live_job, dead_job, live_upload, dead_upload = (f"{n:032x}" for n in range(1, 5))
    for key in (
        f"outputs/{live_job}/a.txt",
        f"outputs/{dead_job}/a.txt",
        f"uploads/{live_upload}/b",
        f"uploads/{dead_upload}/b",
    ):
        with (tmp_path / "src").open("wb+") as source:
            source.write(b"x")
            source.seek(0)
            storage.put(key, source, "text/plain")
    record = JobRecord(job_id=live_job, prefab_id="p", function_name="f", status=JobStatus.FINISHED, created_ms=1)
    client.hset(keys.job_key(live_job), mapping=record.to_hash())  # type: ignore[arg-type]
    upload_record = UploadRecord(file_id=live_upload, name="b", size=1, content_type="x", location="l", created_ms=1)
    client.hset(keys.upload_key(live_upload), mapping=upload_record.to_hash())  # type: ignore[arg-type]

    assert sweep_storage(storage, client) == 2
    assert storage.children("outputs") == [live_job] and storage.children("uploads") == [live_upload]

    work = tmp_path / "state" / "work"
    old_running, old_done, fresh = (f"{n:032x}" for n in range(10, 13))
    for name in (old_running, old_done, fresh):
        (work / name / "data").mkdir(parents=True)
    for name in (old_running, old_done):
        os.utime(work / name, (time.time() - 7200, time.time() - 7200))
    running = record.model_copy(update={"job_id": old_running, "status": JobStatus.STARTED})
    client.hset(keys.job_key(old_running), mapping=running.to_hash())  # type: ignore[arg-type]
    assert sweep_workspaces(tmp_path / "state", client, retention_s=3600) == 1
    assert sorted(p.name for p in work.iterdir()) == sorted([old_running, fresh])


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..", "file"),
        (".hidden", "hidden"),
        ("a\x00b\nc.txt", "a_b_c.txt"),
        ("dir\\win.txt", "win.txt"),
        ("résumé.txt", "résumé.txt"),
        ("x" * 300 + ".txt", "x" * 196 + ".txt"),
        ("", "file"),
    ],
)
def test_sanitize_name(raw: str, safe: str) -> None:
    assert sanitize_name(raw) == safe


def test_refs_and_storage_keys_refuse_traversal(tmp_path: Path) -> None:
    assert parse_ref("s3://bucket-1/a/b.txt").bucket == "bucket-1"
    for bad in (
        "upload://../x",
        "file:///etc/passwd",
        "s3://bucket",
        "s3:///key",
        "gopher://x",
        "http://h:99999/",
        "http://[x",
    ):
        with pytest.raises(ValueError):
            parse_ref(bad)
    for key in ("../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\\..\\b"):
        with pytest.raises(ValueError):
            check_key(key)
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(ValueError):
        list(storage.iter_bytes("../outside"))


def test_unique_names_within_a_group() -> None:
    taken: set[str] = set()
    assert [unique_name(n, taken) for n in ("a.txt", "a.txt", "a.txt", "b", "b")] == [
        "a.txt",
        "a-2.txt",
        "a-3.txt",
        "b",
        "b-2",
    ]


def test_upload_record_round_trip() -> None:
    record = UploadRecord(file_id="a" * 32, name="n", size=3, content_type="t", location="l", created_ms=5)
    assert UploadRecord.from_hash({k.encode(): v for k, v in record.to_hash().items()}) == record
    assert json.loads(record.to_hash()["size"]) == 3


def test_manifest_file_groups_and_their_validation() -> None:
    manifest = load_manifest(Path(__file__).parent / "prefabs" / "behaviours")
    spec = manifest.function("list_inputs")
    assert spec is not None
    group = spec.files["input"]
    assert (group.min_items, group.max_items, group.is_input) == (1, 2, True)
    assert set(spec.input_groups()) == {"input", "extra"}
    writer = manifest.function("write_outputs")
    assert writer is not None and writer.input_groups() == {} and not writer.files["output"].is_input

    ref = "upload://" + "a" * 32
    validate_file_groups(spec, {"input": [ref], "extra": [ref, "https://example.org/x.txt", "s3://bucket/k"]})
    with pytest.raises(ValidationFailed) as caught:
        validate_file_groups(spec, {"input": [ref] * 3, "extra": ["nope"] * 4, "other": [ref]})
    assert {d["field"] for d in caught.value.details} == {
        "files.input",
        "files.other",
        "files.extra",
        *(f"files.extra[{i}]" for i in range(4)),
    }
