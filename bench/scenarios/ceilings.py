"""Scenario 1, ceilings: what a user gets with no factory at all.

Raw redis-py PUBLISH → asyncio subscriber (pipelined and one-by-one, msg/s; latency at a
fixed rate), and an sse-starlette endpoint streaming an in-process generator (events/s).
These are the baselines later scenarios compare to; measured here, they are reused.
"""

from bench import inprocess, pubsub
from bench.context import Context
from bench.results import Figure, ScenarioResult

NAME = "ceilings"


async def run(ctx: Context) -> ScenarioResult:
    raw = await ctx.baseline("pubsub", pubsub.measure)
    sse = await ctx.baseline("sse_stream", inprocess.stream)
    rate = f"{ctx.sizes.rate_hz:g}/s"
    single = "redis publish one-by-one"
    figures = [
        Figure(NAME, "redis publish pipelined → asyncio sub", raw["pipelined_msg_per_s"], "msg/s"),
        Figure(NAME, single, raw["single_msg_per_s"], "msg/s", "pipelined", raw["pipelined_msg_per_s"]),
        Figure(NAME, f"redis pub→sub latency p50 @{rate}", raw["paced_p50_ms"], "ms"),
        Figure(NAME, f"redis pub→sub latency p99 @{rate}", raw["paced_p99_ms"], "ms"),
        Figure(NAME, "sse-starlette in-process stream", sse["events_per_s"], "ev/s"),
        Figure(NAME, f"sse-starlette in-process latency p50 @{rate}", sse["paced_p50_ms"], "ms"),
        Figure(NAME, f"sse-starlette in-process latency p99 @{rate}", sse["paced_p99_ms"], "ms"),
    ]
    return ScenarioResult(NAME, figures, {"pubsub": raw, "sse_inprocess": sse})
