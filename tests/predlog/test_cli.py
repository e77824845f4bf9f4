"""``python -m service.predlog``: export to Parquet and CSV, show, status, prune, replay, init."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.contract import CONTRACT
from service.contract import IntegerFeature, NumberFeature
from service.predlog.cli import export, export_frame, main, parse_time
from service.predlog.records import instance_rows, to_entry
from service.predlog.schema import SCHEMA_VERSION
from service.predlog.spool import Spool
from service.predlog.store import Store
from tests.predlog.helpers import prediction_event, rejection_event, row_keys
from tests.support import ROOT, free_port

T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def logged(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store with predictions at 10:00, 11:00 and 12:00 and a rejection at 11:30 (UTC)."""
    monkeypatch.setenv("PREDICTION_LOG_URL", sqlite_url)
    monkeypatch.setenv("PREDICTION_LOG_SPOOL_DIR", str(tmp_path / "spool"))
    store = Store(sqlite_url)
    store.ensure_schema()
    store.write(
        [
            to_entry(prediction_event(1, "at-10", T0)),
            to_entry(prediction_event(3, "at-11", T0 + HOUR)),
            to_entry(rejection_event("refused-1130", T0 + 1.5 * HOUR)),
            to_entry(prediction_event(2, "at-12", T0 + 2 * HOUR)),
        ]
    )
    return store


def test_export_a_time_range_to_parquet(logged: Store, tmp_path: Path) -> None:
    out = tmp_path / "export" / "range.parquet"
    args = ["export", "--since", "2025-06-01T10:30", "--until", "2025-06-01T12:00", "--out"]
    assert main([*args, str(out)]) == 0
    frame = pd.read_parquet(out)
    assert list(frame["request_id"]) == ["at-11"] * 3
    assert list(frame["instance_index"]) == [0, 1, 2]
    assert {*CONTRACT.feature_names, "label", "score", "model_tag"} <= set(frame.columns)
    assert "features" not in frame.columns
    assert str(frame["received_at"].dtype) == "datetime64[ns, UTC]"
    assert frame["received_at"].iloc[0] == pd.Timestamp(T0 + HOUR)
    expected = prediction_event(3)
    assert frame[list(CONTRACT.feature_names)].to_dict("records") == expected.instances


