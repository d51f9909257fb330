"""The routing decision: a pure function from a request's identity to a fleet entry.

Inputs are the request's ``Authorization``, ``X-Tabby-Team`` and ``X-Tabby-Model`` headers and its
raw path (which may start with ``/teams/<team>/`` and/or ``/models/<entry>/``). The answer is a
:class:`Route` or a raised :class:`FleetError`. No I/O; every lookup table is built once, at settings
load, by :class:`RoutingTable`.

Team: the token's team (sha256 match) when any team has tokens, else the team header or path.
Entry: model header > model path > the team's entry > ``router.default_entry``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fleet.errors import FleetError
from fleet.settings import FleetSettings, Team

TABBY_API_PREFIXES = ("/v1/", "/v1beta/")
TEAM_PREFIX = "/teams/"
MODEL_PREFIX = "/models/"

# Why an entry was chosen, sent back as X-Fleet-Route.
MODEL_HEADER = "model-header"
MODEL_PATH = "model-path"
TEAM_TOKEN = "team-token"
TEAM_HEADER = "team-header"
TEAM_PATH = "team-path"
DEFAULT_ENTRY = "default-entry"

PATH_HELP = "/v1/..., /teams/<team>/v1/..., /models/<entry>/v1/... or /teams/<team>/models/<entry>/v1/..."


@dataclass(frozen=True, slots=True)
class Route:
    entry: str
    team: str | None
    reason: str
    upstream_path: str  # the raw path with the routing prefixes removed, query not included


@dataclass(frozen=True, slots=True)
class _PathParts:
    team: str | None
    model: str | None
    rest: str


class RoutingTable:
    """Lookup tables derived from settings, and the routing function over them."""

    def __init__(self, settings: FleetSettings) -> None:
        self.entry_names: tuple[str, ...] = tuple(e.name for e in settings.entries)
        self.teams: dict[str, Team] = {t.name: t for t in settings.teams}
        # A fleet of one entry needs no default_entry: that entry is the only possible answer.
        only = self.entry_names[0] if len(self.entry_names) == 1 else None
        self.default_entry = settings.router.default_entry or only
        self.tokens_required = settings.any_team_has_tokens
        self._token_teams: tuple[tuple[bytes, str], ...] = tuple(
            (bytes.fromhex(digest), team.name) for team in settings.teams for digest in team.token_sha256
        )
        # X-Tabby-Model accepts an entry's name, one of its aliases, or its model id.
        selectors: dict[str, str] = {}
        model_owners: dict[str, list[str]] = {}
        for entry in settings.entries:
            model_owners.setdefault(entry.model.lower(), []).append(entry.name)
        for model_id, owners in model_owners.items():
            if len(owners) == 1:
                selectors[model_id] = owners[0]
        self.ambiguous_models = {m: tuple(o) for m, o in model_owners.items() if len(o) > 1}
        for entry in settings.entries:
            for alias in entry.aliases:
                selectors[alias] = entry.name
            selectors[entry.name] = entry.name
        self._selectors = selectors

    # -- the decision ---------------------------------------------------------------------------

    def route(
        self,
        path: str,
        authorization: str | None = None,
        team_header: str | None = None,
        model_header: str | None = None,
    ) -> Route:
        parts = _split_path(path)
        token_team = self._authenticate(authorization)
        team, team_reason = self._team(token_team, _clean(team_header), parts.team)

        model_header = _clean(model_header)
        if model_header:
            entry, reason = self._select(model_header, team, "X-Tabby-Model header"), MODEL_HEADER
        elif parts.model:
            entry, reason = self._select(parts.model, team, "/models/<entry> path"), MODEL_PATH
        elif team is not None and team.entry is not None:
            entry, reason = team.entry, team_reason
        elif self.default_entry is not None:
            entry, reason = self.default_entry, DEFAULT_ENTRY
        else:
            raise FleetError(
                400,
                "no-entry-selected",
                "nothing selects a fleet entry for this request: send an X-Tabby-Model header, use a "
                "/models/<entry>/ or /teams/<team>/ path prefix, or set router.default_entry",
                self._allowed(team),
            )
        if team is not None and team.allowed_entries and entry not in team.allowed_entries:
            raise FleetError(
                403,
                "entry-not-allowed",
                f"team {team.name!r} may not use entry {entry!r}; use one of its allowed entries",
                team.allowed_entries,
            )
        return Route(entry, team.name if team else None, reason, parts.rest)

    # -- the steps --------------------------------------------------------------------------------

    def _authenticate(self, authorization: str | None) -> str | None:
        """The token's team, when tokens are in use; None when no team has tokens."""
        if not self.tokens_required:
            return None
        token = _bearer_token(authorization)
        if token is None:
            raise FleetError(
                401,
                "missing-token",
                "this fleet requires a team token: send 'Authorization: Bearer <token>' (in tabby-agent's "
                'config.toml: [server] token = "<token>"); ask your fleet admin for one',
            )
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, team in self._token_teams:  # no early exit: the same work for every token
            if hmac.compare_digest(digest, known):
                found = team
        if found is None:
            raise FleetError(
                401,
                "invalid-token",
                "the bearer token matches no team; check [server] token in tabby-agent's config.toml, "
                "or ask your fleet admin for a new one",
            )
        return found

    def _team(self, token_team: str | None, header_team: str | None, path_team: str | None) -> tuple[Team | None, str]:
        if header_team and path_team and header_team != path_team:
            raise FleetError(
                400,
                "conflicting-team",
                f"the X-Tabby-Team header says {header_team!r} but the path says {path_team!r}; "
                f"send one of them, or make them agree",
            )
        claimed = header_team or path_team
        if token_team is not None:
            if claimed and claimed != token_team:
                raise FleetError(
                    403,
                    "team-mismatch",
                    f"your token belongs to team {token_team!r}, so it cannot act for team {claimed!r}; "
                    f"drop the team header or path, or use that team's token",
                )
            return self.teams[token_team], TEAM_TOKEN
        if not claimed:
            return None, DEFAULT_ENTRY
        team = self.teams.get(claimed)
        if team is None:
            raise FleetError(404, "unknown-team", f"there is no team {claimed!r} in this fleet", tuple(self.teams))
        return team, TEAM_HEADER if header_team else TEAM_PATH

    def _select(self, wanted: str, team: Team | None, source: str) -> str:
        key = wanted.lower()
        entry = self._selectors.get(key)
        if entry is not None:
            return entry
        owners = self.ambiguous_models.get(key)
        if owners:
            raise FleetError(
                400,
                "ambiguous-model",
                f"model {wanted!r} in the {source} is served by several entries; name the entry instead",
                owners,
            )
        raise FleetError(
            404,
            "unknown-model",
            f"no fleet entry is called {wanted!r} (in the {source}); use an entry name, alias or model id",
            self._allowed(team),
        )

    def _allowed(self, team: Team | None) -> tuple[str, ...]:
        if team is not None and team.allowed_entries:
            return team.allowed_entries
        return self.entry_names


