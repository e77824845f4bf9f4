"""CORS_ALLOW_ORIGINS: origins written as a browser sends them, and BentoML's CORS configuration
made of them (served: tests/integration/test_cors.py)."""

from __future__ import annotations

import pytest

from service import cors
from service.settings import load_settings


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("", ()),
        # BentoML's middleware compares strings: a browser writes "https://app.example"
        ("https://App.Example:443/", ("https://app.example",)),
        ("http://app.example:80", ("http://app.example",)),
        (
            "https://a.example, http://localhost:5173 http://[::1]:8080",
            ("https://a.example", "http://localhost:5173", "http://[::1]:8080"),
        ),
        ("*", ("*",)),
    ],
)
def test_origins_are_read_as_a_browser_writes_them(
    monkeypatch: pytest.MonkeyPatch, value: str, origins: tuple[str, ...]
) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", value)
    assert load_settings().cors_allow_origins == origins


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("https://app.example/ui", "is not an origin (it has a path or query)"),
        ("app.example", "is not an origin: write scheme://host[:port]"),
        ("https://app.example:70000", "is not an origin: write scheme://host[:port]"),
        ("https://user@app.example", "is not an origin: write scheme://host[:port]"),
        ("*, https://app.example", "`*` allows every origin: give it alone"),
    ],
)
def test_a_value_no_browser_would_send_stops_the_program(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    # It would never match an Origin header: every cross-origin answer blocked, silently.
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", value)
    with pytest.raises(SystemExit) as info:
        load_settings()
    (line,) = str(info.value).splitlines()[1:]
    assert line.startswith(f"  CORS_ALLOW_ORIGINS={value!r}: ")
    assert says in line


def test_no_origin_leaves_bentomls_configuration_alone() -> None:
    # BENTOML_CONFIG_OPTIONS' http.cors, off by default, then decides.
    assert cors.bentoml_http_config(()) == {}


def test_origins_allow_what_a_browser_app_of_this_api_needs() -> None:
    config = cors.bentoml_http_config(("https://app.example",))["cors"]
    assert config["enabled"] is True
    assert config["access_control_allow_origins"] == ["https://app.example"]
    # BentoML's default is GET only: a POST /predict would fail its preflight.
    assert "POST" in config["access_control_allow_methods"]
    assert "x-request-id" in config["access_control_allow_headers"]
    assert "x-request-id" in config["access_control_expose_headers"]
