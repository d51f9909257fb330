"""Every routing rule and refusal, on the pure function."""

from __future__ import annotations

import pytest

from fleet.errors import FleetError
from fleet.routing import ChatAdvert, RoutingTable, resolve_chat_entry
from fleet.rules import checked, settings_warnings
from fleet.settings import Entry, FleetSettings, Team
from fleet.tokens import hash_token

ENTRIES = (
    Entry(name="small", model="TabbyML/StarCoder-1B", aliases=("starcoder-1b",)),
    Entry(name="medium", model="TabbyML/StarCoder-3B"),
    Entry(name="large", model="TabbyML/StarCoder-7B"),
)


def table(teams: tuple[Team, ...] = (), default: str | None = "small", entries=ENTRIES) -> RoutingTable:
    settings = FleetSettings(entries=entries, teams=teams, router={"default_entry": default})
    return RoutingTable(settings)


OPEN_TEAMS = (
    Team(name="frontend", entry="small", allowed_entries=("small", "medium")),
    Team(name="research", entry="large"),
    Team(name="loose"),
)
TOKEN_FRONTEND = "tft_frontend-secret"
TOKEN_RESEARCH = "tft_research-secret"
TOKEN_TEAMS = (
    Team(
        name="frontend", entry="small", allowed_entries=("small", "medium"), token_sha256=(hash_token(TOKEN_FRONTEND),)
    ),
    Team(name="research", entry="large", token_sha256=(hash_token(TOKEN_RESEARCH),)),
)


def refused(fn, *args, **kwargs) -> FleetError:
    with pytest.raises(FleetError) as caught:
        fn(*args, **kwargs)
    return caught.value


# -- entry selection ---------------------------------------------------------------------------


def test_default_entry_when_nothing_selects() -> None:
    route = table().route("/v1/completions")
    assert (route.entry, route.reason, route.team, route.upstream_path) == (
        "small",
        "default-entry",
        None,
        "/v1/completions",
    )


def test_no_default_and_nothing_selects_is_400_with_choices() -> None:
    error = refused(table(default=None).route, "/v1/completions")
    assert (error.status, error.code) == (400, "no-entry-selected")
    assert error.choices == ("small", "medium", "large")
    assert "X-Tabby-Model" in error.message


def test_single_entry_fleet_needs_no_default() -> None:
    route = table(default=None, entries=ENTRIES[:1]).route("/v1/health")
    assert (route.entry, route.reason) == ("small", "default-entry")


@pytest.mark.parametrize("header", ["medium", "MEDIUM", " medium ", "TabbyML/StarCoder-3B", "tabbyml/starcoder-3b"])
def test_model_header_by_name_or_model_id_case_insensitive(header: str) -> None:
    route = table().route("/v1/completions", model_header=header)
    assert (route.entry, route.reason) == ("medium", "model-header")


def test_model_header_by_alias() -> None:
    assert table().route("/v1/completions", model_header="StarCoder-1B").entry == "small"


def test_unknown_model_header_is_404_with_choices() -> None:
    error = refused(table().route, "/v1/completions", model_header="gpt-5")
    assert (error.status, error.code, error.choices) == (404, "unknown-model", ("small", "medium", "large"))


def test_model_path_prefix_is_stripped() -> None:
    route = table().route("/models/large/v1/completions")
    assert (route.entry, route.reason, route.upstream_path) == ("large", "model-path", "/v1/completions")


def test_unknown_model_path_is_404() -> None:
    assert refused(table().route, "/models/xl/v1/health").code == "unknown-model"


def test_model_header_beats_model_path_and_team() -> None:
    route = table(OPEN_TEAMS).route("/teams/research/models/large/v1/completions", model_header="medium")
    assert (route.entry, route.reason, route.team) == ("medium", "model-header", "research")


def test_model_path_beats_team_entry() -> None:
    route = table(OPEN_TEAMS).route("/teams/research/models/medium/v1/completions")
    assert (route.entry, route.reason, route.upstream_path) == ("medium", "model-path", "/v1/completions")


