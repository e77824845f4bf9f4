"""The Predictor records every request exactly once, even one cut short by a timeout."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import bentoml
import pytest

from service.events import PredictionEvent, RejectionEvent
from service.inference import Predictor, RequestContext, new_request_id
from service.model import load_model
from tests.support import EventRecorder, HeldEstimator, example_rows


async def test_a_request_cancelled_by_the_timeout_is_recorded_as_504(model_tag: str) -> None:
    estimator = HeldEstimator()
    model = replace(load_model(bentoml.models.get(model_tag)), estimator=estimator)
    recorder = EventRecorder()
    predictor = Predictor(model, 10, 100, sinks=[recorder])
    ctx = RequestContext.start("http", "/predict", "slow-1")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(predictor.predict(ctx, example_rows(2)), timeout=0.2)
    (event,) = recorder.events
    assert isinstance(event, RejectionEvent)
    assert (event.status, event.errors[0].reason.value) == (504, "timeout")
    assert event.request.request_id == "slow-1"

    estimator.release.set()
    answered = await predictor.predict(
        RequestContext.start("http", "/predict", "next"), example_rows(1)
    )
    assert len(answered) == 1
    assert isinstance(recorder.events[-1], PredictionEvent)
    await predictor.aclose()


def test_generated_request_ids_are_unique_time_ordered_uuid7() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and i[12] == "7" and i[16] in "89ab" for i in ids)
    assert [i[:12] for i in ids] == sorted(
        i[:12] for i in ids
    )  # millisecond prefix never goes back


async def test_merged_requests_with_and_without_kept_columns_answer_as_the_model_does(
    model_tag: str,
) -> None:
    model = load_model(bentoml.models.get(model_tag))
    predictor = Predictor(model, 100, 1000)
    rows = example_rows(60)
    batch = predictor.validator.validate_instances(rows[:40])  # columnar check: columns kept
    singles = [predictor.validator.validate_instances([row]) for row in rows[40:]]  # none kept
    assert batch.columns is not None
    assert all(s.columns is None for s in singles)
    expected = model.score(model.contract.frame(rows))

    def ctx() -> RequestContext:
        return RequestContext.start("http", "/predict", None)

    answers = await asyncio.gather(
        predictor.predict(ctx(), batch), *(predictor.predict(ctx(), s) for s in singles)
    )
    got = [p.probability for answer in answers for p in answer]
    assert got == expected.tolist()  # bit for bit, whichever way each frame was built
    alone = await predictor.predict(ctx(), predictor.validator.validate_instances(rows[:40]))
    assert [p.probability for p in alone] == expected[:40].tolist()
    await predictor.aclose()
