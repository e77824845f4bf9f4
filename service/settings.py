"""All runtime settings, read from environment variables (names are the field names upper-cased).

One typed class, documented field by field; the README's settings table is checked against it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    model_tag: str = Field(
        "credit_risk:latest",
        description="BentoML model store tag of the model to serve; packed into the bento by "
        "`bentoml build`.",
    )
    workers: int | Literal["cpu_count"] = Field(
        "cpu_count",
        description="HTTP worker processes (each loads the model); `cpu_count` = one per core.",
    )
    grpc_enabled: bool = Field(
        True,
        description="Serve gRPC (Open Inference Protocol) on GRPC_PORT beside HTTP. When false, "
        "only HTTP is served (v2 REST included).",
    )
    grpc_host: str = Field(
        "0.0.0.0", description="Address the gRPC server binds; `::` for IPv6 and IPv4."
    )
    grpc_port: int = Field(
        3001,
        ge=0,
        le=65535,
        description="Port of the gRPC (Open Inference Protocol) server, shared by all workers "
        "(SO_REUSEPORT). The service refuses to start if anything listens on it. 0 = a free port "
        "per worker, for tests.",
    )
    grpc_shutdown_grace_seconds: float = Field(
        5.0,
        ge=0,
        description="On shutdown, how long gRPC calls in flight may take to finish before they "
        "are cancelled; new calls are refused and health checks answer NOT_SERVING meanwhile.",
    )
    max_batch_size: int = Field(
        1000, ge=1, description="Most instances accepted in one request; more is refused (413)."
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, in bytes; larger bodies are refused (413) "
        "before they are read. A 1000-instance body of the example model is about 0.9 MB.",
    )
    max_model_batch_rows: int = Field(
        4000,
        ge=1,
        description="Most rows merged from concurrent requests into one model call. A single "
        "request larger than this still runs, alone.",
    )
    request_timeout_seconds: int = Field(
        30, ge=1, description="BentoML's per-request timeout (answered 504)."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
