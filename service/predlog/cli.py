"""``python -m service.predlog``: the prediction log for operators and data scientists.

    export   --since T [--until T] --out FILE.parquet|FILE.csv [--table predictions|rejections]
    show     REQUEST_ID                 every row of one request, as JSON
    status                              store reachable, schema version, rows and time range per
                                        table, spool (exit 1 if the store cannot be reached)
    prune    [--retention-days N] [--max-rows N]   apply retention now
    replay                              replay the spool now (e.g. a stopped replica's)
    init                                create the tables (e.g. ahead of the first deployment)
    migrate                             upgrade a store of an older schema version (service stopped)

The store and spool come from the same settings as the service (``PREDICTION_LOG_URL``,
``PREDICTION_LOG_SPOOL_DIR``...), or ``--url``. Times are ISO 8601 (``2025-01-31``,
``2025-01-31T12:00``, UTC unless an offset is given) or relative to now (``90m``, ``2h``, ``7d``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
from sqlalchemy import DateTime, Float, Integer
from sqlalchemy.exc import OperationalError

import models.contract
from service.contract import FeatureContract, FeatureKind
from service.predlog.schema import DATA_TABLES, SCHEMA_VERSION, predictions
from service.predlog.spool import QUARANTINE, Spool
from service.predlog.store import SchemaMissing, Store
from service.predlog.writer import Writer, WriterConfig
from service.settings import Settings, load_settings

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (UTC unless it has an offset) or ``<number><s|m|h|d>`` before now."""
    relative = _RELATIVE.match(value.strip())
    if relative:
        amount, unit = relative.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: float(amount)})
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an ISO 8601 time (2025-01-31T12:00) nor relative (2h, 7d)"
        ) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


EXPORT_SUFFIXES = (".parquet", ".csv")


def export_path(value: str) -> Path:
    """``--out``: a file named ``.parquet`` or ``.csv``, the format it is written in."""
    path = Path(value)
    if path.suffix not in EXPORT_SUFFIXES:
        # Anything else was written as CSV whatever its name (a week.json holding CSV).
        raise argparse.ArgumentTypeError(
            f"{value!r}: the file name must end in .parquet or .csv, the format written"
        )
    return path


def export_frame(
    rows: list[dict[str, Any]], table: str, contract: FeatureContract | None = None
) -> pd.DataFrame:
    """Rows as a flat frame: for predictions, one column per feature (a feature whose name is
    taken by a log column becomes ``feature_<name>``): the ``contract``'s first, in its order,
    whether or not the rows have them (an empty range), then any other the rows have (an older
    model's); JSON columns of rejections as text."""
    columns = predictions.columns if table == "predictions" else DATA_TABLES[table].columns
    frame = pd.DataFrame(rows, columns=[c.name for c in columns])
    if table == "predictions":
        features = pd.DataFrame(list(frame.pop("features")), index=frame.index)
        if contract is not None:
            names = list(contract.feature_names)
            features = features.reindex(
                columns=[*names, *(c for c in features.columns if c not in names)]
            )
        features.columns = [_feature_column(str(c)) for c in features.columns]
        frame = pd.concat([frame, features], axis=1)
    else:
        frame["errors"] = [orjson.dumps(e).decode() for e in frame["errors"]]
    frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True)
    return frame


def _feature_column(name: str) -> str:
    log_columns = {c.name for c in predictions.columns}
    return f"feature_{name}" if name in log_columns else name


# The Parquet type of a feature of each kind: a `number` is a double even where every value
# happens to be whole.
_FEATURE_TYPES: dict[FeatureKind, pa.DataType] = {
    "categorical": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
}


def export_schema(frame: pd.DataFrame, table: str, contract: FeatureContract) -> pa.Schema:
    """The Parquet types of an export, from the log's columns and the contract's features rather
    than from the values: an empty range, or a column without a value in it (no traced request:
    ``trace_id``), has the types of any other export, so that a notebook reading one export
    after another (or them all as one data set) meets the same schema."""
    declared: dict[str, pa.DataType] = {}
    columns = predictions.columns if table == "predictions" else DATA_TABLES[table].columns
    for column in columns:
        if isinstance(column.type, DateTime):
            declared[column.name] = pa.timestamp("ns", tz="UTC")
        elif isinstance(column.type, Integer):
            declared[column.name] = pa.int64()
        elif isinstance(column.type, Float):
            declared[column.name] = pa.float64()
        else:  # strings, and JSON columns written as text
            declared[column.name] = pa.string()
    if table == "predictions":
        for feature in contract.features:
            name, kind = _feature_column(feature.name), _FEATURE_TYPES[feature.kind]
            # Rows from before a model swap may hold values of another kind (fractions where
            # this contract has an integer): they keep the type of their values rather than
            # refuse the whole export.
            if name not in frame or _fits(frame[name], kind):
                declared[name] = kind
    inferred = pa.Schema.from_pandas(frame, preserve_index=False)
    # A column neither declares (another model's feature) keeps the type of its values.
    return pa.schema(
        [pa.field(field.name, declared.get(field.name, field.type)) for field in inferred]
    )


