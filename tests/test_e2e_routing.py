"""End to end over loopback: the router under uvicorn, stand-in backends as real processes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support.fleetproc import COMPLETION, RunningFleet, run_fleet

CONFIG = """
[router]
default_entry = "small"

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"
aliases = ["starcoder-1b"]

[[entries]]
name = "medium"
model = "TabbyML/StarCoder-3B"

[[entries]]
name = "large"
model = "TabbyML/StarCoder-7B"

[[teams]]
name = "frontend"
entry = "small"
allowed_entries = ["small", "medium"]

[[teams]]
name = "research"
entry = "large"
"""

TOKEN = "tft_research-token"
FRONTEND_TOKEN = "tft_frontend-token"
TOKEN_CONFIG = CONFIG.replace(
    'entry = "large"\n', f'entry = "large"\ntoken_sha256 = ["{hashlib.sha256(TOKEN.encode()).hexdigest()}"]\n'
).replace(
    'allowed_entries = ["small", "medium"]\n',
    f'allowed_entries = ["small", "medium"]\ntoken_sha256 = ["{hashlib.sha256(FRONTEND_TOKEN.encode()).hexdigest()}"]'
    "\n",
)  # every team has a token: a fleet with tokens locks out a team without one


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    with run_fleet(tmp_path_factory.mktemp("fleet"), CONFIG) as running:
        yield running


def complete(client: httpx.Client, path: str = "/v1/completions", **headers: str) -> httpx.Response:
    return client.post(path, json=COMPLETION, headers=headers)


@pytest.mark.parametrize(
    ("path", "headers", "entry", "model", "reason"),
    [
        ("/v1/completions", {}, "small", "TabbyML/StarCoder-1B", "default-entry"),
        ("/v1/completions", {"X-Tabby-Team": "research"}, "large", "TabbyML/StarCoder-7B", "team-header"),
        ("/teams/frontend/v1/completions", {}, "small", "TabbyML/StarCoder-1B", "team-path"),
        ("/v1/completions", {"X-Tabby-Model": "medium"}, "medium", "TabbyML/StarCoder-3B", "model-header"),
        ("/v1/completions", {"X-Tabby-Model": "StarCoder-1B"}, "small", "TabbyML/StarCoder-1B", "model-header"),
        ("/models/large/v1/completions", {}, "large", "TabbyML/StarCoder-7B", "model-path"),
        ("/teams/frontend/models/medium/v1/completions", {}, "medium", "TabbyML/StarCoder-3B", "model-path"),
    ],
)
def test_each_routing_mode_reaches_its_entry(
    fleet: RunningFleet, path: str, headers: dict[str, str], entry: str, model: str, reason: str
) -> None:
    with fleet.client() as client:
        response = complete(client, path, **headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["mode"] == "standard"
    assert model in body["choices"][0]["text"]
    assert response.headers["x-fleet-entry"] == entry
    assert response.headers["x-fleet-route"] == reason


def test_health_and_server_setting_through_team_prefix(fleet: RunningFleet) -> None:
    with fleet.client() as client:
        health = client.get("/teams/research/v1/health")
        setting = client.get("/teams/research/v1beta/server_setting")
        legacy = client.post("/teams/research/v1/health")
    assert health.json()["model"] == "TabbyML/StarCoder-7B"
    assert health.json()["version"]["git_describe"]
    assert legacy.json()["model"] == "TabbyML/StarCoder-7B"
    assert setting.json() == {"disable_client_side_telemetry": True}  # the router answers: telemetry off


def test_events_are_forwarded_with_query_exactly_once(fleet: RunningFleet) -> None:
    fleet.start("medium")
    with fleet.client() as client:
        before = fleet.backend_stats("medium")["events"].get("select", 0)
        for _ in range(5):
            response = client.post(
                "/models/medium/v1/events?select_kind=line",
                json={"type": "select", "completion_id": "cmpl-1", "choice_index": 0},
            )
            assert response.status_code == 200 and response.content == b""
    assert fleet.backend_stats("medium")["events"]["select"] == before + 5
    day_files = list((fleet.workdir / ".fleet-data" / "medium" / "events").glob("*.json"))
    assert day_files and '"select_kind": "line"' in day_files[0].read_text()


def test_backend_errors_pass_through_unchanged(fleet: RunningFleet) -> None:
    with fleet.client() as client:
        no_type = client.post("/v1/completions", content=b"{}")
        bad_json = client.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
        bad_schema = client.post("/v1/completions", json={"segments": {"suffix": "x"}})
        no_segments = client.post("/v1/completions", json={"language": "python"})
    assert no_type.status_code == 415
    assert bad_json.status_code == 400
    assert bad_schema.status_code == 422
    assert (no_segments.status_code, no_segments.content) == (400, b"")


def test_chat_goes_to_the_chat_entry_and_an_entry_without_one_is_refused_by_the_router(fleet: RunningFleet) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    fleet.start("medium")
    with fleet.client() as client:
        before = fleet.backend_stats("medium")["requests"].get("chat", 0)
        research = client.post("/teams/research/v1/chat/completions", json=chat)  # large has none; small has
        named = client.post("/models/medium/v1/chat/completions", json=chat)
    assert research.status_code == 200 and research.headers["x-fleet-entry"] == "small"
    assert research.headers["x-fleet-route"] == "chat-entry"
    assert named.status_code == 501 and named.headers["content-type"] == "application/json"
    assert (named.json()["error"]["code"], named.json()["error"]["choices"]) == ("no-chat-model", ["small"])
    assert fleet.backend_stats("medium")["requests"].get("chat", 0) == before  # the backend never saw it


def test_whoami_answers_under_every_routing_prefix(fleet: RunningFleet) -> None:
    with fleet.client() as client:
        by_path = client.get("/teams/frontend/fleet/whoami").json()
        by_header = client.get("/fleet/whoami", headers={"X-Tabby-Team": "research"}).json()
        by_model = client.get("/teams/frontend/models/medium/fleet/whoami").json()
        not_allowed = client.get("/teams/frontend/models/large/fleet/whoami")
        posted = client.post("/fleet/whoami")
    assert (by_path["team"], by_path["team_from"], by_path["entry"], by_path["chat_entry"]) == (
        "frontend", "team-path", "small", "small"
    )  # fmt: skip
    assert (by_header["team"], by_header["team_from"], by_header["entry"], by_header["chat_entry"]) == (
        "research", "team-header", "large", "small"
    )  # fmt: skip
    assert (by_model["entry"], by_model["entry_from"], by_model["chat_error"]["code"]) == (
        "medium", "model-path", "no-chat-model"
    )  # fmt: skip
    assert not_allowed.status_code == 404 and not_allowed.json()["error"]["code"] == "entry-not-allowed"
    assert posted.status_code == 405 and posted.json()["error"]["code"] == "method-not-allowed"


def test_refusals_are_logged_and_counted_with_team_and_code(fleet: RunningFleet) -> None:
    with fleet.client() as client:
        refused = complete(client, "/teams/frontend/v1/completions", **{"X-Tabby-Model": "large"})
    request_id = refused.headers["x-request-id"]
    line = next(line for line in fleet.log_path.read_text().splitlines() if request_id in line)
    assert "status=404 team=frontend entry=large" in line and "code=entry-not-allowed" in line
    metrics = httpx.get(f"{fleet.base_url}/metrics").text
    assert 'fleet_refusals_total{code="entry-not-allowed",team="frontend"}' in metrics


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/v1/completions", {"X-Tabby-Model": "gpt-5"}, 404, "unknown-model"),
        ("/teams/nobody/v1/completions", {}, 404, "unknown-team"),
        ("/teams/frontend/v1/completions", {"X-Tabby-Model": "large"}, 404, "entry-not-allowed"),
        ("/teams/frontend/v1/completions", {"X-Tabby-Team": "research"}, 400, "conflicting-team"),
        ("/v2/completions", {}, 404, "unknown-path"),
        ("/fleet/nothing", {}, 404, "unknown-path"),
    ],
)
def test_refusals_are_clear_json(
    fleet: RunningFleet, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    with fleet.client() as client:
        response = complete(client, path, **headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and len(error["message"]) > 20


def test_body_over_limit_is_413(fleet: RunningFleet) -> None:
    with fleet.client() as client:
        response = client.post(
            "/v1/completions", content=b"x" * (1024 * 1024 + 1), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413 and response.json()["error"]["code"] == "body-too-large"


def test_backend_gets_end_to_end_headers_but_never_the_token(fleet: RunningFleet) -> None:
    with fleet.client() as client:
        response = client.post(
            "/v1/completions",
            json={**COMPLETION, "debug_options": {"return_prompt": True}},
            headers={
                "Authorization": "Bearer secret",
                "X-Tabby-Model": "small",
                "X-Tabby-User": "ada",
                "User-Agent": "tabby-agent/1.5.0",
                "Connection": "keep-alive, x-hop",
                "Keep-Alive": "timeout=5",
                "X-Hop": "1",
            },
        )
    assert response.status_code == 200
    assert response.json()["debug_data"]["prompt"].startswith("<fim_prefix>def add")
    seen = fleet.backend_stats("small")["last_headers"]
    assert seen["user-agent"] == "tabby-agent/1.5.0" and seen["content-type"] == "application/json"
    # X-Tabby-User names who Tabby's event log credits: the router sets it, a client never does.
    for dropped in ("authorization", "x-tabby-model", "keep-alive", "x-hop", "x-tabby-user"):
        assert dropped not in seen, f"{dropped} reached the backend"


def test_backend_is_told_the_team_as_x_tabby_user(fleet: RunningFleet) -> None:
    with fleet.client() as client:
        assert complete(client, "/teams/frontend/v1/completions", **{"X-Tabby-User": "mallory"}).status_code == 200
    assert fleet.backend_stats("small")["last_headers"]["x-tabby-user"] == "frontend"


def test_with_tokens_the_backend_is_told_team_and_token_label(tmp_path: Path) -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    labelled = TOKEN_CONFIG.replace(
        f'token_sha256 = ["{digest}"]', f'tokens = [{{label = "ada-laptop", sha256 = "{digest}"}}]'
    )
    with run_fleet(tmp_path, labelled) as running, running.client() as client:
        assert complete(client, Authorization=f"Bearer {TOKEN}").status_code == 200
        seen = running.backend_stats("large")["last_headers"]
    assert seen["x-tabby-user"] == "research/ada-laptop"


def test_server_setting_is_answered_by_the_router_with_telemetry_off(tmp_path: Path, fleet: RunningFleet) -> None:
    """Tabby without its webserver says telemetry on; the IDEs would then report to app.tabbyml.com."""
    with fleet.client() as client:
        answer = client.get("/teams/frontend/v1beta/server_setting")
    assert answer.status_code == 200 and answer.json() == {"disable_client_side_telemetry": True}
    assert answer.headers["x-fleet-entry"] == "small"
    opted_in = CONFIG.replace("[router]\n", "[router]\ndisable_client_telemetry = false\n")
    with run_fleet(tmp_path, opted_in) as running, running.client() as client:
        assert client.get("/v1beta/server_setting").json() == {"disable_client_side_telemetry": False}


def test_fleet_endpoints_describe_the_table(fleet: RunningFleet) -> None:
    health = fleet.health()
    assert health["status"] == "ok" and health["runtime"] == "local"
    assert set(health["entries"]) == {"small", "medium", "large"}
    assert all(e["state"] in {"cold", "starting", "ready", "failed"} for e in health["entries"].values())
    entries = fleet.entries()
    assert entries["small"]["model"] == "TabbyML/StarCoder-1B" and entries["small"]["default"] is True
    teams = {team["name"]: team for team in httpx.get(f"{fleet.base_url}/fleet/entries").json()["teams"]}
    assert teams["research"]["chat_entry"] == "small"  # large has no chat model; small, the first, has
    docs = httpx.get(f"{fleet.base_url}/fleet/openapi.json").json()
    assert "/fleet/health" in docs["paths"] and "/fleet/entries" in docs["paths"]


def test_tokens_route_and_refuse(tmp_path: Path) -> None:
    with run_fleet(tmp_path, TOKEN_CONFIG) as running, running.client() as client:
        ok = complete(client, Authorization=f"Bearer {TOKEN}")
        missing = complete(client, "/teams/frontend/v1/completions")
        wrong = complete(client, Authorization="Bearer nope")
        mismatch = complete(client, "/teams/frontend/v1/completions", Authorization=f"Bearer {TOKEN}")
    assert ok.status_code == 200 and "StarCoder-7B" in ok.json()["choices"][0]["text"]
    assert ok.headers["x-fleet-route"] == "team-token"
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing-token"
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid-token"
    assert mismatch.status_code == 404 and mismatch.json()["error"]["code"] == "team-mismatch"


def test_reload_logs_what_changed(tmp_path: Path) -> None:
    with run_fleet(tmp_path, TOKEN_CONFIG) as running:
        config = running.workdir / "fleet.toml"
        text = config.read_text()
        research_hash = hashlib.sha256(TOKEN.encode()).hexdigest()
        new_hash = hashlib.sha256(b"tft_another-research-token").hexdigest()
        text = text.replace(f'"{research_hash}"', f'"{new_hash}"')  # research: one token out, one in
        text = text.replace('name = "medium"\nmodel = "TabbyML/StarCoder-3B"', 'name = "medium"\nmodel = "X/Y"')
        text += '\n[[entries]]\nname = "huge"\nmodel = "TabbyML/StarCoder-15B"\n'
        config.write_text(text)
        assert httpx.post(f"{running.base_url}/fleet/reload", json={}, timeout=10).status_code == 200
        line = next(line for line in running.log_tail().splitlines() if "settings reloaded" in line)
        config.write_text(text.replace('name = "huge"', 'name = "Huge!"'))
        assert httpx.post(f"{running.base_url}/fleet/reload", json={}, timeout=10).status_code == 400
        refused = next(line for line in running.log_tail().splitlines() if "refused, old settings kept" in line)
    assert "fleet.toml" in refused and "Huge!" in refused
    assert "settings reloaded from " in line and "fleet.toml: 4 entries, 2 teams" in line
    assert "entries added: huge" in line and "entries changed: medium (model)" in line
    assert re.search(r"team 'research' tokens: added [\w-]+; removed [\w-]+", line), line  # by label
    assert "team 'frontend' tokens" not in line
    assert research_hash not in line and new_hash not in line
