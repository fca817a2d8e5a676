"""EventPrinter: how ``factory invoke`` shows a job's events in the terminal.

``content`` text goes to stdout as it arrives, with no separator; ``progress`` drives a rich
progress bar (on a terminal only, so piped output stays just the text and the result); the
``done`` data is pretty-printed on stdout; an ``error`` is shown in red with its code on
stderr; any other event is one dim line on stderr.

While the bar is live, rich redraws it on the last line, so a partial line of content would be
erased: content then goes out a complete line at a time, and the unfinished line shows in the
bar's description until it is complete or the stream ends.
"""

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.control import Control
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.segment import ControlType

from factory_client.client import StreamedEvent

_DESCRIPTION_CHARS = 40


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def progress_fraction(data: Any) -> tuple[float, float] | None:
    """(completed, total) of a progress event: ``current``/``total``, else ``percentage`` of 100."""
    if not isinstance(data, dict):
        return None
    current, total = _number(data.get("current")), _number(data.get("total"))
    if current is not None and total is not None and total > 0:
        return current, total
    percentage = _number(data.get("percentage"))
    return (percentage, 100.0) if percentage is not None else None


class EventPrinter:
    """Renders one job's events; :meth:`follow` returns the exit status (0 done, 1 error)."""

    def __init__(self, out: Console, err: Console) -> None:
        self.out = out
        self.err = err
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.pending = ""  # content not yet printed while the bar is live
        self.line = ""  # content printed on the current line, whose newline has not come yet
        self.label = "working"

    def follow(self, events: Iterable[StreamedEvent]) -> int:
        for streamed in events:
            if streamed.is_terminal:
                return self._terminal(streamed)
            self.show(streamed)
        self.close()
        self.err.print("[red]the stream ended without a terminal event[/red]")
        return 1

    def show(self, streamed: StreamedEvent) -> None:
        """Render one non-terminal event."""
        if streamed.type == "content":
            self._content(streamed.data if isinstance(streamed.data, str) else json.dumps(streamed.data))
        elif streamed.type == "progress":
            self._progress(streamed.data)
        elif streamed.type == "retry" and isinstance(streamed.data, dict):
            self.close()  # the job starts over: a fresh bar and a fresh line
            info = streamed.data
            self.err.print(
                f"[yellow]attempt {info.get('attempt')}/{info.get('max_attempts')} after "
                f"{escape(str(info.get('error_code')))}: {escape(str(info.get('reason', ''))[:300])}[/yellow]"
            )
        else:
            if streamed.type == "start" and isinstance(streamed.data, dict):
                self.label = str(streamed.data.get("message") or self.label)
            text = json.dumps(streamed.data, ensure_ascii=False, default=str)
            self._line(f"[dim]{escape(streamed.type)}: {escape(text[:300])}[/dim]")

    def close(self) -> None:
        """Stop the bar and end the open line of content."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.pending:
            self._print_inline(self.pending)
            self.pending = ""
        if self.line:
            self.out.print()
            self.line = ""

    def _terminal(self, streamed: StreamedEvent) -> int:
        self.close()
        if streamed.type == "done":
            data = streamed.data
            if isinstance(data, str):
                self.out.print(data, markup=False, highlight=False)
            elif data is not None:
                self.out.print_json(data=data, default=str)
            return 0
        code = streamed.event.get("error_code") or "ERROR"
        message = streamed.data if isinstance(streamed.data, str) else json.dumps(streamed.data, default=str)
        self.err.print(f"[bold red]error {escape(str(code))}[/bold red]: [red]{escape(message)}[/red]")
        return 1

    def _content(self, text: str) -> None:
        if self.progress is None:
            self._print_inline(text)
            return
        self.pending += text
        complete, newline, rest = self.pending.rpartition("\n")
        if newline:
            self.progress.console.print(complete, markup=False, highlight=False)
            self.pending = rest
        self._describe()

    def _progress(self, data: Any) -> None:
        fraction = progress_fraction(data)
        if isinstance(data, dict) and data.get("message"):
            self.label = str(data["message"])
        if not self.out.is_terminal:
            return
        if self.progress is None:
            self._take_back_line()
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=self.out,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=None)
        assert self.task is not None
        if fraction is not None:
            self.progress.update(self.task, completed=fraction[0], total=fraction[1])
        self._describe()

    def _describe(self) -> None:
        if self.progress is not None and self.task is not None:
            tail = self.pending[-_DESCRIPTION_CHARS:]
            self.progress.update(self.task, description=escape(tail or self.label))

    def _print_inline(self, text: str) -> None:
        self.out.print(text, end="", markup=False, highlight=False)
        _, newline, after = text.rpartition("\n")
        self.line = after if newline else self.line + text

    def _take_back_line(self) -> None:
        """Before the bar appears: erase the open line of content and carry it on in ``pending``."""
        if not self.line:
            return
        if len(self.line) < self.out.width:  # one screen row: erase it, it is printed again once complete
            self.out.control(Control((ControlType.CARRIAGE_RETURN,), (ControlType.ERASE_IN_LINE, 2)))
            self.pending = self.line
        else:
            self.out.print()
        self.line = ""

    def _line(self, markup: str) -> None:
        """One full line on stderr, below any open line of content."""
        if self.line and self.progress is None and self.err.is_terminal and self.out.is_terminal:
            self.out.print()
            self.line = ""
        self.err.print(markup)
