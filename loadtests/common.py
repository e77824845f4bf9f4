"""Locust glue shared by the locustfiles: options, the target's contract and payloads, the SLO.

Importing this module registers the listeners; both locustfiles import it, so a run that loads
both registers them once.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import gevent
import gevent.lock
import pandas as pd
import requests
from locust import User, constant_throughput, events
from locust.env import Environment
from locust.runners import WorkerRunner

from loadtests.payloads import (
    Drift,
    InvalidCase,
    PayloadFactory,
    default_shifts,
    invalid_cases,
    parse_shifts,
)
from loadtests.slo import SLO_MISSED_EXIT_CODE, Slo, judge
from service.contract import FeatureContract
from service.model import CONTRACT_FILE, REFERENCE_FILE
from service.settings import default_model_tag

log = logging.getLogger("loadtests")
# --max-batch-size's default: read the limit from the service's OpenAPI document.
ASK_THE_SERVICE = -1
JSON_HEADERS = {"Content-Type": "application/json"}
# Checks of the options a locustfile adds (it appends them): run at start with this module's own,
# before the target is asked, so that a wrong option fails at once even when the host is down.
OPTION_CHECKS: list[Callable[[Any], object]] = []


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("credit-risk-service load tests")
    group.add_argument(
        "--batch-size",
        type=int,
        default=100,
        env_var="LOCUST_BATCH_SIZE",
        help="instances per request of BatchUser, V2RestUser and GrpcUser",
    )
    group.add_argument(
        "--user-rps",
        type=float,
        default=1.0,
        env_var="LOCUST_USER_RPS",
        help="requests per second of each user (0: as fast as the server answers)",
    )
    group.add_argument(
        "--payloads",
        choices=("auto", "reference", "synthetic"),
        default="auto",
        env_var="LOCUST_PAYLOADS",
        help="where valid instances come from: the served model's reference data in the local "
        "model store, or synthesized from its contract; auto: reference when the store has it",
    )
    group.add_argument(
        "--drift",
        default="",
        env_var="LOCUST_DRIFT",
        help="DriftedUser's shift, e.g. 'duration_in_month*1.5; credit_amount+2000; "
        "purpose=car (new); housing' (a bare name: x1.5 or the next category); "
        "default: the contract's first numeric feature x1.5, its first categorical one set to "
        "its last category",
    )
    group.add_argument(
        "--drift-fraction",
        type=float,
        default=1.0,
        env_var="LOCUST_DRIFT_FRACTION",
        help="share of DriftedUser's instances that are shifted",
    )
    group.add_argument(
        "--max-batch-size",
        type=int,
        default=ASK_THE_SERVICE,
        env_var="LOCUST_MAX_BATCH_SIZE",
        help="the service's MAX_BATCH_SIZE, for InvalidUser's too-large batch (0: skip that case; "
        "-1: the limit its GET /docs.json states, else $MAX_BATCH_SIZE, else 1000)",
    )
    group.add_argument(
        "--model-tag",
        default=os.environ.get("MODEL_TAG") or default_model_tag(),
        env_var="LOCUST_MODEL_TAG",
        help="model store tag whose contract to use when the host has no GET /model (MLServer)",
    )
    group.add_argument(
        "--seed", type=int, default=0, env_var="LOCUST_SEED", help="seed of payload sampling"
    )
    group.add_argument(
        "--slo-p99-ms",
        type=float,
        default=500.0,
        env_var="LOCUST_SLO_P99_MS",
        help="SLO: the run fails (exit code 3) when the p99 latency of all requests exceeds this",
    )
    group.add_argument(
        "--slo-error-rate",
        type=float,
        default=0.01,
        env_var="LOCUST_SLO_ERROR_RATE",
        help="SLO: the run fails (exit code 3) when the share of failed requests exceeds this",
    )


@dataclass
class Target:
    """What the users need to know about the served model, fetched once per run."""

    model_tag: str
    contract: FeatureContract
    payloads: PayloadFactory
    invalid: list[InvalidCase]
    drift: Drift


# The target and what it was discovered from: the web UI can change the host and the options
# between runs, and the next run's users must use what the form said.
_target: tuple[tuple[Any, ...], Target] | None = None
_discovery = gevent.lock.Semaphore()  # one discovery at a time, however many users start
# The options _discover reads.
_DISCOVERY_OPTIONS = ("model_tag", "payloads", "seed", "drift", "drift_fraction", "max_batch_size")


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    # Before the run's clock starts: reading the model store takes a moment.
    if environment.parsed_options is None:
        return
    _slo(environment.parsed_options)  # a wrong objective fails now, not after the whole run
    _check_load(environment.parsed_options)
    for check in OPTION_CHECKS:
        check(environment.parsed_options)
    _strip_host(environment)
    if environment.host:
        target(environment)  # a wrong --drift or an unreachable host fails now, too
        # The discovery blocked gevent's loop for seconds without the loop's clock moving on:
        # locust's --run-time timer, armed next, would count them and cut the run that short.
        gevent.get_hub().loop.update_now()


@events.test_start.add_listener
def _strip_host(environment: Environment, **_: Any) -> None:
    # Locust's FastHttp client joins host and path as they are: with a host such as
    # http://127.0.0.1:3000/ every request was to '//predict' and raised instead of being sent.
    # Also at each run's start: the web UI's form gives the host then, before users are made.
    if environment.host:
        environment.host = environment.host.rstrip("/")


def _slo(options: Any) -> Slo:
    return Slo(options.slo_p99_ms, options.slo_error_rate)


def _check_load(options: Any) -> None:
    # Refused at start: a batch of 0 made every batch request a 400 (counted as the service's
    # failures), and a negative rate silently meant no pacing at all.
    if options.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1 (got {options.batch_size})")
    if options.user_rps < 0:
        raise ValueError(f"--user-rps must be 0 (no pacing) or more (got {options.user_rps:g})")
    if options.max_batch_size < ASK_THE_SERVICE:
        raise ValueError(
            "--max-batch-size must be the service's MAX_BATCH_SIZE, 0 (no too-large batch) or -1 "
            f"(ask the service) (got {options.max_batch_size})"
        )
    # Checked again by Drift, but only once the host has answered, and without the option's name.
    if not 0 <= options.drift_fraction <= 1:
        raise ValueError(f"--drift-fraction must be within 0..1 (got {options.drift_fraction:g})")


def target(environment: Environment) -> Target:
    """The served model's contract and payloads: discovered when locust starts with --host, or
    at the first user's start of a run whose host or payload options (web UI) have changed."""
    global _target
    if not environment.host:
        raise RuntimeError("give the service's URL with --host, e.g. --host http://127.0.0.1:3000")
    options = environment.parsed_options
    key = (environment.host, *(getattr(options, name) for name in _DISCOVERY_OPTIONS))
    with _discovery:
        if _target is None or _target[0] != key:
            _target = (key, _discover(environment))
        return _target[1]


