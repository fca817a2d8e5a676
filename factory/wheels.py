"""Prefab wheels as the ecosystem ships them: reading one, building one from a folder, signing a deploy.

A prefab wheel is ``{id with - as _}-{version}-py3-none-any.whl`` built by hatchling from the
template: ``src/__init__.py``, ``src/main.py`` (and sibling modules under ``src/``) and
``prefab-manifest.json`` at the wheel's root, plus dist-info whose ``Requires-Dist`` lines are the
prefab's only dependencies. Nothing here installs or imports the wheel: it is read as a zip.

Invariant: a wheel this module accepts (``read_wheel``) or produces (``build_wheel``) has a valid
manifest and a ``src/main.py``, and no entry that could land outside the folder it is unpacked in.
"""

import email.parser
import hashlib
import hmac
import io
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.version import InvalidVersion, Version
from pydantic import ValidationError

from factory.errors import ManifestError
from factory.manifest import MANIFEST_NAME, Manifest, load_manifest
from factory.uvrun import child_environment, index_arguments, index_environment, run_uv, uv_binary

MAIN_ENTRY = "src/main.py"
FALLBACK_MANIFEST_ENTRY = f"src/{MANIFEST_NAME}"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SOURCE_BYTES = 16 * 1024 * 1024
BUILD_TIMEOUT_S = 600.0
LOCK_TIMEOUT_S = 120.0

# The template's packaging: hatchling packs ``src`` and puts the manifest at the wheel's root.
_PYPROJECT_TEMPLATE = """\
[project]
name = {name}
version = {version}
description = {description}
requires-python = ">=3.11"
dependencies = [{dependencies}]

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
packages = ["src"]

[tool.hatch.build.targets.wheel.force-include]
"prefab-manifest.json" = {manifest_target}
"""


def template_pyproject(
    prefab_id: str,
    version: str,
    *,
    description: str = "",
    dependencies: tuple[str, ...] = (),
    manifest_target: str = MANIFEST_NAME,
) -> str:
    """A prefab's ``pyproject.toml`` as the ecosystem's template writes it."""
    return _PYPROJECT_TEMPLATE.format(
        name=_toml_string(prefab_id),
        version=_toml_string(version),
        description=_toml_string(description),
        dependencies=", ".join(_toml_string(d) for d in dependencies),
        manifest_target=_toml_string(manifest_target),
    )


