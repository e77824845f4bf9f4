"""`bentoml build` produces a bento that carries the service code and the registered model."""

from __future__ import annotations

import tarfile
from pathlib import Path

import bentoml

from service.model import CONTRACT_FILE, MODEL_FILE, REFERENCE_FILE
from tests.support import build_bento


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
