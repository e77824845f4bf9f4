"""What observability costs, and which part of it: this service with everything on, everything
off, and one side channel off at a time, served side by side and loaded in turns.

    python -m loadtests.overhead          # every variant, three scenarios, ~15 minutes
    python -m loadtests.overhead --variants on,off --scenarios single_c64 --reps 20

``make bench`` compares the service with its peers in rounds that restart every server; the
ratio of two of its rows then also carries how the machine's speed moved between them (on a
shared VM, tens of percent within minutes). Here every variant runs at once, idle but for its
turn; each repetition loads each variant for a few seconds, in a shuffled order, and a variant's
figure is the median over repetitions of its throughput divided by ``off``'s in the same
repetition: both sides of each ratio meet the machine within seconds of each other.

What a variant defers (log rows, access-log lines, metrics) is finished after its run: each run is
followed by a pause (``--settle``) in which nothing is loaded, so that none of it lands in the
next variant's run, and the server's CPU time (all its processes, from /proc) is counted from the
start of the run to the end of the pause, divided by the instances answered. That CPU per
instance is the cost with nothing left out; the throughput of a short run can still look better
than it would be sustained, by whatever was deferred past its end.

Drift runs are periodic (one run every ``DRIFT_INTERVAL_SECONDS`` over the window), not a cost per
request: here every variant runs them once an hour, so that no idle variant's run lands in
another's measurement. docs/drift.md, "Cost", has what a run costs.

Results go to ``loadtests/results/overhead.json`` and ``overhead.md``; ``make overhead`` runs it.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.bench import (
    DEFAULT_OUTPUT,
    DEFAULT_WORK,
    OFF_ENV_FILE,
    SCENARIOS,
    RunningServer,
    ServerSpec,
    loadavg,
    machine,
    measurement,
    progress,
    read_env_file,
    run_wrk,
    stop_servers_on_sigterm,
    write_bodies,
    write_results,
    wrk_version,
)
from loadtests.payloads import PayloadFactory
from service.model import load_model
from service.settings import get_settings

BASE = "off"
# Every variant: see the module's docstring.
COMMON_ENV = {"DRIFT_INTERVAL_SECONDS": "3600"}
# name: (what it is, the environment that makes it so)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "on": ("everything on", {}),
    "off": (f"observability off ({OFF_ENV_FILE.name})", read_env_file(OFF_ENV_FILE)),
    "no_prediction_log": (
        "prediction log off (and drift, which reads it)",
        {"PREDICTION_LOG_ENABLED": "false"},
    ),
    "no_metrics": ("metrics off (the service's and BentoML's)", {"METRICS_ENABLED": "false"}),
    "no_access_log": ("JSON access log off", {"ACCESS_LOG": "false"}),
}
DEFAULT_SCENARIOS = ("single_c64", "batch100_c16", "batch1000_c4")
SCENARIO_BY_NAME = {s.name: s for s in SCENARIOS if not s.half_saturation}
FIGURES = ("instances_per_second", "p50_ms", "p99_ms", "server_cpu_us_per_instance")


def tree_cpu_seconds(root: int) -> float:
    """User and system CPU time of process ``root`` and every process below it, now."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grown = {root}, True
    while grown:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= below
        grown = bool(below)
    return sum(cpu.get(pid, 0.0) for pid in tree)


