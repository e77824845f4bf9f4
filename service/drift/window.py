"""The drift window: the most recent logged instances of the served model, typed by its contract.

Read from the prediction log's ``prediction_requests`` table (SQLite or PostgreSQL, SQLAlchemy
Core), so every worker's and every replica's traffic counts, whichever process computes the drift.
Only instances of the served model version enter: the reference data belongs to that version.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import select

from service.contract import FeatureContract
from service.predlog.schema import prediction_requests
from service.predlog.store import Store


def read_window(
    store: Store,
    contract: FeatureContract,
    model_tag: str,
    size: int,
    max_age_seconds: float = 0,
    now: datetime | None = None,
) -> pd.DataFrame:
    """Up to ``size`` most recent instances answered by ``model_tag``: the contract's features in
    its column order and dtypes, plus the score column (``contract.score_name``).

    ``max_age_seconds`` > 0 also leaves out instances received longer ago than that.

    ``frame.attrs`` carries the ``received_at`` of the newest and oldest request in the window
    (``newest_received_at``, ``oldest_received_at``; UTC, None when the window is empty): with
    no age limit a window outlives the traffic it holds, and its age is what tells a user so.
    """
    r = prediction_requests
    query = (
        select(r.c.feature_names, r.c.instances, r.c.scores, r.c.received_at)
        .where(r.c.model_tag == model_tag)
        # received_at is indexed; event_id orders the requests of one instant.
        .order_by(r.c.received_at.desc(), r.c.event_id.desc())
        .execution_options(yield_per=64)
    )
    if max_age_seconds > 0:
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=max_age_seconds)
        query = query.where(r.c.received_at >= cutoff)
    columns: dict[str, list[object]] = {name: [] for name in contract.feature_names}
    scores: list[float] = []
    newest: datetime | None = None  # received_at of the first request read (newest first)
    oldest: datetime | None = None  # and of the last
    with store.read() as conn:
        for names, values, request_scores, received_at in conn.execute(query):
            newest = newest or received_at
            oldest = received_at
            take = size - len(scores)
            values = values[:take]
            for name, column in zip(names, zip(*values, strict=True), strict=True):
                if name in columns:  # a served model's instances have exactly its features
                    columns[name].extend(column)
            scores.extend(request_scores[:take])
            if len(scores) >= size:
                break
    frame = contract.frame_of_columns(columns)
    frame[contract.score_name] = np.asarray(scores, dtype=float)
    frame.attrs["newest_received_at"] = _utc(newest)
    frame.attrs["oldest_received_at"] = _utc(oldest)
    return frame


def _utc(at: datetime | None) -> datetime | None:
    # SQLite gives back naive datetimes; the log writes UTC.
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at
