"""Prefab wheels: built by real hatchling through uv, read back, refused with a reason, signed."""

import io
import json
import sys
import zipfile
from pathlib import Path

import pytest

from factory.errors import ManifestError
from factory.uvrun import child_environment, run_uv
from factory.wheels import (
    WheelBuildError,
    build_wheel,
    canonical_wheel_name,
    deploy_signature,
    locked_requirements,
    read_wheel,
    signature_matches,
)
from tests.prefab_wheels import build_package_wheels, manifest, write_prefab


def make_wheel(entries: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def good_entries() -> dict[str, bytes | str]:
    return {
        "src/__init__.py": "",
        "src/main.py": "def whoami():\n    return {}\n",
        "prefab-manifest.json": json.dumps(manifest("hello-world", "1.0.0")),
        "hello_world-1.0.0.dist-info/METADATA": (
            "Metadata-Version: 2.4\nName: hello-world\nVersion: 1.0.0\n"
            "Requires-Dist: pinned-thing==1.0\nRequires-Dist: idna>=3; extra == 'web'\n"
        ),
        "hello_world-1.0.0.dist-info/WHEEL": "Wheel-Version: 1.0\nTag: py3-none-any\n",
    }


def test_canonical_wheel_name_escapes_name_and_version() -> None:
    assert canonical_wheel_name("weather-api-v1", "1.0.0") == "weather_api_v1-1.0.0-py3-none-any.whl"
    assert canonical_wheel_name("My.Prefab--x", "1.0.0-beta.1") == "my_prefab_x-1.0.0b1-py3-none-any.whl"
    with pytest.raises(ManifestError, match="PEP 440"):
        canonical_wheel_name("x", "not a version")


def test_read_wheel_returns_manifest_requires_source_and_hash() -> None:
    data = make_wheel(good_entries())
    info = read_wheel(data)
    assert info.manifest.id == "hello-world" and info.manifest.version == "1.0.0"
    assert info.requires == ("pinned-thing==1.0", "idna>=3; extra == 'web'")
    assert info.main_source.startswith("def whoami")
    assert len(info.sha256) == 64 and info.sha256 == __import__("hashlib").sha256(data).hexdigest()
    assert info.manifest_at_root and info.dist_name == "hello-world" and info.dist_version == "1.0.0"


def test_read_wheel_accepts_the_manifest_under_src_and_says_so() -> None:
    entries = good_entries()
    entries["src/prefab-manifest.json"] = entries.pop("prefab-manifest.json")
    info = read_wheel(make_wheel(entries))
    assert info.manifest.id == "hello-world" and not info.manifest_at_root


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("hello_world-1.0.0.dist-info/METADATA"), "expected one \\*.dist-info/METADATA, found none"),
        (lambda e: e.pop("prefab-manifest.json"), "no prefab-manifest.json at the wheel's root"),
        (lambda e: e.pop("src/main.py"), "no src/main.py"),
        (lambda e: e.update({"prefab-manifest.json": '{"id": "x", "version": "1"}'}), "functions: Field required"),
        (lambda e: e.update({"prefab-manifest.json": "{not json"}), "prefab-manifest.json: .*JSON"),
        (lambda e: e.update({"../evil.py": "x"}), "unsafe entry '../evil.py'"),
        (lambda e: e.update({"/etc/evil": "x"}), "unsafe entry '/etc/evil'"),
        (lambda e: e.update({"src/main.py": b"\xff\xfe"}), "not UTF-8"),
    ],
)
def test_read_wheel_refuses_with_the_reason(change: object, message: str) -> None:
    entries = good_entries()
    change(entries)  # type: ignore[operator]
    with pytest.raises(ManifestError, match=message):
        read_wheel(make_wheel(entries), name="hello_world-1.0.0-py3-none-any.whl")


