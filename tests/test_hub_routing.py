"""The hub's path table and token mapping (fleet/hub_paths.py, router/hub_access.py), as properties.

A completion never reaches the hub; a fleet token never reaches the hub unmapped; a hub token or a login JWT
never reaches an entry; prefixes and dot segments cannot smuggle a path from one side to the other.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import FleetError
from fleet.hub import HubOptions
from fleet.hub_paths import (
    BAD_PATH,
    ENTRY,
    HUB,
    HUB_SOCKET,
    NOT_FOUND,
    PROXIED_PREFIXES,
    REDIRECT_CHAT,
    ROUTER,
    HubPass,
    chat_redirect,
    classify,
    is_data_path,
)  # fmt: skip
from fleet.routing import RoutingTable, has_dot_segments
from fleet.rules import checked
from fleet.settings import FleetSettings
from fleet.tokens import hash_token
from router.admin import AdminAuth
from router.hub_access import HubAccess, team_tokens_from_env
from router.request_head import RequestHead

FRONTEND_TOKEN = "fleet-frontend-token"
HUB_TEAM_TOKEN = "hub-team-router-token"
ADMIN_TOKEN = "fleet-admin-token"


def hub_settings(**hub: Any) -> FleetSettings:
    return checked(
        FleetSettings(
            router={"auth": "tokens", "admin_tokens": [{"label": "ops", "sha256": hash_token(ADMIN_TOKEN)}]},
            entries=[{"name": "small", "model": "TabbyML/StarCoder-1B", "chat_model": "TabbyML/Qwen2-1.5B-Instruct"}],
            teams=[
                {"name": "frontend", "tokens": [{"label": "alice", "sha256": hash_token(FRONTEND_TOKEN)}]},
                {"name": "hub", "tokens": [{"label": "hub", "sha256": hash_token(HUB_TEAM_TOKEN)}]},
                {"name": "backend", "tokens": [{"label": "bob", "sha256": hash_token("fleet-backend-token")}]},
            ],
            hub={"enabled": True, "chat_entry": "small", "router_team": "hub", "teams": ["frontend", "hub"], **hub},
        )
    )


def access(**hub: Any) -> HubAccess:
    settings = hub_settings(**hub)
    return HubAccess(settings.hub, RoutingTable(settings), AdminAuth(settings), {"frontend": "auth_frontend"})


segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%", min_size=0, max_size=12)
paths = st.lists(segment, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts))
prefixes = st.sampled_from(["", "/teams/frontend", "/models/small", "/teams/frontend/models/small"])
flags = st.booleans()


@given(prefix=prefixes, tail=st.sampled_from(["", "?x=1", "/", "/extra"]), foreign=flags, websocket=flags)
def test_a_completion_never_reaches_the_hub(prefix: str, tail: str, foreign: bool, websocket: bool) -> None:
    for api in ("/v1/completions", "/v1/chat/completions", "/v1beta/chat/completions", "/v1/events"):
        where = classify(prefix + api + tail.partition("?")[0], hub=True, foreign_bearer=foreign, websocket=websocket)
        assert where not in (HUB, HUB_SOCKET)


@given(path=paths, foreign=flags, ingestion=flags)
def test_tabby_api_paths_go_to_entries_but_the_hubs_own(path: str, foreign: bool, ingestion: bool) -> None:
    for full in ("/v1" + path, "/v1beta" + path, "/teams/frontend" + path, "/models/small/v1" + path):
        where = classify(full, hub=True, foreign_bearer=foreign, ingestion=ingestion)
        if has_dot_segments(full):
            assert where == BAD_PATH
        elif full == "/v1beta/models" or full.startswith("/v1beta/ingestion"):
            assert where in (HUB, NOT_FOUND)
        elif full == "/v1/health" and foreign:
            assert where == HUB  # the hub's own web UI checks its health with its user's token
        elif full.startswith(("/teams/", "/models/")) and full.rstrip("/").endswith("/chat"):
            assert where in (REDIRECT_CHAT, ENTRY)
        else:
            assert where == ENTRY


@given(path=paths, websocket=flags)
def test_dot_segments_never_cross(path: str, websocket: bool) -> None:
    """A path with '.' or '..' segments is refused before any side is chosen: a client library (yarl) or a
    proxy between would normalise '/_next/../v1/completions' into a path of the other side."""
    for smuggled in (path + "/../v1/completions", "/_next/.." + path, "/v1/.." + path, path + "/./graphql"):
        assert classify(smuggled, hub=True, websocket=websocket) == BAD_PATH


@given(path=paths)
def test_without_a_hub_nothing_changes(path: str) -> None:
    where = classify(path, hub=False)
    assert where == (ENTRY if path.startswith(PROXIED_PREFIXES) or path == "/fleet/whoami" else ROUTER)
    assert classify("/subscriptions", hub=False, websocket=True) == NOT_FOUND


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("/", HUB), ("/chat", HUB), ("/_next/static/x.js", HUB), ("/graphql", HUB), ("/auth/signin", HUB),
        ("/files/a", HUB), ("/avatar/1", HUB), ("/repositories/git/1/resolve/", HUB), ("/v1beta/models", HUB),
        ("/subscriptions", HUB), ("/hub", NOT_FOUND), ("/hub/x", NOT_FOUND), ("/v1beta/ingestion", NOT_FOUND),
        ("/fleet/status", ROUTER), ("/fleet/usage", ROUTER), ("/metrics", ROUTER), ("/fleet/whoami", ENTRY),
        ("/teams/frontend/chat", REDIRECT_CHAT), ("/teams/frontend/chat/", REDIRECT_CHAT),
        ("/models/small/chat", REDIRECT_CHAT), ("/teams/frontend/models/small/chat", REDIRECT_CHAT),
        ("/teams/frontend/v1/health", ENTRY), ("/v1/health", ENTRY), ("/teams/frontend/fleet/whoami", ENTRY),
        ("/teams/frontend/chat/x", ENTRY), ("/v1/chat", ENTRY),
    ],
)  # fmt: skip
def test_the_path_table(path: str, where: str) -> None:
    assert classify(path, hub=True) == where


def test_websockets_go_to_the_hub_only_at_subscriptions() -> None:
    assert classify("/subscriptions", hub=True, websocket=True) == HUB_SOCKET
    for path in ("/graphql", "/v1/completions", "/fleet/health", "/hub", "/"):
        assert classify(path, hub=True, websocket=True) == NOT_FOUND


def test_ingestion_reaches_the_hub_only_when_allowed() -> None:
    assert classify("/v1beta/ingestion", hub=True, ingestion=True) == HUB
    assert classify("/v1beta/ingestion/src/1", hub=True, ingestion=True) == HUB
    assert classify("/v1beta/ingestion/src/1", hub=True) == NOT_FOUND


def test_the_chat_redirect_keeps_its_query() -> None:
    assert chat_redirect("client=vscode") == "/chat?client=vscode"
    assert chat_redirect("") == "/chat"


@settings(max_examples=200)
@given(path=st.sampled_from(["/graphql", "/subscriptions", "/v1beta/models", "/chat", "/_next/a.js", "/"]))
def test_a_fleet_token_never_reaches_the_hub_unmapped(path: str) -> None:
    gate = access()
    passed = gate.authorize(path, f"Bearer {FRONTEND_TOKEN}")
    assert passed.team == "frontend"
    assert passed.authorization == "Bearer auth_frontend"
    assert FRONTEND_TOKEN not in str(passed.authorization)
    admin = gate.authorize(path, f"Bearer {ADMIN_TOKEN}")
    assert admin.authorization is None and admin.team is None


def test_a_fleet_token_of_another_team_is_refused_with_advice() -> None:
    with pytest.raises(FleetError) as refused:
        access().authorize("/graphql", "Bearer fleet-backend-token")
    assert refused.value.status == 403 and "[hub] teams" in refused.value.message


def test_a_hub_team_without_its_hub_user_is_told_what_the_admin_does() -> None:
    with pytest.raises(FleetError) as refused:
        access().authorize("/graphql", f"Bearer {HUB_TEAM_TOKEN}")
    assert refused.value.status == 503 and "FLEET_HUB_TEAM_TOKENS" in refused.value.message


def test_identity_user_passes_the_developers_own_hub_token() -> None:
    passed = access(identity="user").authorize("/graphql", f"Bearer {FRONTEND_TOKEN}")
    assert passed == type(passed)("frontend", f"Bearer {FRONTEND_TOKEN}")


def test_the_hub_is_closed_to_strangers_until_ui_open() -> None:
    for token in (None, "Bearer eyJhbGciOi.jwt.x", "Bearer auth_someone"):
        with pytest.raises(FleetError) as refused:
            access().authorize("/graphql", token)
        assert refused.value.status == 401 and "ui_open" in refused.value.message
        assert access().authorize("/chat", token).authorization == token  # the page itself loads
        assert access(ui_open=True).authorize("/graphql", token).authorization == token


def test_a_revoked_fleet_token_is_refused_not_passed_to_the_hub() -> None:
    gate = access(ui_open=True)
    digest = bytes.fromhex(hash_token(FRONTEND_TOKEN))
    gate.table.tokens = {k: v for k, v in gate.table.tokens.items() if k != digest}
    gate.table.revoked = {digest: "frontend/alice"}
    with pytest.raises(FleetError) as refused:
        gate.authorize("/graphql", f"Bearer {FRONTEND_TOKEN}")
    assert refused.value.code == "token-revoked"
    assert not gate.foreign_bearer(f"Bearer {FRONTEND_TOKEN}")


def test_only_a_foreign_bearer_is_foreign() -> None:
    gate = access()
    assert gate.foreign_bearer("Bearer auth_someone")
    assert not gate.foreign_bearer(f"Bearer {FRONTEND_TOKEN}")
    assert not gate.foreign_bearer(f"Bearer {ADMIN_TOKEN}")
    assert not gate.foreign_bearer(None)


@given(token=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=40))
def test_a_hub_token_or_jwt_never_reaches_an_entry(token: str) -> None:
    """The proxy never forwards Authorization to an entry; in token mode a token the fleet does not know is
    refused there (401) before any entry is chosen."""
    scope = {
        "headers": [(b"authorization", f"Bearer {token}".encode()), (b"x-tabby-user", b"mallory"),
                    (b"cookie", f"tabby-session={token}".encode())],
        "path": "/",
    }  # fmt: skip
    head = RequestHead(scope)
    assert all(name not in (b"authorization", b"x-tabby-user", b"cookie") for name, _ in head.forwarded)
    assert head.cookies == [f"tabby-session={token}".encode()]  # kept for the hub's relay alone
    table = RoutingTable(hub_settings())
    with pytest.raises(FleetError) as refused:
        table.route("/v1/completions", f"Bearer {token}", None, None)
    assert refused.value.status == 401


def test_data_paths() -> None:
    assert is_data_path("/graphql") and is_data_path("/v1beta/models") and is_data_path("/subscriptions")
    assert not is_data_path("/chat") and not is_data_path("/_next/x.js") and not is_data_path("/")


def test_team_tokens_from_the_environment_are_checked() -> None:
    assert team_tokens_from_env({}) == {}
    assert team_tokens_from_env({"FLEET_HUB_TEAM_TOKENS": '{"frontend": "auth_1"}'}) == {"frontend": "auth_1"}
    for bad in ("not json", "[1]", '{"frontend": ""}', '{"Front End": "auth_1"}', '{"frontend": 3}'):
        with pytest.raises(ValueError, match="FLEET_HUB_TEAM_TOKENS"):
            team_tokens_from_env({"FLEET_HUB_TEAM_TOKENS": bad})


def test_hub_options_serve_their_teams() -> None:
    assert HubOptions(enabled=True).serves("anyone")
    assert not HubOptions(enabled=True, teams=("a",)).serves("b")
    assert not HubOptions().serves("a")


bearers = st.sampled_from(
    [None, f"Bearer {FRONTEND_TOKEN}", f"Bearer {HUB_TEAM_TOKEN}", "Bearer fleet-backend-token", "Bearer auth_x",
     "Bearer eyJhbGciOi.jwt.x", "Basic YTpi", f"Bearer {ADMIN_TOKEN}x"]
)  # fmt: skip
hub_paths = st.sampled_from(["/graphql", "/subscriptions", "/v1beta/models", "/chat", "/_next/a.js", "/", "/v1/health"])


@settings(max_examples=300)
@given(path=hub_paths, authorization=bearers, header=st.text(max_size=60), ui_open=flags, identity=flags)
def test_only_an_admin_can_pass_a_token_in_the_hub_authorization_header(
    path: str, authorization: str | None, header: str, ui_open: bool, identity: bool
) -> None:
    """X-Fleet-Hub-Authorization from anyone but an admin (no token, a fleet token of any team, a hub token, a
    JWT, a near-miss of the admin token) is refused, whatever the path and settings: it never becomes what the
    hub sees."""
    gate = access(ui_open=ui_open, identity="user" if identity else "team")
    with pytest.raises(FleetError) as refused:
        gate.authorize(path, authorization, header)
    assert refused.value.status == 403 and refused.value.code == "hub-header-admin-only"
    assert "X-Fleet-Hub-Authorization" in refused.value.message and "Authorization alone" in refused.value.message


@given(path=hub_paths, header=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._- ", min_size=1, max_size=60))
def test_an_admin_reaches_the_hub_as_the_user_its_hub_authorization_names(path: str, header: str) -> None:
    """The admin token itself never reaches the hub: without the header the hub sees no Authorization; with it,
    exactly the header's value (the owner's login, as `fleet hub bootstrap` sends it)."""
    gate = access()
    assert gate.authorize(path, f"Bearer {ADMIN_TOKEN}") == HubPass(None, None)
    passed = gate.authorize(path, f"Bearer {ADMIN_TOKEN}", header)
    assert passed.team is None and passed.authorization == header and ADMIN_TOKEN not in header


@given(value=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._- ", max_size=40), other=st.booleans())
def test_the_hub_authorization_header_is_never_forwarded(value: str, other: bool) -> None:
    """Neither the hub (router/hub_relay.py forwards ``head.forwarded`` plus the decided Authorization) nor an
    entry (the proxy forwards ``head.forwarded``) ever receives the header itself (ASGI gives names lower-cased)."""
    name = b"x-fleet-hub-authorization"
    headers = [(name, value.encode()), (b"accept", b"*/*")] + ([(name, b"Bearer twice")] if other else [])
    head = RequestHead({"headers": headers, "path": "/graphql"})
    assert all(header != name for header, _ in head.forwarded)
    assert head.hub_authorization == ("Bearer twice" if other else value)


def test_whoami_says_whether_the_team_is_offered_the_chat_panel() -> None:
    table = RoutingTable(hub_settings())
    mine = table.whoami("/fleet/whoami", f"Bearer {FRONTEND_TOKEN}")
    assert mine["chat_panel"] is True and any("chat panel" in line for line in mine["explain"])
    other = table.whoami("/fleet/whoami", "Bearer fleet-backend-token")
    assert other["chat_panel"] is False and "[hub] teams" in other["explain"][-1]
    plain = FleetSettings(entries=[{"name": "small", "model": "m"}])
    assert "chat_panel" not in RoutingTable(plain).whoami("/fleet/whoami")  # no hub: nothing said