def test_ambiguous_model_id_asks_for_entry_name() -> None:
    entries = (*ENTRIES, Entry(name="small-fast", model="TabbyML/StarCoder-1B", gpu="H100"))
    error = refused(table(entries=entries).route, "/v1/health", model_header="TabbyML/StarCoder-1B")
    assert (error.status, error.code, error.choices) == (400, "ambiguous-model", ("small", "small-fast"))
    assert table(entries=entries).route("/v1/health", model_header="small-fast").entry == "small-fast"


# -- teams without tokens ------------------------------------------------------------------------


def test_team_header_selects_team_entry() -> None:
    route = table(OPEN_TEAMS).route("/v1/completions", team_header="Research")
    assert (route.entry, route.reason, route.team) == ("large", "team-header", "research")


def test_team_path_selects_team_entry_and_is_stripped() -> None:
    route = table(OPEN_TEAMS).route("/teams/frontend/v1/health")
    assert (route.entry, route.reason, route.team, route.upstream_path) == (
        "small",
        "team-path",
        "frontend",
        "/v1/health",
    )


def test_team_without_entry_uses_default() -> None:
    route = table(OPEN_TEAMS).route("/v1/completions", team_header="loose")
    assert (route.entry, route.reason, route.team) == ("small", "default-entry", "loose")


def test_unknown_team_is_404_with_team_choices() -> None:
    error = refused(table(OPEN_TEAMS).route, "/teams/nobody/v1/health")
    assert (error.status, error.code, error.choices) == (404, "unknown-team", ("frontend", "research", "loose"))


def test_header_and_path_team_disagree_is_400() -> None:
    error = refused(table(OPEN_TEAMS).route, "/teams/frontend/v1/health", team_header="research")
    assert (error.status, error.code) == (400, "conflicting-team")


def test_model_outside_allowed_list_is_404_with_allowed_choices() -> None:
    # 404, not 403: tabby-agent reads 401 and 403 as "your token is wrong" (docs/ERRORS.md).
    error = refused(table(OPEN_TEAMS).route, "/teams/frontend/v1/completions", model_header="large")
    assert (error.status, error.code, error.choices) == (404, "entry-not-allowed", ("small", "medium"))
    assert "/fleet/whoami" in error.message


def test_unknown_model_lists_only_allowed_entries_for_team() -> None:
    error = refused(table(OPEN_TEAMS).route, "/v1/completions", team_header="frontend", model_header="xl")
    assert error.choices == ("small", "medium")


def test_token_is_ignored_while_no_team_has_tokens() -> None:
    route = table(OPEN_TEAMS).route("/v1/health", authorization="Bearer whatever", team_header="research")
    assert route.entry == "large"


# -- teams with tokens ---------------------------------------------------------------------------


def test_token_selects_its_team() -> None:
    route = table(TOKEN_TEAMS).route("/v1/completions", authorization=f"Bearer {TOKEN_RESEARCH}")
    assert (route.entry, route.reason, route.team) == ("large", "team-token", "research")


def test_bearer_scheme_is_case_insensitive() -> None:
    assert table(TOKEN_TEAMS).route("/v1/health", authorization=f"bearer  {TOKEN_FRONTEND}").team == "frontend"


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", f"Basic {TOKEN_FRONTEND}", TOKEN_FRONTEND])
def test_missing_token_is_401(authorization: str | None) -> None:
    error = refused(table(TOKEN_TEAMS).route, "/v1/health", authorization=authorization)
    assert (error.status, error.code) == (401, "missing-token")
    assert "Authorization: Bearer" in error.message


def test_wrong_token_is_401() -> None:
    error = refused(table(TOKEN_TEAMS).route, "/v1/health", authorization="Bearer nope")
    assert (error.status, error.code) == (401, "invalid-token")


def test_team_header_without_token_is_401_once_tokens_exist() -> None:
    error = refused(table(TOKEN_TEAMS).route, "/teams/frontend/v1/health", team_header="frontend")
    assert error.status == 401


