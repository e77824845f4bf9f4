"""Request payloads generated from a feature contract: valid, invalid and drifted instances.

Nothing here knows the example model: valid instances are sampled from the registered model's
reference data (the rows it was trained on) or, without it, synthesized from the contract
(categories uniformly, numbers uniformly within the training range, else the domain range).
Invalid payloads break one rule of the contract at a time and carry the answer the service must
give (status, reason, field, instance index). Drift moves named features: numbers scaled and/or
offset (kept inside the domain), categories moved to another category.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd

from service.contract import (
    CategoricalFeature,
    Feature,
    FeatureContract,
    IntegerFeature,
    NumberFeature,
)
from service.model import LoadedModel
from service.validation import REQUEST_FIELD, Reason

Instance = dict[str, Any]

# KServe v2 / Open Inference Protocol tensor datatype of each feature kind.
V2_DATATYPES = {"categorical": "BYTES", "integer": "INT64", "number": "FP64"}


class PayloadFactory:
    """Valid instances of a contract, sampled (with replacement) from a pool of rows."""

    def __init__(self, contract: FeatureContract, rows: Sequence[Instance], seed: int = 0) -> None:
        if not rows:
            raise ValueError("need at least one row to sample from")
        self.contract = contract
        self.rows = [{name: row[name] for name in contract.feature_names} for row in rows]
        self.rng = random.Random(seed)

    @classmethod
    def from_model(cls, model: LoadedModel, seed: int = 0) -> PayloadFactory:
        """Rows of the model's reference data (its training features)."""
        return cls.from_reference(model.contract, model.reference(), seed)

    @classmethod
    def from_reference(
        cls, contract: FeatureContract, reference: pd.DataFrame, seed: int = 0
    ) -> PayloadFactory:
        frame = reference[list(contract.feature_names)]
        return cls(contract, frame.to_dict(orient="records"), seed)

    @classmethod
    def synthetic(
        cls, contract: FeatureContract, rows: int = 1000, seed: int = 0
    ) -> PayloadFactory:
        """Rows drawn uniformly from the contract alone (categories, training or domain ranges)."""
        rng = random.Random(seed)
        pool = [{f.name: _draw(f, rng) for f in contract.features} for _ in range(rows)]
        return cls(contract, pool, seed)

    def instances(self, n: int) -> list[Instance]:
        return [dict(row) for row in self.rng.choices(self.rows, k=n)]

    def body(self, n: int) -> bytes:
        """A ``POST /predict`` body of ``n`` instances."""
        return orjson.dumps({"instances": self.instances(n)})


def _draw(feat: Feature, rng: random.Random) -> Any:
    if isinstance(feat, CategoricalFeature):
        return rng.choice(feat.categories)
    lo = feat.minimum if feat.training_min is None else feat.training_min
    hi = feat.maximum if feat.training_max is None else feat.training_max
    if isinstance(feat, IntegerFeature):
        return rng.randint(int(lo), int(hi))
    return rng.uniform(lo, hi)


# --- invalid payloads ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvalidCase:
    """A body that breaks one rule, and the first error the service must answer with."""

    reason: str  # a service.validation.Reason value: bounded, so usable as a request name
    body: bytes
    status: int
    field: str
    instance: int | None

    def matches(self, status: int, answer: Any) -> bool:
        """Whether a response (status, decoded JSON body) is the expected refusal."""
        if status != self.status or not isinstance(answer, dict):
            return False
        expected = {"instance": self.instance, "field": self.field, "reason": self.reason}
        errors = answer.get("errors") or []
        return any({k: e.get(k) for k in expected} == expected for e in errors)


