"""One environment per prefab version, built by real uv from real wheels, offline from a local folder.

The prefab wheels are built by hatchling (through uv) from template-shaped folders; the package
they pin, ``pinned-thing`` 1.0 and 2.0, is built here too and installed with ``--no-index`` from
a local find-links folder, so no index is needed once hatchling is in uv's cache.
"""

import fcntl
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from factory.uvrun import child_environment, run_uv
from factory.wheels import build_wheel, locked_requirements, read_wheel
from tests.prefab_wheels import build_package_wheels, write_prefab
from worker.environments import Environment, EnvironmentBuildError, Environments, environment_key


@dataclass
class Kit:
    links: Path  # the find-links folder holding pinned-thing 1.0 and 2.0
    wheels: dict[str, Path]  # prefab id -> its wheel

    def index(self) -> dict[str, str]:
        return {"UV_FIND_LINKS": str(self.links), "UV_NO_INDEX": "1"}

    def key(self, prefab_id: str, requirements: str | None = None) -> str:
        return environment_key(read_wheel(self.wheels[prefab_id].read_bytes()).sha256, requirements)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    base = tmp_path_factory.mktemp("kit")
    links = base / "links"
    build_package_wheels(links, "pinned-thing", ("1.0", "2.0"), base / "packages")
    out = base / "wheels"
    folders = {
        "prefab-one": write_prefab(base / "one", "prefab-one", dependencies=("pinned-thing==1.0",)),
        "prefab-two": write_prefab(base / "two", "prefab-two", dependencies=("pinned-thing==2.0",)),
        "prefab-loose": write_prefab(base / "loose", "prefab-loose", dependencies=("pinned-thing>=1.0",)),
        "prefab-impossible": write_prefab(
            base / "impossible", "prefab-impossible", dependencies=("pinned-thing==3.0",)
        ),
    }
    return Kit(links=links, wheels={pid: build_wheel(folder, out) for pid, folder in folders.items()})


class Steps:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, step: str, data: dict[str, Any]) -> None:
        self.seen.append((step, data))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.seen]


def whoami(env: Environment) -> dict[str, str]:
    """Run the prefab's own code in its environment's interpreter."""
    code = "import json, src.main; print(json.dumps(src.main.whoami()))"
    done = subprocess.run([str(env.python), "-c", code], capture_output=True, text=True, timeout=60, cwd=env.path)
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result


def test_prefabs_pinning_conflicting_versions_each_import_their_own(kit: Kit, tmp_path: Path) -> None:
    envs = Environments(tmp_path / "envs", index=kit.index())
    one_steps, two_steps = Steps(), Steps()
    one = envs.ensure(kit.key("prefab-one"), kit.wheels["prefab-one"], None, one_steps)
    two = envs.ensure(kit.key("prefab-two"), kit.wheels["prefab-two"], None, two_steps)
    assert one.path != two.path
    assert whoami(one) == {"helpers": "prefab-one", "pinned_thing": "1.0"}
    assert whoami(two) == {"helpers": "prefab-two", "pinned_thing": "2.0"}
    assert one_steps.names == ["creating", "resolving", "installing", "installed"]
    assert dict(one_steps.seen)["installing"] == {"packages": 2}
    installed = dict(one_steps.seen)["installed"]
    assert installed["packages"] == 2 and "pinned-thing==1.0" in installed["distributions"]
    # The factory's own packages are not there: the prefab's interpreter sees only its environment.
    done = subprocess.run([str(one.python), "-c", "import pydantic"], capture_output=True, timeout=60)
    assert done.returncode != 0


def test_a_cached_environment_builds_nothing_even_for_a_new_object(kit: Kit, tmp_path: Path) -> None:
    root = tmp_path / "envs"
    key = kit.key("prefab-one")
    first = Environments(root, index=kit.index()).ensure(key, kit.wheels["prefab-one"], None, Steps())
    steps = Steps()
    started = time.monotonic()
    again = Environments(root, index=kit.index()).ensure(key, kit.wheels["prefab-one"], None, steps)
    elapsed_s = time.monotonic() - started
    assert steps.names == ["cached"] and again == first
    assert elapsed_s < 1.0, f"a cached ensure took {elapsed_s:.2f} s"
    assert Environments(root, index=kit.index()).find(key) == first
    assert Environments(root, index=kit.index()).find(kit.key("prefab-two")) is None