class WheelBuildError(ManifestError):
    """The build backend failed; ``output`` is what uv and the backend printed, verbatim."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message, details={"output": output})
        self.output = output


@dataclass(frozen=True)
class WheelInfo:
    """What a prefab wheel declares, read without installing it."""

    manifest: Manifest
    requires: tuple[str, ...]
    sha256: str
    main_source: str
    dist_name: str = ""
    dist_version: str = ""
    manifest_at_root: bool = True


def canonical_wheel_name(prefab_id: str, version: str) -> str:
    """The file name a build backend gives the wheel of this prefab version (PEP 427 / PEP 491 escaping)."""
    try:
        normalized = str(Version(version))
    except InvalidVersion as exc:
        raise ManifestError(f"version {version!r} is not a valid Python package version (PEP 440)") from exc
    name = re.sub(r"[-_.]+", "_", prefab_id).lower()
    return f"{name}-{_escape(normalized)}-py3-none-any.whl"


def _escape(component: str) -> str:
    return re.sub(r"[^\w\d.]+", "_", component, flags=re.UNICODE)


def read_wheel(data: bytes, *, name: str = "wheel") -> WheelInfo:
    """Read a prefab wheel's manifest, dependencies and ``src/main.py``, raising ManifestError with the reason.

    The manifest belongs at the wheel's root, where the ecosystem's template puts it. A wheel that
    has it only at ``src/prefab-manifest.json`` (packed by an older template) is accepted as well,
    with ``manifest_at_root`` False so a builder can tell its author to move it.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ManifestError(f"{name}: not a wheel (not a zip archive)") from exc
    with archive:
        entries = {info.filename: info for info in archive.infolist()}
        if len(entries) != len(archive.infolist()):
            raise ManifestError(f"{name}: the same entry appears twice in the archive")
        for entry in entries:
            _check_entry(name, entry)
        metadata_entries = [e for e in entries if re.fullmatch(r"[^/]+\.dist-info/METADATA", e)]
        if len(metadata_entries) != 1:
            found = "none" if not metadata_entries else ", ".join(sorted(metadata_entries))
            raise ManifestError(f"{name}: not a wheel: expected one *.dist-info/METADATA, found {found}")
        metadata = email.parser.BytesParser().parsebytes(_read(archive, name, metadata_entries[0], MAX_MANIFEST_BYTES))
        manifest_entry = MANIFEST_NAME if MANIFEST_NAME in entries else FALLBACK_MANIFEST_ENTRY
        if manifest_entry not in entries:
            raise ManifestError(f"{name}: no {MANIFEST_NAME} at the wheel's root (nor at {FALLBACK_MANIFEST_ENTRY})")
        if MAIN_ENTRY not in entries:
            raise ManifestError(f"{name}: no {MAIN_ENTRY} in the wheel")
        manifest = _parse_manifest(f"{name}!{manifest_entry}", _read(archive, name, manifest_entry, MAX_MANIFEST_BYTES))
        try:
            main_source = _read(archive, name, MAIN_ENTRY, MAX_SOURCE_BYTES).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{name}!{MAIN_ENTRY}: not UTF-8 text ({exc.reason})") from exc
    return WheelInfo(
        manifest=manifest,
        requires=tuple(metadata.get_all("Requires-Dist") or ()),
        sha256=hashlib.sha256(data).hexdigest(),
        main_source=main_source,
        dist_name=str(metadata.get("Name", "")),
        dist_version=str(metadata.get("Version", "")),
        manifest_at_root=manifest_entry == MANIFEST_NAME,
    )


def _check_entry(name: str, entry: str) -> None:
    path = PurePosixPath(entry.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", entry):
        raise ManifestError(f"{name}: unsafe entry {entry!r} (absolute path or '..')")


def _read(archive: zipfile.ZipFile, name: str, entry: str, limit: int) -> bytes:
    info = archive.getinfo(entry)
    if info.file_size > limit:
        raise ManifestError(f"{name}!{entry}: {info.file_size} bytes, more than the {limit} allowed")
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise ManifestError(f"{name}!{entry}: cannot be read from the archive ({exc})") from exc


def _parse_manifest(where: str, raw: bytes) -> Manifest:
    """Validate a manifest as load_manifest does, with the same message style."""
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors())
        raise ManifestError(f"{where}: {reasons}") from exc


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _check_pyproject(folder: Path, manifest: Manifest) -> None:
    path = folder / "pyproject.toml"
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid TOML ({exc})") from exc
    version = project.get("version")
    if isinstance(version, str) and not _same_version(version, manifest.version):
        raise ManifestError(
            f"{path}: version {version!r} differs from {MANIFEST_NAME}'s {manifest.version!r}; make them equal"
        )