def run(args: argparse.Namespace, log: Callable[[str], None] = progress) -> dict[str, Any]:
    import bentoml

    model = load_model(bentoml.models.get(args.model_tag))
    payloads = PayloadFactory.from_model(model, seed=args.seed)
    work: Path = args.work
    (work / "logs").mkdir(parents=True, exist_ok=True)
    bodies = write_bodies(work, model, payloads, {"instances"})
    started_at = datetime.now(UTC)
    load_before = loadavg()
    servers: dict[str, RunningServer] = {}
    runs: list[dict[str, Any]] = []
    shuffle = random.Random(args.seed)
    try:
        for name in args.variants:
            description, env = VARIANTS[name]
            spec = ServerSpec(name, description, "ours", "instances", {**COMMON_ENV, **env})
            log_path = work / "logs" / f"overhead-{name}.log"
            servers[name] = RunningServer(spec, model, work, None, log_path)
        for server in servers.values():
            server.wait_ready()
        for server in servers.values():
            server.wait_settled()
        for scenario in args.scenarios:
            path = bodies["instances", scenario.rows]
            for server in servers.values():  # warm-up, and the connections spread
                run_wrk(server.url + server.path, path, scenario.connections, args.warmup)
            for rep in range(args.reps):
                order = list(args.variants)
                shuffle.shuffle(order)
                for name in order:
                    server = servers[name]
                    cpu = tree_cpu_seconds(server.proc.pid)
                    wrk = run_wrk(
                        server.url + server.path, path, scenario.connections, args.duration
                    )
                    time.sleep(args.settle)  # what the run deferred is done in this pause
                    cpu = tree_cpu_seconds(server.proc.pid) - cpu
                    result = measurement(wrk, scenario.rows)
                    answered = result["instances_per_second"] * wrk["duration_us"] / 1e6
                    result["server_cpu_us_per_instance"] = round(cpu / max(answered, 1) * 1e6, 2)
                    runs.append({"scenario": scenario.name, "rep": rep, "variant": name, **result})
                log(f"{scenario.name} {rep + 1}/{args.reps}: " + ", ".join(
                    f"{r['variant']} {r['instances_per_second']:,.0f}/s"
                    for r in runs if r["scenario"] == scenario.name and r["rep"] == rep
                ))  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    return {
        "date": started_at.isoformat(timespec="seconds"),
        "duration_minutes": round((datetime.now(UTC) - started_at).total_seconds() / 60, 1),
        "machine": machine(),
        "load": {"loadavg_before": load_before, "loadavg_after": loadavg()},
        "model": model.tag,
        "settings": {
            "reps": args.reps,
            "seconds_per_run": args.duration,
            "settle_seconds": args.settle,
            "environment_of_every_variant": COMMON_ENV,
            "load_generator": wrk_version() + ", 1 thread",
            "scenarios": [s.name for s in args.scenarios],
            "variants": {name: VARIANTS[name][0] for name in args.variants},
        },
        "runs": runs,
        "summary": summarize(runs),
    }


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per scenario and variant: medians over repetitions, and the median of the ratios to
    ``off``'s throughput within each repetition (when ``off`` ran)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        mine = [r for r in runs if r["scenario"] == scenario]
        base = {r["rep"]: r["instances_per_second"] for r in mine if r["variant"] == BASE}
        summary[scenario] = {}
        for variant in dict.fromkeys(r["variant"] for r in mine):
            own = [r for r in mine if r["variant"] == variant]
            figures = {key: statistics.median(r[key] for r in own) for key in FIGURES}
            ratios = [r["instances_per_second"] / base[r["rep"]] for r in own if base.get(r["rep"])]
            if ratios:
                figures["ratio_to_off"] = round(statistics.median(ratios), 3)
                figures["ratio_to_off_min"] = round(min(ratios), 3)
                figures["ratio_to_off_max"] = round(max(ratios), 3)
            figures["reps"] = len(own)
            summary[scenario][variant] = figures
    return summary


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    s = results["settings"]
    lines = [
        f"Run of {results['date']} ({results['duration_minutes']} min), model "
        f"`{results['model']}`, on {m['cpus']} x {m['cpu_model']}, {m['memory_gib']} GiB, "
        f"{m['os']}, Python {m['python']}. Every variant served at once; {s['reps']} "
        f"repetitions of {s['seconds_per_run']:g} s per variant and scenario, in shuffled order, "
        f"each followed by {s['settle_seconds']:g} s unloaded ({s['load_generator']}); drift "
        f"runs hourly. Load average before {results['load']['loadavg_before']}, after "
        f"{results['load']['loadavg_after']}.",
        "",
    ]
    for scenario, variants in results["summary"].items():
        lines += [
            f"**{scenario}**",
            "",
            "| variant | instances/s | throughput / `off`'s (median; range) | server CPU per "
            "instance, run and pause | p50 / p99 ms |",
            "|---|---|---|---|---|",
        ]
        for name in [n for n in s["variants"] if n in variants]:  # in the order asked for
            f = variants[name]
            ratio = (
                f"{f['ratio_to_off']:.3f} ({f['ratio_to_off_min']:.2f} to "
                f"{f['ratio_to_off_max']:.2f})"
                if "ratio_to_off" in f
                else "-"
            )
            lines.append(
                f"| `{name}`: {s['variants'][name]} | {f['instances_per_second']:,.0f} | {ratio} "
                f"| {f['server_cpu_us_per_instance']:,.1f} us | {f['p50_ms']:.1f} / "
                f"{f['p99_ms']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def variant_setting(value: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE[;KEY=VALUE...]`` of ``--variant``."""
    name, _, settings = value.partition(":")
    items = [item for item in settings.split(";") if item]
    if not name or not items or any("=" not in item for item in items):
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME:KEY=VALUE[;KEY=VALUE...]")
    return name, dict(item.split("=", 1) for item in items)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    def names(known: Sequence[str]) -> Callable[[str], list[str]]:
        def parse(value: str) -> list[str]:
            # Once each: a name given twice would start a second server of that name, which the
            # run would neither load as its own nor stop.
            chosen = list(dict.fromkeys(x.strip() for x in value.split(",") if x.strip()))
            unknown = set(chosen) - set(known)
            if unknown:
                raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; known: {known}")
            return chosen

        return parse

    parser.add_argument("--variants", type=names(list(VARIANTS)), default=list(VARIANTS))
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        type=variant_setting,
        metavar="NAME:KEY=VALUE[;KEY=VALUE...]",
        help="one more variant, with these settings (e.g. 'batch2000:PREDICTION_LOG_BATCH_SIZE="
        "2000'); repeatable",
    )
    parser.add_argument(
        "--scenarios", type=names(list(SCENARIO_BY_NAME)), default=list(DEFAULT_SCENARIOS)
    )
    parser.add_argument("--reps", type=int, default=8, help="runs per variant and scenario")
    parser.add_argument("--duration", type=float, default=5, help="seconds per run")
    parser.add_argument(
        "--settle", type=float, default=1.5, help="seconds after each run, nothing loaded"
    )
    parser.add_argument("--warmup", type=float, default=3, help="seconds per variant and scenario")
    parser.add_argument("--model-tag", default=get_settings().model_tag)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "overhead")
    args = parser.parse_args(argv)
    args.scenarios = [SCENARIO_BY_NAME[name] for name in args.scenarios]
    taken = set(VARIANTS)
    for name, _ in args.variant:
        if name in taken:
            parser.error(f"--variant {name}: that name is taken; taken: {sorted(taken)}")
        taken.add(name)
    for name, env in args.variant:
        VARIANTS[name] = (", ".join(f"{k}={v}" for k, v in env.items()), env)
        args.variants.append(name)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_servers_on_sigterm()
    results = run(args)
    write_results(args.output, "overhead", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