def test_an_unresolvable_dependency_fails_with_uvs_message_and_leaves_nothing(kit: Kit, tmp_path: Path) -> None:
    root = tmp_path / "envs"
    envs = Environments(root, index=kit.index())
    key = kit.key("prefab-impossible")
    steps = Steps()
    with pytest.raises(EnvironmentBuildError) as caught:
        envs.ensure(key, kit.wheels["prefab-impossible"], None, steps)
    assert "pinned-thing==3.0" in caught.value.output and "unsatisfiable" in caught.value.output
    assert "unsatisfiable" in str(caught.value)
    assert steps.names == ["creating", "resolving"]
    assert envs.find(key) is None
    assert sorted(p.name for p in root.iterdir()) == [".locks"]


def test_locked_pins_decide_the_versions(kit: Kit, tmp_path: Path) -> None:
    # The folder's uv.lock was made when only pinned-thing 1.0 existed; 2.0 is in the index now.
    folder = write_prefab(tmp_path / "locked", "prefab-loose", dependencies=("pinned-thing>=1.0",))
    only_one = tmp_path / "only-one"
    only_one.mkdir()
    for wheel in kit.links.glob("pinned_thing-1.0-*.whl"):
        (only_one / wheel.name).write_bytes(wheel.read_bytes())
    lock = run_uv(
        ["lock", "--python", sys.executable, "--no-index", "--find-links", str(only_one)],
        env=child_environment({}),
        cwd=folder,
        timeout_s=120,
    )
    assert lock.ok, lock.output
    pins = locked_requirements(folder)
    envs = Environments(tmp_path / "envs", index=kit.index())
    wheel = kit.wheels["prefab-loose"]
    locked = envs.ensure(kit.key("prefab-loose", pins), wheel, pins, Steps())
    loose = envs.ensure(kit.key("prefab-loose"), wheel, None, Steps())
    assert whoami(locked)["pinned_thing"] == "1.0"
    assert whoami(loose)["pinned_thing"] == "2.0"


def test_unused_environments_are_swept(kit: Kit, tmp_path: Path) -> None:
    envs = Environments(tmp_path / "envs", index=kit.index())
    one = envs.ensure(kit.key("prefab-one"), kit.wheels["prefab-one"], None, Steps())
    two = envs.ensure(kit.key("prefab-two"), kit.wheels["prefab-two"], None, Steps())
    assert envs.remove_unused(keep=set(), older_than_s=3600) == []
    assert envs.remove_unused(keep={one.key}, older_than_s=0) == [two.key]
    assert envs.find(two.key) is None and not two.path.exists()
    assert envs.find(one.key) == one
    # What a builder that died left behind goes too, once old enough; a kept key's leftovers as well.
    dead = tmp_path / "envs" / f".building-{one.key}-dead"
    (dead / "bin").mkdir(parents=True)
    assert envs.remove_unused(keep={one.key}, older_than_s=3600) == [] and dead.exists()
    assert envs.remove_unused(keep={one.key}, older_than_s=0) == [] and not dead.exists()
    assert sorted(p.name for p in (tmp_path / "envs").iterdir()) == [".locks", one.key]


_ENSURE_SCRIPT = """
import json, sys
from pathlib import Path
from worker.environments import Environments

root, key, wheel, index = sys.argv[1:]

def on_step(step, data):
    print(step, flush=True)

Environments(Path(root), index=json.loads(index)).ensure(key, Path(wheel), None, on_step)
print("end", flush=True)
"""


def _read_until(proc: subprocess.Popen[str], wanted: str, seen: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line.strip())
        if line.strip() == wanted:
            return
    raise AssertionError(f"the process ended before {wanted!r}: {seen}")


@pytest.fixture
def ensure_procs() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_two_processes_ensuring_one_key_build_it_once(
    kit: Kit, tmp_path: Path, ensure_procs: list[subprocess.Popen[str]]
) -> None:
    root = tmp_path / "envs"
    envs = Environments(root, index=kit.index())
    key = kit.key("prefab-two")
    args = [str(root), key, str(kit.wheels["prefab-two"]), json.dumps(kit.index())]
    seen: list[list[str]] = [[], []]
    # Hold the key's lock here so both processes are certainly inside ensure() at once.
    with open(envs.lock_path(key), "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        for _ in range(2):
            ensure_procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _ENSURE_SCRIPT, *args], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
                )
            )
        for proc, lines in zip(ensure_procs, seen, strict=True):
            _read_until(proc, "waiting", lines)
        fcntl.flock(held, fcntl.LOCK_UN)
    for proc, lines in zip(ensure_procs, seen, strict=True):
        _read_until(proc, "end", lines)
        assert proc.wait(timeout=120) == 0
    builders = [lines for lines in seen if "creating" in lines]
    assert len(builders) == 1, seen
    assert [lines for lines in seen if "creating" not in lines] == [["waiting", "cached", "end"]]
    assert whoami(envs.find(key) or pytest.fail("no environment"))["pinned_thing"] == "2.0"