def invalid_cases(
    factory: PayloadFactory, batch: int = 3, max_instances: int | None = None
) -> list[InvalidCase]:
    """Every way the contract can be broken, one rule per case.

    Instance-level cases put the broken instance at a random index of a ``batch``-instance body
    among valid ones, so the answer must name the right index. ``max_instances`` (the service's
    MAX_BATCH_SIZE) adds a too-large batch.
    """
    contract = factory.contract
    cases: list[InvalidCase] = []

    def instance_case(reason: Reason, field: str, change: dict[str, Any], drop: str = "") -> None:
        instances = factory.instances(batch)
        index = factory.rng.randrange(batch)
        instances[index].update(change)
        instances[index].pop(drop, None)
        body = orjson.dumps({"instances": instances})
        cases.append(InvalidCase(reason.value, body, 400, field, index))

    for feat in contract.features:
        name = feat.name
        instance_case(Reason.MISSING, name, {}, drop=name)
        instance_case(Reason.WRONG_TYPE, name, {name: None})
        if isinstance(feat, CategoricalFeature):
            instance_case(Reason.WRONG_TYPE, name, {name: 1})
            instance_case(Reason.UNKNOWN_CATEGORY, name, {name: _not_a_category(feat)})
            continue
        instance_case(Reason.WRONG_TYPE, name, {name: str(feat.minimum)})
        instance_case(Reason.WRONG_TYPE, name, {name: True})
        instance_case(Reason.OUT_OF_RANGE, name, {name: _below(feat)})
        instance_case(Reason.OUT_OF_RANGE, name, {name: _above(feat)})
        if isinstance(feat, IntegerFeature):
            instance_case(Reason.WRONG_TYPE, name, {name: feat.minimum + 0.5})
    unknown = _unused_name(contract)
    instance_case(Reason.UNKNOWN_FIELD, unknown, {unknown: 1})
    for name in contract.excluded:
        instance_case(Reason.EXCLUDED_FIELD, name, {name: "x"})

    def request_case(reason: Reason, body: bytes, status: int = 400, instance: int | None = None):
        cases.append(InvalidCase(reason.value, body, status, REQUEST_FIELD, instance))

    valid = factory.instances(1)
    request_case(Reason.INVALID_JSON, orjson.dumps({"instances": valid})[:-3])
    request_case(Reason.INVALID_JSON, b"")
    request_case(Reason.INVALID_BODY, orjson.dumps(valid))
    request_case(Reason.INVALID_BODY, orjson.dumps({"instances": valid[0]}))
    request_case(Reason.INVALID_BODY, orjson.dumps({"instances": valid, "explain": True}))
    request_case(Reason.EMPTY_BATCH, b'{"instances": []}')
    request_case(Reason.INVALID_INSTANCE, orjson.dumps({"instances": [valid[0], [1, 2]]}), 400, 1)
    if max_instances is not None:
        # Empty objects, not valid instances: the count is checked before any instance, and
        # MAX_BATCH_SIZE + 1 instances of a wide model (120 features: 6.6 MB) exceed the body
        # limit, which the service answers with body_too_large, unread.
        request_case(
            Reason.BATCH_TOO_LARGE, orjson.dumps({"instances": [{}] * (max_instances + 1)}), 413
        )
    return cases


def _not_a_category(feat: CategoricalFeature) -> str:
    value = feat.categories[0] + " (unknown)"
    while value in feat.categories:
        value += "!"
    return value


def _below(feat: IntegerFeature | NumberFeature) -> int | float:
    return feat.minimum - _step(feat, feat.minimum)


def _above(feat: IntegerFeature | NumberFeature) -> int | float:
    return feat.maximum + _step(feat, feat.maximum)


def _step(feat: IntegerFeature | NumberFeature, bound: float) -> int | float:
    """How far past ``bound`` a value must be to be outside it: 1, or for a float bound beyond
    2**53 (where ``bound + 1 == bound``) the bound's own magnitude."""
    return 1 if isinstance(feat, IntegerFeature) else max(1.0, abs(bound))


def _unused_name(contract: FeatureContract) -> str:
    name = "unknown_feature"
    while name in contract.feature_names or name in contract.excluded:
        name += "_"
    return name


# --- drift --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shift:
    """How one feature drifts: ``value * scale + offset`` for numbers, a category change else.

    ``category`` None moves each categorical value to the next category of the contract's list.
    """

    feature: str
    scale: float = 1.0
    offset: float = 0.0
    category: str | None = None

    def __str__(self) -> str:
        """The shift as ``--drift`` writes it (``name*1.5``, ``name+2000``, ``name=category``;
        a bare name: the next category), for the run's log."""
        if self.category is not None:
            return f"{self.feature}={self.category}"
        text = self.feature
        if self.scale != 1.0:
            text += f"*{self.scale:g}"
        if self.offset:
            text += f"{self.offset:+g}"
        return text


DEFAULT_SCALE = 1.5


