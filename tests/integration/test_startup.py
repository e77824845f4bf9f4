"""Start-up of `bentoml serve` with settings it cannot run with, as an operator meets it: the
process stops with a message naming the environment variable, not a traceback. Each test runs
its own `bentoml serve`."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.support import ServedService


def test_invalid_settings_stop_the_service_naming_the_variables(model_tag: str) -> None:
    # MAX_BODY_BYTES: gRPC's message limit too, a C int; above it every worker failed to start.
    # A flush interval past what a thread can wait: the log's writer died in every worker.
    env = {
        "WORKERS": "0",
        "GRPC_PORT": "70000",
        "MAX_BODY_BYTES": str(2**31),
        "PREDICTION_LOG_FLUSH_INTERVAL_SECONDS": "1e12",
    }
    service = ServedService(env=env)
    with pytest.raises(RuntimeError, match="exited early") as info:
        service.start()
    output = str(info.value)
    assert "invalid settings (environment variables):" in output
    assert "WORKERS='0': Input should be greater than or equal to 1" in output
    assert "GRPC_PORT='70000': Input should be less than or equal to 65535" in output
    assert "MAX_BODY_BYTES='2147483648': Input should be less than or equal to 2147483647" in output
    assert (
        "PREDICTION_LOG_FLUSH_INTERVAL_SECONDS='1e12': Input should be less than or equal to "
        "2000000" in output
    )
    assert "Traceback" not in output
    assert service.stop() == 1


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://app@db/log", "'mysql://app@db/log': only"),
        # A driver that is not installed was refused only by each worker, with a traceback,
        # and the workers were restarted forever.
        (
            "postgresql+psycopg2://app:s3cret@db/log",
            "'postgresql+psycopg2://app:***@db/log': its driver 'psycopg2' is not installed",
        ),
    ],
    ids=["database", "driver"],
)
def test_an_unsupported_prediction_log_url_stops_the_service(
    model_tag: str, url: str, says: str
) -> None:
    service = ServedService(env={"PREDICTION_LOG_URL": url}, workers=1)
    with pytest.raises(RuntimeError, match="exited early") as info:
        service.start(timeout=60)
    assert f"PREDICTION_LOG_URL: Value error, PREDICTION_LOG_URL {says}" in str(info.value)
    assert "Traceback" not in str(info.value)
    assert "s3cret" not in str(info.value)


def test_a_taken_http_port_stops_the_service_naming_it(model_tag: str) -> None:
    # BentoML binds it after the deployment hooks; its own failure is a 50-line CLI traceback
    # ending in "Address already in use", which names neither the port nor how to move it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        service = ServedService(workers=1)
        # Given, not chosen by the harness: it must not try another port.
        service.port = holder.getsockname()[1]
        with pytest.raises(RuntimeError, match="exited early") as info:
            service.start(timeout=60)
    output = str(info.value)
    assert f"HTTP port 127.0.0.1:{service.port} cannot be bound: [Errno 98]" in output
    assert "BENTOML_PORT" in output
    assert "Traceback" not in output
    assert service.stop() == 1


def test_a_misspelled_setting_is_warned_of_once_and_the_service_starts(model_tag: str) -> None:
    # Ignored, it would leave its setting at the default without a word; a warning, not a
    # refusal: a variable meant for other software may look like one.
    env = {"GRPC_PORTS": "3001", "PREDICTION_LOG_RETENTION": "30"}
    with ServedService(env=env, workers=2) as service:
        assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
    lines = service.output.splitlines()
    for warning in [
        "environment variable GRPC_PORTS is no setting, ignored; did you mean GRPC_PORT?",
        "environment variable PREDICTION_LOG_RETENTION is no setting, ignored; did you mean "
        "PREDICTION_LOG_RETENTION_DAYS?",
    ]:
        assert sum(line.endswith(warning) for line in lines) == 1, warning


def test_a_misspelling_is_warned_of_before_a_refusal_it_may_explain(model_tag: str) -> None:
    # GRPC_PORTS meant to move gRPC off a taken port: the refusal names GRPC_PORT, the warning
    # says why the setting did not take.
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        service = ServedService(env={"GRPC_PORT": str(port), "GRPC_PORTS": "0"}, workers=1)
        with pytest.raises(RuntimeError, match="exited early") as info:
            service.start(timeout=60)
    assert "environment variable GRPC_PORTS is no setting, ignored; did you mean GRPC_PORT?" in (
        str(info.value)
    )
    assert f"GRPC_PORT 0.0.0.0:{port} is in use" in str(info.value)


def test_a_port_taken_after_it_was_chosen_is_chosen_again(model_tag: str) -> None:
    """The harness (tests/support.py): a port seen free may be taken by another process on the
    shared machine before `bentoml serve` binds it; the tests must not fail for it."""
    service = ServedService(workers=1)
    with socket.socket() as taker:
        taker.bind(("127.0.0.1", service.port))
        taker.listen()
        taken = service.port
        with service:
            assert service.port != taken
            assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "OTEL_TRACES_EXPORTER='zipkin' is not supported: use otlp, console or none",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
            },
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported: use http/protobuf or grpc",
        ),
        # Outside a bento BentoML resolves the model before any hook of the service runs; its
        # refusal named neither the setting nor the fix.
        (
            {"MODEL_TAG": "credit_risk:nosuchversion"},
            "MODEL_TAG='credit_risk:nosuchversion': no such model in the model store (models "
            "there: {model_tag}); set it to one `bentoml models list` shows",
        ),
    ],
    ids=["exporter", "protocol", "model"],
)
def test_a_setting_checked_at_start_stops_the_service_naming_it(
    model_tag: str, env: dict[str, str], says: str
) -> None:
    # The OTEL_* variables are settings too, and MODEL_TAG is one whose value is checked only
    # against the model store: the same one line as for the others, no traceback.
    says = says.format(model_tag=model_tag)
    service = ServedService(env=env, workers=1)
    with pytest.raises(RuntimeError, match="exited early") as info:
        service.start(timeout=60)
    assert "invalid settings (environment variables):" in str(info.value)
    assert says in str(info.value)
    assert "Traceback" not in str(info.value)
    assert service.stop() == 1
