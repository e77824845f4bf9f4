"""`bentoml build` produces a bento that carries the service code and the registered model."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import bentoml
import pytest

from service.model import CONTRACT_FILE, MODEL_FILE, REFERENCE_FILE
from tests.support import ROOT, VENV_BIN, ServedService, build_bento, oci_label_options


def test_bento_contains_the_model_and_the_code(model_tag: str, tmp_path: Path) -> None:
    tag = build_bento()
    bento = bentoml.get(tag)
    assert bento.tag.name == "credit_risk_service"
    # BentoML 1.4 references models in bento.yaml and copies them in on export/containerize.
    assert [str(m.tag) for m in bento.info.all_models] == [model_tag]

    archive = tmp_path / "service.bento"
    bentoml.export_bento(tag, str(archive))
    with tarfile.open(archive) as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    name, version = model_tag.split(":")
    packed = {f"models/{name}/{version}/{f}" for f in (MODEL_FILE, CONTRACT_FILE, REFERENCE_FILE)}
    assert packed <= names
    assert {"src/service/service.py", "src/models/contract.py"} <= names
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    assert "scikit-learn==" in requirements
    # What the image sets: state on the data volume, and no usage reports to bentoml.com.
    envs = {env.name: env.value for env in bento.info.envs}
    assert envs["BENTOML_DO_NOT_TRACK"] == "true"
    assert envs["PREDICTION_LOG_URL"] == "sqlite:////data/predictions.db"


def _oci_labels(bento: str, *args: str) -> dict[str, str]:
    """The labels `make image` passes to `bentoml containerize`."""
    options = oci_label_options(bento, *args)
    assert all(line.startswith("label=") for line in options), options  # each follows --opt
    return dict(line.removeprefix("label=").split("=", 1) for line in options)


@pytest.fixture(scope="module")
def built(model_tag: str) -> str:
    """A bento of the project, shared by the label tests; its tag."""
    return build_bento()


def test_a_model_tag_the_bento_does_not_hold_stops_its_service_naming_it(
    built: str, model_tag: str
) -> None:
    # The image serves the bento, which holds the one model `bentoml build` packed: another
    # MODEL_TAG failed in every worker with a traceback, and the workers were restarted.
    other = f"{model_tag.split(':')[0]}:nosuchversion"
    env = {"MODEL_TAG": other, "BENTOML_HOME": os.environ["BENTOML_HOME"]}  # where it was built
    service = ServedService(env=env, workers=1, target=built)
    with pytest.raises(RuntimeError, match="exited early") as info:
        service.start(timeout=90)
    output = str(info.value)
    assert "invalid settings (environment variables):" in output
    assert f"MODEL_TAG='{other}': no such model in the model store (models there: {model_tag})" in (
        output
    )
    assert "Traceback" not in output
    assert service.stop() == 1


def test_a_model_tag_the_store_does_not_hold_stops_the_build_naming_it(model_tag: str) -> None:
    # `bentoml build` packs the model MODEL_TAG names: a tag the store lacks ended the build in
    # BentoML's own words, naming neither the setting nor what to do.
    other = f"{model_tag.split(':')[0]}:nosuchversion"
    result = subprocess.run(
        [str(VENV_BIN / "bentoml"), "build", "--output", "tag"],
        cwd=ROOT,
        env={**os.environ, "MODEL_TAG": other},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("invalid settings (environment variables):\n")
    assert f"MODEL_TAG='{other}': no such model in the model store (models there: {model_tag})" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_the_image_is_labelled_with_the_bento_and_the_commit(built: str) -> None:
    # A registry, a scanner or `docker inspect` tells which bento and commit an image holds.
    bento = bentoml.get(built)
    labels = _oci_labels(built)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert labels["org.opencontainers.image.title"] == "credit_risk_service"
    assert labels["org.opencontainers.image.version"] == bento.tag.version
    assert labels["org.opencontainers.image.created"] == bento.info.creation_time.isoformat()
    assert labels["org.opencontainers.image.revision"] == head.stdout.strip()


def test_the_source_label_carries_no_credentials(built: str, tmp_path: Path) -> None:
    # An HTTPS remote may hold a token (CI clones often do): an image label is public.
    checkout = tmp_path / "checkout"
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    remote = "https://ci:s3cret@git.example.com/team/credit-risk.git"
    subprocess.run([*git, "remote", "add", "origin", remote], check=True)
    labels = _oci_labels(built, "--git-dir", str(checkout))
    assert (
        labels["org.opencontainers.image.source"] == "https://git.example.com/team/credit-risk.git"
    )
    outside = _oci_labels(built, "--git-dir", str(tmp_path))
    assert "org.opencontainers.image.revision" not in outside  # not a checkout: no commit
