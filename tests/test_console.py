"""The console in a real headless browser (Debian's chromium, driven by Playwright) against `factory up`.

Each scenario saves a screenshot under tests/artifacts/ (kept by CI) and fails on any console error
or uncaught exception in the page. No browser is ever downloaded: Playwright is pointed at the
system's chromium, and the module is skipped, saying why, only where that cannot be had.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from factory_cli.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import _db_url
from tests.stack import ROOT

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("no chromium on this machine (apt-get install -y chromium)", allow_module_level=True)

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "tests" / "artifacts"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000


@contextmanager
def factory_up(redis_url: str, workdir: Path, **extra_env: str) -> Iterator[str]:
    """`factory up` on a free port, serving the example and the test prefabs, against ``redis_url``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
    env.update({"REDIS_URL": redis_url, "FACTORY_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **extra_env})
    command = [sys.executable, "-m", "factory_cli", "up", "--port", str(port), "--workers", "2"]
    command += ["--state-dir", str(workdir / "state")]
    command += ["--prefabs", str(ROOT / "prefabs"), "--prefabs", str(ROOT / "tests" / "prefabs")]
    log = workdir / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {extra_env['FACTORY_API_KEYS']}"} if "FACTORY_API_KEYS" in extra_env else {}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert up.poll() is None, log.read_text()
            try:
                stats = httpx.get(f"{url}/stats", headers=headers, timeout=1)
                if stats.status_code == 200 and len(stats.json()["workers"]) == 2:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        up.terminate()
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()


@pytest.fixture(scope="module")
def factory_url(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with factory_up(_db_url(redis_server), tmp_path_factory.mktemp("console")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield launched
        launched.close()


@dataclass
class Console:
    """One browser page on the console, recording console errors and the event-stream requests."""

    page: Any
    url: str
    errors: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    # The browser itself logs every HTTP error answer; a scenario that provokes one on purpose allows it.
    expected: set[str] = field(default_factory=set)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)

    def open_function(self, prefab: str, function: str) -> None:
        self.page.goto(f"{self.url}/")
        button = self.page.locator(f"[data-fn='{prefab}/{function}']")
        button.click()
        self.page.wait_for_selector("#call:not([hidden])")

    def run(self) -> str:
        """Press Run; the job id, once the page shows the job at its own URL."""
        self.page.click("#run")
        self.page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}/view$"), timeout=TIMEOUT_MS)
        return str(self.page.url.rsplit("/", 2)[1])

    def wait_status(self, label: str) -> None:
        self.page.wait_for_function(
            "label => document.getElementById('job-status').textContent === label", arg=label, timeout=TIMEOUT_MS
        )

    def seqs(self) -> list[int]:
        return [int(s) for s in self.page.eval_on_selector_all("#events li", "items => items.map(i => i.dataset.seq)")]

    def page_width(self) -> int:
        return int(self.page.evaluate("document.documentElement.scrollWidth"))


@pytest.fixture
def console(browser: Any, factory_url: str, request: pytest.FixtureRequest) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    opened = Console(page, factory_url)
    page.on("console", lambda message: message.type == "error" and opened.errors.append(message.text))
    page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
    page.on("request", lambda req: "/events" in req.url and opened.streams.append(req.url))
    yield opened
    context.close()
    unexpected = [error for error in opened.errors if error not in opened.expected]
    assert unexpected == [], f"console errors in {request.node.name}: {unexpected}"


def test_batch_process_runs_to_100_percent_and_done(console: Console) -> None:
    console.open_function("streaming-examples", "batch_process")
    console.page.fill("#fields textarea", '["alpha", "beta", 3, "delta", 5]')
    console.shot("form")
    job_id = console.run()
    console.wait_status("done")
    assert console.page.inner_text("#progress-pct") == "100%"
    assert console.page.inner_text("#progress-msg") == "5 of 5"
    assert console.page.get_attribute("[role=progressbar]", "aria-valuenow") == "100"
    assert "all items processed" in console.page.inner_text("#result")
    assert console.page.is_hidden("#content-box")  # no text box for a function that streams no content
    assert console.seqs() == [1, 2, 3, 4, 5, 6, 7]
    assert "took" in console.page.inner_text("#job-times")
    console.page.wait_for_selector(f"#jobs a[data-job='{job_id}'] .badge.finished")  # the live jobs list
    console.shot("done")


def test_a_reload_mid_run_resumes_with_no_event_twice(console: Console) -> None:
    console.open_function("behaviours", "counter")
    console.page.fill("#fields input[name=count]", "40")
    console.page.fill("#fields input[name=delay_s]", "0.1")
    job_id = console.run()
    console.page.wait_for_function("document.querySelectorAll('#events li').length >= 6")
    console.page.reload()
    console.wait_status("done")
    seqs = console.seqs()
    assert seqs == list(range(1, 43)), seqs  # start, 40 progress, done: each once, in order
    resumed = [url for url in console.streams if "last_event_id=" in url]
    assert resumed, console.streams
    assert int(re.search(r"last_event_id=(\d+)", resumed[-1]).group(1)) >= 6  # type: ignore[union-attr]
    assert job_id in console.page.url
    console.shot("resumed")

    # A second tab (no saved state) replays the whole stream, once.
    second = console.page.context.new_page()
    second.goto(console.page.url)
    second.wait_for_function("document.querySelectorAll('#events li').length >= 42")
    assert second.eval_on_selector_all("#events li", "items => items.map(i => Number(i.dataset.seq))") == list(
        range(1, 43)
    )
    second.close()


def test_a_422_is_shown_at_its_field(console: Console) -> None:
    console.expected.add("Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)")
    console.open_function("behaviours", "typed")
    console.page.fill("#fields [name=text]", "hello")
    console.page.fill("#fields textarea[name=tags]", "[1, 2]")  # the manifest wants strings: the gateway says so
    console.page.click("#run")
    problem = console.page.locator("#fields [name=tags] ~ .problem")
    problem.wait_for(state="visible")
    assert "[0]: expected string, got integer" in problem.inner_text()
    assert console.page.get_attribute("#fields [name=tags]", "aria-invalid") == "true"
    assert console.page.evaluate("document.activeElement.name") == "tags"
    assert "/jobs/" not in console.page.url  # no job was made
    console.shot("422")

    # Checked in place before any request: bad JSON and a missing required value.
    console.page.fill("#fields textarea[name=options]", "{not json")
    assert "not valid JSON" in console.page.locator("#fields [name=options] ~ .problem").inner_text()
    console.page.fill("#fields [name=text]", "")
    console.page.click("#run")
    assert console.page.locator("#fields [name=text] ~ .problem").inner_text() == "required"


def test_a_file_is_uploaded_and_its_output_link_works(console: Console, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("one two three\nfour five\n")
    console.open_function("streaming-examples", "process_large_file")
    console.page.set_input_files("#fields input[type=file]", str(notes))
    console.run()
    console.wait_status("done")
    link = console.page.locator("#files a").first
    href = link.get_attribute("href")
    assert href is not None and href.endswith("notes.summary.json")
    answer = console.page.request.get(href)
    assert answer.status == 200
    assert answer.json()["words"] == 5
    console.shot("files")


def test_cancel_stops_a_running_job(console: Console) -> None:
    console.open_function("behaviours", "counter")
    console.page.fill("#fields input[name=count]", "2000")
    console.page.fill("#fields input[name=delay_s]", "0.05")
    console.run()
    console.page.wait_for_function("document.querySelectorAll('#events li').length >= 3")
    console.page.click("#cancel")
    console.wait_status("canceled")
    assert "CANCELED" in console.page.inner_text("#job-error")
    assert console.page.is_hidden("#cancel")
    console.shot("canceled")


def test_390_px_wide_without_horizontal_scroll_and_by_keyboard(console: Console) -> None:
    console.page.set_viewport_size({"width": 390, "height": 844})
    console.page.goto(f"{console.url}/")
    console.page.wait_for_selector("[data-fn='streaming-examples/word_count']")
    assert console.page_width() <= 390
    # Keyboard only: focus the function, open it with Enter, fill, submit with Enter.
    console.page.focus("[data-fn='streaming-examples/word_count']")
    console.page.keyboard.press("Enter")
    console.page.wait_for_selector("#call:not([hidden])")
    console.page.focus("#fields [name=text]")
    console.page.keyboard.type("a long long long line " * 20)
    console.page.focus("#run")
    console.page.keyboard.press("Enter")
    console.page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}/view$"))
    console.wait_status("done")
    assert console.page_width() <= 390
    console.shot("390px")


def test_each_version_of_a_prefab_is_listed_with_its_state(console: Console) -> None:
    """When GET /prefabs lists versions (deployments), each shows with its state and the reason of a failure."""
    versions = [
        {"version": "1.1.0", "state": "building", "reason": None, "deployment_id": "d3"},
        {"version": "1.0.0", "state": "ready", "reason": None, "deployment_id": "d2"},
        {"version": "0.9.0", "state": "failed", "reason": "its wheel does not install", "deployment_id": "d1"},
    ]

    def with_versions(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        for prefab in body["prefabs"]:
            if prefab["id"] == "streaming-examples":
                prefab["versions"] = versions
        route.fulfill(response=answer, json=body)

    console.page.route("**/prefabs", with_versions)
    console.page.goto(f"{console.url}/")
    console.page.wait_for_selector("[data-fn='streaming-examples/batch_process']")
    listed = console.page.locator(".prefab:has([data-fn^='streaming-examples/']) .versions li")
    expected = ["v1.1.0\nbuilding", "v1.0.0\nready", "v0.9.0\nfailed\nits wheel does not install"]
    assert listed.all_inner_texts() == expected
    single = console.page.locator(".prefab:has([data-fn^='behaviours/']) .versions li")
    assert single.all_inner_texts() == ["v1.0.0\nready"]  # no versions field: the one version it serves
    console.shot("versions")


def test_api_docs_render_offline(console: Console) -> None:
    """/docs draws the typed API with every request to another host refused."""
    outside: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(console.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    console.page.route("**/*", only_local)
    console.page.goto(f"{console.url}/docs")
    console.page.wait_for_selector(".opblock-summary-path[data-path='/invoke']")
    console.page.click(".opblock-post:has(.opblock-summary-path[data-path='/invoke']) .opblock-summary")
    console.page.wait_for_selector("text=batch_process")
    assert outside == []
    console.shot("docs")


def test_with_an_api_key_the_console_runs_streams_and_downloads(
    browser: Any, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Auth on: the key typed once serves the catalog, the run, the stream (a job token, or the key as a
    header for a job opened from the list) and the output links."""
    key = "console-test-key"
    with factory_up(_db_url(redis_server), tmp_path_factory.mktemp("keyed"), FACTORY_API_KEYS=key) as url:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        opened = Console(page, url)
        page.on("console", lambda message: message.type == "error" and opened.errors.append(message.text))
        page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
        page.goto(f"{url}/")
        page.wait_for_selector("#prefabs .alert:has-text('UNAUTHENTICATED')")
        page.click(".key summary")
        page.fill("#apikey", key)
        page.press("#apikey", "Enter")
        notes = tmp_path / "notes.txt"
        notes.write_text("a b c\n")
        opened.open_function("streaming-examples", "process_large_file")
        page.set_input_files("#fields input[type=file]", str(notes))
        job_id = opened.run()
        opened.wait_status("done")
        href = page.locator("#files a").first.get_attribute("href")
        assert href is not None and "token=" in href
        assert page.request.get(href).json()["words"] == 3  # the link alone opens the file

        other = context.new_page()  # a new tab: the key (localStorage), no job token (sessionStorage)
        other.goto(f"{url}/jobs/{job_id}/view")
        other.wait_for_function("document.querySelectorAll('#events li').length >= 3")  # start, files, done
        assert other.inner_text("#job-status") == "done"
        assert other.locator("#files a").first.get_attribute("href") == href.split("?")[0]  # no token in this tab
        with other.expect_download() as download:  # fetched with the key instead
            other.click("#files a")
        assert json.loads(Path(download.value.path()).read_text())["words"] == 3
        context.close()
        expected_401 = "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
        assert [error for error in opened.errors if error != expected_401] == []
