"""Locust options are checked when locust starts; failure messages group equal failures."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support import ROOT, VENV_BIN


def refused_at_start(locustfile: str, options: list[str], user: str) -> str:
    """locust's stderr, once it has refused ``options`` and exited: before asking the host,
    where nothing listens."""
    result = subprocess.run(
        [
            str(VENV_BIN / "locust"),
            "-f",
            locustfile,
            "--host",
            "http://127.0.0.1:9",
            "--headless",
            "--run-time",
            "30s",
            *options,
            user,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Connection refused" not in result.stderr  # refused before the host was asked
    return result.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--slo-p99-ms", "0"),
        ("--batch-size", "0"),
        ("--user-rps", "-1"),
        ("--drift-fraction", "1.5"),
        ("--max-batch-size", "-2"),
    ],
)
def test_an_impossible_option_is_refused_at_start(option: str, value: str) -> None:
    stderr = refused_at_start("loadtests/locustfile.py", [option, value], "SteadyUser")
    assert option in stderr, stderr[-2000:]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--grpc-server-name", "models.test"], "--grpc-server-name needs --grpc-tls"),
        (["--grpc-root-certificates", "README.md"], "--grpc-root-certificates needs --grpc-tls"),
        (["--grpc-tls", "--grpc-root-certificates", "none.pem"], "cannot read none.pem"),
        (["--grpc-tls", "--grpc-root-certificates", "README.md"], "holds no PEM certificate"),
    ],
)
def test_a_wrong_grpc_tls_option_is_refused_at_start(options: list[str], error: str) -> None:
    # A TLS option without --grpc-tls would call a TLS port in plaintext; a file without a
    # certificate, an untrusted server at every call.
    stderr = refused_at_start("loadtests/locustfile_v2.py", options, "GrpcUser")
    assert error in stderr, stderr[-2000:]


def test_equal_failures_share_one_message() -> None:
    # Locust counts failures by message: a request id or a 2xx body would make each one unique.
    script = """
import locust  # noqa: F401  (first: it monkey-patches what loadtests.common imports)
from loadtests.common import failed_answer

internal = '{"error":"internal_error","message":"the model failed","request_id":"%s"}'
messages = {failed_answer(500, internal % rid) for rid in ("01a2", "77ff")}
assert messages == {'HTTP 500: {"error":"internal_error","message":"the model failed",}'}, messages
answered = '{"model":"m","request_id":"%s","predictions":[{"score":%s}]}'
assert failed_answer(200, answered % ("01a2", 0.1)) == failed_answer(200, answered % ("77", 0.9))
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_docs_list_every_option_of_the_scenarios() -> None:
    # locust --help does not show a locustfile's options (it prints before loading it): the
    # table of docs/benchmarks.md is where a user finds them.
    script = """
import json
import locust  # noqa: F401  (first: it monkey-patches what loadtests.common imports)
from locust.argument_parser import get_empty_argument_parser, get_parser, setup_parser_arguments
import loadtests.locustfile_v2  # noqa: F401  (registers its options and loadtests.common's)

ours = get_parser()
theirs = get_empty_argument_parser()
setup_parser_arguments(theirs)
known = {o for action in theirs._actions for o in action.option_strings}
print(json.dumps([
    [action.option_strings[0], action.env_var]
    for action in ours._actions
    if action.option_strings and action.option_strings[0] not in known
]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    options = json.loads(result.stdout.splitlines()[-1])
    assert len(options) >= 11, options
    table = (ROOT / "docs" / "benchmarks.md").read_text()
    for option, env_var in options:
        assert re.search(rf"^\| `{option}`[^|]*\| `{env_var}` \|", table, re.M), option


def test_the_batch_limit_is_read_from_the_services_openapi_document() -> None:
    # InvalidUser's too-large batch must exceed the limit the service states, not 1000: a
    # service taking 5000 answered a batch of 1001 with 200, counted as InvalidUser's failure.
    script = """
import locust  # noqa: F401  (first: it monkey-patches what loadtests.common imports)
from loadtests.common import stated_batch_limit
from models.contract import CONTRACT
from service.openapi import openapi_document

document = openapi_document(CONTRACT, 7, "service", "1", f"{CONTRACT.model_name}:v1")
print(stated_batch_limit(document))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["7"]
