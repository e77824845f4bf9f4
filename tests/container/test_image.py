"""The image `bentoml containerize` builds is the product platform engineers run: prove it.

Built the standard way (`bentoml build`, then `bentoml containerize credit_risk_service:latest`,
here with buildah), run with podman as `docker run` would run it: BentoML's entrypoint, the
non-root `bentoml` user, settings from the environment, a host directory as the data volume.
"""

from __future__ import annotations

import json
import sqlite3
import time

import bentoml
import httpx
import pytest
import tritonclient.grpc as triton_grpc

from service.model import load_model
from tests.container.oci import BENTO_USER_UID, PODMAN_RUN_FLAGS, Container, Oci, StartContainer
from tests.oip_support import triton_inputs
from tests.support import example_rows, send_endless_head, wait_until

# Minutes on a first run: debootstrap of the base, then the image build (later runs reuse both).
pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]


def _image_config(oci: Oci, image: str) -> dict:
    return json.loads(oci.podman("image", "inspect", "--format", "{{json .Config}}", image))


def test_image_runs_bentoml_entrypoint_as_non_root_with_data_volume(oci: Oci, image: str) -> None:
    config = _image_config(oci, image)
    assert config["User"] == "bentoml"
    assert config["Entrypoint"] == ["/home/bentoml/bento/env/docker/entrypoint.sh"]
    assert {"3000/tcp", "3001/tcp"} <= set(config["ExposedPorts"])
    env = dict(item.split("=", 1) for item in config["Env"])
    # Stateful files default to the data volume, not the image's writable layer.
    assert env["PREDICTION_LOG_URL"] == "sqlite:////data/predictions.db"
    assert env["PREDICTION_LOG_SPOOL_DIR"] == "/data/predlog-spool"
    # No usage reports from production replicas to bentoml.com unless asked for.
    assert env["BENTOML_DO_NOT_TRACK"] == "true"


def test_image_carries_the_oci_labels_of_its_bento(oci: Oci, image: str) -> None:
    # `docker inspect`, a registry or a scanner tells which bento (and commit) an image holds.
    version = image.rsplit(":", 1)[1]
    assert oci.image_label(image, "org.opencontainers.image.version") == version
    assert oci.image_label(image, "org.opencontainers.image.title") == "credit_risk_service"
    assert oci.image_label(image, "org.opencontainers.image.created")


def test_data_directory_belongs_to_the_service_user(oci: Oci, image: str) -> None:
    # Docker gives a new named volume (`-v credit-risk-data:/data`) the ownership of the image's
    # directory; a mount point the image lacks would be root's, and the service could not write.
    # (Podman chowns new volumes to the container's user anyway, so look at the image itself.)
    stat = oci.podman(
        "run", "--rm", *PODMAN_RUN_FLAGS, "--entrypoint", "stat", image, "-c", "%U:%G %a", "/data"
    )
    assert stat.strip() == "bentoml:bentoml 755"


