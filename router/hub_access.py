"""Who may reach the hub, and as whom: the fleet's tokens checked and mapped for the hub's paths.

The HTTP relay (router/hub_relay.py) asks with a request's ``Authorization``; the WebSocket relay
(router/hub_socket.py) with the one inside the socket's first message. Both get a :class:`HubPass` (the team
to count, the ``Authorization`` the hub sees) or a :class:`FleetError` to answer, decided by
:func:`fleet.hub_paths.hub_pass` against the router's current tokens (live ones included).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterator, Mapping

from fleet.errors import FleetError
from fleet.hub import TEAM_TOKENS_ENV, HubOptions
from fleet.hub_paths import HUB_AUTHORIZATION_HEADER, HubPass, hub_pass, is_data_path
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
        admin = grant is None and self.admin.is_admin_bearer(authorization)
        if grant is None and not admin and self._hides_a_fleet_token(authorization):
            raise ODD_AUTHORIZATION
        return hub_pass(
            hub=self.hub,
            authorization=authorization,
            fleet_team=grant.team if grant is not None else None,
            admin=admin,
            data_path=is_data_path(path),
            team_tokens=self.team_tokens,
            hub_authorization=hub_authorization,
        )

    def _hides_a_fleet_token(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` that is not ``Bearer <fleet or admin token>`` still carries one (another
        scheme, a tab, two tokens, HTTP Basic's user or password): the hub would receive it unmapped."""
        for candidate in _credentials(authorization or ""):
            try:
                if self.table.fleet_grant("Bearer " + candidate) is not None:
                    return True
            except FleetError:  # a revoked or expired fleet token is still one
                return True
            if self.admin.is_admin_bearer("Bearer " + candidate):
                return True
        return False


ODD_AUTHORIZATION = FleetError(
    400, "hub-odd-authorization",
    "the Authorization header carries a fleet token in another form than 'Bearer <token>' (another scheme, a tab, "
    f"two tokens, HTTP Basic); send 'Authorization: Bearer <token>' alone (admins: the hub's own token in "
    f"{HUB_AUTHORIZATION_HEADER})",
)  # fmt: skip
_WORDS_CHECKED = 8  # an Authorization is a scheme and a token; a few more words are checked, not a header's worth


def _credentials(authorization: str) -> Iterator[str]:
    """Every string in ``authorization`` that could be a token: its first words (split at white space and commas),
    and the user and password of HTTP Basic."""
    words = [word for word in re.split(r"[\s,]+", authorization) if word][:_WORDS_CHECKED]
    yield from words
    if len(words) >= 2 and words[0].lower() == "basic":
        try:
            user, _, password = base64.b64decode(words[1], validate=True).decode().partition(":")
        except (binascii.Error, ValueError):
            return
        yield from (part for part in (user, password) if part)


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
