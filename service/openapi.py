"""The OpenAPI document of the HTTP API, served at ``GET /docs.json`` (BentoML's page at ``/``
renders it).

BentoML builds its own document from ``@bentoml.api`` methods; the prediction routes are plain
ASGI (``service/http.py`` says why), so BentoML's listed only its probes and a client generator
got no request or response body at all. This one is derived from the feature contract, like the
validator and the Open Inference Protocol's tensors, never written by hand: the fields, types,
categories and ranges it states are the ones the service enforces. OpenAPI 3.1, whose schemas are
JSON Schema 2020-12, the dialect of ``GET /model``'s ``instance_schema``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.asgi import JSONResponse
from service.contract import FeatureContract
from service.inference import REQUEST_ID_PATTERN, Predictor
from service.oip.tensors import DATATYPES
from service.validation import Reason

OPENAPI_VERSION = "3.1.0"
_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "The request id: the client's when usable, else a generated one",
        "schema": {"type": "string"},
    }
}


def _answer(schema: str, description: str) -> dict[str, Any]:
    return {**_json_body(_ref(schema), description), "headers": _REQUEST_ID_HEADER}


def _schemas(contract: FeatureContract, max_batch_size: int) -> dict[str, Any]:
    """``components.schemas``: ``#/components/schemas/<name>`` of every body, by family."""
    return {
        **_prediction_schemas(contract, max_batch_size),
        **_error_schemas(),
        **_v2_schemas(),
    }


def _prediction_schemas(contract: FeatureContract, max_batch_size: int) -> dict[str, Any]:
    """``POST /predict``'s request and answer; ``Instance`` is ``GET /model``'s
    ``instance_schema``, the validator's own contract."""
    return {
        "Instance": {k: v for k, v in contract.json_schema().items() if k != "$schema"},
        "PredictRequest": {
            "type": "object",
            "properties": {
                "instances": {
                    "type": "array",
                    "items": _ref("Instance"),
                    "minItems": 1,
                    "maxItems": max_batch_size,
                }
            },
            "required": ["instances"],
            "additionalProperties": False,
        },
        "Prediction": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": list(contract.labels)},
                contract.score_name: {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["label", contract.score_name],
        },
        "PredictResponse": {
            "type": "object",
            "properties": {
                "model": {"type": "string", "description": "the model's tag, name:version"},
                "request_id": {"type": "string"},
                "predictions": {
                    "type": "array",
                    "items": _ref("Prediction"),
                    "description": "one per instance, in order",
                },
            },
            "required": ["model", "request_id", "predictions"],
        },
    }


def _error_schemas() -> dict[str, Any]:
    """The error bodies: ``Error`` and ``InternalError`` of ``POST /predict``, ``V2Error`` of the
    Open Inference Protocol (both list the same ``FieldError``s), and ``RouteError``, the 404
    and 405 of a path or method no route takes."""
    error_listing = {
        "message": {"type": "string", "description": "the first error, in one line"},
        "error_count": {"type": "integer", "minimum": 1},
        "errors": {
            "type": "array",
            "items": _ref("FieldError"),
            "maxItems": 50,
            "description": "the first 50 errors",
        },
        "request_id": {"type": "string"},
    }
    return {
        "FieldError": {
            "type": "object",
            "properties": {
                "instance": {
                    "type": ["integer", "null"],
                    "description": "index of the instance; null for the request as a whole",
                },
                "field": {
                    "type": "string",
                    "description": "the feature (or Open Inference Protocol input) at fault, or "
                    "`$request`",
                },
                "reason": {"type": "string", "enum": [reason.value for reason in Reason]},
                "message": {"type": "string"},
            },
            "required": ["instance", "field", "reason", "message"],
        },
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "enum": ["invalid_request", Reason.UNAVAILABLE.value, Reason.TIMEOUT.value],
                    "description": "`invalid_request` (4xx: correct the request), "
                    "`unavailable` (503: retry later) or `timeout` (504)",
                },
                **error_listing,
            },
            "required": ["error", "message", "error_count", "errors", "request_id"],
        },
        "InternalError": {
            "type": "object",
            "properties": {
                "error": {"const": "internal_error"},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
            },
            "required": ["error", "message", "request_id"],
        },
        "RouteError": {
            "type": "object",
            "description": "a path that is no route (404) or a method the route does not take "
            "(405, with `Allow`); under `/v2/` a `V2Error` instead",
            "properties": {
                "error": {"enum": ["not_found", "method_not_allowed"]},
                "message": {"type": "string", "description": "the method, the path and why"},
                "request_id": {"type": "string"},
            },
            "required": ["error", "message", "request_id"],
        },
        "V2Error": {
            "type": "object",
            "description": "the Open Inference Protocol's error: `error` is the one-line message",
            "properties": {"error": {"type": "string"}, **error_listing},
            "required": ["error"],
        },
    }