# The id the service gives every answer: in a failure message it would make each failure unique.
_REQUEST_ID = re.compile(r'"request_id"\s*:\s*(?:"[^"]*"|null)\s*,?')


def failed_answer(status: int, text: str | None, error: BaseException | None = None) -> str:
    """A failure message for an HTTP answer: its status and, for an error, its body's start;
    without an answer (status 0: refused, reset, timed out), the client's error.

    Locust counts failures by message, so the message holds only what equal failures share: no
    request id, and no body for a 2xx (its predictions differ from one request to the next).
    """
    if status == 0:
        return f"no answer: {error!r}"
    if 200 <= status < 300:
        return f"HTTP {status}"
    return f"HTTP {status}: {_REQUEST_ID.sub('', text or '')[:200]}"


def response_failure(response: Any) -> str:
    """``failed_answer`` of a locust response (only one that failed to arrive has an error)."""
    return failed_answer(response.status_code, response.text, getattr(response, "error", None))


def pace(user: User) -> None:
    """Pace the user at --user-rps requests per second (0: no pause between requests)."""
    rps = user.environment.parsed_options.user_rps
    if rps > 0:
        user.wait_time = constant_throughput(rps).__get__(user)


def _discover(environment: Environment) -> Target:
    options = environment.parsed_options
    tag, contract = _describe(environment.host or "", options.model_tag)
    payloads, source = _payloads(tag, contract, options.payloads, options.seed)
    shifts = parse_shifts(options.drift, contract) if options.drift else default_shifts(contract)
    log.info(
        "target %s: payloads from %s (%d rows); drift: %s",
        tag,
        source,
        len(payloads.rows),
        "; ".join(f"{s}" for s in shifts),
    )
    return Target(
        model_tag=tag,
        contract=contract,
        payloads=payloads,
        invalid=invalid_cases(
            payloads, max_instances=_batch_limit(environment.host or "", options)
        ),
        drift=Drift(contract, shifts, options.drift_fraction),
    )


