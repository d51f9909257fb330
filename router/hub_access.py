"""Who may reach the hub, and as whom: the fleet's tokens checked and mapped for the hub's paths.

The HTTP relay (router/hub_relay.py) asks with a request's ``Authorization``; the WebSocket relay
(router/hub_socket.py) with the one inside the socket's first message. Both get a :class:`HubPass` (the team
to count, the ``Authorization`` the hub sees) or a :class:`FleetError` to answer, decided by
:func:`fleet.hub_paths.hub_pass` against the router's current tokens (live ones included).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from fleet.errors import FleetError
from fleet.hub import TEAM_TOKENS_ENV, HubOptions
from fleet.hub_paths import HubPass, hub_pass, is_data_path
from fleet.routing import RoutingTable
from fleet.slugs import slug
from router.admin import AdminAuth


class HubAccess:
    """The hub's gate for one version of the settings (a reload builds a new one with its ProxyState)."""

    def __init__(self, hub: HubOptions, table: RoutingTable, admin: AdminAuth, team_tokens: Mapping[str, str]) -> None:
        self.hub = hub
        self.table = table
        self.admin = admin
        self.team_tokens = team_tokens

    def foreign_bearer(self, authorization: str | None) -> bool:
        """A bearer token that is neither a fleet team token nor an admin token: a hub login or user token."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return False
        try:
            return self.table.fleet_grant(authorization) is None and not self.admin.is_admin_bearer(authorization)
        except FleetError:  # a revoked or expired fleet token: the router answers it, not the hub
            return False

    def authorize(self, path: str, authorization: str | None, hub_authorization: str | None = None) -> HubPass:
        """The team and the ``Authorization`` the hub receives for ``path``; raises FleetError (401, 403, 503).

        ``hub_authorization``: the request's ``X-Fleet-Hub-Authorization`` (an admin's hub token), or None."""
        grant = self.table.fleet_grant(authorization)
        return hub_pass(
            hub=self.hub,
            authorization=authorization,
            fleet_team=grant.team if grant is not None else None,
            admin=grant is None and self.admin.is_admin_bearer(authorization),
            data_path=is_data_path(path),
            team_tokens=self.team_tokens,
            hub_authorization=hub_authorization,
        )


def team_tokens_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each team's hub user token from ``FLEET_HUB_TEAM_TOKENS`` (a JSON object, team -> token; unset: none).

    Raises ValueError with advice when it is not such an object: the router does not start with half of it."""
    raw = (os.environ if environ is None else environ).get(TEAM_TOKENS_ENV, "").strip()
    if not raw:
        return {}
    example = f'{TEAM_TOKENS_ENV}=\'{{"frontend": "auth_..."}}\''
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{TEAM_TOKENS_ENV} is not JSON ({exc}); set it as {example}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{TEAM_TOKENS_ENV} must be a JSON object of team -> hub user token, as {example}")
    tokens: dict[str, str] = {}
    for team, token in value.items():
        if not isinstance(token, str) or not token.strip() or token != token.strip():
            raise ValueError(f"{TEAM_TOKENS_ENV}: team {team!r} has no usable token (a non-empty string); as {example}")
        tokens[slug(str(team), f"{TEAM_TOKENS_ENV} team")] = token
    return tokens
