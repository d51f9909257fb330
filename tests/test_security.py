"""Who may use what: admin endpoints, metrics, request ids, team limits, request-head limits, logs."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from fleet.errors import FleetError
from fleet.settings import FleetSettings
from router.admin import AdminAuth

from .support.fleetproc import COMPLETION, RunningFleet, run_fleet

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability

ADMIN, TEAM = "tfa_admin-secret", "tft_team-secret"
ADMIN_HASH, TEAM_HASH = (hashlib.sha256(t.encode()).hexdigest() for t in (ADMIN, TEAM))

CONFIG = f"""
[router]
admin_token_sha256 = ["{ADMIN_HASH}"]

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"

[[entries]]
name = "slow"
model = "TabbyML/StarCoder-3B"
standin = {{ completion_delay = 1.5 }}

[[teams]]
name = "frontend"
entry = "small"
token_sha256 = ["{TEAM_HASH}"]
max_concurrent = 1
requests_per_minute = 5
"""

TEAM_AUTH = {"Authorization": f"Bearer {TEAM}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    with run_fleet(tmp_path_factory.mktemp("security"), CONFIG) as running:
        yield running


def get(fleet: RunningFleet, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{fleet.base_url}{path}", headers=headers, timeout=10)


@pytest.mark.parametrize("path", ["/fleet/entries", "/fleet/usage", "/metrics"])  # /fleet/status: test_status_page.py
def test_admin_endpoints_need_the_admin_token(fleet: RunningFleet, path: str) -> None:
    missing = get(fleet, path)
    as_team = get(fleet, path, **TEAM_AUTH)
    as_admin = get(fleet, path, **ADMIN_AUTH)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "admin-token-missing"
    assert as_team.status_code == 403 and as_team.json()["error"]["code"] == "admin-token-invalid"
    assert as_admin.status_code == 200


def test_reload_needs_the_admin_token(fleet: RunningFleet) -> None:
    assert httpx.post(f"{fleet.base_url}/fleet/reload").status_code == 401


def test_health_is_open_but_reveals_only_states(fleet: RunningFleet) -> None:
    open_view = get(fleet, "/fleet/health").json()
    admin_view = get(fleet, "/fleet/health", **ADMIN_AUTH).json()
    assert open_view["status"] == "ok"
    assert open_view["entries"]["small"] == {"state": open_view["entries"]["small"]["state"]}
    assert {"in_flight", "queued"} <= set(admin_view["entries"]["small"])


def test_request_id_is_returned_and_forwarded(fleet: RunningFleet) -> None:
    given = httpx.post(
        f"{fleet.base_url}/v1/completions", json=COMPLETION, headers={**TEAM_AUTH, "X-Request-Id": "ide-42.a"}
    )
    assert given.headers["x-request-id"] == "ide-42.a"
    entries = httpx.get(f"{fleet.base_url}/fleet/entries", headers=ADMIN_AUTH).json()["entries"]
    small_url = next(e for e in entries if e["name"] == "small")["runtime"]["url"]
    assert httpx.get(f"{small_url}/_standin/stats").json()["last_headers"]["x-request-id"] == "ide-42.a"
    made_up = httpx.post(
        f"{fleet.base_url}/v1/completions", json=COMPLETION, headers={**TEAM_AUTH, "X-Request-Id": "bad id!"}
    )
    assert made_up.headers["x-request-id"] != "bad id!" and len(made_up.headers["x-request-id"]) == 16
    refused = httpx.post(f"{fleet.base_url}/v1/completions", json=COMPLETION)
    assert refused.status_code == 401 and refused.headers["x-request-id"]


def test_metrics_count_requests_by_team_entry_route_status(fleet: RunningFleet) -> None:
    httpx.post(f"{fleet.base_url}/v1/completions", json=COMPLETION, headers=TEAM_AUTH)
    httpx.post(f"{fleet.base_url}/v1/completions", json=COMPLETION)  # 401
    text = get(fleet, "/metrics", **ADMIN_AUTH).text
    assert 'fleet_requests_total{entry="small",route="team-token",status="200",team="frontend"}' in text
    assert 'fleet_requests_total{entry="-",route="-",status="401",team="-"}' in text
    for name in ("fleet_router_overhead_seconds_bucket", "fleet_upstream_seconds_bucket", "fleet_in_flight",
                 "fleet_queued", "fleet_backend_starts_total", "fleet_backend_state"):  # fmt: skip
        assert name in text, name
    assert 'fleet_backend_starts_total{entry="small"} 1.0' in text


def test_team_concurrency_limit_is_429(fleet: RunningFleet) -> None:
    results: list[httpx.Response] = []
    slow = threading.Thread(
        target=lambda: results.append(
            httpx.post(f"{fleet.base_url}/models/slow/v1/completions", json=COMPLETION, headers=TEAM_AUTH, timeout=30)
        )
    )
    slow.start()
    fleet.wait_for(
        lambda: get(fleet, "/fleet/health", **ADMIN_AUTH).json()["entries"]["slow"]["in_flight"] == 1, 10, "slow"
    )
    second = httpx.post(f"{fleet.base_url}/v1/completions", json=COMPLETION, headers=TEAM_AUTH)
    slow.join(30)
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == "team-concurrency-limit"
    assert results[0].status_code == 200


def test_team_rate_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    config = CONFIG.replace("max_concurrent = 1\n", "")
    with run_fleet(tmp_path, config) as running:
        statuses = [
            httpx.post(f"{running.base_url}/v1/completions", json=COMPLETION, headers=TEAM_AUTH) for _ in range(7)
        ]
    assert [r.status_code for r in statuses[:5]] == [200] * 5
    limited = statuses[5]
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "team-rate-limit"
    assert 1 <= int(limited.headers["retry-after"]) <= 12  # 5 per minute: one token every 12 s


def test_request_head_limits(fleet: RunningFleet) -> None:
    many = {f"x-h{i}": "1" for i in range(101)}
    assert httpx.get(f"{fleet.base_url}/v1/health", headers={**TEAM_AUTH, **many}).status_code == 431
    big = {"x-big": "a" * 33_000}
    response = httpx.get(f"{fleet.base_url}/v1/health", headers={**TEAM_AUTH, **big})
    assert response.status_code == 431 and response.json()["error"]["code"] == "headers-too-large"
    long_url = httpx.get(f"{fleet.base_url}/v1/health?q={'a' * 9000}", headers=TEAM_AUTH)
    assert long_url.status_code == 414 and long_url.json()["error"]["code"] == "url-too-long"


def test_tokens_never_reach_the_logs(fleet: RunningFleet) -> None:
    httpx.post(f"{fleet.base_url}/v1/completions", json=COMPLETION, headers=TEAM_AUTH)
    get(fleet, "/fleet/entries", **ADMIN_AUTH)
    log = fleet.log_tail() + fleet.log_path.read_text()
    assert "status=200 team=frontend entry=small" in log  # the access log is there ...
    assert TEAM not in log and ADMIN not in log  # ... without secrets
    assert "def add(a, b)" not in log  # nor prompts


def _request(client: str, authorization: str | None = None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return Request({"type": "http", "method": "GET", "path": "/fleet/entries", "headers": headers,
                    "client": (client, 5555), "query_string": b""})  # fmt: skip


def test_without_admin_token_only_loopback_clients_are_admins() -> None:
    auth = AdminAuth(FleetSettings(entries=[{"name": "a", "model": "m"}]))
    for loopback in ("127.0.0.1", "127.0.0.2", "::1"):
        auth.require(_request(loopback))
    with pytest.raises(FleetError) as caught:
        auth.require(_request("10.1.2.3"))
    assert caught.value.status == 403 and "fleet token new --admin" in caught.value.message


def test_with_admin_token_loopback_needs_it_too() -> None:
    settings = FleetSettings(entries=[{"name": "a", "model": "m"}], router={"admin_token_sha256": [ADMIN_HASH]})
    auth = AdminAuth(settings)
    with pytest.raises(FleetError):
        auth.require(_request("127.0.0.1"))
    auth.require(_request("10.1.2.3", f"Bearer {ADMIN}"))


def metric(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, f"{sample} not in /metrics"
    return float(match.group(1))


def test_router_overhead_leaves_out_start_and_queue_waits(tmp_path: Path) -> None:
    """Two requests at once on a cold entry of one slot: the first waits ~1.5 s for the backend to start,
    the second ~2.5 s for the slot. Those are waits, not the router's overhead."""
    config = """
    [[entries]]
    name = "sluggish"
    model = "TabbyML/StarCoder-1B"
    max_inputs = 1
    standin = { start_delay = 1.5, completion_delay = 1 }
    """
    with run_fleet(tmp_path, config) as running:
        url = f"{running.base_url}/v1/completions"
        threads = [threading.Thread(target=lambda: httpx.post(url, json=COMPLETION, timeout=30)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        text = httpx.get(f"{running.base_url}/metrics").text
    labels = 'entry="sluggish"'
    assert metric(text, f'fleet_backend_wait_seconds_sum{{{labels},reason="start"}}') >= 1.0
    assert metric(text, f'fleet_backend_wait_seconds_sum{{{labels},reason="queue"}}') >= 1.0
    assert metric(text, f"fleet_router_overhead_seconds_count{{{labels}}}") == 2
    assert metric(text, f"fleet_router_overhead_seconds_sum{{{labels}}}") < 0.5