def _v2_schemas() -> dict[str, Any]:
    """The Open Inference Protocol's bodies (v2 REST), but its error (:func:`_error_schemas`)."""
    tensor_meta = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": sorted(set(DATATYPES.values()))},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["name", "datatype", "shape"],
    }
    return {
        "V2Tensor": {
            **tensor_meta,
            "properties": {
                **tensor_meta["properties"],
                "data": {"type": "array", "description": "the values, flat, in row-major order"},
                "parameters": {"type": "object"},
            },
            "required": [*tensor_meta["required"], "data"],
        },
        "V2InferRequest": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {
                    "type": "array",
                    "items": _ref("V2Tensor"),
                    "description": "one tensor per feature, named after it, of shape [batch]: "
                    "GET /v2/models/{name} lists them",
                },
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "parameters": {"type": "object"},
                        },
                        "required": ["name"],
                    },
                },
            },
            "required": ["inputs"],
        },
        "V2InferResponse": {
            "type": "object",
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {
                    "type": "array",
                    "items": _ref("V2Tensor"),
                },
            },
            "required": ["model_name", "model_version", "id", "outputs"],
        },
        "V2ModelMetadata": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": tensor_meta},
                "outputs": {"type": "array", "items": tensor_meta},
            },
            "required": ["name", "versions", "platform", "inputs", "outputs"],
        },
        "V2ServerMetadata": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["name", "version", "extensions"],
        },
    }


def _refusals(schema: str) -> dict[str, Any]:
    """The answers every prediction route may give besides 200."""
    return {
        "400": _answer(schema, "the body or a value breaks the contract; every error is listed"),
        "413": _answer(schema, "`batch_too_large` or `body_too_large`"),
        "415": _answer(schema, "the body is compressed: send it uncompressed"),
        "500": _answer(
            "InternalError" if schema == "Error" else "V2Error",
            "the model or the server failed; the server log has the traceback",
        ),
        "503": {
            **_answer(schema, "`unavailable`: shutting down or the model queue is full"),
            "headers": {**_REQUEST_ID_HEADER, "Retry-After": {"schema": {"type": "integer"}}},
        },
        "504": _answer(schema, "`timeout`: no answer within REQUEST_TIMEOUT_SECONDS"),
    }


def _probe(description: str) -> dict[str, Any]:
    return {"get": {"tags": ["Infrastructure"], "responses": {"200": {"description": description}}}}