def test_read_wheel_refuses_an_entry_packed_twice() -> None:
    data = make_wheel(good_entries())
    buffer = io.BytesIO(data)
    with zipfile.ZipFile(buffer, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("src/main.py", "import os\n")
    with pytest.raises(ManifestError, match="twice"):
        read_wheel(buffer.getvalue())


def test_read_wheel_refuses_what_is_not_a_zip() -> None:
    with pytest.raises(ManifestError, match="not a wheel"):
        read_wheel(b"this is not a zip archive")


def test_build_wheel_from_a_folder_with_its_own_pyproject(tmp_path: Path) -> None:
    folder = write_prefab(tmp_path / "weather", "weather-api-v1", "1.2.0", dependencies=("pinned-thing==1.0",))
    wheel = build_wheel(folder, tmp_path / "out")
    assert wheel.name == canonical_wheel_name("weather-api-v1", "1.2.0")
    info = read_wheel(wheel.read_bytes())
    assert info.manifest_at_root and info.manifest.id == "weather-api-v1"
    assert info.requires == ("pinned-thing==1.0",)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"src/__init__.py", "src/main.py", "src/helpers.py", "prefab-manifest.json"} <= names


def test_build_wheel_from_a_folder_without_pyproject(tmp_path: Path) -> None:
    folder = write_prefab(tmp_path / "bare", "bare-prefab", "0.3.0", pyproject=False)
    wheel = build_wheel(folder, tmp_path / "out")
    assert wheel.name == canonical_wheel_name("bare-prefab", "0.3.0")
    info = read_wheel(wheel.read_bytes())
    assert info.manifest_at_root and info.requires == ()
    assert {"src/__init__.py", "src/main.py", "src/helpers.py"} <= set(zipfile.ZipFile(wheel).namelist())
    assert sorted(p.name for p in folder.iterdir()) == ["prefab-manifest.json", "src"], "the folder is left as it was"


def test_build_wheel_refuses_a_pyproject_version_other_than_the_manifests(tmp_path: Path) -> None:
    folder = write_prefab(tmp_path / "p", "p", "1.0.0", pyproject_version="1.0.1")
    with pytest.raises(ManifestError, match="version '1.0.1' differs from prefab-manifest.json's '1.0.0'"):
        build_wheel(folder, tmp_path / "out")


def test_build_wheel_says_how_to_put_the_manifest_at_the_root(tmp_path: Path) -> None:
    folder = write_prefab(tmp_path / "p", "p", manifest_target="src/prefab-manifest.json")
    with pytest.raises(ManifestError, match='force-include.*"prefab-manifest.json" = "prefab-manifest.json"'):
        build_wheel(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_build_failure_carries_the_backends_output(tmp_path: Path) -> None:
    folder = write_prefab(tmp_path / "p", "p", dependencies=("this is not a requirement!",))
    with pytest.raises(WheelBuildError) as caught:
        build_wheel(folder, tmp_path / "out")
    assert "this is not a requirement!" in caught.value.output
    assert "Dependency #1 of field `project.dependencies`" in caught.value.output  # hatchling's own words


def test_locked_requirements_from_a_real_uv_lock(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build_package_wheels(wheels, "pinned-thing", ("1.0",), tmp_path / "work")
    folder = write_prefab(tmp_path / "locked", "locked", dependencies=("pinned-thing>=1.0",))
    assert locked_requirements(folder) is None
    run = run_uv(
        ["lock", "--python", sys.executable, "--no-index", "--find-links", str(wheels)],
        env=child_environment({}),
        cwd=folder,
        timeout_s=120,
    )
    assert run.ok, run.output
    pins = locked_requirements(folder)
    assert pins is not None
    assert [line for line in pins.splitlines() if line.strip()] == ["pinned-thing==1.0"]


def test_deploy_signature_matches_the_release_pipelines() -> None:
    sha = "ab" * 32
    header = deploy_signature("s3cret", "weather-api-v1", "1.0.0", sha)
    # The value the release pipeline computes: HMAC-SHA256 over "prefab_id|version|sha256".
    import hashlib
    import hmac

    expected = hmac.new(b"s3cret", f"weather-api-v1|1.0.0|{sha}".encode(), hashlib.sha256).hexdigest()
    assert header == f"sha256={expected}"
    assert signature_matches("s3cret", header, "weather-api-v1", "1.0.0", sha)
    assert not signature_matches("s3cret", None, "weather-api-v1", "1.0.0", sha)
    assert not signature_matches("other", header, "weather-api-v1", "1.0.0", sha)
    assert not signature_matches("s3cret", header, "weather-api-v1", "1.0.1", sha)
    assert not signature_matches("s3cret", "sha256=ünïcode", "weather-api-v1", "1.0.0", sha)