def _batch_limit(host: str, options: Any) -> int | None:
    """The MAX_BATCH_SIZE InvalidUser's too-large batch exceeds by one (None: no such case)."""
    if options.max_batch_size != ASK_THE_SERVICE:
        return options.max_batch_size or None
    # A deployment's limit is rarely the default: a batch of 1001 to a service taking 5000 was
    # answered 200 and counted as InvalidUser's failure, though the service was right.
    try:
        answer = requests.get(f"{host}/docs.json", timeout=30)
        answer.raise_for_status()
        return stated_batch_limit(answer.json())
    except (requests.RequestException, ValueError, LookupError, TypeError) as exc:
        fallback = int(os.environ.get("MAX_BATCH_SIZE", "1000"))
        log.warning("no batch limit in %s/docs.json (%s): assuming %d", host, exc, fallback)
        return fallback


def stated_batch_limit(document: dict[str, Any]) -> int:
    """The most instances a ``/predict`` body may hold, as the service's OpenAPI document says."""
    instances = document["components"]["schemas"]["PredictRequest"]["properties"]["instances"]
    limit = instances["maxItems"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"maxItems is {limit!r}")
    return limit


def _describe(host: str, model_tag: str) -> tuple[str, FeatureContract]:
    """The served model's tag and contract; from the local store when the host cannot say."""
    url = f"{host}/model"
    try:
        answer = requests.get(url, timeout=30)
    except requests.RequestException as exc:
        # requests nests urllib3's errors (80 lines of chained tracebacks, the cause at the end):
        # the innermost reason is what a user needs ("Connection refused", a timeout, DNS).
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        raise RuntimeError(
            f"the service at {host} does not answer (GET {url}: {reason or exc}): is it running? "
            "Give its URL with --host"
        ) from None
    if answer.status_code == 404:
        stored = bentoml.models.get(model_tag)
        contract = FeatureContract.from_json((Path(stored.path) / CONTRACT_FILE).read_text())
        return str(stored.tag), contract
    answer.raise_for_status()
    described = answer.json()
    return described["model"], FeatureContract.from_dict(described["contract"])


def _payloads(
    tag: str, contract: FeatureContract, wanted: str, seed: int
) -> tuple[PayloadFactory, str]:
    if wanted != "synthetic":
        try:
            # Only the reference file: unpickling the estimator would cost seconds for nothing.
            reference = pd.read_parquet(Path(bentoml.models.get(tag).path) / REFERENCE_FILE)
            factory = PayloadFactory.from_reference(contract, reference, seed)
            return factory, f"the reference data of {tag}"
        except Exception as exc:
            if wanted == "reference":
                raise RuntimeError(f"cannot read the reference data of {tag}: {exc}") from exc
            log.info("no reference data for %s in the local model store (%s)", tag, exc)
    return PayloadFactory.synthetic(contract, seed=seed), "the contract (synthetic)"


@events.quitting.add_listener
def _check_slo(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    # With --processes (or --worker), the master judges the totals its workers report.
    if (
        options is None
        or environment.runner is None
        or isinstance(environment.runner, WorkerRunner)
    ):
        return
    total = environment.stats.total
    verdict = judge(
        _slo(options),
        requests=total.num_requests,
        failures=total.num_failures,
        p99_ms=total.get_response_time_percentile(0.99) or 0.0,
        requests_per_second=total.total_rps,
    )
    (log.info if verdict.passed else log.error)("%s", verdict.summary())
    if options.csv_prefix:
        path = Path(f"{options.csv_prefix}_slo.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(verdict.to_dict(), indent=2) + "\n")
    if not verdict.passed:
        environment.process_exit_code = SLO_MISSED_EXIT_CODE
    elif not environment.runner.exceptions:
        # Failures within the error budget do not fail the run: the SLO is the verdict.
        environment.process_exit_code = 0
    else:
        # Locust exits 1: a user that raised (its on_start failed, say) sent nothing
        # the verdict could count.
        count = sum(e["count"] for e in environment.runner.exceptions.values())
        log.error("but the users raised %d exception(s), logged above: exit code 1", count)
