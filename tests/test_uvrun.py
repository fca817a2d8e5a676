"""The package index handed to uv: pip's config and variables translated, uv's own passed through."""

import os
import sys
from pathlib import Path

from factory.uvrun import child_environment, index_arguments, index_environment, pip_config_files, run_uv


def isolated(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose user and XDG config dirs are empty folders of the test."""
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_DIRS": str(tmp_path / "xdg"), **extra}


def test_pip_conf_becomes_uv_variables_and_missing_local_paths_are_dropped(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    conf = tmp_path / "home" / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        "[global]\n"
        "index-url = https://index.test/simple\n"
        f"extra-index-url = https://extra.test/simple\n    file://{tmp_path}/missing-index\n"
        f"find-links = {links}\n    {tmp_path}/missing-links\n    https://links.test/\n"
        "[install]\n"
        "trusted-host = index.test\n",
        encoding="utf-8",
    )
    env = index_environment(isolated(tmp_path))
    assert env["UV_INDEX_URL"] == "https://index.test/simple"
    assert env["UV_EXTRA_INDEX_URL"] == "https://extra.test/simple"
    assert env["UV_INDEX_STRATEGY"] == "unsafe-best-match"  # as pip chooses among its indexes
    assert env["UV_FIND_LINKS"] == f"{links},https://links.test/"
    assert env["UV_INSECURE_HOST"] == "index.test"
    assert index_arguments(env) == []


def test_pip_variables_win_over_files_and_uv_variables_over_both(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://from-file.test/simple\nno-index = false\n", encoding="utf-8")
    environ = isolated(tmp_path, PIP_CONFIG_FILE=str(conf))
    assert index_environment(environ)["UV_INDEX_URL"] == "https://from-file.test/simple"
    environ["PIP_INDEX_URL"] = "https://from-pip-var.test/simple"
    assert index_environment(environ)["UV_INDEX_URL"] == "https://from-pip-var.test/simple"
    environ["UV_DEFAULT_INDEX"] = "https://from-uv.test/simple"
    env = index_environment(environ)
    assert env["UV_DEFAULT_INDEX"] == "https://from-uv.test/simple" and "UV_INDEX_URL" not in env


def test_no_index_becomes_a_flag_because_uv_reads_no_such_variable(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    env = index_environment(isolated(tmp_path, UV_NO_INDEX="1", UV_FIND_LINKS=f"{links},{tmp_path}/gone"))
    assert index_arguments(env) == ["--no-index"]
    assert env["UV_FIND_LINKS"] == str(links)
    assert "UV_NO_INDEX" not in child_environment(env, {"PATH": "/usr/bin"})
    env = index_environment(isolated(tmp_path, PIP_NO_INDEX="yes"))
    assert index_arguments(env) == ["--no-index"]


def test_pip_config_file_devnull_reads_no_file(tmp_path: Path) -> None:
    assert pip_config_files(isolated(tmp_path, PIP_CONFIG_FILE=os.devnull)) == []
    files = pip_config_files(isolated(tmp_path))
    assert files[:2] == [tmp_path / "xdg" / "pip" / "pip.conf", Path("/etc/pip.conf")]
    assert tmp_path / "home" / ".config" / "pip" / "pip.conf" in files


def test_child_environment_keeps_what_uv_needs_and_never_the_factorys_credentials() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "HTTPS_PROXY": "http://proxy.test:3128",
        "SSL_CERT_FILE": "/etc/ssl/cert.pem",
        "UV_CACHE_DIR": "/cache",
        "REDIS_URL": "redis://secret@host/0",
        "FACTORY_API_KEYS": "k",
        "FACTORY_REDIS_URL": "redis://secret@host/0",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_ACCESS_KEY_ID": "a",
        "OPENAI_API_KEY": "o",
        "VIRTUAL_ENV": "/factory/.venv",
    }
    env = child_environment({"UV_INDEX_URL": "https://index.test/simple"}, environ)
    assert {k: env[k] for k in ("PATH", "HOME", "HTTPS_PROXY", "SSL_CERT_FILE", "UV_CACHE_DIR")} == {
        k: environ[k] for k in ("PATH", "HOME", "HTTPS_PROXY", "SSL_CERT_FILE", "UV_CACHE_DIR")
    }
    assert env["UV_INDEX_URL"] == "https://index.test/simple"
    assert not {"REDIS_URL", "FACTORY_API_KEYS", "FACTORY_REDIS_URL", "VIRTUAL_ENV", "OPENAI_API_KEY"} & env.keys()
    assert not [k for k in env if k.startswith("AWS_")]


def test_run_uv_streams_lines_and_stops_at_the_deadline(tmp_path: Path) -> None:
    seen: list[str] = []
    run = run_uv(["--version"], env=child_environment({}), timeout_s=60, on_line=seen.append)
    assert run.ok and seen and seen[0].startswith("uv ")
    # `uv run` of a Python that sleeps: killed with its process group at the deadline.
    script = tmp_path / "sleep.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n", encoding="utf-8")
    run = run_uv(
        ["run", "--no-project", "--python", sys.executable, str(script)],
        env=child_environment({}),
        timeout_s=5,
        on_line=seen.append,
    )
    assert run.timed_out and run.returncode is None and "started" in run.output
