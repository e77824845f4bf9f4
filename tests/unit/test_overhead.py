"""The observability-cost measurement's bookkeeping: ratios within a repetition, medians, the
table. (Running it takes minutes of served load: `make overhead`, not the test suite.)"""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.overhead import VARIANTS, markdown, summarize


def run(variant: str, rep: int, rate: float, cpu: float = 100.0) -> dict[str, Any]:
    return {
        "scenario": "single_c64",
        "rep": rep,
        "variant": variant,
        "instances_per_second": rate,
        "p50_ms": 10.0,
        "p99_ms": 40.0,
        "server_cpu_us_per_instance": cpu,
    }


def test_each_ratio_is_taken_within_its_repetition() -> None:
    # The machine slows down by half in repetition 1: 'on' is 90% of 'off' in every repetition,
    # though the median of 'on' (900) is not 90% of the median of 'off' (1500 or 2000).
    runs = [
        run("off", 0, 2000, cpu=500),
        run("on", 0, 1800, cpu=550),
        run("off", 1, 1000, cpu=1000),
        run("on", 1, 900, cpu=1100),
        run("off", 2, 2000, cpu=500),
        run("on", 2, 1800, cpu=560),
    ]
    summary = summarize(runs)["single_c64"]
    assert summary["on"]["ratio_to_off"] == 0.9
    assert summary["on"]["ratio_to_off_min"] == summary["on"]["ratio_to_off_max"] == 0.9
    assert summary["off"]["ratio_to_off"] == 1.0
    assert summary["on"]["instances_per_second"] == 1800
    assert summary["on"]["server_cpu_us_per_instance"] == 560
    assert summary["on"]["reps"] == 3


def test_without_off_there_is_no_ratio() -> None:
    summary = summarize([run("on", 0, 1000), run("no_metrics", 0, 1100)])["single_c64"]
    assert "ratio_to_off" not in summary["on"]
    assert summary["no_metrics"]["instances_per_second"] == 1100


def test_the_table_names_every_variant_with_its_figures() -> None:
    runs = [run("off", 0, 2000), run("on", 0, 1800), run("no_access_log", 0, 1900)]
    results = {
        "date": "2026-01-01T00:00:00+00:00",
        "duration_minutes": 1.0,
        "machine": {"cpus": 2, "cpu_model": "cpu", "memory_gib": 24, "os": "linux", "python": "3"},
        "load": {"loadavg_before": [1, 1, 1], "loadavg_after": [2, 2, 2]},
        "model": "credit_risk:v1",
        "settings": {
            "reps": 1,
            "seconds_per_run": 3,
            "settle_seconds": 1,
            "load_generator": "wrk",
            "variants": {name: VARIANTS[name][0] for name in ("off", "on", "no_access_log")},
        },
        "summary": summarize(runs),
    }
    text = markdown(results)
    assert "| `on`: everything on | 1,800 | 0.900 (0.90 to 0.90) | 100.0 us | 10.0 / 40.0 |" in text
    assert "`no_access_log`: JSON access log off | 1,900 | 0.950" in text


def test_the_off_variant_is_the_benchmarks() -> None:
    from loadtests.bench import server_specs

    assert VARIANTS["off"][1] == server_specs()["ours_off"].env


def test_each_variant_is_served_once() -> None:
    # A name given twice started two servers of that name: the run stopped only the last one.
    from loadtests.overhead import parse_args

    assert parse_args(["--variants", "on,off,on"]).variants == ["on", "off"]
    args = parse_args(["--variants", "on,off", "--variant", "test_big:PREDICTION_LOG_BATCH_SIZE=2"])
    assert args.variants == ["on", "off", "test_big"]
    assert VARIANTS.pop("test_big")[1] == {"PREDICTION_LOG_BATCH_SIZE": "2"}


@pytest.mark.parametrize(
    "variant",
    ["on:METRICS_ENABLED=false", "test_x:A=1 --variant test_x:A=2", "test_y:BAD", "test_z", ":A=1"],
)
def test_a_variant_that_cannot_be_served_is_refused(
    variant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from loadtests.overhead import parse_args

    argv = [word for part in variant.split(" --variant ") for word in ("--variant", part)]
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "--variant" in capsys.readouterr().err
    assert not {"test_x", "test_y", "test_z"} & set(VARIANTS)
    assert VARIANTS["on"][1] == {}
