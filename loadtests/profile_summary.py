"""Summarize py-spy profiles of a worker: where the time goes, per thread, per component.

    py-spy record --pid <worker pid> --duration 20 --rate 100 --threads --nonblocking \
        --format raw -o worker.txt          # while wrk loads the service
    python -m loadtests.profile_summary worker*.txt [--only _run_once]

Each sample (one collapsed stack of py-spy's ``raw`` format) is charged to the deepest frame that
belongs to a known component: this service's stages, BentoML's middleware, Starlette, uvicorn,
asyncio, the model. Library frames (pandas, logging, prometheus_client, the OpenTelemetry SDK...)
are charged to the component that called them, so "access log" includes the logging module's
work for it. py-spy samples wall-clock time of threads that are not idle: on a busy machine a
share also contains time spent waiting for a CPU or the GIL at that point.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

Rule = tuple[str, Callable[[str], bool]]


def _any(*needles: str) -> Callable[[str], bool]:
    return lambda frame: any(n in frame for n in needles)


# Checked for each frame from the leaf up; the first frame matching any rule owns the sample.
RULES: tuple[Rule, ...] = (
    ("model: predict_proba (sklearn)", _any("sklearn/", "narwhals/")),
    ("DataFrame construction", _any("FeatureContract.frame", "bare_service.py")),
    ("validation", _any("service/validation.py")),
    ("JSON decode", _any("decode_json")),
    ("answer: render + JSON encode", _any("Predictor.render", "JSONResponse.render")),
    ("request id, context, events", _any("RequestContext", "new_request_id", "service/events")),
    ("batcher (service/batching.py)", _any("service/batching.py")),
    ("read body", _any("read_body")),
    (
        "service route, other",
        _any("service/http.py", "service/asgi.py", "service/inference.py", "service/model"),
    ),
    ("BentoML CorkDispatcher (adaptive batching)", _any("marshal/dispatcher.py")),
    ("BentoML API glue (IO models, serialization)", _any("_bentoml_impl/", "_bentoml_sdk/")),
    ("BentoML access log middleware", _any("http/access.py")),
    ("BentoML metrics middleware", _any("http/instruments.py")),
    (
        "OpenTelemetry ASGI middleware (spans)",
        _any("OpenTelemetryMiddleware", "opentelemetry", "_start_internal_or_server_span", "otel_"),
    ),
    ("BentoML other middleware (context, timeout)", _any("bentoml/_internal")),
    ("Starlette routing and middleware", _any("starlette/")),
    ("uvicorn: HTTP parsing and sockets", _any("uvicorn/", "h11", "httptools")),
    ("asyncio event loop", _any("asyncio/", "uvloop")),
    ("thread pool plumbing", _any("concurrent/futures", "threading.py")),
)


def owner(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, matches in RULES:
            if matches(frame):
                return name
    return "other"


def thread_of(header: str, stack: str) -> str:
    if "MainThread" in header:
        return "event loop (main thread)"
    if "_worker (concurrent" in stack or "AnyIO worker" in header or "model_" in header:
        return "model thread"
    return header.split(":", 1)[-1].strip() or header


def summarize(lines: Iterable[str], only: str | None = None) -> dict[str, Counter[str]]:
    """Samples per component, per thread, from py-spy ``raw`` lines (``a;b;c <count>``)."""
    result: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit() or (only and only not in stack):
            continue
        frames = stack.split(";")
        result[thread_of(frames[0], stack)][owner(frames[1:])] += int(count)
    return result


def render(result: dict[str, Counter[str]]) -> str:
    total = sum(sum(c.values()) for c in result.values())
    out = [f"{total} samples"]
    for thread, counts in sorted(result.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counts.values())
        out.append(f"\n{thread}: {n} samples ({n / total:.0%})")
        out += [f"  {m:7d} {m / n:6.1%}  {name}" for name, m in counts.most_common()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", type=Path, nargs="+", help="py-spy --format raw files")
    parser.add_argument("--only", help="keep only stacks containing this (e.g. _run_once)")
    args = parser.parse_args(argv)
    lines = (line for path in args.profiles for line in path.read_text().splitlines())
    sys.stdout.write(render(summarize(lines, args.only)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
