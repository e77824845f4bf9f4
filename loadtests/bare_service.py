"""A bare BentoML service for the benchmark's baseline; not part of the product.

The same registered model behind BentoML's own adaptive batching, with no validation and none of
this project's observability: what a BentoML user writes in a dozen lines. BentoML's defaults are
kept (its request metrics and access log stay on), so it is "BentoML as shipped".

    BARE_MAX_BATCH_SIZE=6400 bentoml serve loadtests.bare_service:BareService --port 3100

``POST /predict`` takes the same ``{"instances": [...]}`` body as the service and answers a JSON
list of positive-class probabilities. Settings (environment, read at import):

- ``BARE_MAX_BATCH_SIZE``: most rows per merged model call (BentoML's default is 100, which never
  merges two 100-row requests);
- ``BARE_MAX_LATENCY_MS``: BentoML's batching latency budget (default 60000);
- ``BARE_BATCHABLE``: ``false`` turns adaptive batching off;
- ``BARE_WORKERS``: worker processes (2).
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import pandas as pd

from service.model import load_model
from service.settings import get_settings

MAX_BATCH_SIZE = int(os.environ.get("BARE_MAX_BATCH_SIZE", "100"))
MAX_LATENCY_MS = int(os.environ.get("BARE_MAX_LATENCY_MS", "60000"))
BATCHABLE = os.environ.get("BARE_BATCHABLE", "true").lower() == "true"


@bentoml.service(name="bare_credit_risk", workers=int(os.environ.get("BARE_WORKERS", "2")))
class BareService:
    model_ref = bentoml.models.BentoModel(get_settings().model_tag)

    def __init__(self) -> None:
        self.model = load_model(self.model_ref)
        self.columns = list(self.model.contract.feature_names)

    @bentoml.api(batchable=BATCHABLE, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, instances: list[dict[str, Any]]) -> list[float]:
        frame = pd.DataFrame.from_records(instances, columns=self.columns)
        return self.model.score(frame).tolist()
