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


def test_a_failed_grpc_call_is_reported_with_its_reason() -> None:
    # Locust names a failure by the exception's repr: tritonclient's says nothing.
    script = """
from types import SimpleNamespace
from unittest import mock
import locust
from locust.env import Environment
from loadtests import locustfile_v2 as v2
from tritonclient.utils import InferenceServerException

env = Environment(
    user_classes=[v2.GrpcUser], events=locust.events, parsed_options=SimpleNamespace(batch_size=2)
)
errors = []
env.events.request.add_listener(lambda exception, **kw: errors.append(repr(exception)))
user = v2.GrpcUser(env)
user.target = mock.Mock()
user.target.payloads.instances.return_value = [{"x": 1}, {"x": 2}]
user.target.contract.features = []
user.model, user.shapes = "m", {}
user.client = mock.Mock()
# Keyword arguments, as tritonclient raises it: the exception has no args.
user.client.infer.side_effect = InferenceServerException(
    msg="request: the batch has 1001 instances", status="StatusCode.RESOURCE_EXHAUSTED"
)
user.infer()
print(errors[0])
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RESOURCE_EXHAUSTED" in result.stdout, result.stdout
    assert "the batch has 1001 instances" in result.stdout, result.stdout