@pytest.mark.parametrize(("path", "team_header"), [("/v1/health", "research"), ("/teams/research/v1/health", None)])
def test_team_contradicting_token_is_404_not_an_auth_failure(path: str, team_header: str | None) -> None:
    error = refused(table(TOKEN_TEAMS).route, path, authorization=f"Bearer {TOKEN_FRONTEND}", team_header=team_header)
    assert (error.status, error.code) == (404, "team-mismatch")
    assert "'frontend'" in error.message


def test_team_agreeing_with_token_is_fine() -> None:
    route = table(TOKEN_TEAMS).route(
        "/teams/frontend/v1/health", authorization=f"Bearer {TOKEN_FRONTEND}", team_header="frontend"
    )
    assert (route.team, route.reason) == ("frontend", "team-token")


def test_token_team_cannot_reach_entry_outside_allowed_list() -> None:
    error = refused(table(TOKEN_TEAMS).route, "/models/large/v1/completions", authorization=f"Bearer {TOKEN_FRONTEND}")
    assert (error.status, error.code) == (404, "entry-not-allowed")


def test_refusals_carry_the_team_they_identified() -> None:
    """For the router's log and metrics: the team (from settings) and, where it exists, the entry named."""
    tokens = table(TOKEN_TEAMS)
    frontend = f"Bearer {TOKEN_FRONTEND}"
    not_allowed = refused(tokens.route, "/models/large/v1/completions", authorization=frontend)
    assert (not_allowed.team, not_allowed.entry) == ("frontend", "large")
    unknown = refused(tokens.route, "/v1/completions", authorization=frontend, model_header="gpt-5")
    assert (unknown.team, unknown.entry) == ("frontend", None)  # never a client's made-up entry name
    mismatch = refused(tokens.route, "/teams/research/v1/health", authorization=frontend)
    assert mismatch.team == "frontend"
    assert refused(tokens.route, "/v1/health", authorization="Bearer nope").team is None
    assert refused(table(OPEN_TEAMS).route, "/teams/nobody/v1/health").team is None  # unchecked words


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/v2/completions", "/v1", "/teams/frontend", "/teams/frontend/", "/models/x"])
def test_non_api_paths_are_404(path: str) -> None:
    assert refused(table(OPEN_TEAMS).route, path).status == 404


@pytest.mark.parametrize("path", ["/v1/../fleet/entries", "/teams/frontend/v1/./health", "/v1/a\\b", "/v1/x/.."])
def test_dot_segments_are_400(path: str) -> None:
    assert refused(table(OPEN_TEAMS).route, path).code == "bad-path"


def test_v1beta_paths_are_routed() -> None:
    assert table().route("/v1beta/server_setting").upstream_path == "/v1beta/server_setting"


def test_errors_serialise_to_the_documented_shape() -> None:
    error = refused(table(OPEN_TEAMS).route, "/teams/frontend/v1/completions", model_header="xl")
    assert error.payload() == {
        "error": {
            "code": "unknown-model",
            "message": "no fleet entry is called 'xl' (in the X-Tabby-Model header); use an entry name, alias or "
            "model id",
            "choices": ["small", "medium"],
        }
    }
    sent = error.payload()["error"]
    assert isinstance(sent, dict) and "team" not in sent  # context for the router's log, never sent


# -- chat ----------------------------------------------------------------------------------------

CHAT_ENTRIES = (
    Entry(name="small", model="TabbyML/StarCoder-1B"),
    Entry(name="medium", model="TabbyML/StarCoder-3B", chat_model="Qwen-1.5B"),
    Entry(name="large", model="TabbyML/StarCoder-7B", chat_model="Qwen-7B"),
)
CHAT_TEAMS = (
    Team(name="frontend", entry="small", allowed_entries=("small", "medium")),
    Team(name="research", entry="large"),
    Team(name="pinned", entry="small", chat_entry="large"),
    Team(name="nochat", entry="small", allowed_entries=("small",)),
    Team(name="loose"),
)


def chat_table() -> RoutingTable:
    return table(CHAT_TEAMS, entries=CHAT_ENTRIES)