def test_export_to_csv_with_an_offset_and_rejections(logged: Store, tmp_path: Path) -> None:
    out = tmp_path / "rejections.csv"
    # 12:00+02:00 is 10:00 UTC
    assert main(["export", "--since", "2025-06-01T12:00+02:00", "--table", "rejections",
                 "--out", str(out)]) == 0  # fmt: skip
    frame = pd.read_csv(out)
    assert list(frame["request_id"]) == ["refused-1130"]
    assert frame["received_at"].iloc[0] == "2025-06-01T11:30:00.000000Z"
    assert orjson.loads(frame["errors"].iloc[0])[0]["reason"] == "out_of_range"

    predictions = tmp_path / "predictions.csv"
    assert main(["export", "--since", "2025-06-01", "--out", str(predictions)]) == 0
    assert list(pd.read_csv(predictions)["request_id"]) == ["at-10"] + ["at-11"] * 3 + ["at-12"] * 2


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_an_empty_range_exports_the_columns_and_types_of_a_full_one(
    store: Store,
    store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    # A data scientist's notebook reads a weekly export; a quiet week must not break it.
    monkeypatch.setenv("PREDICTION_LOG_URL", store_url)
    store.write([to_entry(prediction_event(2, "a", T0)), to_entry(rejection_event("r", T0))])
    for table in ("predictions", "rejections"):
        full, empty = tmp_path / f"{table}-full{suffix}", tmp_path / f"{table}-empty{suffix}"
        export = ["export", "--table", table, "--out"]
        assert main([*export, str(full), "--since", "2025-06-01", "--until", "2025-06-02"]) == 0
        assert main([*export, str(empty), "--since", "2030-01-01", "--until", "2030-01-08"]) == 0

        read = pd.read_parquet if suffix == ".parquet" else pd.read_csv
        full_frame, empty_frame = read(full), read(empty)
        assert (len(full_frame), len(empty_frame)) == (2 if table == "predictions" else 1, 0)
        assert list(empty_frame.columns) == list(full_frame.columns)
        if table == "predictions":
            assert set(CONTRACT.feature_names) <= set(empty_frame.columns)
        if suffix == ".parquet":
            # The same Parquet types (none `null`: trace_id has no value in either), so that
            # the weeks read as one data set, and the same dtypes in pandas.
            schema = pq.read_schema(empty).remove_metadata()
            assert schema == pq.read_schema(full).remove_metadata()
            assert not [f.name for f in schema if pa.types.is_null(f.type)]
            assert empty_frame.dtypes.to_dict() == full_frame.dtypes.to_dict()
            assert len(pq.ParquetDataset([full, empty]).read()) == len(full_frame)


def test_a_number_feature_is_a_double_even_when_its_values_are_whole(
    store: Store, tmp_path: Path
) -> None:
    feature = NumberFeature("amount", 0, 10)
    contract = replace(CONTRACT, features=(*CONTRACT.features, feature))
    event = prediction_event(1, "whole", T0)
    event = replace(event, instances=[{**event.instances[0], "amount": 3}])
    store.write([to_entry(event)])
    out = tmp_path / "whole.parquet"

    export(store, "predictions", T0, T0 + HOUR, out, contract)

    assert pq.read_schema(out).field("amount").type == pa.float64()
    assert pd.read_parquet(out)["amount"].tolist() == [3.0]


def test_an_integer_feature_that_held_fractions_under_an_earlier_model_exports(
    store: Store, tmp_path: Path
) -> None:
    # The served contract says integer; a month's rows from before the swap hold fractions.
    feature = IntegerFeature("amount", 0, 10)
    contract = replace(CONTRACT, features=(*CONTRACT.features, feature))
    event = prediction_event(2, "swap", T0)
    first, second = event.instances
    event = replace(event, instances=[{**first, "amount": 2.5}, {**second, "amount": 3}])
    store.write([to_entry(event)])
    out = tmp_path / "swap.parquet"

    assert export(store, "predictions", T0, T0 + HOUR, out, contract) == 2

    assert pq.read_schema(out).field("amount").type == pa.float64()
    assert pd.read_parquet(out)["amount"].tolist() == [2.5, 3.0]


@pytest.mark.parametrize("name", ["week.json", "week", "week.PARQUET", "week.parquet.gz"])
def test_an_export_file_of_another_format_is_refused_naming_out(
    logged: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    # It was written as CSV whatever its name: a week.json holding CSV, a week.PARQUET too.
    out = tmp_path / name
    with pytest.raises(SystemExit) as exited:
        main(["export", "--since", "2025-06-01", "--out", str(out)])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--out" in error
    assert "must end in .parquet or .csv" in error
    assert not out.exists()


def test_a_feature_named_like_a_log_column_is_prefixed() -> None:
    (row,) = instance_rows(to_entry(prediction_event(1)).rows[0])
    row["features"] = {"label": "x", "amount": 3}
    frame = export_frame([row], "predictions")
    assert frame.loc[0, "feature_label"] == "x"
    assert frame.loc[0, "amount"] == 3
    assert frame.loc[0, "label"] == row["label"]


def test_show_prints_every_row_of_a_request(
    logged: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "at-11"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert [r["instance_index"] for r in shown["predictions"]] == [0, 1, 2]
    assert shown["predictions"][0]["received_at"] == "2025-06-01T11:00:00+00:00"
    assert main(["show", "no-such-request"]) == 1


def test_status_reports_tables_and_spool(logged: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 0
    status = orjson.loads(capsys.readouterr().out)
    assert status["schema_version"] == SCHEMA_VERSION
    assert status["tables"]["predictions"]["rows"] == 6  # instances
    assert status["tables"]["predictions"]["requests"] == 3
    assert status["tables"]["rejections"]["newest"] == "2025-06-01T11:30:00+00:00"
    assert status["reachable"] is True
    assert status["spool"]["segments"] == 0


def test_a_store_that_cannot_be_reached_is_one_line_and_status_still_shows_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What on-call runs when PredictionLogStoreDown fires (RUNBOOK.md): PostgreSQL on a port
    # where nothing listens, and the rows the service spooled meanwhile.
    url = f"postgresql://127.0.0.1:{free_port()}/test"
    monkeypatch.setenv("PREDICTION_LOG_SPOOL_DIR", str(tmp_path / "spool"))
    spool = Spool(tmp_path / "spool", 10**8)
    spool.append([to_entry(rejection_event())])
    spool.close()
    for command in (["status"], ["init"], ["show", "x"], ["prune"]):
        assert main(["--url", url, *command]) == 1
        captured = capsys.readouterr()
        (line,) = captured.err.splitlines()
        assert line.startswith(f"{url.replace('postgresql', 'postgresql+psycopg')}: the store")
        assert "Connection refused" in line
    assert main(["--url", url, "status"]) == 1
    status = orjson.loads(capsys.readouterr().out)
    assert status["reachable"] is False
    assert "Connection refused" in status["error"]
    assert status["spool"]["segments"] == 1


def test_a_sqlite_store_whose_directory_cannot_be_made_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A volume not mounted or read-only: the database's directory cannot be created.
    (tmp_path / "not-a-directory").touch()
    url = f"sqlite:///{tmp_path}/not-a-directory/predictions.db"
    assert main(["--url", url, "status"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{url}: the store failed: [Errno 17] File exists")


def test_prune_applies_retention_now(logged: Store, capsys: pytest.CaptureFixture[str]) -> None:
    days = (datetime.now(UTC) - (T0 + 1.2 * HOUR)).total_seconds() / 86400
    assert main(["prune", "--retention-days", str(days)]) == 0
    assert orjson.loads(capsys.readouterr().out)["deleted"] == {"predictions": 4, "rejections": 0}
    assert row_keys(logged)[0] == {("at-12", 0), ("at-12", 1)}


def test_replay_empties_a_spool_left_by_a_stopped_replica(
    logged: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = Spool(tmp_path / "spool", 10**8)
    spool.append([to_entry(prediction_event(2, "spooled")), to_entry(rejection_event("also"))])
    spool.close()
    assert main(["replay"]) == 0
    assert orjson.loads(capsys.readouterr().out)["replayed"] == 3
    assert len(logged.find("spooled")["predictions"]) == 2
    assert spool.segments() == []


def test_init_creates_the_tables_and_commands_refuse_a_store_without_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    assert main(["--url", url, "status"]) == 1
    assert "no prediction log tables" in capsys.readouterr().err
    assert main(["--url", url, "init"]) == 0
    assert main(["--url", url, "status"]) == 0


def test_commands_name_a_search_path_schema_that_does_not_exist(
    missing_schema: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, schema = missing_schema
    monkeypatch.setenv("PREDICTION_LOG_SPOOL_DIR", str(tmp_path / "spool"))
    spool = Spool(tmp_path / "spool", 10**8)
    spool.append([to_entry(rejection_event())])
    spool.close()
    for command in ("status", "init", "migrate"):
        assert main(["--url", url, command]) == 1
        captured = capsys.readouterr()
        (line,) = captured.err.splitlines()
        assert f'schema "{schema}" of the search path (search_path={schema}) does not exist' in line
        assert f"CREATE SCHEMA {schema};" in line
    # As with a store that is down: status still shows what waits in the spool.
    assert main(["--url", url, "status"]) == 1
    status = orjson.loads(capsys.readouterr().out)
    assert (status["reachable"], status["spool"]["segments"]) == (True, 1)
    assert f"CREATE SCHEMA {schema};" in status["error"]


def test_times_are_iso_or_relative() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_time("90m", now) == now - timedelta(minutes=90)
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("2025-06-01") == datetime(2025, 6, 1, tzinfo=UTC)
    assert parse_time("2025-06-01T14:00+02:00") == now


def test_the_module_runs_as_a_command(logged: Store) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.predlog", "show", "at-10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["predictions"][0]["request_id"] == "at-10"


def test_status_counts_no_segment_a_worker_deleted_while_it_looked(
    logged: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spool = Spool(tmp_path / "spool", 10**8)
    spool.append([to_entry(rejection_event())])
    spool.close()
    glob = Path.glob

    def listing_then_deleted(self: Path, pattern: str) -> list[Path]:
        # What a listing holds when a worker replays and deletes a file right after it.
        return [*glob(self, pattern), self / f"replayed-meanwhile{pattern[1:]}"]

    monkeypatch.setattr(Path, "glob", listing_then_deleted)
    assert main(["status"]) == 0
    status = orjson.loads(capsys.readouterr().out)
    assert status["spool"]["segments"] == 1
    assert status["spool"]["segment_bytes"] == spool.segments()[0].stat().st_size


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.predlog", *args]


def test_a_reader_that_stops_early_ends_the_command_quietly(logged: Store) -> None:
    # `show ... | head`: enough rows that what head leaves unread overflows the pipe (64 KiB),
    # so the command is still writing when head has gone.
    logged.write([to_entry(prediction_event(300, "large"))])
    command = subprocess.Popen(
        _command("show", "large"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert command.stdout is not None
    head = subprocess.run(
        ["head", "-n", "1"], stdin=command.stdout, capture_output=True, timeout=120
    )
    command.stdout.close()  # head holds the only reading end now it has gone
    _, stderr = command.communicate(timeout=120)
    assert head.stdout == b"{\n"
    assert stderr == b""  # no traceback, no "Exception ignored"
    # What a shell reports for `cat` or `grep` ended by SIGPIPE, and not the 1 of "not found".
    assert command.returncode == 141


@pytest.mark.parametrize("args", [["status"], ["show", "at-10"], ["prune"]])
def test_a_reader_gone_before_the_first_line_ends_the_command_quietly(
    logged: Store, args: list[str]
) -> None:
    # `... | head -c 0`, or a pager quit at once: no reader is left by the time anything is
    # written (even an output shorter than one buffer, flushed only at exit).
    read, write = os.pipe()
    subprocess.run(["head", "-c", "0"], stdin=read, check=True, timeout=60)
    os.close(read)
    result = subprocess.run(
        _command(*args), cwd=ROOT, stdout=write, stderr=subprocess.PIPE, timeout=120
    )
    os.close(write)
    assert result.stderr == b""
    assert result.returncode == 141