def parse_shifts(spec: str, contract: FeatureContract) -> tuple[Shift, ...]:
    """Parse ``"name*1.5; name+2000; name-10; name=category; name"`` (``;``-separated).

    A bare name is the default shift of its kind: numbers x1.5, categories moved to the next one.
    Categories may contain commas and spaces, hence ``;``.
    """
    shifts: list[Shift] = []
    for item in (part.strip() for part in spec.split(";")):
        if not item:
            continue
        # Longest feature name that prefixes the item, so names sharing a prefix parse right.
        names = [n for n in contract.feature_names if item.startswith(n)]
        if not names:
            raise ValueError(f"drift {item!r}: no such feature; features: {contract.feature_names}")
        name = max(names, key=len)
        feat = contract.feature(name)
        op, arg = item[len(name) :].strip()[:1], item[len(name) :].strip()[1:].strip()
        if isinstance(feat, CategoricalFeature):
            if op == "":
                shifts.append(Shift(name))
            elif op == "=" and arg in feat.categories:
                shifts.append(Shift(name, category=arg))
            else:
                raise ValueError(
                    f"drift {item!r}: a categorical feature takes 'name' or 'name=<category>' "
                    f"with one of {feat.categories}"
                )
            continue
        try:
            number = float(arg) if op else 0.0
        except ValueError:
            raise ValueError(f"drift {item!r}: {arg!r} is not a number") from None
        if op == "":
            shifts.append(Shift(name, scale=DEFAULT_SCALE))
        elif op == "*":
            shifts.append(Shift(name, scale=number))
        elif op in "+-":
            shifts.append(Shift(name, offset=number if op == "+" else -number))
        else:
            raise ValueError(f"drift {item!r}: a numeric feature takes '*<scale>' or '+/-<offset>'")
    return tuple(shifts)


def default_shifts(contract: FeatureContract) -> tuple[Shift, ...]:
    """The first numeric feature x1.5 and the first categorical set to its last category: enough
    to show drift. Not a bare name's next category: that permutes categories, which leaves ones
    as frequent as each other as they were, and a model of such categories only saw no drift."""
    shifts = [Shift(f.name, scale=DEFAULT_SCALE) for f in contract.numeric_features()[:1]]
    categorical = [f for f in contract.features if isinstance(f, CategoricalFeature)]
    shifts += [Shift(f.name, category=f.categories[-1]) for f in categorical[:1]]
    return tuple(shifts)


class Drift:
    """Applies shifts to valid instances; each row drifts with probability ``fraction``.

    Drifted values stay valid (inside the domain range, integers stay integers), so drifted
    traffic is answered 200: it is the monitoring, not validation, that must notice it.
    """

    def __init__(
        self, contract: FeatureContract, shifts: Sequence[Shift], fraction: float = 1.0
    ) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be within 0..1")
        self.contract = contract
        self.shifts = tuple(shifts)
        self.fraction = fraction

    def apply(self, instance: Instance, rng: random.Random) -> Instance:
        if self.fraction < 1 and rng.random() >= self.fraction:
            return instance
        drifted = dict(instance)
        for shift in self.shifts:
            feat = self.contract.feature(shift.feature)
            drifted[shift.feature] = _shifted(feat, shift, drifted[shift.feature])
        return drifted

    def instances(self, factory: PayloadFactory, n: int) -> list[Instance]:
        return [self.apply(row, factory.rng) for row in factory.instances(n)]


def _shifted(feat: Feature, shift: Shift, value: Any) -> Any:
    if isinstance(feat, CategoricalFeature):
        if shift.category is not None:
            return shift.category
        index = feat.categories.index(value) if value in feat.categories else -1
        return feat.categories[(index + 1) % len(feat.categories)]
    moved = min(max(value * shift.scale + shift.offset, feat.minimum), feat.maximum)
    return round(moved) if isinstance(feat, IntegerFeature) else float(moved)


# --- Open Inference Protocol (KServe v2) ---------------------------------------------------------


def v2_inputs(
    contract: FeatureContract,
    instances: Sequence[Instance],
    shapes: dict[str, list[int]] | None = None,
) -> list[dict[str, Any]]:
    """One v2 input tensor per feature (columnar), as a v2 JSON ``inputs`` list.

    ``shapes`` are the per-input shapes of the server's model metadata (``-1`` is the batch
    dimension); without them each tensor has shape ``[n]``.
    """
    n = len(instances)
    tensors = []
    for feat in contract.features:
        shape = [n if d == -1 else d for d in (shapes or {}).get(feat.name, [-1])]
        tensors.append(
            {
                "name": feat.name,
                "datatype": V2_DATATYPES[feat.kind],
                "shape": shape,
                "data": [row[feat.name] for row in instances],
            }
        )
    return tensors


def v2_output_rows(answer: Any) -> int | None:
    """The rows of a v2 infer answer (its first output's first dimension); None if it is none."""
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        return None
    shape = outputs[0].get("shape")
    if not isinstance(shape, list) or not shape or not isinstance(shape[0], int):
        return None
    return shape[0]