@pytest.mark.parametrize(
    ("team", "entry", "how"),
    [
        ("research", "large", "entry"),  # its entry has a chat model
        ("frontend", "medium", "first-allowed-with-chat"),  # its entry has none; the first allowed one that has
        ("pinned", "large", "team-chat-entry"),  # chat_entry wins over the first allowed with chat (medium)
        ("loose", "medium", "first-allowed-with-chat"),  # no entry: the default (small) has none; all allowed
    ],
)
def test_chat_goes_to_the_team_chat_entry(team: str, entry: str, how: str) -> None:
    settings = FleetSettings(entries=CHAT_ENTRIES, teams=CHAT_TEAMS, router={"default_entry": "small"})
    assert resolve_chat_entry(settings, settings.teams[[t.name for t in CHAT_TEAMS].index(team)]) == (entry, how)
    for path in (f"/teams/{team}/v1/chat/completions", f"/teams/{team}/v1beta/chat/completions"):
        route = chat_table().route(path)
        assert (route.entry, route.reason, route.kind) == (entry, "chat-entry", "chat")
    assert chat_table().route(f"/teams/{team}/v1/completions").entry != entry or team == "research"


def test_chat_without_a_team_follows_the_same_rule() -> None:
    route = chat_table().route("/v1/chat/completions")
    assert (route.entry, route.team) == ("medium", None)


def test_named_entry_takes_chat_even_when_it_is_not_the_chat_entry() -> None:
    route = chat_table().route("/teams/pinned/v1/chat/completions", model_header="medium")
    assert (route.entry, route.reason) == ("medium", "model-header")  # pinned's chat_entry is large
    assert chat_table().route("/teams/pinned/models/medium/v1/chat/completions").entry == "medium"


def test_chat_on_a_named_entry_without_chat_model_is_501_listing_entries_with_one() -> None:
    for kwargs in ({"model_header": "small"}, {}):
        path = "/models/small/v1/chat/completions" if not kwargs else "/teams/frontend/v1/chat/completions"
        error = refused(chat_table().route, path, **kwargs)
        assert (error.status, error.code) == (501, "no-chat-model")
        assert "'small' has no chat model" in error.message
    frontend = refused(chat_table().route, "/teams/frontend/models/small/v1/chat/completions")
    assert frontend.choices == ("medium",)  # only entries the team may use
    assert frontend.team == "frontend"


def test_team_without_any_chat_model_is_501_from_the_router() -> None:
    error = refused(chat_table().route, "/teams/nochat/v1/chat/completions")
    assert (error.status, error.code, error.choices, error.team) == (501, "no-chat-model", (), "nochat")
    assert "fleet admin" in error.message


def test_health_advertises_the_chat_model_of_the_team_chat_entry() -> None:
    chat = chat_table()
    frontend = chat.route("/teams/frontend/v1/health")
    assert frontend.kind == "health" and chat.health_advert(frontend) == ChatAdvert("Qwen-1.5B", "medium")
    assert chat.health_advert(chat.route("/teams/research/v1/health")) is None  # its own entry chats
    assert chat.health_advert(chat.route("/teams/nochat/v1/health")) is None  # no chat to advertise
    assert chat.health_advert(chat.route("/teams/frontend/models/small/v1/health")) is None  # named: its own
    assert chat.route("/teams/frontend/v1beta/server_setting").kind == "server-setting"
    assert chat.route("/teams/frontend/v1/completions").kind is None


def _settings_problems(**team: object) -> str:
    with pytest.raises(ValueError) as caught:
        checked(FleetSettings(entries=CHAT_ENTRIES, teams=[{"name": "t", **team}]))
    return str(caught.value)


def test_chat_entry_must_exist_be_allowed_and_have_a_chat_model() -> None:
    assert "chat_entry: unknown entry 'xl'; choose one of: medium, large" in _settings_problems(chat_entry="xl")
    not_allowed = _settings_problems(entry="small", allowed_entries=["small", "medium"], chat_entry="large")
    assert "chat_entry: 'large' is not in its allowed_entries (small, medium); add it there, or choose one of: " \
        "medium" in not_allowed  # fmt: skip
    assert "chat_entry: entry 'small' has no chat_model" in _settings_problems(chat_entry="small")


