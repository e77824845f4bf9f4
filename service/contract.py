"""Feature contract: the typed description of what a model accepts and answers.

One contract drives request validation, the Open Inference Protocol tensor metadata, drift column
types and load-test payloads. Training saves it next to the model (with the value ranges seen in
training filled in), so a served model always carries the contract it was trained with.

The concrete contract of the example model lives in ``models/contract.py``; this module only
defines the vocabulary. A template user swapping the model edits that file, not this one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Literal, TypeAlias

import numpy as np
import pandas as pd

FeatureKind: TypeAlias = Literal["categorical", "integer", "number"]


@dataclass(frozen=True, slots=True)
class CategoricalFeature:
    """A string feature whose value must be exactly one of ``categories``."""

    name: str
    categories: tuple[str, ...]
    description: str = ""
    kind: ClassVar[FeatureKind] = "categorical"

    def __post_init__(self) -> None:
        if not self.categories or len(set(self.categories)) != len(self.categories):
            raise ValueError(f"{self.name}: categories must be non-empty and unique")


@dataclass(frozen=True, slots=True)
class IntegerFeature:
    """A JSON integer within the domain range ``[minimum, maximum]``.

    ``training_min``/``training_max`` are what the model saw; values between the domain and the
    training range are accepted but counted as out-of-training-range by the metrics.
    """

    name: str
    minimum: int
    maximum: int
    description: str = ""
    training_min: int | None = None
    training_max: int | None = None
    kind: ClassVar[FeatureKind] = "integer"

    def __post_init__(self) -> None:
        if self.minimum > self.maximum:
            raise ValueError(f"{self.name}: minimum {self.minimum} > maximum {self.maximum}")


@dataclass(frozen=True, slots=True)
class NumberFeature:
    """A finite JSON number (integer or fraction) within ``[minimum, maximum]``."""

    name: str
    minimum: float
    maximum: float
    description: str = ""
    training_min: float | None = None
    training_max: float | None = None
    kind: ClassVar[FeatureKind] = "number"

    def __post_init__(self) -> None:
        if self.minimum > self.maximum:
            raise ValueError(f"{self.name}: minimum {self.minimum} > maximum {self.maximum}")


Feature: TypeAlias = CategoricalFeature | IntegerFeature | NumberFeature
NumericFeature: TypeAlias = IntegerFeature | NumberFeature
_KINDS: dict[str, type[Feature]] = {
    "categorical": CategoricalFeature,
    "integer": IntegerFeature,
    "number": NumberFeature,
}


@dataclass(frozen=True, slots=True)
class FeatureContract:
    """Everything a caller and the monitoring need to know about a binary classifier's interface.

    ``positive_label`` is the class whose probability the model reports
    (as ``probability_<positive_label>``); ``excluded`` names columns of the source data that the
    model deliberately does not use (e.g. protected attributes): requests carrying them are
    rejected, with ``excluded_reason`` (e.g. ``"protected attribute"``) saying why when given.
    """

    model_name: str
    target: str
    positive_label: str
    negative_label: str
    features: tuple[Feature, ...]
    excluded: tuple[str, ...] = ()
    description: str = ""
    excluded_reason: str = ""
    _by_name: dict[str, Feature] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if set(names) & set(self.excluded):
            raise ValueError("a feature cannot be both used and excluded")
        object.__setattr__(self, "_by_name", {f.name: f for f in self.features})

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def score_name(self) -> str:
        """Name of the probability field in answers, e.g. ``probability_bad``."""
        return f"probability_{self.positive_label}"

    @property
    def labels(self) -> tuple[str, str]:
        return (self.negative_label, self.positive_label)

    def feature(self, name: str) -> Feature:
        return self._by_name[name]

    def example_instance(self) -> dict[str, Any]:
        """A valid instance: each categorical feature's first category, each numeric feature's
        smallest value seen in training (else its domain minimum)."""
        example: dict[str, Any] = {}
        for feat in self.features:
            if isinstance(feat, CategoricalFeature):
                example[feat.name] = feat.categories[0]
            else:
                example[feat.name] = (
                    feat.minimum if feat.training_min is None else feat.training_min
                )
        return example

    def of_kind(self, kind: FeatureKind) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == kind)

    def numeric_features(self) -> tuple[NumericFeature, ...]:
        return tuple(f for f in self.features if not isinstance(f, CategoricalFeature))

    def with_training_ranges(self, frame: pd.DataFrame) -> FeatureContract:
        """The same contract with ``training_min``/``training_max`` taken from ``frame``."""
        features: list[Feature] = []
        for feat in self.features:
            if isinstance(feat, CategoricalFeature):
                features.append(feat)
                continue
            column = frame[feat.name]
            cast = int if isinstance(feat, IntegerFeature) else float
            features.append(
                replace(feat, training_min=cast(column.min()), training_max=cast(column.max()))
            )
        return replace(self, features=tuple(features))

    # Serialization: a plain JSON document, saved with the model and served by GET /model.
    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "target": self.target,
            "positive_label": self.positive_label,
            "negative_label": self.negative_label,
            "description": self.description,
            "excluded": list(self.excluded),
            "excluded_reason": self.excluded_reason,
            "features": [{"kind": f.kind, **_feature_fields(f)} for f in self.features],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureContract:
        features: list[Feature] = []
        for spec in data["features"]:
            spec = dict(spec)
            kind = _KINDS[spec.pop("kind")]
            if kind is CategoricalFeature:
                spec["categories"] = tuple(spec["categories"])
            features.append(kind(**spec))
        return cls(
            model_name=data["model_name"],
            target=data["target"],
            positive_label=data["positive_label"],
            negative_label=data["negative_label"],
            features=tuple(features),
            excluded=tuple(data.get("excluded", ())),
            description=data.get("description", ""),
            # Contracts saved before the field existed are the example's: its reason.
            excluded_reason=data.get("excluded_reason", _LEGACY_EXCLUDED_REASON),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FeatureContract:
        return cls.from_dict(json.loads(text))

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of one instance, for API documentation and clients."""
        properties: dict[str, Any] = {}
        for feat in self.features:
            prop: dict[str, Any] = {"description": feat.description} if feat.description else {}
            if isinstance(feat, CategoricalFeature):
                prop.update(type="string", enum=list(feat.categories))
            else:
                prop.update(
                    type="integer" if isinstance(feat, IntegerFeature) else "number",
                    minimum=feat.minimum,
                    maximum=feat.maximum,
                )
            properties[feat.name] = prop
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{self.model_name} instance",
            "type": "object",
            "properties": properties,
            "required": list(self.feature_names),
            "additionalProperties": False,
        }

    def frame(self, rows: list[Mapping[str, Any]]) -> pd.DataFrame:
        """Validated instances as a DataFrame in the contract's column order and dtypes.

        Built column by column from typed arrays: no dtype inference, about twice as fast as
        ``DataFrame.from_records``. The model thread builds every merged call's frame the same
        way, from the columns directly (:meth:`arrays_of_columns`, :meth:`frame_of_arrays`).
        """
        return self.frame_of_columns(self.columns_of_rows(rows))

    def frame_of_columns(self, columns: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
        """Like :meth:`frame`, from one sequence of values per feature."""
        return self.frame_of_arrays(self.arrays_of_columns(columns))

    def columns_of_rows(self, rows: list[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """Validated instances as one list of values per feature."""
        return {f.name: [row[f.name] for row in rows] for f in self.features}

    def arrays_of_columns(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """One array per feature, in the contract's order and dtypes: the model's input columns."""
        return {f.name: np.array(columns[f.name], dtype=_DTYPES[f.kind]) for f in self.features}

    @staticmethod
    def frame_of_arrays(arrays: Mapping[str, np.ndarray]) -> pd.DataFrame:
        """The DataFrame of :meth:`arrays_of_columns`' arrays, without copying them."""
        return pd.DataFrame(arrays, copy=False)


_LEGACY_EXCLUDED_REASON = "protected attribute"
_DTYPES = {"categorical": object, "integer": np.int64, "number": np.float64}


def _feature_fields(feat: Feature) -> dict[str, Any]:
    data = asdict(feat)
    if isinstance(feat, CategoricalFeature):
        data["categories"] = list(feat.categories)
    return data
