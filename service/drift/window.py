"""The drift window: the most recent logged instances of the served model, typed by its contract.

Read from the prediction log's ``predictions`` table (SQLite or PostgreSQL, SQLAlchemy Core), so
every worker's and every replica's traffic counts, whichever process computes the drift. Only
rows of the served model version enter: the reference data belongs to that version.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import select

from service.contract import FeatureContract
from service.predlog.schema import predictions
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
    """
    p = predictions
    query = (
        select(p.c.features, p.c.score)
        .where(p.c.model_tag == model_tag)
        # received_at is indexed; rows of one request share it, instance_index keeps them stable.
        .order_by(p.c.received_at.desc(), p.c.event_id.desc(), p.c.instance_index)
        .limit(size)
    )
    if max_age_seconds > 0:
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=max_age_seconds)
        query = query.where(p.c.received_at >= cutoff)
    with store.read() as conn:
        rows = conn.execute(query).all()
    frame = contract.frame([features for features, _ in rows])
    frame[contract.score_name] = np.fromiter((score for _, score in rows), float, len(rows))
    return frame
