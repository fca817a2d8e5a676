"""Unit tests for src/main.py: every function is called directly, as the guide shows."""

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from main import batch_process, chat_stream, my_stream_function, process_large_file, word_count

Event = dict[str, Any]


def check_stream(events: list[Event]) -> None:
    """The guide's checks: start first, done last, progress present, data everywhere, current <= total."""
    assert events[0]["type"] == "start"
    assert events[-1]["type"] == "done"
    assert any(e["type"] == "progress" for e in events)
    for event in events:
        assert "data" in event
        if event["type"] == "progress":
            assert event["data"]["current"] <= event["data"]["total"]


# --- my_stream_function -----------------------------------------------------


def test_my_stream_function() -> None:
    result = list(my_stream_function("test"))
    check_stream(result)
    assert result[0]["data"]["param"] == "test"
    progress = [e["data"] for e in result if e["type"] == "progress"]
    assert [p["current"] for p in progress] == [1, 2, 3, 4, 5]
    assert [p["percentage"] for p in progress] == [20, 40, 60, 80, 100]
    assert progress[2]["result"] == {"step": 3, "square": 9, "cube": 27}
    assert result[-1]["data"]["status"] == "completed"


# --- batch_process ----------------------------------------------------------


def test_batch_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("main.ITEM_DELAY_S", 0)
    result = list(batch_process(["a", 2, "bc", 1.5]))
    check_stream(result)
    assert result[0]["data"]["total"] == 4
    progress = [e["data"] for e in result if e["type"] == "progress"]
    assert [p["result"] for p in progress] == ["A", 4, "BC", 3.0]
    assert progress[-1]["percentage"] == 100
    assert result[-1]["data"]["results"] == ["A", 4, "BC", 3.0]


def test_batch_process_empty() -> None:
    result = list(batch_process([]))
    assert [e["type"] for e in result] == ["start", "done"]
    assert result[-1]["data"]["total"] == 0


def test_batch_process_bad_item() -> None:
    result = list(batch_process(["ok", {"not": "supported"}]))
    assert result[0]["type"] == "start"
    assert result[-1]["type"] == "error"
    assert result[-1]["error_code"] == "PROCESSING_ERROR"
    assert "dict" in result[-1]["data"]