def test_fleet_check_warns_about_each_team_without_chat() -> None:
    settings = FleetSettings(entries=CHAT_ENTRIES, teams=CHAT_TEAMS, router={"default_entry": "small"})
    warnings = settings_warnings(settings)
    assert len(warnings) == 1 and warnings[0].startswith('teams["nochat"]: no chat')


# -- whoami --------------------------------------------------------------------------------------


def test_whoami_explains_team_entry_allowed_entries_and_chat() -> None:
    tokens = table(TOKEN_TEAMS, entries=CHAT_ENTRIES)
    answer = tokens.whoami("/fleet/whoami", authorization=f"Bearer {TOKEN_FRONTEND}")
    assert {k: v for k, v in answer.items() if k != "explain"} == {
        "team": "frontend", "team_from": "team-token",
        "entry": "small", "model": "TabbyML/StarCoder-1B", "entry_from": "team-token",
        "allowed_entries": ["small", "medium"], "allowed_from": "team",
        "chat_entry": "medium", "chat_model": "Qwen-1.5B", "chat_from": "first-allowed-with-chat", "chat_error": None,
    }  # fmt: skip
    assert answer["explain"][0] == "Your token belongs to team 'frontend'."
    named = tokens.whoami("/models/medium/fleet/whoami", authorization=f"Bearer {TOKEN_FRONTEND}")
    assert (named["entry"], named["entry_from"], named["chat_entry"], named["chat_from"]) == (
        "medium", "model-path", "medium", "model-path"
    )  # fmt: skip


def test_whoami_reports_no_chat_with_the_refusal_chat_would_get() -> None:
    answer = chat_table().whoami("/teams/nochat/fleet/whoami")
    assert (answer["team"], answer["team_from"], answer["chat_entry"], answer["chat_from"]) == (
        "nochat", "team-path", None, "none"
    )  # fmt: skip
    assert answer["chat_error"]["code"] == "no-chat-model"
    named = chat_table().whoami("/fleet/whoami", team_header="frontend", model_header="small")
    assert (named["team_from"], named["chat_from"], named["chat_error"]["code"]) == (
        "team-header", "model-header", "no-chat-model"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("path", "authorization", "status", "code"),
    [
        ("/fleet/whoami", None, 401, "missing-token"),
        ("/fleet/whoami", "Bearer nope", 401, "invalid-token"),
        ("/models/large/fleet/whoami", f"Bearer {TOKEN_FRONTEND}", 404, "entry-not-allowed"),
        ("/teams/research/fleet/whoami", f"Bearer {TOKEN_FRONTEND}", 404, "team-mismatch"),
    ],
)
def test_whoami_refuses_as_the_proxy_does(path: str, authorization: str | None, status: int, code: str) -> None:
    tokens = table(TOKEN_TEAMS)
    error = refused(tokens.whoami, path, authorization=authorization)
    completion = refused(tokens.route, path.replace("/fleet/whoami", "/v1/completions"), authorization=authorization)
    assert (error.status, error.code) == (completion.status, completion.code) == (status, code)


def test_whoami_answers_only_after_routing_prefixes() -> None:
    assert table(OPEN_TEAMS).whoami("/teams/frontend/models/medium/fleet/whoami")["entry"] == "medium"
    assert refused(table(OPEN_TEAMS).whoami, "/v1/fleet/whoami").code == "unknown-path"


def test_whoami_never_names_another_team() -> None:
    answer = table(TOKEN_TEAMS).whoami("/fleet/whoami", authorization=f"Bearer {TOKEN_FRONTEND}")
    assert "research" not in repr(answer)


def test_a_token_cannot_probe_which_teams_exist() -> None:
    tokens, frontend = table(TOKEN_TEAMS), f"Bearer {TOKEN_FRONTEND}"
    existing = refused(tokens.whoami, "/teams/research/fleet/whoami", authorization=frontend)
    missing = refused(tokens.whoami, "/teams/nosuch/fleet/whoami", authorization=frontend)
    assert (existing.status, existing.code, existing.choices) == (missing.status, missing.code, missing.choices)
    assert existing.message.replace("research", "nosuch") == missing.message
