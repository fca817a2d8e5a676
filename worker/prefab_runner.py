"""The prefab runner: a long-lived process inside a prefab version's own environment.

Started by a work horse with that environment's ``python -I`` and this file's path, so it must
import nothing but the standard library (the factory's packages are not installed there). It
imports the prefab once, then runs one job at a time as the horse orders over a pipe
(``multiprocessing.connection`` framing: one message per order or reply), and sends back every
value the function yields. Everything about Redis, events' ``seq``, deadlines, files and
retries stays in the horse: this process holds no credentials and knows only its own job.

Before any code of the environment runs it confines itself (its interpreter is started with
``-S``, so not even a ``.pth`` file of an installed package runs before; ``site`` is set up after):
when asked, an empty network namespace (root, where bubblewrap did not make one); no core dumps,
limits on processes, open files, file size and address space (a ``MemoryError`` then ends the
job as ``RESOURCE_EXHAUSTED``); when started as root, the unprivileged uid it is given, with no
supplementary groups; ``PR_SET_NO_NEW_PRIVS``. It dies with its horse. What it is given comes as
one JSON argument (:class:`worker.runners.RunnerSpec` makes it).

Messages to the horse are a one-letter tag and a payload:

- ``Y`` the prefab imported (after start); ``I<reason>`` it did not, and the runner exits;
- ``E<json>[\n<json>...]`` yielded values, one a line (compact JSON has no raw newline);
  ``N<reason>`` a yielded value that is not JSON;
- ``F`` the generator returned; ``R<json>`` a plain function's return value;
- ``X<json {"type", "message", "traceback"}>`` the function raised;
- ``M<message>`` it ran out of memory (the runner exits after);
- ``C<json>`` the answer to a ``check`` order: each declared function's kind and parameters.
"""

import _signal  # type: ignore[import-not-found]  # the C module under ``signal``
import ctypes
import importlib
import importlib.util
import inspect
import json
import logging
import os
import resource
import signal
import site
import sys
import threading
import traceback
from collections.abc import Generator
from multiprocessing.connection import Connection
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000
LOG_RECORD_MARK = "\x1eLOG "  # as worker.runners reads it
_TERMINAL_TYPES = ("done", "error")
MAX_PENDING = 1024  # values yielded and not yet written, before the generator waits


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _limit(which: int, value: int) -> None:
    if value > 0:
        resource.setrlimit(which, (value, value))


def _confine(config: dict[str, Any]) -> None:
    """Limit what the prefab can do to the machine before any of its code (or its environment's) runs."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config.get("unshare_net"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "cannot make an empty network namespace (network policy none)")
    _limit(resource.RLIMIT_NOFILE, int(config.get("max_open_files", 0)))
    _limit(resource.RLIMIT_FSIZE, int(config.get("max_file_bytes", 0)))
    uid = int(config.get("uid", -1))
    if uid >= 0 and os.getuid() == 0:
        _limit(resource.RLIMIT_NPROC, int(config.get("max_processes", 0)))
        os.setgroups([])
        os.setgid(int(config.get("gid", -1)) if int(config.get("gid", -1)) >= 0 else uid)
        os.setuid(uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    # After the uid change, which clears it: die with the horse that started us.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _limit(resource.RLIMIT_AS, int(config.get("memory_bytes", 0)))
    site.main()  # the environment's site-packages (and its .pth files), now that nothing is left to take


class _ForwardRecords(logging.Handler):
    """The prefab's ``logging`` records, one JSON line each on stderr, for the horse to log as the job's."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.__stderr__
        if stream is None:
            return
        try:
            data = {"logger": record.name, "level": record.levelname, "msg": record.getMessage()}
            stream.write(LOG_RECORD_MARK + json.dumps(data) + "\n")
            stream.flush()
        except Exception:  # a record that cannot be formatted must not break the prefab
            self.handleError(record)


def _import_prefab(code_dir: str) -> Any:
    """Import ``src.main``: from the folder ``code_dir`` (run in place), else from site-packages.

    ``src/`` itself goes on ``sys.path`` too, so ``from helpers import x`` finds the prefab's own
    sibling module, as the prefab's tests import it.
    """
    if code_dir:
        sys.path.insert(0, code_dir)
        src_dir = os.path.join(code_dir, "src")
    else:
        spec = importlib.util.find_spec("src")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the environment has no top-level package 'src' (is the prefab wheel installed?)")
        src_dir = list(spec.submodule_search_locations)[0]
    sys.path.insert(0, src_dir)
    return importlib.import_module("src.main")


