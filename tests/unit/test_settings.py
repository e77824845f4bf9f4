"""Settings that follow the model's contract, so that swapping the model needs no setting."""

from __future__ import annotations

from dataclasses import replace

import pytest

import models.contract
from service.settings import Settings, load_settings, misspelled_settings
from tests.support import ROOT


def test_model_tag_defaults_to_the_contracts_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # A template user who renames the model in models/contract.py serves it without MODEL_TAG.
    monkeypatch.delenv("MODEL_TAG", raising=False)
    swapped = replace(models.contract.CONTRACT, model_name="tumour_malignancy")
    monkeypatch.setattr(models.contract, "CONTRACT", swapped)
    assert Settings().model_tag == "tumour_malignancy:latest"


def test_model_tag_is_still_set_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_TAG", "other:v1")
    assert Settings().model_tag == "other:v1"


def test_no_code_outside_models_names_the_example_model() -> None:
    # Service and load-test defaults must come from the contract, not the example's name.
    tag = f"{models.contract.CONTRACT.model_name}:latest"
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("service", "loadtests")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if tag in path.read_text()
    ]
    assert offenders == []


def test_invalid_values_stop_the_program_naming_each_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An operator sets environment variables, not fields: the message names them as set, one
    # line each, and is all that is printed (SystemExit: no traceback).
    monkeypatch.setenv("WORKERS", "0")
    monkeypatch.setenv("GRPC_PORT", "70000")
    monkeypatch.setenv("ACCESS_LOG", "maybe")
    with pytest.raises(SystemExit) as info:
        load_settings()
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid settings (environment variables):"
    assert sorted(line.split("=")[0].strip() for line in lines[1:]) == [
        "ACCESS_LOG",
        "GRPC_PORT",
        "WORKERS",
    ]
    assert "  GRPC_PORT='70000': Input should be less than or equal to 65535" in lines
    assert info.value.code != 0


@pytest.mark.parametrize("workers", ["cpu_count", "3"])
def test_workers_is_a_count_or_cpu_count(monkeypatch: pytest.MonkeyPatch, workers: str) -> None:
    monkeypatch.setenv("WORKERS", workers)
    assert str(load_settings().workers) == workers


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://app:s3cret@db/log", "only sqlite:///path and postgresql://... stores"),
        ("sqlite://", "an in-memory SQLite store would lose every row"),
        ("predictions.db", "Could not parse SQLAlchemy URL"),
        ("postgresql+psycopg2://app:s3cret@db/log", "its driver 'psycopg2' is not installed"),
    ],
)
def test_an_unsupported_prediction_log_url_is_an_invalid_setting(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    # Refused at start, once, rather than by every worker's store, restarted forever.
    monkeypatch.setenv("PREDICTION_LOG_URL", url)
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert "PREDICTION_LOG_URL" in str(info.value)
    assert says in str(info.value)
    assert "s3cret" not in str(info.value)


def test_a_drift_minimum_the_window_cannot_reach_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every run would report insufficient_data: drift silently off, never a verdict.
    monkeypatch.setenv("DRIFT_WINDOW_SIZE", "500")
    monkeypatch.setenv("DRIFT_MIN_SAMPLES", "501")
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert "DRIFT_MIN_SAMPLES='501'" in str(info.value)
    assert "DRIFT_WINDOW_SIZE (500)" in str(info.value)
    monkeypatch.setenv("DRIFT_MIN_SAMPLES", "500")
    assert load_settings().drift_min_samples == 500


@pytest.mark.parametrize(
    "name",
    [
        "GRPC_SHUTDOWN_GRACE_SECONDS",
        "GRPC_MAX_CONNECTION_IDLE_SECONDS",
        "GRPC_MAX_CONNECTION_AGE_SECONDS",
        "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS",
        "PREDICTION_LOG_FLUSH_INTERVAL_SECONDS",
        "PREDICTION_LOG_RETRY_MAX_SECONDS",
        "PREDICTION_LOG_SHUTDOWN_TIMEOUT_SECONDS",
        "PREDICTION_LOG_RETENTION_DAYS",
        "PREDICTION_LOG_PRUNE_INTERVAL_SECONDS",
    ],
)
def test_an_infinite_duration_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # "inf" parses as a float and passes a lower bound, but no wait can take it: a thread's
    # timeout of inf raises OverflowError, so the prediction log writer, waiting
    # FLUSH_INTERVAL for records, would die in every worker while the service went on serving.
    monkeypatch.setenv(name, "inf")
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert f"{name}='inf': Input should be a finite number" in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "GRPC_SHUTDOWN_GRACE_SECONDS",
        "REQUEST_TIMEOUT_SECONDS",
        "PREDICTION_LOG_FLUSH_INTERVAL_SECONDS",
        "PREDICTION_LOG_RETRY_MAX_SECONDS",
        "PREDICTION_LOG_SHUTDOWN_TIMEOUT_SECONDS",
        "PREDICTION_LOG_PRUNE_INTERVAL_SECONDS",
        "DRIFT_INTERVAL_SECONDS",
        "DRIFT_RUN_TIMEOUT_SECONDS",
    ],
)
def test_a_duration_longer_than_a_wait_can_take_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # Finite, but past what a thread can wait (OverflowError): as for inf, the prediction log's
    # threads died in every worker while the service went on serving. 23 days still pass.
    monkeypatch.setenv(name, "1000000000000")
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert f"{name}='1000000000000': Input should be less than or equal to 2000000" in str(
        info.value
    )
    monkeypatch.setenv(name, "2000000")
    assert getattr(load_settings(), name.lower()) == 2_000_000


