"""The files of each run in DRIFT_SNAPSHOT_DIR: Evidently's snapshot (JSON) and HTML report.

Named after the run's interval slot and model (``drift-20250131T120000Z-credit_risk-v1.json`` /
``.html``, the tag's ``:`` made a ``-``), so names sort by time and the runs of two model versions
in one slot (a rolling deploy, the directory shared) do not overwrite each other; written to a
temporary name and renamed, so a reader never sees half a report. Only the newest ``keep`` runs'
snapshots are kept (of every model), and the reports of fewer of them: a report (~4 MB) is ~5
times the size of its snapshot (~0.8 MB), which holds all it shows
(``Snapshot.load(path).save_html(...)``).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PREFIX = "drift-"


def run_name(slot: int, model_tag: str) -> str:
    """The name of the files of ``model_tag``'s run in ``slot`` (also its ``run_id``)."""
    model = re.sub(r"[^A-Za-z0-9_.-]", "-", model_tag)
    return f"{PREFIX}{datetime.fromtimestamp(slot, UTC).strftime('%Y%m%dT%H%M%SZ')}-{model}"


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
