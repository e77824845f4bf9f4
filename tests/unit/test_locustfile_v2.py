"""GrpcUser's client closes its channel once: tritonclient's ``__del__`` closes it again, and that
second close, left to the garbage collection at interpreter exit, could block locust forever
after its report (about one run in five of ``V2RestUser GrpcUser``)."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

# In a child process: importing locust monkey-patches the standard library with gevent.
SCRIPT = """
import gc
from loadtests.locustfile_v2 import GrpcClient

client = GrpcClient("127.0.0.1:1")  # nothing listens: a channel connects lazily
closes = []
channel_close = client._channel.close
client._channel.close = lambda: (closes.append(1), channel_close())
client.close()  # GrpcUser.on_stop
client.close()
del client  # tritonclient's __del__ closes again
gc.collect()
print(len(closes))
"""


def test_the_grpc_client_closes_its_channel_once() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "1", result.stdout