def _fits(column: pd.Series, kind: pa.DataType) -> bool:
    try:
        pa.array(column, type=kind, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


def export(
    store: Store,
    table: str,
    since: datetime,
    until: datetime,
    out: Path,
    contract: FeatureContract = models.contract.CONTRACT,
) -> int:
    """Write the rows of ``[since, until)`` to ``out`` (.parquet or .csv); returns the row count.
    Every export of a table has the same columns, an empty one too (predictions: at least the
    ``contract``'s features), and in Parquet the same types.

    The range is held in memory while it is written: export a long history in slices.
    """
    parts = [export_frame(rows, table, contract) for rows in store.iter_rows(table, since, until)]
    frame = pd.concat(parts, ignore_index=True) if parts else export_frame([], table, contract)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        frame.to_parquet(out, index=False, schema=export_schema(frame, table, contract))
    else:
        frame.to_csv(out, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    return len(frame)


def _dumps(value: Any) -> str:
    # Column and table names are SQLAlchemy `quoted_name`s, str subclasses.
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def _spool_status(directory: Path) -> dict[str, Any]:
    segments = sorted(directory.glob("*.spool")) if directory.exists() else []
    quarantined = sorted((directory / QUARANTINE).glob("*.jsonl")) if directory.exists() else []
    sizes: list[int] = []
    for path in segments:
        # A worker may replay and delete a segment between the listing and the stat.
        with contextlib.suppress(FileNotFoundError):
            sizes.append(path.stat().st_size)
    entries = 0
    for path in quarantined:
        with contextlib.suppress(FileNotFoundError):  # removed by an operator meanwhile
            entries += path.read_bytes().count(b"\n")
    return {
        "directory": str(directory),
        "segments": len(sizes),
        "segment_bytes": sum(sizes),
        "quarantined_entries": entries,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.predlog",
        description="Query and maintain the prediction log (docs/prediction-log.md).",
    )
    parser.add_argument("--url", help="store URL (default: PREDICTION_LOG_URL)")
    commands = parser.add_subparsers(dest="command", required=True)

    ex = commands.add_parser("export", help="export a time range to Parquet or CSV")
    ex.add_argument("--since", type=parse_time, required=True, help="start (inclusive)")
    ex.add_argument("--until", type=parse_time, help="end (exclusive; default: now)")
    ex.add_argument("--out", type=export_path, required=True, help="FILE.parquet or FILE.csv")
    ex.add_argument("--table", choices=sorted(DATA_TABLES), default="predictions")

    show = commands.add_parser("show", help="every row of one request, as JSON")
    show.add_argument("request_id")

    commands.add_parser("status", help="schema version, row counts and time ranges, spool")

    prune = commands.add_parser("prune", help="delete rows beyond retention now")
    prune.add_argument(
        "--retention-days", type=float, help="default: PREDICTION_LOG_RETENTION_DAYS"
    )
    prune.add_argument("--max-rows", type=int, help="default: PREDICTION_LOG_MAX_ROWS")

    commands.add_parser("replay", help="replay spooled records into the store now")
    commands.add_parser("init", help="create the tables if the store has none")
    commands.add_parser(
        "migrate", help="upgrade the tables of an older schema version (stop the service first)"
    )
    return parser


class _StoreUnreachable(Exception):
    """The store's connection failed other than in the driver (the reason is the message)."""


def _connect(store: Store) -> None:
    try:
        with store.engine.connect():
            pass
    except OSError as exc:  # SQLite: its directory cannot be created (read-only, not mounted)
        raise _StoreUnreachable(str(exc)) from exc


class _ReaderGone(Exception):
    """What stdout leads to was closed before all was written (``show ... | head``)."""


# What a shell reports for a command a closed pipe's SIGPIPE ended (128 + 13), as `cat` or
# `grep` would be: 1 already means "not found" or "store unusable" here, and a script under
# `set -o pipefail` should see the same status as from any Unix tool in its place.
EXIT_READER_GONE = 141


def _emit(text: str) -> None:
    """``text`` on stdout, flushed now: a reader that went away is met here, where it can be
    told apart, rather than in the flush at exit (a traceback and exit code 120)."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError as exc:
        raise _ReaderGone from exc


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except _ReaderGone:
        # Python ignores SIGPIPE, so a closed pipe is an exception rather than a quiet end.
        # What the buffer still holds would be flushed at exit and fail again: stdout leads
        # nowhere from now on.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_READER_GONE


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings()
    store = Store(args.url or settings.prediction_log_url)
    try:
        if args.command != "replay":  # replay reports a store that is down in its own summary
            _connect(store)
        return _run(args, settings, store)
    except SchemaMissing as exc:  # PostgreSQL: the search path leads to no schema
        return _unusable(args, settings, store, str(exc), reachable=True)
    except (OperationalError, _StoreUnreachable) as exc:
        # The store is down or unreachable: the runbook sends on-call here exactly then, so say
        # that in one line (not a chained driver traceback), and still show what the spool holds.
        reason = " ".join(str(exc.orig if isinstance(exc, OperationalError) else exc).split())
        return _unusable(args, settings, store, f"the store failed: {reason}", reachable=False)
    finally:
        store.close()


def _unusable(
    args: argparse.Namespace, settings: Settings, store: Store, error: str, reachable: bool
) -> int:
    """One line on stderr for a store that cannot be used; ``status`` still shows the spool."""
    print(f"{store.display_url}: {error}", file=sys.stderr)
    if args.command == "status":
        spool = _spool_status(Path(settings.prediction_log_spool_dir))
        status = {"store": store.display_url, "reachable": reachable, "error": error}
        _emit(_dumps({**status, "spool": spool}))
    return 1


def _run(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    if args.command == "init":
        store.ensure_schema()
        _emit(f"{store.display_url}: schema version {store.version()}")
        return 0
    if args.command == "migrate":
        moved = store.migrate()
        _emit(f"{store.display_url}: schema version {store.version()} ({moved} instances moved)")
        return 0
    if args.command == "replay":
        spool = Spool(settings.prediction_log_spool_dir, settings.prediction_log_spool_max_bytes)
        writer = Writer(store, spool, WriterConfig(batch_rows=settings.prediction_log_batch_size))
        writer.replay_spool()
        _emit(_dumps({**writer.stats.summary(), "spool": _spool_status(spool.directory)}))
        return 0 if writer.stats.total("dropped") == 0 and not spool.segments() else 1
    version = store.version()
    if version is None:
        print(f"{store.display_url} has no prediction log tables", file=sys.stderr)
        return 1
    if version != SCHEMA_VERSION:
        print(
            f"{store.display_url} has schema version {version}; this version reads "
            f"{SCHEMA_VERSION}: stop the service and run `python -m service.predlog migrate`",
            file=sys.stderr,
        )
        return 1
    if args.command == "export":
        until = args.until or datetime.now(UTC)
        count = export(store, args.table, args.since, until, args.out)
        span = f"{args.since:%Y-%m-%dT%H:%M:%SZ} to {until:%Y-%m-%dT%H:%M:%SZ}"
        print(f"{count} {args.table} rows from {span} written to {args.out}", file=sys.stderr)
        return 0
    if args.command == "show":
        found = store.find(args.request_id)
        _emit(_dumps(found))
        return 0 if any(found.values()) else 1
    if args.command == "status":
        status = {
            "store": store.display_url,
            "reachable": True,
            "schema_version": version,
            "tables": store.summary(),
            "spool": _spool_status(Path(settings.prediction_log_spool_dir)),
        }
        _emit(_dumps(status))
        return 0
    if args.command == "prune":
        days = args.retention_days
        days = settings.prediction_log_retention_days if days is None else days
        max_rows = settings.prediction_log_max_rows if args.max_rows is None else args.max_rows
        deleted = store.prune(days or None, max_rows or None)
        _emit(_dumps({"deleted": deleted}))
        return 0
    raise AssertionError(args.command)