def _assert_predicts(container: Container, model_tag: str) -> str:
    """The image's answers are the registered model's, to the last bit: same model version, same
    locked scikit-learn as the training environment. Returns the request id."""
    rows = example_rows(20)
    response = httpx.post(f"{container.url}/predict", json={"instances": rows}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model_tag
    model = load_model(bentoml.models.get(model_tag))
    expected = model.score(model.contract.frame(rows))
    assert [p[model.contract.score_name] for p in body["predictions"]] == expected.tolist()
    assert [p["label"] for p in body["predictions"]] == model.labels(expected)
    return body["request_id"]


def _assert_grpc_predicts(container: Container, model_tag: str) -> str:
    """The Open Inference Protocol over gRPC on 3001 answers like /predict. Returns the id."""
    rows = example_rows(5)
    model = load_model(bentoml.models.get(model_tag))
    with triton_grpc.InferenceServerClient(container.grpc_target) as client:
        assert client.is_server_ready()
        result = client.infer(
            model.contract.model_name,
            triton_inputs(triton_grpc, rows),
            request_id="container-grpc-1",
        )
    expected = model.score(model.contract.frame(rows))
    assert result.as_numpy(model.contract.score_name).tolist() == expected.tolist()
    return "container-grpc-1"


def _assert_metrics(container: Container) -> None:
    counted = 'inference_requests_total{code="200",endpoint="/predict",transport="http"} 1.0'

    def scraped() -> str | None:
        response = httpx.get(f"{container.url}/metrics", timeout=10)
        assert response.status_code == 200
        # Each worker's metrics thread applies the service's and BentoML's request metrics
        # once a second: the requests just answered may not be in yet.
        applied = counted in response.text and "bentoml_service_request_total{" in response.text
        return response.text if applied else None

    # The requests just answered are counted, merged across workers.
    text = wait_until(scraped, timeout=10)
    assert "model_predictions_total{" in text


def _assert_heads_are_bounded(container: Container) -> None:
    # service/header_limit.py bounds uvicorn's httptools protocol by patching it: the image's
    # own uvicorn and httptools must be the ones it knows, or a worker reads a head of any size.
    sent, answer = send_endless_head("127.0.0.1", container.http_port)
    assert sent < 16 << 20, f"the worker read {sent} bytes of headers, answered {answer[:40]!r}"
    if answer:
        assert answer.startswith(b"HTTP/1.1 431 "), answer


def _assert_runs_as_bentoml(container: Container) -> None:
    processes = container.processes()
    assert any("bentoml serve" in command for _, command in processes), processes
    assert {user for user, _ in processes} == {"bentoml"}, processes
    assert container.exec("id", "-u").strip() == str(BENTO_USER_UID)


def _assert_data_volume_writable(container: Container) -> None:
    container.exec("touch", "/data/.writable")
    written = container.data_dir / ".writable"
    assert written.exists()
    assert written.stat().st_uid == BENTO_USER_UID


def test_container_serves_then_stops_gracefully_on_sigterm(
    start_container: StartContainer, model_tag: str
) -> None:
    container = start_container({"WORKERS": "2"})  # returns once /readyz answers 200
    assert httpx.get(f"{container.url}/readyz", timeout=5).status_code == 200
    http_id = _assert_predicts(container, model_tag)
    grpc_id = _assert_grpc_predicts(container, model_tag)
    _assert_metrics(container)
    _assert_heads_are_bounded(container)
    _assert_runs_as_bentoml(container)
    _assert_data_volume_writable(container)

    started = time.monotonic()
    assert container.stop(timeout=60) == 0
    assert time.monotonic() - started < 30
    logs = container.logs()
    # Each worker ran the service's shutdown hook (the Predictor drains) before exiting.
    assert logs.count("Completed async cleanup hook: shutdown") == 2, logs
    # ... and the prediction log reached the mounted volume: every instance, by request id.
    with sqlite3.connect(container.data_dir / "predictions.db") as db:
        rows = db.execute(
            "select request_id, transport, count(*) from predictions group by 1, 2"
        ).fetchall()
    assert sorted(rows) == sorted([(http_id, "http", 20), (grpc_id, "grpc", 5)])


def test_settings_come_from_the_environment(start_container: StartContainer) -> None:
    container = start_container({"MAX_BATCH_SIZE": "2", "WORKERS": "1"})
    response = httpx.post(
        f"{container.url}/predict", json={"instances": example_rows(3)}, timeout=30
    )
    assert response.status_code == 413
    assert response.json()["errors"][0]["reason"] == "batch_too_large"
    processes = container.processes()
    workers = [command for _, command in processes if "_bentoml_impl.worker" in command]
    assert len(workers) == 1, processes


def test_container_runs_with_a_read_only_root_filesystem(
    start_container: StartContainer, model_tag: str
) -> None:
    # Kubernetes' readOnlyRootFilesystem with the writable paths docs/deployment.md names: the data
    # volume and a tmpfs on /tmp (the workers' metrics files). Nothing else may need writing:
    # BentoML's home directories must already exist in the image.
    container = start_container({"WORKERS": "1"}, run_flags=("--read-only", "--tmpfs", "/tmp"))
    http_id = _assert_predicts(container, model_tag)
    _assert_metrics(container)
    assert container.stop(timeout=60) == 0
    with sqlite3.connect(container.data_dir / "predictions.db") as db:
        rows = db.execute("select request_id, count(*) from predictions group by 1").fetchall()
    assert rows == [(http_id, 20)]