def _values(function: Any, inputs: dict[str, Any]) -> Generator[Any, None, None]:
    """What the function produces, whatever its kind; a plain result comes back as ``("R", value)``."""
    if inspect.isasyncgenfunction(function):
        import asyncio  # here: ~30 ms of every runner's start for a prefab that has no async function

        loop = asyncio.new_event_loop()
        agen = function(**inputs)
        try:
            while True:
                try:
                    yield loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.run_until_complete(agen.aclose())
            loop.close()
    elif inspect.isgeneratorfunction(function):
        yield from function(**inputs)
    elif inspect.iscoroutinefunction(function):
        import asyncio

        loop = asyncio.new_event_loop()
        try:
            raise _Returned(loop.run_until_complete(function(**inputs)))
        finally:
            loop.close()
    else:
        raise _Returned(function(**inputs))


class _Returned(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


# One encoder for every value: ``json.dumps`` with options builds a new one per call (half its cost).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


class _Outbox(threading.Thread):
    """Sends the runner's messages in order from a thread of its own, coalescing yielded values.

    While one message is on its way, the values yielded meanwhile gather and leave as one ``E``
    message (one per line): a fast generator pays one write per batch, and a lone value leaves at
    once. A job's first value is written by the generator's own thread when nothing is on its way
    (the moment a caller waits for should not wait for a thread to wake). At most
    :data:`MAX_PENDING` values wait; a generator faster than the horse reads waits too.
    """

    def __init__(self, conn: Connection) -> None:
        super().__init__(name="runner-outbox", daemon=True)
        self.conn = conn
        self.cond = threading.Condition()
        self.pending: list[tuple[bytes, bytes]] = []
        self.sending = False

    def put(self, tag: bytes, payload: bytes = b"", *, at_once: bool = False) -> None:
        """Queue a message for the thread; with ``at_once`` and nothing queued or on its way, write it
        here instead (a job's first value: a hand-off to the thread would only delay it)."""
        with self.cond:
            while len(self.pending) >= MAX_PENDING:
                self.cond.wait()
            direct = at_once and not self.pending and not self.sending
            if direct:
                self.sending = True
            else:
                self.pending.append((tag, payload))
                if len(self.pending) == 1:  # it was empty: the sender may be waiting for it
                    self.cond.notify_all()
        if direct:
            try:
                self.conn.send_bytes(tag + payload)
            except OSError:
                os._exit(1)  # the horse is gone
            with self.cond:
                self.sending = False
                self.cond.notify_all()

    def drain(self) -> None:
        """Return once every message put so far has been written."""
        with self.cond:
            while self.pending or self.sending:
                self.cond.wait()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.pending or self.sending:  # a direct write (``put(at_once=True)``) goes first
                    self.cond.wait()
                batch, self.pending, self.sending = self.pending, [], True
                self.cond.notify_all()
            try:
                for message in _coalesced(batch):
                    self.conn.send_bytes(message)
            except OSError:
                os._exit(1)  # the horse is gone
            with self.cond:
                self.sending = False
                self.cond.notify_all()


def _coalesced(batch: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Consecutive ``E`` values joined into one message; every other message as it is."""
    messages: list[bytes] = []
    values: list[bytes] = []
    for tag, payload in batch:
        if tag == b"E":
            values.append(payload)
            continue
        if values:
            messages.append(b"E" + b"\n".join(values))
            values = []
        messages.append(tag + payload)
    if values:
        messages.append(b"E" + b"\n".join(values))
    return messages


class _Job:
    def __init__(self, outbox: _Outbox, module: Any, order: dict[str, Any], environ: dict[str, str]) -> None:
        self.outbox = outbox
        self.module = module
        self.order = order
        self.environ = environ  # what the environment is between jobs: put back as it was after each

    def run(self) -> None:
        order, send = self.order, self.outbox.put
        os.environ.update(order.get("env", {}))
        os.chdir(order["cwd"])
        try:
            function = getattr(self.module, order["function"])
            values = _values(function, order["inputs"])
            first = True
            try:
                for value in values:
                    try:
                        raw = _dumps(value)
                    except (TypeError, ValueError) as exc:
                        reason = f"{type(value).__name__} value is not JSON-serialisable: {exc}"
                        send(b"N", reason.encode())
                        return
                    send(b"E", raw, at_once=first)
                    first = False
                    if isinstance(value, dict) and value.get("type") in _TERMINAL_TYPES:
                        break  # the stream ended: the generator is closed, as the seed's rule says
            finally:
                values.close()
            send(b"F")
        except _Returned as returned:
            try:
                send(b"R", _dumps(returned.value))
            except (TypeError, ValueError) as exc:
                send(b"N", f"the return value is not JSON-serialisable: {exc}".encode())
        finally:
            os.environ.clear()
            os.environ.update(self.environ)


def _kind(function: Any) -> str:
    if inspect.isasyncgenfunction(function):
        return "async_generator"
    if inspect.isgeneratorfunction(function):
        return "generator"
    if inspect.iscoroutinefunction(function):
        return "coroutine"
    return "function" if callable(function) and not inspect.isclass(function) else "not_callable"


def _check(module: Any, names: list[str]) -> dict[str, Any]:
    """Each declared function as the imported code has it (None: missing or not a function)."""
    found: dict[str, Any] = {}
    for name in names:
        function = getattr(module, name, None)
        kind = _kind(function) if function is not None else "missing"
        if function is None or kind == "not_callable":
            found[name] = None
            continue
        try:
            parameters = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            parameters = []
        named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        found[name] = {
            "is_async": kind in ("coroutine", "async_generator"),
            "is_generator": kind in ("generator", "async_generator"),
            "params": [p.name for p in named],
            "required": [p.name for p in named if p.default is p.empty],
            "accepts_any_keyword": any(p.kind == p.VAR_KEYWORD for p in parameters),
        }
    return found


def _handlers() -> dict[int, Any]:
    # ``_signal``'s own calls: ``signal.getsignal`` turns each handler into an enum member, by
    # raising and catching an exception for a function, ~0.1 ms a job for all of them.
    return {sig: _signal.getsignal(sig) for sig in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}}


def _restore_handlers(handlers: dict[int, Any]) -> None:
    """Put back the signal handlers a job changed (SIGTERM's, say), so the next job starts clean."""
    for sig, handler in handlers.items():
        if handler is not None and _signal.getsignal(sig) is not handler:
            _signal.signal(sig, handler)


def _serve(conn: Connection, module: Any) -> None:
    handlers = _handlers()
    # Taken once, as the handlers are: every job ends with the environment put back to it (whatever
    # the job or a thread it left behind set), and a job's start, on the way to its first value,
    # copies nothing.
    environ = dict(os.environ)
    outbox = _Outbox(conn)
    outbox.start()
    while True:
        try:
            order = json.loads(conn.recv_bytes())
        except EOFError:
            return
        if order["op"] == "check":
            outbox.put(b"C", _dumps(_check(module, order["functions"])))
            continue
        try:
            _Job(outbox, module, order, environ).run()
            _restore_handlers(handlers)
        except MemoryError:
            outbox.put(b"M", b"the job ran out of memory (its limit is the manifest's execution_environment.memory)")
            outbox.drain()
            os._exit(3)
        except BaseException as exc:  # the prefab raised: report it, keep serving
            report = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
            outbox.put(b"X", _dumps(report))
            _restore_handlers(handlers)
            if not isinstance(exc, Exception):
                outbox.drain()
                os._exit(1)  # SystemExit, KeyboardInterrupt: the prefab asked to stop the process


def main() -> None:
    fd, config = int(sys.argv[1]), json.loads(sys.argv[2])
    conn = Connection(fd)
    try:
        _confine(config)
    except OSError as exc:
        conn.send_bytes(f"Icannot confine the prefab's process: {exc}".encode())
        os._exit(2)
    os.environ.pop("PWD", None)  # bubblewrap sets it; the environment is the horse's allowlist alone
    # The horse decides when a job stops (it kills this process); a stray signal does not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, handlers=[_ForwardRecords()])
    # The horse died before the death signal was set (in a pid namespace, 1 is bubblewrap's init instead).
    if os.getppid() == 1 and not config.get("pid_namespace"):
        os._exit(1)
    try:
        module = _import_prefab(str(config.get("code_dir", "")))
    except BaseException as exc:  # anything the prefab's import raises, reported verbatim
        conn.send_bytes(b"I" + f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}".encode())
        os._exit(2)
    conn.send_bytes(b"Y")
    _serve(conn, module)


if __name__ == "__main__":
    main()
