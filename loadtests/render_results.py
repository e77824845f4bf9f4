"""Render a benchmark result (``loadtests/results/bench.json``, and ``soak.json`` when present)
as markdown; optionally put it into the README between the ``bench-results`` markers.

    python -m loadtests.render_results                     # print the markdown
    python -m loadtests.render_results --readme README.md  # replace the README's table
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from loadtests.bench import DEFAULT_OUTPUT

START = "<!-- bench-results:start (python -m loadtests.render_results --readme README.md) -->"
END = "<!-- bench-results:end -->"

# (scenario, column title, throughput key)
COLUMNS = (
    ("single_c16", "1 instance, c=16: req/s (p50 / p99 ms)", "requests_per_second"),
    ("single_c64", "1 instance, c=64: req/s (p50 / p99 ms)", "requests_per_second"),
    ("batch100_c16", "100 instances, c=16: instances/s (p50 / p99 ms)", "instances_per_second"),
    ("batch1000_c4", "1000 instances, c=4: instances/s (p50 / p99 ms)", "instances_per_second"),
    (
        "single_half_saturation",
        "1 instance paced at half of bare's c=64: req/s (p99 ms)",
        "requests_per_second",
    ),
)


def _cell(figures: dict[str, float] | None, key: str, scenario: str) -> str:
    if not figures:
        return "-"
    value = f"{figures[key]:,.0f}"
    if scenario == "single_half_saturation":
        target = figures.get("target_rate")
        latency = f"{figures['p99_ms']:.0f}" + (f"; target {target:,.0f} req/s" if target else "")
    else:
        latency = f"{figures['p50_ms']:.1f} / {figures['p99_ms']:.0f}"
    errors = f", {figures['errors']:.0f} errors" if figures.get("errors") else ""
    ratio = figures.get("throughput_vs_bare")
    vs = f" **x{ratio:.2f}**" if ratio is not None and scenario != "single_half_saturation" else ""
    return f"{value}{vs} ({latency}{errors})"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    settings = results["settings"]
    load = results["load"]
    lines = [
        f"Run of {results['date']} ({results['duration_minutes']} min), model "
        f"`{results['model']}`, on {m['cpus']} x {m['cpu_model']}, {m['memory_gib']} GiB, "
        f"{m['os']}, Python {m['python']}. {settings['rounds']} alternating rounds of "
        f"{settings['seconds_per_scenario']:g} s per scenario, {settings['load_generator']} "
        "on the same machine; medians over rounds; **xN** = throughput relative to bare BentoML "
        "in the same run.",
        "",
        f"Load average (1, 5, 15 min) before: {load['loadavg_before']}, after: "
        f"{load['loadavg_after']}." + (f" {load['note']}" if load.get("note") else ""),
        "",
        "| server | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for server, description in settings["servers"].items():
        figures = results["summary"].get(server, {})
        cells = [_cell(figures.get(scenario), key, scenario) for scenario, _, key in COLUMNS]
        lines.append(f"| `{server}`: {description} | " + " | ".join(cells) + " |")
    p = results["in_process_predict_proba"]
    lines += [
        "",
        "In process, one `predict_proba` on a ready DataFrame (same run): "
        + ", ".join(
            f"{k.removeprefix('rows_')} {'row' if k == 'rows_1' else 'rows'} "
            f"{v['ms_per_call']:.1f} ms"
            + (f" (best {v['best_ms_per_call']:.1f})" if "best_ms_per_call" in v else "")
            for k, v in p.items()
        )
        + f"; {p['rows_1000']['rows_per_second']:,.0f} rows/s at 1000 rows (medians over rounds).",
        "",
        "| target (issue 9) | this run | bound | met |",
        "|---|---|---|---|",
    ]
    for t in results["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:,.1f}"
        bound = "-" if t["bound"] is None else f"{t['bound']:,.1f}"
        lines.append(f"| {t['target']} | {value} | {bound} | {met} |")
    return "\n".join(lines) + "\n"


def soak_markdown(results: dict[str, Any]) -> str:
    """The two targets of ``make soak`` (loadtests/soak.py), with the run's own context."""
    soak, loss = results["soak"], results["loss_at_saturation"]
    flat = "yes" if soak["flat_within_5_percent"] else "**no**"
    lossless = "yes" if loss["lossless"] else "**no**"
    warmup = (
        f"after {soak['warmup_minutes']:g} min of warm-up at the same load, "
        if soak.get("warmup_minutes")
        else ""
    )
    return (
        "\n".join(
            [
                f"`make soak`, run of {results['date']}, load average before "
                f"{results['loadavg_before']}, after {results['loadavg_after']}; saturation "
                f"{results['saturation_requests_per_second']:,.0f} req/s (1 instance, c=64).",
                "",
                "| target (issue 9) | this run | met |",
                "|---|---|---|",
                f"| zero prediction-log loss at saturation | {loss['seconds']:g} s at c=64 then "
                f"SIGTERM: {loss['instances_answered']:,.0f} instances answered, "
                f"{loss['rows_in_log']:,} rows in the log, {loss['rows_dropped']:,.0f} dropped, "
                f"{loss['rows_spooled']:,.0f} spooled | {lossless} |",
                f"| memory flat (within 5%) over a {soak['minutes']:g}-minute soak at half of "
                f"saturation | {warmup}{soak['requests_per_second']:,.0f} req/s (target "
                f"{soak['target_rate']:,.0f}), p99 {soak['p99_ms']:.0f} ms; resident memory of the "
                f"serving processes {soak['rss_first_minute_mb']:,.0f} MB in the first minute, "
                f"{soak['rss_last_minute_mb']:,.0f} MB in the last ({soak['rss_growth']:+.1%}) "
                f"| {flat} |",
            ]
        )
        + "\n"
    )


def replace_in_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), flags=re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    readme.write_text(pattern.sub(lambda _: f"{START}\n{table}{END}", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="?", default=DEFAULT_OUTPUT / "bench.json")
    parser.add_argument("--soak", type=Path, default=DEFAULT_OUTPUT / "soak.json")
    parser.add_argument("--readme", type=Path, help="replace the table in this README")
    args = parser.parse_args(argv)
    table = markdown(json.loads(args.results.read_text()))
    if args.soak.exists():
        table += "\n" + soak_markdown(json.loads(args.soak.read_text()))
    if args.readme:
        replace_in_readme(args.readme, table)
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