def _template_copy(folder: Path, manifest: Manifest, into: Path) -> Path:
    """A copy of a folder without pyproject.toml, packaged as the ecosystem's template packages a prefab."""
    source = into / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", ".git")
    shutil.copytree(folder / "src", source / "src", ignore=ignore)
    shutil.copy2(folder / MANIFEST_NAME, source / MANIFEST_NAME)
    (source / "src" / "__init__.py").touch(exist_ok=True)
    description = manifest.description.splitlines()[0] if manifest.description else ""
    text = template_pyproject(manifest.id, manifest.version, description=description)
    (source / "pyproject.toml").write_text(text, encoding="utf-8")
    return source


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_wheel(folder: Path, out_dir: Path) -> Path:
    """Build a prefab folder into a wheel in ``out_dir`` with uv and the folder's backend (hatchling by default).

    A folder with no pyproject.toml is packaged as the ecosystem's template does it. Raises
    ManifestError for a bad manifest, a pyproject version that is not the manifest's, or a wheel
    that does not hold the manifest at its root; WheelBuildError with the backend's output when
    the build fails.
    """
    folder = folder.resolve()
    manifest = load_manifest(folder)
    if not (folder / MAIN_ENTRY).is_file():
        raise ManifestError(f"{folder / MAIN_ENTRY}: file not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    index = index_environment()
    with tempfile.TemporaryDirectory(prefix="prefab-build-") as scratch_name:
        scratch = Path(scratch_name)
        if (folder / "pyproject.toml").is_file():
            _check_pyproject(folder, manifest)
            source = folder
        else:
            source = _template_copy(folder, manifest, scratch)
        built = scratch / "dist"
        run = run_uv(
            [
                "build",
                "--wheel",
                "--python",
                sys.executable,
                "--out-dir",
                str(built),
                *index_arguments(index),
                str(source),
            ],
            env=child_environment(index),
            cwd=scratch,
            timeout_s=BUILD_TIMEOUT_S,
        )
        wheels = sorted(built.glob("*.whl")) if built.is_dir() else []
        if not run.ok or len(wheels) != 1:
            reason = f"timed out after {BUILD_TIMEOUT_S:.0f} s" if run.timed_out else "the build backend failed"
            raise WheelBuildError(f"{folder}: cannot build a wheel: {reason}", run.output)
        info = read_wheel(wheels[0].read_bytes(), name=wheels[0].name)
        _check_built(folder, manifest, info)
        target = out_dir / wheels[0].name
        shutil.move(wheels[0], target)
    return target


def _check_built(folder: Path, manifest: Manifest, info: WheelInfo) -> None:
    if not info.manifest_at_root:
        raise ManifestError(
            f"{folder / 'pyproject.toml'}: the wheel holds {MANIFEST_NAME} at {FALLBACK_MANIFEST_ENTRY}, "
            f"not at its root; in [tool.hatch.build.targets.wheel.force-include] "
            f'write "{MANIFEST_NAME}" = "{MANIFEST_NAME}"'
        )
    if info.manifest.id != manifest.id or not _same_version(info.manifest.version, manifest.version):
        raise ManifestError(f"{folder}: the wheel packs another manifest ({info.manifest.id} {info.manifest.version})")
    if info.dist_version and not _same_version(info.dist_version, manifest.version):
        raise ManifestError(
            f"{folder}: the wheel's version {info.dist_version!r} differs from {MANIFEST_NAME}'s {manifest.version!r}"
        )


def locked_requirements(folder: Path) -> str | None:
    """The pinned runtime requirements of a folder's ``uv.lock`` (requirements.txt format), or None without one."""
    if not (folder / "uv.lock").is_file():
        return None
    command = [
        uv_binary(),
        "export",
        "--frozen",
        "--no-dev",
        "--no-emit-project",
        "--no-hashes",
        "--no-header",
        "--no-annotate",
        "--format",
        "requirements.txt",
        "--project",
        str(folder.resolve()),
    ]
    env = child_environment(index_environment())
    try:
        # stdout alone is the requirements; uv's notes on stderr must not end up in them
        done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=LOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise WheelBuildError(f"{folder / 'uv.lock'}: uv export timed out", str(exc.stderr or "")) from exc
    if done.returncode != 0:
        raise WheelBuildError(f"{folder / 'uv.lock'}: cannot export the locked requirements", done.stderr)
    return done.stdout


def deploy_signature(secret: str, prefab_id: str, version: str, wheel_sha256: str) -> str:
    """The ``X-Hub-Signature-256`` value the release pipeline sends for this deploy."""
    message = f"{prefab_id}|{version}|{wheel_sha256}".encode()
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_matches(secret: str, header: str | None, prefab_id: str, version: str, wheel_sha256: str) -> bool:
    """Whether a deploy's signature header is the right one, compared in constant time."""
    if header is None:
        return False
    expected = deploy_signature(secret, prefab_id, version, wheel_sha256)
    return hmac.compare_digest(expected.encode(), header.strip().encode())