@pytest.mark.parametrize(
    ("name", "too_far", "farthest"),
    [
        # The prune deletes rows older than now - RETENTION_DAYS: a million days is before year
        # 1, and every prune failed (OverflowError) for as long as the service ran. 0 keeps rows
        # forever.
        ("PREDICTION_LOG_RETENTION_DAYS", "1000000", 36500),
        # Each run reads the instances received after now - MAX_AGE: before year 1, every run
        # failed (OverflowError, a traceback each interval). Meant as "no bound", that is 0.
        ("DRIFT_WINDOW_MAX_AGE_SECONDS", "1000000000000", 3_153_600_000),
    ],
)
def test_an_age_reaching_before_year_one_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, too_far: str, farthest: int
) -> None:
    monkeypatch.setenv(name, too_far)
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert f"{name}='{too_far}': Input should be less than or equal" in str(info.value)
    monkeypatch.setenv(name, str(farthest))
    assert getattr(load_settings(), name.lower()) == farthest


@pytest.mark.parametrize("name", ["GRPC_HOST", "PREDICTION_LOG_SPOOL_DIR", "DRIFT_SNAPSHOT_DIR"])
def test_an_empty_address_or_directory_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # A variable left empty by a deployment template: GRPC_HOST= passed the start-up port check
    # (binding "" is every address) and then failed in every worker, restarted forever; an empty
    # directory is the working directory, the image's code.
    monkeypatch.setenv(name, "")
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert f"{name}='': String should have at least 1 character" in str(info.value)


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("GRPC_PORTS", "GRPC_PORT"),
        ("WORKER", "WORKERS"),
        ("DRIFT_INTERVAL", "DRIFT_INTERVAL_SECONDS"),
        ("REQUEST_TIMEOUT", "REQUEST_TIMEOUT_SECONDS"),
        ("prediction_log_retention", "PREDICTION_LOG_RETENTION_DAYS"),
        ("ACCESS_LOG_FEATURE", "ACCESS_LOG_FEATURES"),
    ],
)
def test_a_misspelled_setting_is_named_with_the_one_it_means(variable: str, meant: str) -> None:
    # Unknown variables are ignored: a misspelled one would leave its setting at the default.
    assert misspelled_settings({variable: "1"}) == [
        f"environment variable {variable} is no setting, ignored; did you mean {meant}?"
    ]


def test_any_variable_of_the_services_own_prefixes_that_is_no_setting_is_named() -> None:
    assert misspelled_settings({"PREDICTION_LOG_COMPRESSION": "zstd"}) == [
        "environment variable PREDICTION_LOG_COMPRESSION is no setting, ignored"
    ]


def test_settings_and_other_softwares_variables_are_not_taken_for_misspellings() -> None:
    environ = {name.upper(): "1" for name in Settings.model_fields}
    environ |= {"workers": "2", "drift_interval_seconds": "60"}  # read case-insensitively
    # gRPC's core, BentoML, OpenTelemetry, the image's and Kubernetes' own variables.
    environ |= dict.fromkeys(
        [
            "GRPC_VERBOSITY",
            "GRPC_TRACE",
            "GRPC_DNS_RESOLVER",
            "GRPC_POLL_STRATEGY",
            "GRPC_ENABLE_FORK_SUPPORT",
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
            "GRPC_EXPERIMENTS",
            "BENTOML_PORT",
            "BENTOML_HOST",
            "BENTOML_HOME",
            "BENTOML_CONFIG",
            "BENTOML_DO_NOT_TRACK",
            "BENTOML_CONTAINERIZED",
            "PORT",
            "OTEL_SERVICE_NAME",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "HOSTNAME",
            "HOME",
            "PATH",
            "TMPDIR",
            "PYTHONPATH",
            "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_PORT",
            "CREDIT_RISK_SERVICE_PORT_3001_TCP_PORT",
        ],
        "1",
    )
    assert misspelled_settings(environ) == []
