"""The client side of the rude-backend suites (test_upstream_conformance, test_upstream_attacks):
requests through the router tagged so the backend's records can be matched to them, the normal
follow-up every case ends with, the router's JSON errors, and the fixtures both suites share."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import httpx
import pytest

from .fleetproc import COMPLETION, RunningFleet, run_fleet
from .rude_backend import Handler, Request, RudeBackend

B = TypeVar("B", bound=RudeBackend)


class Backend(Protocol):
    def close_idle(self) -> object: ...

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


def suite_fixtures(
    serve: Callable[[Handler], contextlib.AbstractContextManager[B]],
    dispatch: Handler,
    fleet_config: Callable[[str], str],
    backends: list[B],
    workdir: str,
) -> tuple[Any, Any, Any]:
    """The three fixtures of a rude-backend suite, for its module to bind by these names:

        backend, fleet, no_handler_bugs = rude_client.suite_fixtures(rude_backend, dispatch, ...)

    ``backend`` (module scope): ``serve(dispatch)``, a rude backend answering by the suite's
    ``x-rude`` cases, appended to ``backends``; ``fleet`` (module scope): ``fleet up`` in a fresh
    ``workdir`` with ``fleet_config(backend.url)``; ``no_handler_bugs`` (autouse): after each test,
    fails it if the handler of any backend in ``backends`` raised, so that a test fails for the
    router's behaviour, never for a bug in the backend's own code."""

    @pytest.fixture(scope="module")
    def backend() -> Iterator[B]:
        with serve(dispatch) as running:
            backends.append(running)
            yield running

    @pytest.fixture(scope="module")
    def fleet(tmp_path_factory: pytest.TempPathFactory, backend: RudeBackend) -> Iterator[RunningFleet]:
        with run_fleet(tmp_path_factory.mktemp(workdir), fleet_config(backend.url)) as running:
            yield running

    @pytest.fixture(autouse=True)
    def no_handler_bugs() -> Iterator[None]:
        """A test fails for the router's behaviour, never for an exception in the backend's own code."""
        yield
        for running in backends:
            assert not running.errors, f"the rude backend's handler raised: {running.errors!r}"

    return backend, fleet, no_handler_bugs
