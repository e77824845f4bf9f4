"""The files of each run in DRIFT_SNAPSHOT_DIR: Evidently's snapshot (JSON) and HTML report.

Named after the run's interval slot (``drift-20250131T120000Z.json`` / ``.html``), so names sort
by time; written to a temporary name and renamed, so a reader never sees half a report. Only the
newest ``keep`` runs' snapshots are kept, and the reports of fewer of them: a report (~4 MB) is
~5 times the size of its snapshot (~0.8 MB), which holds all it shows
(``Snapshot.load(path).save_html(...)``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PREFIX = "drift-"


def run_name(slot: int) -> str:
    return PREFIX + datetime.fromtimestamp(slot, UTC).strftime("%Y%m%dT%H%M%SZ")


def write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(temporary_path)``, then rename it to ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(temporary))
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def write_snapshot(path: Path, snapshot: Any) -> None:
    """Evidently's full snapshot (``dumps()``), what ``Snapshot.load`` reads back and a report is
    rebuilt from; ``save_json`` writes an export of the values alone, which it refuses."""
    write_atomically(
        path, lambda temporary: Path(temporary).write_text(snapshot.dumps(), encoding="utf-8")
    )


def prune(directory: Path, keep: int, keep_reports: int | None = None) -> int:
    """Delete the snapshots of all but the newest ``keep`` runs and the reports of all but the
    newest ``keep_reports`` (default ``keep``); returns the files deleted."""
    deleted = 0
    for suffix, kept in ((".json", keep), (".html", min(keep, keep_reports or keep))):
        files = sorted(directory.glob(f"{PREFIX}*{suffix}"))
        for path in files[: max(len(files) - kept, 0)]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                deleted += 1
    return deleted
