"""Where the first event's milliseconds go: py-spy on the gateway and the worker (its work horse and
runner included) while one caller makes the two-request call of ``firehose(count=1)`` again and again.

    python -m bench.profile_first_event OUTDIR [CALLS]

Writes ``gateway.txt`` and ``worker.txt`` (py-spy's collapsed stacks: one line per stack with its
sample count; ``--gil``: only threads holding the GIL, so waits on the network or another process
do not show) and
prints, per process, the CPU ms per call of each step of the path (each stack counted once, under
the first step one of its frames matches), then under each frame that takes at least 2 % of it.
Sampling at 1,000 Hz over a few hundred calls, each frame's figure is good to about ±0.05 ms. The
same number of calls is made first without py-spy, and the CPU each process used per call read
from /proc: py-spy's figures are samples × 1 ms, so compare their shares, and scale them to that.
"""

import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.context import QUICK, Context
from bench.procs import Cluster, raise_open_files_limit, tree_cpu_s
from bench.results import percentile
from bench.scenarios.peer import two_request_ms
from bench.stack import factory_stack

RATE_HZ = 1000
WARMUP_CALLS = 20


def _py_spy(pid: int, out: Path, subprocesses: bool) -> subprocess.Popen[bytes]:
    args = [
        "py-spy",
        "record",
        "-p",
        str(pid),
        "-r",
        str(RATE_HZ),
        "--gil",
        "--nonblocking",
        "--format",
        "raw",
        "-o",
        str(out),
    ]
    if subprocesses:
        args.append("--subprocesses")
    py_spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen([str(py_spy), *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(30)


# Each on-CPU stack goes to the first step with a frame matching one of its patterns.
GATEWAY_STEPS: list[tuple[str, tuple[str, ...]]] = [
    ("POST: enqueue (RQ job, one script)", ("JobService.submit", "factory/enqueue.py", "_enqueue (gateway")),
    ("POST: validate, resolve the function", ("_prepare (gateway", "JobService.prepare")),
    ("POST: 202 body (URLs, token, JSON)", ("_accepted (gateway",)),
    ("GET: job lookup", ("JobService.get",)),
    ("GET: subscribe + confirm + log read", ("gateway/relay.py", "PubSub.")),
    ("GET: SSE response", ("sse_starlette/", "gateway/streaming.py")),
    ("logging", ("Logger.",)),
    ("HTTP/ASGI + FastAPI (parse, route, validate, serialize)", ("httptools_impl", "fastapi/", "starlette/")),
    ("event loop, other", ("",)),
]
WORKER_STEPS: list[tuple[str, tuple[str, ...]]] = [
    ("presence heartbeat", ("worker/presence.py",)),
    ("runner process (prefab code, its outbox)", ("prefab_runner.py",)),
    ("wake-up and take (BLPOP, RQ job, claim)", ("Engine._wait_for_job", "worker/rqjobs.py", "Engine._step")),
    ("first publish (log + channel)", ("worker/publisher.py",)),
    ("horse → runner hop", ("worker/runners.py", "Provisioner.", "InvocationRunner._follow")),
    ("job end (record, log line)", ("Engine._conclude", "worker/joblog.py")),
    (
        "dispatch and supervise (engine ↔ horse)",
        ("Engine._dispatch", "Engine._supervise", "Horse.", "_serve (worker/horse"),
    ),
    ("other", ("",)),
]


def steps_ms_per_call(path: Path, calls: int, steps: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str, float]]:
    per_step: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        for step, patterns in steps:
            if any(p in f for p in patterns for f in frames):
                per_step[step] += int(count)
                break
    ms = 1000 / RATE_HZ / calls
    return [(step, per_step[step] * ms) for step, _ in steps]


def inclusive_ms_per_call(path: Path, calls: int) -> list[tuple[str, float]]:
    """Each frame's samples (counted once per stack), as CPU ms per call, largest first."""
    per_frame: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for frame in set(stack.split(";")):
            per_frame[frame] += n
    ms = 1000 / RATE_HZ / calls
    floor = total * 0.02
    return [("(all samples)", total * ms)] + [(f, c * ms) for f, c in per_frame.most_common() if c >= floor]


async def _profile(out: Path, calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="factory-profile-") as tmp:
        cluster = Cluster(Path(tmp))
        cluster.start_redis()
        try:
            ctx = Context(cluster, QUICK)
            async with factory_stack(ctx) as stack:
                url = stack.gateway.url
                for _ in range(WARMUP_CALLS):
                    await two_request_ms(ctx, url)
                pids = {"gateway": stack.gateway.pid, "worker": stack.workers[0].pid}
                cpu0 = {name: tree_cpu_s(pid) for name, pid in pids.items()}
                plain = [await two_request_ms(ctx, url) for _ in range(calls)]
                cpu_ms = {name: (tree_cpu_s(pid) - cpu0[name]) * 1000 / calls for name, pid in pids.items()}
                spies = [
                    _py_spy(stack.gateway.pid, out / "gateway.txt", False),
                    _py_spy(stack.workers[0].pid, out / "worker.txt", True),
                ]
                await asyncio.sleep(2)  # py-spy attaches
                began = time.perf_counter()
                times = [await two_request_ms(ctx, url) for _ in range(calls)]
                span = time.perf_counter() - began
                for spy in spies:
                    await asyncio.to_thread(_stop, spy)
        finally:
            cluster.stop_all()
    sys.stdout.write(
        f"{calls} calls without py-spy: first event p50 {percentile(plain, 50):.2f} ms, "
        f"p99 {percentile(plain, 99):.2f} ms; CPU per call (from /proc): gateway {cpu_ms['gateway']:.2f} ms, "
        f"worker with its horse and runner {cpu_ms['worker']:.2f} ms\n"
        f"{calls} calls in {span:.1f} s: first event p50 {percentile(times, 50):.2f} ms, "
        f"p99 {percentile(times, 99):.2f} ms (py-spy attached)\n"
    )
    for name, steps in (("gateway", GATEWAY_STEPS), ("worker", WORKER_STEPS)):
        sys.stdout.write(f"\n{name}: CPU ms per call by step\n")
        for step, ms in steps_ms_per_call(out / f"{name}.txt", calls, steps):
            sys.stdout.write(f"  {ms:7.3f}  {step}\n")
    for name in ("gateway", "worker"):
        sys.stdout.write(f"\n{name}: CPU ms per call under each frame\n")
        for frame, ms in inclusive_ms_per_call(out / f"{name}.txt", calls):
            sys.stdout.write(f"  {ms:7.3f}  {frame}\n")


def main() -> None:
    out = Path(sys.argv[1])
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    out.mkdir(parents=True, exist_ok=True)
    raise_open_files_limit()
    asyncio.run(_profile(out.resolve(), calls))


if __name__ == "__main__":
    main()
