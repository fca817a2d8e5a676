"""Streaming examples prefab.

The examples of the streaming-functions guide, written as a real prefab:

- ``my_stream_function``: the quick-start generator (start -> progress x5 -> done).
- ``batch_process``: live progress while processing a list of items.
- ``process_large_file``: a line-by-line pass over an uploaded file (v3.0 files), writing a summary.
- ``chat_stream``: streamed LLM chat through any OpenAI-compatible server.
- ``word_count``: an ordinary (non-streaming) function, for contrast.

Every streaming function is a synchronous generator that yields events shaped
``{"type": "start" | "progress" | "content" | "done" | "error", "data": ...}``;
an ``error`` event also carries an ``error_code``.
"""

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openai import OpenAI

# Pause between items in batch_process (simulated work, so the stream is visible live).
ITEM_DELAY_S = 0.1
# Pause between the quick-start progress events.
STEP_DELAY_S = 0.05
# Number of steps of the quick-start example.
QUICK_START_STEPS = 5
# process_large_file reports progress every this many lines.
PROGRESS_EVERY_LINES = 100

# v3.0 file layout, relative to the job's working directory.
INPUT_DIR = Path("data") / "inputs" / "input"
OUTPUT_DIR = Path("data") / "outputs"

_WORD_RE = re.compile(r"\w+(?:['\u2019]\w+)*")  # apostrophes: ' and the typographic \u2019


class FileInputError(Exception):
    """The input file is missing, ambiguous or outside the input folder."""


# ---------------------------------------------------------------------------
# 1. Quick start
# ---------------------------------------------------------------------------


def process_data(i: int) -> dict[str, Any]:
    """Do one step of (toy) work for the quick-start example.

    Args:
        i: zero-based step index.

    Returns:
        The step's result: its number, its square and its cube.
    """
    step = i + 1
    return {"step": step, "square": step * step, "cube": step**3}


def my_stream_function(param: str) -> Iterator[dict[str, Any]]:
    """Streaming function example (the guide's quick start).

    Args:
        param: any text; it is echoed back in the start and done events.

    Yields:
        dict: SSE event data - one start, five progress events, one done.
    """
    try:
        total = QUICK_START_STEPS
        yield {"type": "start", "data": {"param": param, "total": total, "message": "starting"}}
        for i in range(total):
            result = process_data(i)
            yield {
                "type": "progress",
                "data": {
                    "current": i + 1,
                    "total": total,
                    "percentage": int(((i + 1) / total) * 100),
                    "message": f"step {i + 1} of {total}",
                    "result": result,
                },
            }
            time.sleep(STEP_DELAY_S)
        yield {"type": "done", "data": {"status": "completed", "param": param, "total_processed": total}}
    except Exception as e:
        yield {"type": "error", "data": str(e), "error_code": "UNEXPECTED_ERROR"}


# ---------------------------------------------------------------------------
# 2. Progress report (batch processing)
# ---------------------------------------------------------------------------


def process_item(item: Any) -> Any:
    """Process one item: upper-case a string, double a number.

    Args:
        item: a string or a number.

    Returns:
        The processed item.

    Raises:
        TypeError: for any other kind of item (booleans included).
    """
    if isinstance(item, str):
        return item.upper()
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        return item * 2
    raise TypeError(f"cannot process item of type {type(item).__name__}: {item!r}")


def batch_process(items: list) -> Iterator[dict[str, Any]]:
    """Batch-process items, reporting progress live.

    Args:
        items: strings (upper-cased) and/or numbers (doubled).

    Yields:
        dict: SSE event data - start, one progress event per item, done.
    """
    try:
        total = len(items)
        yield {"type": "start", "data": {"total": total, "message": f"start processing {total} items"}}
        results = []
        for i, item in enumerate(items, 1):
            result = process_item(item)
            results.append(result)
            yield {
                "type": "progress",
                "data": {
                    "current": i,
                    "total": total,
                    "percentage": int((i / total) * 100),
                    "item": item,
                    "result": result,
                },
            }
            time.sleep(ITEM_DELAY_S)  # simulated work
        yield {
            "type": "done",
            "data": {"total": total, "results": results, "message": "all items processed"},
        }
    except Exception as e:
        yield {"type": "error", "data": str(e), "error_code": "PROCESSING_ERROR"}


# ---------------------------------------------------------------------------
# 3. File processing stream (v3.0 files)
# ---------------------------------------------------------------------------


def _resolve_input_file(filepath: str) -> Path:
    """Find the input file inside ``data/inputs/input/``.

    Args:
        filepath: empty to use the single file of the input folder, else a path relative to it.

    Returns:
        The path of an existing regular file inside the input folder.

    Raises:
        FileInputError: when no such file can be found or the path leaves the input folder.
    """
    base = INPUT_DIR.resolve()
    if not filepath:
        files = sorted(p for p in base.iterdir() if p.is_file()) if base.is_dir() else []
        if len(files) != 1:
            raise FileInputError(f"expected exactly one input file in {INPUT_DIR}/, found {len(files)}")
        return files[0]
    requested = Path(filepath)
    if requested.is_absolute():
        raise FileInputError(f"filepath must be relative to {INPUT_DIR}/: {filepath}")
    path = (base / requested).resolve()
    if not path.is_relative_to(base):
        raise FileInputError(f"filepath escapes {INPUT_DIR}/: {filepath}")
    if not path.is_file():
        raise FileInputError(f"input file not found: {filepath}")
    return path


