"""The client side of the rude-backend suites (test_upstream_conformance, test_upstream_attacks):
requests through the router tagged so the backend's records can be matched to them, the normal
follow-up every case ends with, and the router's JSON errors."""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

import httpx
import pytest

from .fleetproc import COMPLETION, RunningFleet
from .rude_backend import Request


class Backend(Protocol):
    def close_idle(self) -> None: ...

    def only(self, tag: str) -> Request: ...


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


def fresh_pool(backend: Backend) -> None:
    """Close the backend's idle connections and give the router a moment to forget them, so the
    next request opens the pool's only connection (aiohttp's pool hands out the oldest idle one)."""
    backend.close_idle()
    time.sleep(0.3)


def call(
    fleet: RunningFleet, case: str | None, method: str = "POST", path: str = "/v1/completions", *, wait: float,
    **kwargs: Any,
) -> tuple[str, httpx.Response, float]:  # fmt: skip
    """One request through the router, ``x-rude: case`` picking the backend's answer: (its tag, the
    response, seconds until it was complete). Fails the test if no whole answer comes within ``wait``."""
    tag = new_tag()
    headers = {"x-tag": tag, **({"x-rude": case} if case else {}), **kwargs.pop("headers", {})}
    if method == "POST" and "content" not in kwargs:
        kwargs["json"] = COMPLETION
    started = time.monotonic()
    try:
        response = httpx.request(method, fleet.base_url + path, headers=headers, timeout=wait, **kwargs)
    except httpx.TimeoutException:
        pytest.fail(f"no answer within {wait:g}s (x-rude: {case})")
    except httpx.TransportError as exc:
        pytest.fail(f"the router dropped the connection without a whole answer (x-rude: {case}): {exc!r}")
    return tag, response, time.monotonic() - started


def follow_up(fleet: RunningFleet, backend: Backend, *, wait: float) -> Request:
    """A normal completion through the router; asserts it got its own answer. Returns what the backend saw."""
    tag, response, _ = call(fleet, None, wait=wait)
    assert response.status_code == 200, f"the follow-up got {response.status_code}: {response.text[:300]}"
    assert b"SMUGGLED" not in response.content, f"the follow-up got bytes nobody asked for: {response.text[:300]}"
    assert response.json()["tag"] == tag, f"the follow-up got another request's answer: {response.text[:300]}"
    return backend.only(tag)


def assert_json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:300]}"
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        pytest.fail(f"not a JSON error: {response.text[:300]!r}")
    assert error.get("code") and error.get("message"), error
    return dict(error)
