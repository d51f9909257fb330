"""Every routing rule and refusal, on the pure function."""

from __future__ import annotations

import pytest

from fleet.errors import FleetError
from fleet.routing import RoutingTable, hash_token
from fleet.settings import Entry, FleetSettings, Team

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


def test_model_outside_allowed_list_is_403_with_allowed_choices() -> None:
    error = refused(table(OPEN_TEAMS).route, "/teams/frontend/v1/completions", model_header="large")
    assert (error.status, error.code, error.choices) == (403, "entry-not-allowed", ("small", "medium"))


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
def test_team_contradicting_token_is_403(path: str, team_header: str | None) -> None:
    error = refused(table(TOKEN_TEAMS).route, path, authorization=f"Bearer {TOKEN_FRONTEND}", team_header=team_header)
    assert (error.status, error.code) == (403, "team-mismatch")
    assert "'frontend'" in error.message


def test_team_agreeing_with_token_is_fine() -> None:
    route = table(TOKEN_TEAMS).route(
        "/teams/frontend/v1/health", authorization=f"Bearer {TOKEN_FRONTEND}", team_header="frontend"
    )
    assert (route.team, route.reason) == ("frontend", "team-token")


def test_token_team_cannot_reach_entry_outside_allowed_list() -> None:
    error = refused(table(TOKEN_TEAMS).route, "/models/large/v1/completions", authorization=f"Bearer {TOKEN_FRONTEND}")
    assert (error.status, error.code) == (403, "entry-not-allowed")


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
    error = refused(table(OPEN_TEAMS).route, "/teams/frontend/v1/completions", model_header="large")
    assert error.payload() == {
        "error": {
            "code": "entry-not-allowed",
            "message": "team 'frontend' may not use entry 'large'; use one of its allowed entries",
            "choices": ["small", "medium"],
        }
    }