def process_line(line: str) -> dict[str, int]:
    """Measure one line of text.

    Args:
        line: the line, with or without its line ending.

    Returns:
        Its word and character counts (the line ending is not counted).
    """
    text = line.rstrip("\r\n")
    return {"words": len(text.split()), "chars": len(text)}


def process_large_file(filepath: str = "") -> Iterator[dict[str, Any]]:
    """Process a big text file line by line and write a summary next to the outputs.

    The platform downloads the input file into ``data/inputs/input/`` (relative to the
    working directory) before the call; the summary is written to
    ``data/outputs/<stem>.summary.json`` and uploaded by the platform after the stream ends.

    Args:
        filepath: optional path relative to ``data/inputs/input/``; empty means the single
            file found there.

    Yields:
        dict: SSE event data - start (total_lines), progress every 100 lines when the
        percentage changes, done (processed, output).
    """
    try:
        path = _resolve_input_file(filepath)
        with path.open(encoding="utf-8", errors="replace") as f:
            total_lines = sum(1 for _ in f)
        yield {"type": "start", "data": {"file": path.name, "total_lines": total_lines}}

        processed = words = chars = 0
        last_percentage = -1
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                result = process_line(line)
                words += result["words"]
                chars += result["chars"]
                processed += 1
                if processed % PROGRESS_EVERY_LINES == 0:  # report every 100 lines...
                    percentage = int((processed / total_lines) * 100)
                    if percentage != last_percentage:  # ...and only when the percentage changes
                        last_percentage = percentage
                        yield {
                            "type": "progress",
                            "data": {
                                "current": processed,
                                "processed": processed,
                                "total": total_lines,
                                "percentage": percentage,
                            },
                        }

        summary = {"file": path.name, "lines": processed, "words": words, "chars": chars}
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        output = OUTPUT_DIR / f"{path.stem}.summary.json"
        output.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        yield {"type": "done", "data": {"processed": processed, "output": output.name, "summary": summary}}
    except (FileInputError, OSError) as e:
        yield {"type": "error", "data": str(e), "error_code": "FILE_ERROR"}
    except Exception as e:
        yield {"type": "error", "data": str(e), "error_code": "UNEXPECTED_ERROR"}


# ---------------------------------------------------------------------------
# 4. LLM streaming output
# ---------------------------------------------------------------------------


def chat_stream(messages: list, model: str = "gpt-4o-mini") -> Iterator[dict[str, Any]]:
    """Streaming LLM chat through an OpenAI-compatible API.

    Reads the ``OPENAI_API_KEY`` secret and the optional ``OPENAI_BASE_URL`` (unset means the
    OpenAI default) from the environment.

    Args:
        messages: chat messages, e.g. ``[{"role": "user", "content": "Hello"}]``.
        model: the model name.

    Yields:
        dict: SSE event data - start (model), content text fragments, done (finish_reason).
    """
    client = None
    stream = None
    try:
        client = OpenAI(
            api_key=os.environ.get("OPENAI_API_KEY"),
            base_url=os.environ.get("OPENAI_BASE_URL") or None,
        )
        yield {"type": "start", "data": {"model": model}}
        stream = client.chat.completions.create(model=model, messages=messages, stream=True)
        finish_reason = "stop"
        for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.delta is not None and choice.delta.content:
                yield {"type": "content", "data": choice.delta.content}
            if choice.finish_reason:
                finish_reason = choice.finish_reason
        yield {"type": "done", "data": {"finish_reason": finish_reason}}
    except Exception as e:
        yield {"type": "error", "data": str(e), "error_code": "LLM_ERROR"}
    finally:  # release the connection even if the client stops reading early
        if stream is not None:
            stream.close()
        if client is not None:
            client.close()


# ---------------------------------------------------------------------------
# 5. A non-streaming function
# ---------------------------------------------------------------------------


def word_count(text: str, top: int = 3) -> dict[str, Any]:
    """Count the words and lines of a text and list its most frequent words.

    Words are runs of letters/digits (apostrophes inside a word are kept), compared
    case-insensitively; ties keep the order of first appearance.

    Args:
        text: the text.
        top: how many of the most frequent words to return (0 or more).

    Returns:
        ``{"words": n, "lines": n, "top": [[word, count], ...]}``.

    Raises:
        ValueError: if ``top`` is negative.
    """
    if top < 0:
        raise ValueError("top must be 0 or more")
    words = _WORD_RE.findall(text.lower())
    return {
        "words": len(words),
        "lines": len(text.splitlines()),
        "top": [[word, count] for word, count in Counter(words).most_common(top)],
    }
