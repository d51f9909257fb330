"""Properties of the routing function over arbitrary input (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import FleetError
from fleet.routing import Route, RoutingTable
from fleet.settings import Entry, FleetSettings, Team
from fleet.tokens import hash_token

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability

TOKEN = "tft_property-token"
ENTRIES = (
    Entry(name="small", model="TabbyML/StarCoder-1B", aliases=("sc1",)),
    Entry(name="large", model="TabbyML/StarCoder-7B"),
)
OPEN = RoutingTable(
    FleetSettings(
        entries=ENTRIES,
        teams=(Team(name="frontend", entry="small", allowed_entries=("small",)), Team(name="research")),
        router={"default_entry": "large"},
    )
)
LOCKED = RoutingTable(
    FleetSettings(entries=ENTRIES, teams=(Team(name="frontend", entry="small", token_sha256=(hash_token(TOKEN),)),))
)

segment = st.one_of(
    st.sampled_from(
        [
            "teams",
            "models",
            "v1",
            "v1beta",
            "frontend",
            "research",
            "small",
            "large",
            "sc1",
            "..",
            ".",
            "health",
            "completions",
            "",
            "Frontend",
            "nobody",
        ]
    ),
    st.text(min_size=0, max_size=12),
)
paths = st.lists(segment, max_size=7).map(lambda parts: "/" + "/".join(parts))
header = st.one_of(st.none(), st.sampled_from(["small", "LARGE", "sc1", "frontend", "research", "x", ""]), st.text())
authorization = st.one_of(st.none(), st.just(f"Bearer {TOKEN}"), st.text(max_size=40), st.just("Bearer "))


def decide(
    table: RoutingTable, path: str, auth: str | None, team: str | None, model: str | None
) -> Route | tuple[int, str, tuple[str, ...] | list[str]]:
    try:
        return table.route(path, auth, team, model)
    except FleetError as error:
        return (error.status, error.code, error.choices)


@settings(max_examples=1500, deadline=None)
@given(path=paths, auth=authorization, team=header, model=header)
def test_any_request_gets_a_route_or_a_4xx_deterministically(
    path: str, auth: str | None, team: str | None, model: str | None
) -> None:
    for table in (OPEN, LOCKED):
        first = decide(table, path, auth, team, model)
        assert first == decide(table, path, auth, team, model)  # the same answer every time
        if isinstance(first, Route):
            assert first.entry in {"small", "large"}
            assert first.upstream_path.startswith(("/v1/", "/v1beta/"))
            assert "/../" not in first.upstream_path and "/./" not in first.upstream_path
        else:
            status, code, _ = first
            assert 400 <= status < 500 and code


@settings(max_examples=500, deadline=None)
@given(path=paths, team=header, model=header, auth=authorization)
def test_without_the_token_a_locked_fleet_routes_nothing(
    path: str, team: str | None, model: str | None, auth: str | None
) -> None:
    answer = decide(LOCKED, path, auth, team, model)
    if auth is None or auth.split(" ", 1)[-1].strip() != TOKEN:
        assert not isinstance(answer, Route)


@settings(max_examples=500, deadline=None)
@given(path=paths, team=header, model=header)
def test_a_team_never_reaches_an_entry_outside_its_allowed_list(path: str, team: str | None, model: str | None) -> None:
    answer = decide(OPEN, path, None, team, model)
    if isinstance(answer, Route) and answer.team == "frontend":
        assert answer.entry == "small"