def _with_versions(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` and, for each model route, its twin naming the version (the served one)."""
    prefix = "/v2/models/{name}"
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    versioned: dict[str, Any] = {}
    for path, item in paths.items():
        if not path.startswith(prefix):
            continue
        twin: dict[str, Any] = {}
        for method, operation in item.items():
            twin[method] = {
                **operation,
                "operationId": operation["operationId"] + "Version",
                "parameters": [*operation["parameters"], version],
            }
        versioned[path.replace(prefix, prefix + "/versions/{version}", 1)] = twin
    return {**paths, **versioned}


def openapi_document(
    contract: FeatureContract, max_batch_size: int, title: str, version: str, model_tag: str
) -> dict[str, Any]:
    """The OpenAPI document of the service serving ``contract`` (model ``model_tag``)."""
    request_id = {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "used as the request id when it matches; otherwise one is generated",
        # Anchored: a JSON Schema pattern matches anywhere in the value.
        "schema": {"type": "string", "pattern": f"^{REQUEST_ID_PATTERN}$"},
    }
    example = contract.example_instance()
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": f"Serves {model_tag}: {contract.description} A path that is no "
            "route answers 404 and a method a route does not take 405, with a `RouteError` "
            "body (under `/v2/`: a `V2Error`).",
        },
        "servers": [{"url": "."}],
        "tags": [
            {"name": "Predictions"},
            {"name": "Open Inference Protocol"},
            {"name": "Monitoring"},
            {"name": "Infrastructure"},
        ],
        "paths": _with_versions(
            {
                **_prediction_paths(example, request_id),
                **_v2_paths(contract, example, request_id),
                **_monitoring_paths(),
                **_probe_paths(),
            }
        ),
        "components": {"schemas": _schemas(contract, max_batch_size)},
    }


def _prediction_paths(example: dict[str, Any], request_id: dict[str, Any]) -> dict[str, Any]:
    """``POST /predict`` and ``GET /model``."""
    return {
        "/predict": {
            "post": {
                "tags": ["Predictions"],
                "operationId": "predict",
                "summary": "one prediction per instance, in order",
                "parameters": [request_id],
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": _ref("PredictRequest"),
                            "example": {"instances": [example]},
                        }
                    },
                },
                "responses": {
                    "200": _answer("PredictResponse", "the predictions"),
                    **_refusals("Error"),
                },
            }
        },
        "/model": {
            "get": {
                "tags": ["Predictions"],
                "operationId": "describeModel",
                "summary": "the model's tag, registration metadata and feature contract",
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "properties": {
                                "model": {"type": "string"},
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "decision_threshold": {"type": "number"},
                                "metadata": {"type": "object"},
                                "contract": {"type": "object"},
                                "instance_schema": {"type": "object"},
                            },
                            "required": ["model", "name", "version", "contract"],
                        },
                        "the model",
                    )
                },
            }
        },
    }


def _v2_paths(
    contract: FeatureContract, example: dict[str, Any], request_id: dict[str, Any]
) -> dict[str, Any]:
    """The Open Inference Protocol's v2 REST routes (their versioned twins: _with_versions)."""
    model_params = [
        {"name": "name", "in": "path", "required": True, "schema": {"const": contract.model_name}}
    ]
    v2_example = {
        "inputs": [
            {
                "name": feat.name,
                "datatype": DATATYPES[feat.kind],
                "shape": [1],
                "data": [example[feat.name]],
            }
            for feat in contract.features
        ]
    }
    unknown_model = _answer("V2Error", "`unknown_model`: another model name or version")
    return {
        "/v2/models/{name}/infer": {
            "post": {
                "tags": ["Open Inference Protocol"],
                "operationId": "modelInfer",
                "summary": "predictions as output tensors (JSON; Triton's binary tensor "
                "extension is taken too, as application/octet-stream)",
                "parameters": [*model_params, request_id],
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("V2InferRequest"), "example": v2_example}},
                },
                "responses": {
                    "200": _answer("V2InferResponse", "the output tensors"),
                    **_refusals("V2Error"),
                    "404": unknown_model,
                },
            }
        },
        "/v2/models/{name}": {
            "get": {
                "tags": ["Open Inference Protocol"],
                "operationId": "modelMetadata",
                "parameters": model_params,
                "responses": {
                    "200": _json_body(_ref("V2ModelMetadata"), "every input and output"),
                    "404": unknown_model,
                },
            }
        },
        "/v2/models/{name}/ready": {
            "get": {
                "tags": ["Open Inference Protocol"],
                "operationId": "modelReady",
                "parameters": model_params,
                "responses": {
                    "200": {"description": "ready"},
                    "503": {"description": "shutting down"},
                    "404": unknown_model,
                },
            }
        },
        "/v2": {
            "get": {
                "tags": ["Open Inference Protocol"],
                "operationId": "serverMetadata",
                "responses": {"200": _json_body(_ref("V2ServerMetadata"), "the server")},
            }
        },
        "/v2/health/live": _probe("live while the process runs"),
        "/v2/health/ready": {
            "get": {
                "tags": ["Open Inference Protocol"],
                "responses": {
                    "200": {"description": "ready"},
                    "503": {"description": "shutting down"},
                },
            }
        },
    }


def _monitoring_paths() -> dict[str, Any]:
    """``GET /drift`` and its report."""
    return {
        "/drift": {
            "get": {
                "tags": ["Monitoring"],
                "operationId": "drift",
                "summary": "the latest drift run of the served model (docs/drift.md)",
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "properties": {
                                "status": {
                                    "enum": ["pending", "ok", "insufficient_data", "failed"]
                                },
                                "model": {"type": "string"},
                                "dataset_drift": {"type": ["boolean", "null"]},
                                "drifted_share": {"type": ["number", "null"]},
                                "features": {"type": "object"},
                                "prediction": {"type": ["object", "null"]},
                            },
                            "required": ["status", "model", "features"],
                        },
                        "the run's verdict per feature and for the score; every key is "
                        "there in every status (null where it has no value)",
                    ),
                    "404": _json_body({"type": "object"}, "drift monitoring is off"),
                },
            }
        },
        "/drift/report": {
            "get": {
                "tags": ["Monitoring"],
                "operationId": "driftReport",
                "summary": "the latest completed run's Evidently HTML report",
                "responses": {
                    "200": {"description": "the report", "content": {"text/html": {}}},
                    "404": _json_body(
                        {"type": "object"}, "drift is off, or no run has a report yet"
                    ),
                },
            }
        },
    }


def _probe_paths() -> dict[str, Any]:
    """Liveness, readiness and the metrics."""
    return {
        "/livez": _probe("live"),
        "/readyz": _probe("ready: the model is loaded (503 before)"),
        "/metrics": _probe("Prometheus metrics of all workers"),
    }


def openapi_routes(
    get_predictor: Callable[[], Predictor], title: str, version: str
) -> list[BaseRoute]:
    """``GET /docs.json``: it takes the path of BentoML's document, which the page at ``/``
    reads (routes mounted on the service match before BentoML's own)."""

    async def docs(request: Request) -> Response:
        predictor = get_predictor()
        return JSONResponse(
            openapi_document(
                predictor.contract,
                predictor.validator.max_instances,
                title,
                version,
                predictor.model.tag,
            )
        )

    return [Route("/docs.json", docs, methods=["GET"])]
