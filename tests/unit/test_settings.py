"""Settings that follow the model's contract, so that swapping the model needs no setting."""

from __future__ import annotations

from dataclasses import replace

import pytest

import models.contract
from service.settings import Settings
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
