"""All runtime settings, read from environment variables (names are the field names upper-cased).

One typed class, documented field by field; the settings tables (README's Configuration, and
docs/prediction-log.md and docs/drift.md for their topics) are checked against it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import models.contract


def default_model_tag() -> str:
    """``<model_name>:latest`` of the contract in ``models/contract.py``: the model it trains."""
    return f"{models.contract.CONTRACT.model_name}:latest"


# Longest duration a setting waited on may take (about 23 days). A thread's wait raises
# OverflowError beyond ~2.9e11 s (time_t), gRPC takes its durations in milliseconds as a C int
# (2**31 - 1 ms, 24.8 days); past them the prediction log's threads died in every worker
# while the service went on serving, unrecorded.
LONGEST_WAIT_SECONDS = 2_000_000
# Longest a worker's graceful shutdown takes (docs/deployment.md, Shutdown): a request in flight
# to its timeout, then the gRPC calls, then the log's flush to a hung store (1 s more: the
# writer's turn) beside drift's thread (10 s): tests/unit/test_deployment_docs.py holds the
# examples' grace periods to it.
SHUTDOWN_FORMULA = (
    "the orchestrator's grace period must cover REQUEST_TIMEOUT_SECONDS + "
    "GRPC_SHUTDOWN_GRACE_SECONDS + max(PREDICTION_LOG_SHUTDOWN_TIMEOUT_SECONDS + 1, 10), 46 s with "
    "the defaults (docs/deployment.md, Shutdown)"
)


class Settings(BaseSettings):
    # No `inf` or `nan` for a float: every float here is a duration waited on (or subtracted from
    # now), and an infinite one raises OverflowError in the thread that waits, not here.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    model_tag: str = Field(
        default_factory=default_model_tag,
        description="BentoML model store tag of the model to serve; packed into the bento by "
        "`bentoml build`. Default: the latest version of the contract's model "
        "(`models/contract.py`), the one `python -m models.train` registers.",
    )
    workers: Annotated[int, Field(ge=1)] | Literal["cpu_count"] = Field(
        "cpu_count",
        description="HTTP worker processes (each loads the model); `cpu_count` = one per core.",
    )
    connection_balancing: bool = Field(
        True,
        description="Spread keep-alive HTTP connections evenly over the workers: a worker "
        "holding two or more connections more than a sibling answers one request with "
        "`Connection: close` (at most 4 a second), and the client reconnects to a less busy "
        "worker. Without it, a client with a few long-lived connections can land on one worker "
        "and use one core.",
    )
    grpc_enabled: bool = Field(
        True,
        description="Serve gRPC (Open Inference Protocol) on GRPC_PORT beside HTTP. When false, "
        "only HTTP is served (v2 REST included).",
    )
    # min_length: an empty value (a template's unset variable) passed the start-up port check,
    # which binds "" as every address, and then failed in every worker, restarted forever.
    grpc_host: str = Field(
        "0.0.0.0",
        min_length=1,
        description="Address the gRPC server binds; `::` for IPv6 and IPv4.",
    )
    grpc_port: int = Field(
        3001,
        ge=0,
        le=65535,
        description="Port of the gRPC (Open Inference Protocol) server, shared by all workers "
        "(SO_REUSEPORT). The service refuses to start if anything listens on it. 0 = a free port "
        "per worker, for tests.",
    )
    grpc_shutdown_grace_seconds: float = Field(
        5.0,
        ge=0,
        le=LONGEST_WAIT_SECONDS,
        description="On shutdown, how long gRPC calls in flight may take to finish before they "
        "are cancelled; new calls are refused and health checks answer NOT_SERVING meanwhile. "
        f"Part of the worst-case shutdown: {SHUTDOWN_FORMULA}.",
    )
    # gRPC takes these in milliseconds, as a C int: at most 2**31 - 1 ms, about 24.8 days.
    grpc_max_connection_idle_seconds: float = Field(
        300.0,
        ge=0,
        le=LONGEST_WAIT_SECONDS,
        description="A gRPC connection without a call in flight for this long is closed by the "
        "server (a GOAWAY: the client reconnects at its next call); client keepalive pings do "
        "not count as calls. Below the idle timeouts of common L4 load balancers (AWS NLB: "
        "350 s), so that the server, not a middlebox silently, ends an idle connection. "
        "0 = never.",
    )
    grpc_max_connection_age_seconds: float = Field(
        300.0,
        ge=0,
        le=LONGEST_WAIT_SECONDS,
        description="A gRPC connection this old (+-10% jitter) is asked to go away (GOAWAY): its "
        "calls in flight finish, new calls go on a new connection, which the kernel, the load "
        "balancer or the client's resolver may place on another worker or replica, so that "
        "long-lived clients spread over replicas added since they connected. 0 = never.",
    )
    grpc_max_connection_age_grace_seconds: float = Field(
        30.0,
        ge=0,
        le=LONGEST_WAIT_SECONDS,
        description="After GRPC_MAX_CONNECTION_AGE_SECONDS, how long the calls in flight on the "
        "old connection may take before it is closed under them (their clients get "
        "UNAVAILABLE). Longer than any call should take; long-lived streams (health `Watch`) "
        "end then and are re-opened by their clients.",
    )
    max_batch_size: int = Field(
        1000, ge=1, description="Most instances accepted in one request; more is refused (413)."
    )
    # le: also gRPC's message limit, which it takes as a C int; above it every worker's gRPC
    # server failed to start (OverflowError), and the workers were restarted forever.
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=2**31 - 1,
        description="Largest request body accepted, in bytes; larger bodies are refused (413) "
        "before they are read. A 1000-instance body of the example model is about 0.75 MB. "
        "At most 2147483647 (gRPC's limit).",
    )
    max_model_batch_rows: int = Field(
        4000,
        ge=1,
        description="Most rows merged from concurrent requests into one model call. A single "
        "request larger than this still runs, alone.",
    )
    max_queued_rows: int = Field(
        16_000,
        ge=0,
        description="Most instances waiting for the model per worker (merged into the next "
        "model calls). A request that would exceed it is refused at once with 503 and "
        "`Retry-After: 1`, logged and counted, instead of queueing: under overload, memory and "
        "latency stay bounded and a load balancer can retry elsewhere. A request arriving at an "
        "empty queue always runs. 0 = no bound.",
    )
    request_timeout_seconds: int = Field(
        30,
        ge=1,
        le=LONGEST_WAIT_SECONDS,
        description="BentoML's per-request timeout (answered 504); a shutdown waits for the "
        f"requests in flight up to it. Part of the worst-case shutdown: {SHUTDOWN_FORMULA}.",
    )
    # NoDecode: a comma-separated list, not the JSON pydantic-settings expects of a tuple.
    cors_allow_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Origins of the browser apps allowed to call the HTTP API "
        "(`https://app.example.com`, comma-separated; `*` for any): preflights are answered and "
        "every answer, errors included, carries `Access-Control-Allow-Origin` and exposes "
        "`X-Request-ID`. Empty: no CORS headers (browsers on other origins cannot read answers).",
    )
    metrics_enabled: bool = Field(
        True,
        description="Prometheus metrics of requests, the model, the prediction log and the "
        "process, and BentoML's own request metrics. Off only for benchmarks: /metrics then "
        "shows little.",
    )

    # Prediction log (service/predlog): every request and prediction, recorded off the request path.
    prediction_log_enabled: bool = Field(
        True,
        description="Record every accepted instance and every refused request in the prediction "
        "log. Off only for benchmarks and experiments: nothing is recorded.",
    )
    prediction_log_url: str = Field(
        "sqlite:///var/predictions.db",
        description="SQLAlchemy URL of the prediction log store: `sqlite:///relative/path.db`, "
        "`sqlite:////absolute/path.db` (WAL mode; the directory is created) or "
        "`postgresql://user:password@host:5432/db` (several replicas).",
    )
    prediction_log_queue_size: int = Field(
        10_000,
        ge=1,
        description="Most rows (instances plus rejections) held in memory per worker waiting for "
        "the writer; beyond it, records go straight to the spool.",
    )
    prediction_log_batch_size: int = Field(
        500, ge=1, description="Rows committed to the store per transaction (about)."
    )
    prediction_log_flush_interval_seconds: float = Field(
        0.5,
        gt=0,
        le=LONGEST_WAIT_SECONDS,
        description="Longest a record waits in memory before the writer commits it (or spools "
        "it); also how often the spool is fsynced.",
    )
    prediction_log_spool_dir: str = Field(
        "var/predlog-spool",
        min_length=1,  # empty would be the working directory: in the image, the code's
        description="Directory of the local spool holding records the store could not take yet; "
        "replayed when the store is back, also by the next process after a crash. Shared by the "
        "workers; put it on a persistent volume to survive a container restart.",
    )
    prediction_log_spool_max_bytes: int = Field(
        1024**3,
        ge=1024,
        description="Size cap of the spool directory; records beyond it are dropped and counted.",
    )
    prediction_log_retry_max_seconds: float = Field(
        30.0,
        gt=0,
        le=LONGEST_WAIT_SECONDS,
        description="Longest wait between attempts to reach a store that is down (the wait "
        "doubles from 0.5 s up to this).",
    )
    prediction_log_shutdown_timeout_seconds: float = Field(
        10.0,
        ge=0,
        le=LONGEST_WAIT_SECONDS,
        description="At shutdown, how long the writer keeps trying the store before it spools "
        f"what is left. Part of the worst-case shutdown: {SHUTDOWN_FORMULA}.",
    )
    prediction_log_retention_days: float = Field(
        90,
        ge=0,
        # The prune deletes rows older than now minus this: a million days is before year 1.
        le=36_500,
        description="Rows older than this many days are deleted by a periodic prune; 0 keeps "
        "them forever. At most 36500 (100 years).",
    )
    prediction_log_max_rows: int = Field(
        0,
        ge=0,
        description="Most records kept of each kind: instances (predictions) and refused "
        "requests (rejections); the oldest are pruned first. 0 = no cap.",
    )
    prediction_log_prune_interval_seconds: float = Field(
        3600,
        gt=0,
        le=LONGEST_WAIT_SECONDS,
        description="How often each worker runs the retention prune.",
    )
    access_log: bool = Field(
        True, description="Write one JSON line per request to stdout (the access log)."
    )
    access_log_features: bool = Field(
        False,
        description="Include the request's feature values in the access log line. Off by "
        "default: feature values are personal data in most models; the prediction log has them.",
    )

    # Drift (service/drift): the recent logged traffic compared with the model's reference data.
    drift_enabled: bool = Field(
        True,
        description="Compute data and prediction drift every DRIFT_INTERVAL_SECONDS. Drift reads "
        "its window from the prediction log, so it is off when PREDICTION_LOG_ENABLED is false.",
    )
    drift_interval_seconds: int = Field(
        60,
        ge=1,
        le=LONGEST_WAIT_SECONDS,
        description="How often drift is computed: once per interval across all workers and "
        "replicas sharing the prediction log (the interval slot is claimed in the store).",
    )
    drift_window_size: int = Field(
        1000,
        ge=1,
        description="Most recent logged instances of the served model compared with the "
        "reference data.",
    )
    drift_window_max_age_seconds: int = Field(
        0,
        ge=0,
        # Runs read instances received after now minus this: much more is before year 1, and
        # every run failed (OverflowError). As PREDICTION_LOG_RETENTION_DAYS, 100 years.
        le=3_153_600_000,
        description="Only instances received within this many seconds enter the window; "
        "0 = no age bound (the window is the last DRIFT_WINDOW_SIZE instances). At most "
        "3153600000 (100 years).",
    )
    drift_min_samples: int = Field(
        100,
        ge=1,
        description="Fewer instances in the window than this: the run reports insufficient_data "
        "and no drift verdict.",
    )
    drift_snapshot_dir: str = Field(
        "var/drift",
        min_length=1,  # as PREDICTION_LOG_SPOOL_DIR
        description="Directory of the Evidently snapshots (JSON) and HTML reports of the runs; "
        "GET /drift/report serves the latest. Share it between replicas (or accept that a "
        "replica serves only the reports it computed).",
    )
    drift_snapshot_keep: int = Field(
        168,
        ge=1,
        description="Runs whose Evidently snapshot (JSON, ~0.8 MB) is kept (the oldest are "
        "deleted); also the runs kept in the drift_runs table.",
    )
    drift_reports_keep: int = Field(
        24,
        ge=1,
        description="Runs whose HTML report is kept (~4 MB each: Evidently embeds its "
        "JavaScript); at most DRIFT_SNAPSHOT_KEEP. An older run's report can be rebuilt from its "
        "snapshot.",
    )
    drift_run_timeout_seconds: int = Field(
        120,
        ge=1,
        le=LONGEST_WAIT_SECONDS,
        description="Longest a drift run may take (its child process is then killed and the "
        "run counted as failed). Starting the child process (importing Evidently) is not counted: "
        "it has 5 minutes of its own.",
    )

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in re.split(r"[\s,]+", value) if part]
        if not isinstance(value, list | tuple):
            return value  # refused by the type check
        origins = tuple(_origin(str(item)) for item in value)
        if "*" in origins and len(origins) > 1:
            raise ValueError("`*` allows every origin: give it alone")
        return origins

    @field_validator("prediction_log_url")
    @classmethod
    def _a_supported_store(cls, url: str) -> str:
        # Checked here, so that a wrong URL stops the service once, at start (InvalidSettings),
        # rather than every worker, restarted forever. Imported late: service.predlog imports
        # this module.
        from service.predlog.store import parse_url

        try:
            parse_url(url)
        except Exception as exc:  # ValueError, or SQLAlchemy's ArgumentError: not a URL at all
            raise ValueError(str(exc)) from None
        return url

    @field_validator("drift_min_samples")
    @classmethod
    def _a_window_can_reach_it(cls, min_samples: int, info: ValidationInfo) -> int:
        window = info.data.get("drift_window_size")
        if window is not None and min_samples > window:
            raise ValueError(
                f"must be at most DRIFT_WINDOW_SIZE ({window}): the window never holds more "
                "instances, so no drift run would ever give a verdict"
            )
        return min_samples


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(origin: str) -> str:
    """``origin`` as a browser writes it in ``Origin`` (lower-case scheme and host, no default
    port), which BentoML's CORS middleware compares as a string: any other spelling of the same
    origin would never match, and every answer would be blocked without a word."""
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    try:
        port = parts.port
    except ValueError:
        port = -1
    path = parts.path.rstrip("/")  # a trailing slash is a common slip; an origin has no path
    if not (parts.scheme and parts.hostname) or port == -1 or parts.username is not None:
        raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port]")
    if path or parts.query or parts.fragment:
        raise ValueError(
            f"{origin!r} is not an origin (it has a path or query): write scheme://host[:port] "
            "as the browser's address bar shows it, without a path"
        )
    scheme = parts.scheme.lower()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    shown_port = "" if port is None or _DEFAULT_PORTS.get(scheme) == port else f":{port}"
    return f"{scheme}://{host}{shown_port}"


class InvalidSettings(SystemExit):
    """Environment variables the service cannot run with: the program stops (exit code 1) with
    one line per variable, named as it is set, and no traceback."""

    def __init__(self, error: ValidationError) -> None:
        problems: dict[str, list[str]] = {}
        values: dict[str, object] = {}
        for item in error.errors():
            name = str(item["loc"][0]).upper() if item["loc"] else "?"
            problems.setdefault(name, []).append(item["msg"])
            values[name] = item["input"]
        # A URL's password is not printed: the store's own message shows the URL without it.
        lines = [
            f"  {name}{'' if name.endswith('_URL') else f'={values[name]!r}'}: "
            + "; or ".join(messages)
            for name, messages in problems.items()
        ]
        super().__init__("invalid settings (environment variables):\n" + "\n".join(lines))


# Prefixes of this service's settings that no other software here reads (gRPC's core reads
# GRPC_*, BentoML BENTOML_*): a variable with one of them that is no setting is a misspelling.
OWN_PREFIXES = ("PREDICTION_LOG_", "DRIFT_", "ACCESS_LOG_")
# How alike a name must be to a setting's to be taken for a misspelling of it: GRPC_PORTS,
# DRIFT_INTERVAL or REQUEST_TIMEOUT are (0.78 and above); gRPC's GRPC_VERBOSITY (0.7 to
# GRPC_HOST) and the environment a container usually has are not.
LIKE_A_SETTING = 0.75


def misspelled_settings(environ: Mapping[str, str]) -> list[str]:
    """A warning for each variable of ``environ`` that looks like a setting but is none, with
    the setting it probably means: the settings ignore unknown variables, so a misspelled one
    would silently leave its setting at the default."""
    names = [name.upper() for name in Settings.model_fields]
    warnings = []
    for variable in sorted(environ):
        upper = variable.upper()  # the settings are read case-insensitively
        if upper in names:
            continue
        own = upper.startswith(OWN_PREFIXES)
        near = difflib.get_close_matches(upper, names, n=1, cutoff=LIKE_A_SETTING)
        if own or near:
            meant = f"; did you mean {near[0]}?" if near else ""
            warnings.append(f"environment variable {variable} is no setting, ignored{meant}")
    return warnings


def load_settings() -> Settings:
    """The settings from the environment; :class:`InvalidSettings` names any invalid one."""
    try:
        return Settings()
    except ValidationError as exc:
        raise InvalidSettings(exc) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