def _split_path(path: str) -> _PathParts:
    """Strip /teams/<team>/ and /models/<entry>/ prefixes; the rest must be Tabby's API."""
    team = model = None
    rest = path
    if rest.startswith(TEAM_PREFIX):
        team, rest = _take_segment(rest, len(TEAM_PREFIX), "team")
    if rest.startswith(MODEL_PREFIX):
        model, rest = _take_segment(rest, len(MODEL_PREFIX), "model")
    if not rest.startswith(TABBY_API_PREFIXES):
        raise FleetError(404, "unknown-path", f"{path!r} is not a Tabby API path; use {PATH_HELP}")
    if has_dot_segments(rest):
        raise FleetError(400, "bad-path", f"{path!r} has dot segments or backslashes; send a normalised path")
    return _PathParts(team, model, rest)


def has_dot_segments(path: str) -> bool:
    """True for '.' or '..' segments and backslashes: a backend might normalise them out of /v1."""
    return "/../" in path or "/./" in path or path.endswith(("/..", "/.")) or "\\" in path


def _take_segment(path: str, start: int, what: str) -> tuple[str, str]:
    end = path.find("/", start)
    if end == -1:
        raise FleetError(404, "unknown-path", f"{path!r} names a {what} but no API path; use {PATH_HELP}")
    return path[start:end].lower(), path[end:]


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value or None


def hash_token(token: str) -> str:
    """The token_sha256 value for a token."""
    return hashlib.sha256(token.encode()).hexdigest()
