"""Where a server's workers keep their metric files (service/prometheus_dir.py); the served
test of two servers sharing a home is in tests/integration/test_observability.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bentoml._internal.configuration.containers import BentoMLContainer

from service import prometheus_dir


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.delenv(prometheus_dir.ENV, raising=False)
    yield tmp_path
    BentoMLContainer.prometheus_multiproc_dir.reset()


def exited_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_serving_process_gets_a_directory_of_its_own(tmpdir_env: Path) -> None:
    own = prometheus_dir.use_own()
    assert own == tmpdir_env / f"bentoml-prometheus-{os.getpid()}"
    assert BentoMLContainer.prometheus_multiproc_dir.get() == str(own)


def test_directories_of_exited_servers_are_removed_and_live_ones_kept(tmpdir_env: Path) -> None:
    live = prometheus_dir.directory_for(os.getppid())
    dead = prometheus_dir.directory_for(exited_pid())
    other = tmpdir_env / "bentoml-prometheus-notapid"
    for directory in (live, dead, other):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"x")
    prometheus_dir.use_own()
    assert (live.exists(), dead.exists(), other.exists()) == (True, False, True)


def test_a_worker_keeps_the_directory_its_server_chose(
    tmpdir_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(prometheus_dir.ENV, str(tmpdir_env / "chosen"))
    before = BentoMLContainer.prometheus_multiproc_dir.get()
    assert prometheus_dir.use_own() is None
    assert BentoMLContainer.prometheus_multiproc_dir.get() == before


def test_each_dead_worker_is_counted_once_and_live_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # service_worker_deaths_total: a dead worker has several live-gauge files (one per mode);
    # it is one death, counted by the call that removes its files, not again by the next.
    monkeypatch.setenv(prometheus_dir.ENV, str(tmp_path))
    dead = [exited_pid(), exited_pid()]
    for pid in [*dead, os.getpid()]:
        for mode in ("livesum", "livemax", "livemin"):
            (tmp_path / f"gauge_{mode}_{pid}.db").touch()
    assert prometheus_dir.forget_dead_workers() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"gauge_{mode}_{os.getpid()}.db" for mode in ("livemax", "livemin", "livesum")
    ]
    assert prometheus_dir.forget_dead_workers() == 0
