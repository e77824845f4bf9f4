"""The JSON answer of Starlette's ``HTTPException`` (service/route_errors.py), for the statuses no
route of BentoML's raises today: the served routes' 404s and 405s are in
tests/integration/test_http.py."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from service.route_errors import answer_http_exception


def raising(status: int, headers: dict[str, str] | None = None) -> Route:
    async def endpoint(request: Request) -> None:
        raise HTTPException(status, detail="what went wrong", headers=headers)

    return Route(f"/{status}", endpoint)


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = Starlette(routes=[raising(400), raising(500), raising(304, {"etag": '"x"'})])
    app.add_exception_handler(HTTPException, answer_http_exception)
    return TestClient(app)


@pytest.mark.parametrize(("status", "error"), [(400, "invalid_request"), (500, "internal_error")])
def test_an_error_status_is_answered_in_the_service_shape(
    client: TestClient, status: int, error: str
) -> None:
    response = client.get(f"/{status}", headers={"X-Request-ID": "r-1"})
    assert response.status_code == status
    assert response.headers["x-request-id"] == "r-1"
    assert response.json() == {
        "error": error,
        "message": f"GET /{status}: what went wrong",
        "request_id": "r-1",
    }


def test_a_status_without_body_keeps_none(client: TestClient) -> None:
    response = client.get("/304")
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == '"x"'