# --- process_large_file -----------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A job workspace as the platform prepares it: cwd with data/inputs/input/sample.txt (250 lines)."""
    monkeypatch.chdir(tmp_path)
    input_dir = tmp_path / "data" / "inputs" / "input"
    input_dir.mkdir(parents=True)
    lines = [f"line {i} has five words" for i in range(250)]
    (input_dir / "sample.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def test_process_large_file(workspace: Path) -> None:
    result = list(process_large_file())
    check_stream(result)
    assert result[0]["data"]["total_lines"] == 250
    progress = [e["data"] for e in result if e["type"] == "progress"]
    assert [p["processed"] for p in progress] == [100, 200]
    assert [p["percentage"] for p in progress] == [40, 80]
    done = result[-1]["data"]
    assert done["processed"] == 250
    assert done["output"] == "sample.summary.json"

    summary_file = workspace / "data" / "outputs" / "sample.summary.json"
    assert summary_file.is_file()
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    assert summary["lines"] == 250
    assert summary["words"] == 250 * 5
    expected_chars = sum(len(f"line {i} has five words") for i in range(250))
    assert summary["chars"] == expected_chars


def test_process_large_file_explicit_relative_path(workspace: Path) -> None:
    result = list(process_large_file("sample.txt"))
    assert result[-1]["type"] == "done"
    assert result[-1]["data"]["processed"] == 250


def test_process_large_file_progress_only_when_percentage_changes(workspace: Path) -> None:
    big = workspace / "data" / "inputs" / "input" / "sample.txt"
    big.write_text("x\n" * 30_000, encoding="utf-8")
    result = list(process_large_file())
    percentages = [e["data"]["percentage"] for e in result if e["type"] == "progress"]
    # 300 reports are due (every 100 lines), but only 101 distinct percentages: 0, 1, ..., 100
    assert percentages == list(range(101))
    assert result[-1]["data"]["processed"] == 30_000


def test_process_large_file_missing(workspace: Path) -> None:
    result = list(process_large_file("nope.txt"))
    assert len(result) == 1
    assert result[0]["type"] == "error"
    assert result[0]["error_code"] == "FILE_ERROR"


def test_process_large_file_no_input_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = list(process_large_file())
    assert result[-1]["type"] == "error"
    assert result[-1]["error_code"] == "FILE_ERROR"


@pytest.mark.parametrize("bad_path", ["../../../etc/passwd", "/etc/passwd", "../input/../../secret.txt"])
def test_process_large_file_rejects_escaping_paths(workspace: Path, bad_path: str) -> None:
    (workspace / "data" / "secret.txt").write_text("secret\n", encoding="utf-8")
    result = list(process_large_file(bad_path))
    assert [e["type"] for e in result] == ["error"]
    assert result[0]["error_code"] == "FILE_ERROR"
    assert not (workspace / "data" / "outputs").exists()


# --- chat_stream ------------------------------------------------------------

REPLY_PIECES = ["Hel", "lo, ", "world", "!"]


class FakeOpenAIHandler(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible server: POST /v1/chat/completions streams REPLY_PIECES as SSE."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "authorization": self.headers.get("Authorization"), "body": body}
        )
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        deltas: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": ""}, None)]
        deltas += [({"content": piece}, None) for piece in REPLY_PIECES]
        deltas.append(({}, "stop"))
        for delta, finish_reason in deltas:
            chunk = {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeOpenAIHandler]]:
    """Run the fake server on loopback and point the OpenAI client at it."""
    FakeOpenAIHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAIHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    try:
        yield FakeOpenAIHandler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_chat_stream(openai_server: type[FakeOpenAIHandler]) -> None:
    messages = [{"role": "user", "content": "Say hello"}]
    result = list(chat_stream(messages, model="test-model"))
    assert result[0] == {"type": "start", "data": {"model": "test-model"}}
    assert result[-1] == {"type": "done", "data": {"finish_reason": "stop"}}
    contents = [e["data"] for e in result if e["type"] == "content"]
    assert contents == REPLY_PIECES
    assert "".join(contents) == "Hello, world!"
    assert all(e["type"] in {"start", "content", "done"} for e in result)

    (request,) = openai_server.requests
    assert request["authorization"] == "Bearer test-key"
    assert request["body"]["model"] == "test-model"
    assert request["body"]["messages"] == messages
    assert request["body"]["stream"] is True


def test_chat_stream_default_model(openai_server: type[FakeOpenAIHandler]) -> None:
    result = list(chat_stream([{"role": "user", "content": "hi"}]))
    assert result[0]["data"]["model"] == "gpt-4o-mini"
    assert openai_server.requests[0]["body"]["model"] == "gpt-4o-mini"


def test_chat_stream_server_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # find a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    result = list(chat_stream([{"role": "user", "content": "hi"}]))
    assert result[0]["type"] == "start"
    assert result[-1]["type"] == "error"
    assert result[-1]["error_code"] == "LLM_ERROR"
    assert result[-1]["data"]


def test_chat_stream_missing_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = list(chat_stream([{"role": "user", "content": "hi"}]))
    assert [e["type"] for e in result] == ["error"]
    assert result[0]["error_code"] == "LLM_ERROR"


# --- word_count -------------------------------------------------------------


def test_word_count() -> None:
    text = "the cat and the hat\nThe end, and that's it"
    result = word_count(text)
    assert result == {"words": 10, "lines": 2, "top": [["the", 3], ["and", 2], ["cat", 1]]}


def test_word_count_top_and_empty() -> None:
    assert word_count("a b a", top=1)["top"] == [["a", 2]]
    assert word_count("It\u2019s DON'T don't")["top"] == [["don't", 2], ["it\u2019s", 1]]
    assert word_count("a b a", top=0)["top"] == []
    assert word_count("") == {"words": 0, "lines": 0, "top": []}
    with pytest.raises(ValueError):
        word_count("a", top=-1)
