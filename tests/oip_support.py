"""Helpers for the Open Inference Protocol tests: tensors of example rows, as clients build them."""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.http as triton_http

from models.contract import CONTRACT

DATATYPES = {"categorical": "BYTES", "integer": "INT64", "number": "FP64"}
NUMPY = {"BYTES": np.object_, "INT64": np.int64, "FP64": np.float64}


def column(rows: list[dict[str, Any]], name: str) -> np.ndarray:
    """Feature ``name`` of ``rows`` as the numpy array a tritonclient user would pass."""
    datatype = DATATYPES[CONTRACT.feature(name).kind]
    values = [row[name] for row in rows]
    if datatype == "BYTES":
        return np.array([v.encode() for v in values], dtype=np.object_)
    return np.array(values, dtype=NUMPY[datatype])


def rest_body(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A v2 REST infer body for ``rows`` in plain JSON."""
    return {
        "inputs": [
            {
                "name": f.name,
                "datatype": DATATYPES[f.kind],
                "shape": [len(rows)],
                "data": [row[f.name] for row in rows],
            }
            for f in CONTRACT.features
        ]
    }


def triton_inputs(module: Any, rows: list[dict[str, Any]], binary: bool = True) -> list[Any]:
    """tritonclient inputs for ``rows``, one per feature, as a Triton user would write them."""
    inputs = []
    for feature in CONTRACT.features:
        data = column(rows, feature.name)
        tensor = module.InferInput(feature.name, list(data.shape), DATATYPES[feature.kind])
        if module is triton_http:
            tensor.set_data_from_numpy(data, binary_data=binary)
        else:
            tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs
