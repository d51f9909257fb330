"""The hub end to end through `fleet up`: the router in front, the stand-in hub (apps/local/standin_hub.py) as
the local runtime runs it without a tabby binary, a stand-in entry for its chat. Real processes on loopback.

What the IDE's chat panel needs: ``<endpoint>/chat`` redirected to ``/chat`` with its query, the page and its
asset, GraphQL ``me`` answered for the team's hub user (the fleet token mapped, never passed), health saying
``webserver: true`` to hub teams only, at once while the hub is cold, which it wakes.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import fleets
from .support.fleetproc import RunningFleet, free_port, run_fleet, serve_process

FRONTEND = {"Authorization": f"Bearer {fleets.HUB_TOKENS['frontend']}"}
BACKEND = {"Authorization": f"Bearer {fleets.HUB_TOKENS['backend']}"}
ADMIN = {"Authorization": f"Bearer {fleets.HUB_ADMIN}"}
ME = {"query": "query { me { id email name isAdmin } }"}


@pytest.fixture(scope="module")
def hub_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    with run_fleet(tmp_path_factory.mktemp("hub") / "fleet", fleets.with_hub(), env=fleets.HUB_ENV) as fleet:
        yield fleet


def hub_state(fleet: RunningFleet) -> str:
    with fleet.client(headers=ADMIN) as client:
        hub = client.get("/fleet/health").json()["hub"]
    return str(hub["state"])


def seen(fleet: RunningFleet) -> dict[str, Any]:
    """What the stand-in hub saw (its /stand-in/seen, through the router: a page path, no token needed)."""
    with fleet.client() as client:
        answer = client.get("/stand-in/seen")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_health_says_webserver_to_hub_teams_only_at_once_and_wakes_the_hub(hub_fleet: RunningFleet) -> None:
    assert hub_state(hub_fleet) == "cold"  # nothing asked for the hub yet (this test runs first)
    with hub_fleet.client(headers=FRONTEND) as client:
        started = time.monotonic()
        health = client.get("/v1/health")
        took = time.monotonic() - started
    assert health.status_code == 200 and took < 2.0, (health.text, took)
    body = health.json()
    assert body["webserver"] is True and body["chat_model"] == "TabbyML/Qwen2-1.5B-Instruct"
    assert body["model"] == "TabbyML/StarCoder-1B"  # the agent keeps completion on
    hub_fleet.wait_for(lambda: hub_state(hub_fleet) == "ready", 20, "the hub woken by a hub team's health")
    with hub_fleet.client(headers=BACKEND) as client:
        other = client.get("/v1/health").json()
    assert not other.get("webserver") and other["model"] == "TabbyML/StarCoder-1B"


def test_the_chat_page_redirect_keeps_its_query(hub_fleet: RunningFleet) -> None:
    with hub_fleet.client() as client:
        for endpoint in ("/teams/frontend", "/models/small", "/teams/frontend/models/small"):
            answer = client.get(f"{endpoint}/chat", params={"client": "vscode", "x": "a b"})
            assert answer.status_code == 307, answer.text
            assert answer.headers["location"] == "/chat?client=vscode&x=a+b"


def test_the_panel_page_and_its_asset_load_without_frame_blocking(hub_fleet: RunningFleet) -> None:
    with hub_fleet.client(follow_redirects=True) as client:
        page = client.get("/teams/frontend/chat?client=vscode")
        script = client.get("/_next/static/standin.js")
    assert page.status_code == 200 and "stand-in hub" in page.text and str(page.url).endswith("/chat?client=vscode")
    assert "x-frame-options" not in page.headers
    assert script.status_code == 200 and "postMessage" in script.text


def test_graphql_me_sees_the_teams_hub_user_and_never_the_fleet_token(hub_fleet: RunningFleet) -> None:
    with hub_fleet.client(headers={**FRONTEND, "X-Tabby-User": "mallory", "X-Tabby-Team": "backend"}) as client:
        answer = client.post("/graphql", json=ME)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["me"]["name"] == "frontend-user"
    saw = seen(hub_fleet)
    graphql = [r for r in saw["requests"] if r["path"] == "/graphql"]
    assert graphql and all(r["authorization"] == f"Bearer {fleets.HUB_USERS['frontend']}" for r in graphql)
    assert not any(r["x_tabby"] for r in graphql), graphql  # no X-Tabby-* header reaches the hub
    assert fleets.HUB_TOKENS["frontend"] not in str(saw)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "hub-closed"),
        ({"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"}, 401, "hub-closed"),
        ({"Authorization": "Bearer auth_stranger"}, 401, "hub-closed"),
        (BACKEND, 403, "hub-not-for-team"),
        ({"Authorization": f"Bearer {fleets.HUB_TOKENS['hub']}"}, 403, "hub-not-for-team"),
    ],
)
def test_until_the_hub_has_an_owner_only_hub_teams_reach_its_data(
    hub_fleet: RunningFleet, headers: dict[str, str], status: int, code: str
) -> None:
    with hub_fleet.client(headers=headers) as client:
        answer = client.post("/graphql", json=ME)
    assert answer.status_code == status and answer.json()["error"]["code"] == code, answer.text


def test_the_models_list_is_the_hubs_and_a_hub_login_waits_for_ui_open(hub_fleet: RunningFleet) -> None:
    with hub_fleet.client(headers=FRONTEND) as client:
        models = client.get("/v1beta/models")
    assert models.status_code == 200 and models.json()["chat"] == ["TabbyML/Qwen2-1.5B-Instruct"]
    with hub_fleet.client(headers={"Authorization": f"Bearer {fleets.HUB_USERS['frontend']}"}) as client:
        health = client.get("/v1/health")  # a hub user's own token, as the hub's web UI sends it
    assert health.status_code == 401 and health.json()["error"]["code"] == "hub-closed"


def test_once_ui_open_a_hub_login_reaches_the_hub_itself(tmp_path: Path) -> None:
    """The hub's own web UI: its users' tokens pass as they are (health included: the hub answers it, with
    webserver true and no model), while fleet tokens are still mapped."""
    with run_fleet(tmp_path / "fleet", fleets.with_hub("ui_open = true"), env=fleets.HUB_ENV) as fleet:
        with fleet.client(headers={"Authorization": f"Bearer {fleets.HUB_USERS['frontend']}"}) as client:
            health = client.get("/v1/health")
            me = client.post("/graphql", json=ME)
        with fleet.client(headers=FRONTEND) as client:
            routed = client.get("/v1/health")
    assert health.status_code == 200 and health.json()["webserver"] is True and "model" not in health.json()
    assert me.json()["data"]["me"]["name"] == "frontend-user"
    assert routed.json()["model"] == "TabbyML/StarCoder-1B"  # a fleet token's health is still the router's


def test_hub_paths_refuse_dot_segments_and_the_workers_socket(hub_fleet: RunningFleet) -> None:
    host, port = hub_fleet.base_url.removeprefix("http://").split(":")
    for path in ("/_next/../v1/completions", "/_next/%2e%2e/fleet/usage", "/chat/./x", "/teams/frontend/../../graphql"):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)  # sends the path as it is
        try:
            connection.request("GET", path, headers=FRONTEND)
            answer = connection.getresponse()
            body = json.loads(answer.read())
        finally:
            connection.close()
        assert answer.status == 400 and body["error"]["code"] == "bad-path", (path, body)
    with httpx.Client(base_url=hub_fleet.base_url) as client:
        assert client.get("/hub").status_code == 404


def test_completions_still_go_to_the_entry_and_usage_counts_the_hub_per_team(hub_fleet: RunningFleet) -> None:
    with hub_fleet.client(headers=FRONTEND) as client:
        completion = client.post("/v1/completions", json={"language": "python", "segments": {"prefix": "x = "}})
        assert completion.status_code == 200 and "TabbyML/StarCoder-1B" in completion.text
        assert client.post("/graphql", json=ME).status_code == 200
    with hub_fleet.client(headers=ADMIN) as client:
        usage = client.get("/fleet/usage").json()
        page = client.get("/fleet/status").text
    frontend = usage["teams"]["frontend"]
    assert frontend["entries"]["@hub"]["requests"] >= 1, frontend
    # the hub's container time is counted and priced as an entry's ([hub] gpu, T4), its cost shared by its teams
    hub = usage["entries"]["@hub"]
    assert hub["gpu"] == "T4" and hub["container_seconds"] > 0 and hub["cost"] > 0, hub
    assert frontend["entries"]["@hub"]["cost"] > 0, frontend
    assert frontend["entries"]["small"]["completions"] >= 1, frontend
    # the status page's entries table has the hub's row, with its state from /fleet/health's hub
    assert '<tr data-entries="@hub"><td>@hub</td><td class="state state-ready">ready</td>' in page
    assert "<td>the hub: stand-in hub</td><td>T4 (stand-in: none used)</td>" in page


def test_an_unreachable_hub_is_a_502_that_names_it(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = fleets.with_hub(f'url = "{dead}"')
    with run_fleet(tmp_path / "fleet", config, env=fleets.HUB_ENV) as fleet, fleet.client(headers=FRONTEND) as client:
        answer = client.post("/graphql", json=ME)
        completion = client.post("/v1/completions", json={"segments": {"prefix": "x = "}})
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["message"].startswith("the hub failed: could not connect")
    assert "could not connect" in answer.json()["error"]["message"]
    assert completion.status_code == 200  # the entries do not depend on the hub


def test_hub_pages_stream_keep_cookies_and_drop_frame_blocking(tmp_path: Path) -> None:
    """A page of the hub through the relay (a recording test hub, tests/support/rude_hub.py): both Set-Cookie
    headers and the Cookie pass, X-Frame-Options does not (the panel is an iframe), the body streams part by
    part (1 s apart, not buffered), and the hub sees the team's hub user, never the fleet token."""
    port = free_port()
    with serve_process([sys.executable, "-m", "tests.support.rude_hub", "--port", str(port)], port) as hub:
        config = fleets.with_hub(f'url = "{hub}"')
        with run_fleet(tmp_path / "fleet", config, env=fleets.HUB_ENV) as fleet:
            arrivals: list[float] = []
            with httpx.Client(base_url=fleet.base_url, headers={**FRONTEND, "Cookie": "session=s1"}) as client:
                started = time.monotonic()
                with client.stream("GET", "/_rude/page", params={"chunks": 3, "gap": 1}) as answer:
                    body = b""
                    for chunk in answer.iter_raw():
                        arrivals.append(time.monotonic() - started)
                        body += chunk
                    headers = answer.headers
    assert answer.status_code == 200
    assert headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    assert "x-frame-options" not in headers
    assert body.decode().count("cookie=session=s1") == 3
    assert f"auth=Bearer {fleets.HUB_USERS['frontend']}" in body.decode()
    assert fleets.HUB_TOKENS["frontend"] not in body.decode()
    assert arrivals[-1] - arrivals[0] >= 1.5, arrivals  # parts arrived as the hub sent them
