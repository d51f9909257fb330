"""Where a request goes when the fleet has a hub, and what token the hub sees: two pure decisions.

Tabby's web UI has no base path: its chat panel calls ``/graphql``, ``/subscriptions`` (WebSocket),
``/_next/*`` and ``/v1beta/models`` at the origin root (reference/tabby-hub.md §1). So with ``[hub]`` on, the
router's root namespace is the hub's, but for Tabby's API on the entries (``/v1/*``, ``/v1beta/*``, the
``/teams/`` and ``/models/`` prefixes) and the router's own ``/fleet/*`` and ``/metrics``.

:func:`classify` is the path table; :func:`hub_pass` decides the ``Authorization`` the hub receives, so
that a fleet token never reaches the hub unmapped and a refusal says what to change. Properties:
tests/test_hub_routing.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from fleet.errors import FleetError
from fleet.hub import TEAM_TOKENS_ENV, HubOptions
from fleet.routing import MODEL_PREFIX, TABBY_API_PREFIXES, TEAM_PREFIX, WHOAMI_PATH, has_dot_segments

# Where a request goes (classify).
ENTRY = "entry"  # Tabby's API on an entry: the proxy (router/proxy.py), as without a hub
ROUTER = "router"  # the router's own endpoints: /fleet/*, /metrics
HUB = "hub"  # the hub's HTTP paths: the relay (router/hub_relay.py)
HUB_SOCKET = "hub-socket"  # GET /subscriptions as a WebSocket: the socket relay (router/hub_socket.py)
REDIRECT_CHAT = "redirect-chat"  # <endpoint>/chat: 307 to /chat, the panel's page at the root
NOT_FOUND = "not-found"  # /hub (Tabby's remote-worker socket), ingestion when off, other WebSockets
BAD_PATH = "bad-path"  # dot segments: a client or a proxy between could normalise them across a boundary

PROXIED_PREFIXES = (*TABBY_API_PREFIXES, TEAM_PREFIX, MODEL_PREFIX)
CHAT_PAGE = "/chat"
SOCKET_PATH = "/subscriptions"
HUB_MODELS = "/v1beta/models"  # the panel's model picker: the hub's, at the root only
INGESTION = "/v1beta/ingestion"
HEALTH_PATH = "/v1/health"
# An admin's hub token (the owner's login JWT, for `fleet hub bootstrap`): the router strips the admin's own
# Authorization and sends this header's value as the hub's Authorization; from anyone else it is refused. Neither
# the hub nor an entry ever receives the header itself (router/request_head.py never forwards it).
HUB_AUTHORIZATION_HEADER = "X-Fleet-Hub-Authorization"
# Paths that read or change the hub's data (users, threads, repositories): closed to anything but fleet and
# admin tokens until the hub has an owner (hub.ui_open). The rest are the UI's static pages and assets.
DATA_PREFIXES = (
    "/graphql", SOCKET_PATH, "/v1/", "/v1beta/", "/repositories/", "/background-jobs/", "/oauth/", "/avatar/",
    "/graphiql", "/swagger-ui", "/api-docs",
)  # fmt: skip

NOT_FOUND_ERROR = FleetError(404, "unknown-path", "this path is not served here; Tabby's API is under /v1/...")
BAD_PATH_ERROR = FleetError(
    400, "bad-path",
    "the path has '.' or '..' segments, a backslash, an empty segment ('//') or a twice-encoded dot, slash or "
    "backslash; send the path as your IDE builds it",
)  # fmt: skip
# The first segments that belong to the router's side (Tabby's API on the entries, the router's own, Tabby's worker
# socket): spelt any other way (case, ';' parameters, trailing dots), a path is refused rather than sent to the hub,
# where a server or proxy that folds case or trims the segment could read it as the real one.
ROUTER_SEGMENTS = frozenset({"v1", "v1beta", "teams", "models", "fleet", "metrics", "hub"})
# %2e, %2f, %5c left in a path decoded once: encoded twice, for whatever decodes it again behind the router.
_TWICE_ENCODED = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


def classify(
    path: str, *, hub: bool, ingestion: bool = False, foreign_bearer: bool = False, websocket: bool = False
) -> str:
    """Where a request for ``path`` (percent-decoded, as ASGI's ``scope["path"]``) goes.

    ``hub``: the hub is on. ``foreign_bearer``: the request carries a bearer token that is neither a fleet
    team token nor an admin token (the hub's own web UI sends its users' tokens to ``/v1/health``).
    ``websocket``: the request is a WebSocket handshake. Without a hub, only ENTRY and ROUTER are answered,
    as the router always did.
    """
    if not hub:
        if websocket:
            return NOT_FOUND
        return ENTRY if path.startswith(PROXIED_PREFIXES) or path == WHOAMI_PATH else ROUTER
    if not path.startswith("/") or has_dot_segments(path):
        return BAD_PATH
    first = path[1:].partition("/")[0]
    if first not in ROUTER_SEGMENTS and _canonical(first) in ROUTER_SEGMENTS:
        return NOT_FOUND
    if path in ("/fleet", "/metrics") or path.startswith("/fleet/"):
        return ENTRY if path == WHOAMI_PATH and not websocket else (NOT_FOUND if websocket else ROUTER)
    if path == SOCKET_PATH:
        return HUB_SOCKET if websocket else HUB
    if websocket or path == "/hub" or path.startswith("/hub/"):
        return NOT_FOUND
    if path.startswith((TEAM_PREFIX, MODEL_PREFIX)) and _is_chat_page(path):
        return REDIRECT_CHAT
    if path == HUB_MODELS:
        return HUB
    if path == INGESTION or path.startswith(INGESTION + "/"):
        return HUB if ingestion else NOT_FOUND
    if path == HEALTH_PATH and foreign_bearer:
        return HUB
    if path.startswith(PROXIED_PREFIXES):
        return ENTRY
    if "//" in path or _TWICE_ENCODED.search(path):  # the hub, or a proxy before it, might fold it into another
        return BAD_PATH
    return HUB


def _is_chat_page(path: str) -> bool:
    """``/teams/<t>/chat``, ``/models/<e>/chat`` or ``/teams/<t>/models/<e>/chat`` (a trailing slash allowed):
    the page VS Code's webview loads at ``<endpoint>/chat?client=vscode``."""
    parts = path.rstrip("/").split("/")[1:]
    if len(parts) == 3:
        return parts[0] in ("teams", "models") and bool(parts[1]) and parts[2] == "chat"
    if len(parts) == 5:
        return parts[0] == "teams" and parts[2] == "models" and bool(parts[1]) and bool(parts[3]) and parts[4] == "chat"
    return False


def chat_redirect(query: str) -> str:
    """Where ``<endpoint>/chat?<query>`` is sent: the panel's page at the root, its query kept."""
    return CHAT_PAGE + ("?" + query if query else "")


def is_data_path(path: str) -> bool:
    """Whether ``path`` reads or changes the hub's data; its first segment spelt in any case, with ';' parameters
    or trailing dots counts as the real one (the hub, or something in front of it, may read it so)."""
    first, slash, rest = path[1:].partition("/")
    return path.startswith(DATA_PREFIXES) or ("/" + _canonical(first) + slash + rest).startswith(DATA_PREFIXES)


def _canonical(segment: str) -> str:
    """A path segment as a lenient server might read it: lower case, without ';' parameters or trailing dots."""
    return segment.partition(";")[0].rstrip(". ").lower()


@dataclass(frozen=True, slots=True)
class HubPass:
    """What the hub receives for one request or socket: the fleet team it is counted to (None: a hub user's
    own login, or an admin), and the ``Authorization`` it sees (None: no Authorization at all)."""

    team: str | None
    authorization: str | None


def hub_pass(
    *,
    hub: HubOptions,
    authorization: str | None,
    fleet_team: str | None,
    admin: bool,
    data_path: bool,
    team_tokens: Mapping[str, str],
    hub_authorization: str | None = None,
) -> HubPass:
    """The ``Authorization`` the hub receives for a request to one of its paths, or a :class:`FleetError`.

    ``fleet_team``: the team of the request's fleet token (None: no fleet token); ``admin``: the bearer is an
    admin token; ``team_tokens``: each team's hub user token (FLEET_HUB_TEAM_TOKENS); ``hub_authorization``: the
    request's ``X-Fleet-Hub-Authorization`` (None: not sent).

    - A fleet token: its team must be a hub team. ``identity = "team"``: it becomes the team's hub user token;
      ``"user"``: it is the developer's own hub token (registered as their fleet token) and passes as it is.
    - An admin token: removed (the hub does not know it); the admin reaches the hub as nobody, which is what
      creating its owner needs, or, with ``X-Fleet-Hub-Authorization``, as the hub user whose token that header
      carries (the owner's login, to invite the team users): the admin token proves who may say so.
    - ``X-Fleet-Hub-Authorization`` from anyone but an admin: refused (403), whatever else the request carries.
    - Anything else (no token, a hub login JWT, a hub user's own token): passed as it is to the UI's pages,
      and to its data paths only once ``ui_open`` (until the hub has an owner, a stranger's ``register`` would
      make them its owner).
    """
    if hub_authorization is not None and not admin:
        raise FleetError(
            403, "hub-header-admin-only",
            f"{HUB_AUTHORIZATION_HEADER} is for fleet admins (fleet hub bootstrap), with an admin token in "
            "Authorization; send your own token in Authorization alone",
            team=fleet_team,
        )  # fmt: skip
    if fleet_team is not None:
        if not hub.serves(fleet_team):
            raise FleetError(
                403, "hub-not-for-team",
                f"team {fleet_team!r} is not offered the hub (chat panel, Answer Engine); ask your fleet admin to "
                "add it to [hub] teams",
                team=fleet_team,
            )  # fmt: skip
        if hub.identity == "user":
            return HubPass(fleet_team, authorization)
        hub_token = team_tokens.get(fleet_team)
        if not hub_token:
            raise FleetError(
                503, "hub-user-missing",
                f"team {fleet_team!r} has no hub user yet; the fleet admin adds its token to {TEAM_TOKENS_ENV} "
                "(the hub's Secret, or the environment of `fleet up`) and restarts the router (docs/DEPLOY.md, "
                "The hub)",
                team=fleet_team,
            )  # fmt: skip
        return HubPass(fleet_team, "Bearer " + hub_token)
    if admin:
        return HubPass(None, hub_authorization or None)
    if data_path and not hub.ui_open:
        raise FleetError(
            401, "hub-closed",
            "the hub's data answers fleet tokens only until it has an owner; use your fleet token (your IDE's), or "
            "ask your fleet admin to create the owner (docs/DEPLOY.md, The hub) and set [hub] ui_open = true",
        )  # fmt: skip
    return HubPass(None, authorization)
