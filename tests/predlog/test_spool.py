"""The spool: append-only segments owned through file locks, claimed for replay by any process,
surviving a crash of their writer, bounded in size."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from service.predlog.records import Entry, encode_line, to_entry
from service.predlog.spool import Spool
from tests.predlog.helpers import concurrently, prediction_event, rejection_event
from tests.support import ROOT


def entries(n: int) -> list[Entry]:
    return [to_entry(prediction_event(2) if i % 2 else rejection_event()) for i in range(n)]


def replay_all(spool: Spool, rows: int = 10) -> tuple[list[Entry], int]:
    found: list[Entry] = []
    corrupt = 0
    while (claimed := spool.claim()) is not None:
        for batch, bad in claimed.batches(rows):
            found += batch
            corrupt += bad
        claimed.done()
    return found, corrupt


def test_appended_entries_are_replayed_in_order_then_deleted(spool: Spool) -> None:
    written = entries(25)
    kept, refused = spool.append(written[:10])
    spool.append(written[10:])
    assert (len(kept), refused) == (10, [])
    spool.seal()
    found, corrupt = replay_all(spool)
    assert (found, corrupt) == (written, 0)
    assert spool.segments() == []


def test_batches_hold_about_the_requested_rows(spool: Spool) -> None:
    spool.append(entries(30))  # 15 entries of 1 row and 15 of 2
    spool.seal()
    claimed = spool.claim()
    assert claimed is not None
    sizes = [sum(e.records for e in batch) for batch, _ in claimed.batches(10)]
    claimed.release()
    assert sum(sizes) == 45
    assert all(10 <= size <= 11 for size in sizes[:-1])


def test_an_active_segment_belongs_to_its_writer_until_sealed(tmp_path: Path) -> None:
    # Two Spool objects on one directory stand for two worker processes: flock is per open file.
    mine, theirs = Spool(tmp_path, 10**7), Spool(tmp_path, 10**7)
    mine.append(entries(3))
    assert theirs.claim() is None
    assert mine.claim() is None  # not even its own writer replays an active segment
    mine.seal()
    claimed = theirs.claim()
    assert claimed is not None
    assert mine.claim() is None  # and a claimed one is nobody else's
    claimed.release()
    assert mine.claim() is not None


def test_concurrent_claimers_never_share_a_segment(tmp_path: Path) -> None:
    for _ in range(20):
        writer = Spool(tmp_path, 10**7)
        writer.append(entries(2))
        writer.seal()
    claimers = [Spool(tmp_path, 10**7) for _ in range(4)]
    replayed = concurrently(lambda spool: replay_all(spool)[0], claimers)
    everything = [e for part in replayed for e in part]
    assert len(everything) == 40
    assert len({e.rows[0]["event_id"] for e in everything}) == 40


CRASHING_WRITER = """
import sys
from service.predlog.records import to_entry
from service.predlog.spool import Spool
from tests.predlog.helpers import prediction_event
spool = Spool(sys.argv[1], 10**9)
n = 0
while True:
    spool.append([to_entry(prediction_event(3))])
    n += 1
    print(n, flush=True)
"""


def test_a_killed_writers_segment_is_replayed_with_every_acknowledged_entry(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acknowledged = 0
    while acknowledged < 200:
        acknowledged = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)  # no seal, no fsync, no cleanup
    proc.wait()
    found, corrupt = replay_all(Spool(tmp_path, 10**9))
    assert len(found) >= acknowledged
    assert corrupt <= 1  # at most the line being written when the process died
    assert all(e.records == 3 for e in found)


def test_a_damaged_line_is_skipped_and_counted(spool: Spool) -> None:
    written = entries(3)
    spool.append(written)
    spool.seal()
    (segment,) = spool.segments()
    first, second, third = segment.read_bytes().splitlines(keepends=True)
    # the second line damaged in place, the third followed by a line torn mid-write
    segment.write_bytes(first + second[:40] + b"\n" + third + third[:30])
    found, corrupt = replay_all(spool)
    assert found == [written[0], written[2]]
    assert corrupt == 2


def test_entries_beyond_the_size_cap_are_refused_not_lost_silently(tmp_path: Path) -> None:
    batch = [to_entry(prediction_event(2)) for _ in range(10)]
    line = len(encode_line(batch[0]))
    spool = Spool(tmp_path, max_bytes=int(line * 3.5))
    kept, refused = spool.append(batch)
    assert (kept, refused) == (batch[:3], batch[3:])
    assert spool.size <= spool.max_bytes
    spool.write_error = OSError("an earlier disk error")
    assert spool.append(batch[:1]) == ([], batch[:1])  # full stays full
    assert spool.write_error is None  # refused for lack of room, not for that error
    spool.seal()
    replay_all(spool)
    assert spool.scan() == 0
    assert spool.append(batch[:1]) == (batch[:1], [])  # replayed segments free the space


DISK_FULL_WRITER = """
import pathlib, resource, signal, sys
from service.predlog.records import to_entry
from service.predlog.spool import Spool
from tests.predlog.helpers import prediction_event
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
spool = Spool(sys.argv[1], 10**9)
entries = [to_entry(prediction_event(3)) for _ in range(40)]
kept, refused = map(len, spool.append(entries[:3]))
# The disk is full at about half the entries, whatever the size of the model's rows.
written = sum(p.stat().st_size for p in pathlib.Path(sys.argv[1]).rglob("*") if p.is_file())
limit = written * 20 // 3
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
errors = set()
for i in range(3, 40, 3):
    k, r = spool.append(entries[i : i + 3])
    kept, refused = kept + len(k), refused + len(r)
    errors.add(type(spool.write_error).__name__)
print(kept, refused, ",".join(sorted(errors - {"NoneType"})))
"""


def test_a_full_disk_refuses_whole_entries_and_leaves_no_torn_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL_WRITER, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    kept, refused, error = result.stdout.split()
    kept, refused = int(kept), int(refused)
    assert kept > 0
    assert refused > 0
    assert kept + refused == 40
    assert error == "OSError"  # the writer's log says why, not that the spool is full
    found, corrupt = replay_all(Spool(tmp_path, 10**9))
    assert (len(found), corrupt) == (kept, 0)
