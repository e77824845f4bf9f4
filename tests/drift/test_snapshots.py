"""Retention of the runs' files in DRIFT_SNAPSHOT_DIR."""

from __future__ import annotations

from pathlib import Path

from service.drift import snapshots


def write_runs(directory: Path, slots: range) -> None:
    for slot in slots:
        name = snapshots.run_name(slot, "credit_risk:v1")
        (directory / f"{name}.json").write_text("{}")
        (directory / f"{name}.html").write_text("<html></html>")


def test_prune_keeps_the_newest_snapshots_and_fewer_reports(tmp_path: Path) -> None:
    write_runs(tmp_path, range(0, 600, 60))  # 10 runs, a minute apart
    (tmp_path / "notes.txt").write_text("not a run's file")

    assert snapshots.prune(tmp_path, keep=4, keep_reports=2) == 6 + 8

    names = [snapshots.run_name(slot, "credit_risk:v1") for slot in range(0, 600, 60)]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"{n}.json" for n in names[-4:]]
    assert sorted(p.name for p in tmp_path.glob("*.html")) == [f"{n}.html" for n in names[-2:]]
    assert (tmp_path / "notes.txt").exists()


def test_reports_are_never_kept_longer_than_snapshots(tmp_path: Path) -> None:
    write_runs(tmp_path, range(0, 300, 60))
    snapshots.prune(tmp_path, keep=2, keep_reports=10)
    assert len(list(tmp_path.glob("*.html"))) == len(list(tmp_path.glob("*.json"))) == 2


def test_the_runs_of_two_models_in_one_slot_have_files_of_their_own() -> None:
    old, new = snapshots.run_name(60, "credit_risk:v1"), snapshots.run_name(60, "credit_risk:v2")
    assert old == "drift-19700101T000100Z-credit_risk-v1"
    assert old != new
    assert sorted([snapshots.run_name(120, "credit_risk:v1"), new, old])[-1].startswith(
        "drift-19700101T000200Z"
    )  # names still sort by time
