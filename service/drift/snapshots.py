"""The files of each run in DRIFT_SNAPSHOT_DIR: Evidently's snapshot (JSON) and HTML report.

Named after the run's interval slot (``drift-20250131T120000Z.json`` / ``.html``), so names sort
by time; written to a temporary name and renamed, so a reader never sees half a report. Only the
newest ``keep`` runs' files are kept.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

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


def prune(directory: Path, keep: int) -> int:
    """Delete the files of all but the newest ``keep`` runs; returns the files deleted."""
    runs = sorted(
        {p.stem for p in directory.glob(f"{PREFIX}*.*") if p.suffix in (".json", ".html")}
    )
    deleted = 0
    for stem in runs[: max(len(runs) - keep, 0)]:
        for suffix in (".json", ".html"):
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{stem}{suffix}").unlink()
                deleted += 1
    return deleted
