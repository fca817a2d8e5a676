"""An OpenAI-compatible chat server on loopback: a real HTTP server standing in for a third-party
service that cannot be reached from here. It streams a fixed reply as ``chat.completion.chunk``
events and remembers the requests it saw."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

REPLY = ["Hel", "lo", ", world"]


@dataclass
class OpenAIDouble:
    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


def _chunk(model: str, content: str | None, finish: str | None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


@contextmanager
def openai_double() -> Iterator[OpenAIDouble]:
    double = OpenAIDouble(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
            double.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"), **body})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in REPLY:
                self.wfile.write(_chunk(body["model"], piece, None))
                self.wfile.flush()
            self.wfile.write(_chunk(body["model"], None, "stop") + b"data: [DONE]\n\n")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    double.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
