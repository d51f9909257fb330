"""The routing decision: a pure function from a request's identity to a fleet entry.

Inputs are the request's ``Authorization``, ``X-Tabby-Team`` and ``X-Tabby-Model`` headers and its
raw path (which may start with ``/teams/<team>/`` and/or ``/models/<entry>/``). The answer is a
:class:`Route` or a raised :class:`FleetError`. No I/O; every lookup table is built once, at settings
load, by :class:`RoutingTable`.

Team: the token's team (sha256 match) when any team has tokens, else the team header or path.
Entry: model header > model path > (for chat) the team's chat entry (:func:`resolve_chat_entry`) >
the team's entry > ``router.default_entry``.

:meth:`RoutingTable.whoami` explains the same decision to a developer (``GET /fleet/whoami``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from fleet.errors import FleetError
from fleet.settings import FleetSettings, Team
from fleet.tokens import TokenGrant, token_digest

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
CHAT_ENTRY = "chat-entry"  # a chat path: the team's chat entry (resolve_chat_entry)
EXPLICIT = (MODEL_HEADER, MODEL_PATH)

# What a Tabby path asks for, where the router treats it differently (Route.kind; None for the rest).
HEALTH = "health"  # the IDE's connection check: no gate slot, no team limit; chat_model advertised
SERVER_SETTING = "server-setting"  # fetched on connect: no gate slot, no team limit
CHAT = "chat"  # to the team's chat entry; refused (501) where there is no chat model
PATH_KINDS = {
    "/v1/health": HEALTH,
    "/v1beta/server_setting": SERVER_SETTING,
    "/v1/chat/completions": CHAT,
    "/v1beta/chat/completions": CHAT,
}
WHOAMI_PATH = "/fleet/whoami"  # also under the routing prefixes: <endpoint>/fleet/whoami
PATH_HELP = "/v1/..., /teams/<team>/v1/..., /models/<entry>/v1/... or /teams/<team>/models/<entry>/v1/..."
WHOAMI_HINT = "GET <your endpoint>/fleet/whoami (with your token) shows what your requests select"


# How a team's chat entry was chosen (resolve_chat_entry), as /fleet/whoami reports it.
CHAT_FROM_CHAT_ENTRY = "team-chat-entry"  # the team's chat_entry
CHAT_FROM_ENTRY = "entry"  # the team's entry (else router.default_entry, or the only entry) has a chat_model
CHAT_FROM_FIRST_ALLOWED = "first-allowed-with-chat"  # the first of the team's allowed entries with a chat_model
CHAT_FROM_NONE = "none"  # no entry the team may use has a chat_model


def resolve_chat_entry(settings: FleetSettings, team: Team | None) -> tuple[str | None, str]:
    """Where a team's chat goes when the request names no entry: (entry or None, how it was chosen).

    The team's ``chat_entry``; else its entry (else ``router.default_entry``, or the only entry) when
    that has a ``chat_model``; else the first of its ``allowed_entries`` (in their order; all entries,
    in settings order, when it has none) that has one; else None: the team has no chat. ``team=None``
    (a request without a team) follows the same rules with every entry allowed.
    """
    if team is not None and team.chat_entry is not None:
        return team.chat_entry, CHAT_FROM_CHAT_ENTRY
    chat_models = {entry.name: entry.chat_model for entry in settings.entries}
    only = settings.entries[0].name if len(settings.entries) == 1 else None
    entry = (team.entry if team is not None else None) or settings.router.default_entry or only
    if entry is not None and chat_models.get(entry):
        return entry, CHAT_FROM_ENTRY
    allowed = team.allowed_entries if team is not None and team.allowed_entries else tuple(chat_models)
    for name in allowed:
        if chat_models.get(name):
            return name, CHAT_FROM_FIRST_ALLOWED
    return None, CHAT_FROM_NONE


class Route(NamedTuple):  # a tuple: built per request, and a frozen dataclass costs 3x as much to build
    entry: str
    team: str | None
    reason: str
    upstream_path: str  # the raw path with the routing prefixes removed, query not included
    kind: str | None = None  # HEALTH, SERVER_SETTING, CHAT or None (PATH_KINDS)
    user: str | None = None  # who Tabby's event log names (X-Tabby-User): "<team>/<token label>" or "<team>"


@dataclass(frozen=True, slots=True)
class ChatAdvert:
    """What a health answer should say about chat, when the team's chat entry is not the entry that
    answers health: the chat entry's model (the IDE enables chat only when health names one)."""

    chat_model: str
    entry: str
    webserver: bool = False  # a hub team: health also says webserver: true, so the IDE offers the chat panel


class _PathParts(NamedTuple):
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
        self.tokens_required = settings.auth_mode == "tokens"
        # Every token of the settings by its digest: its team, and who holds it ("<team>/<label>").
        self.settings_tokens: dict[bytes, TokenGrant] = {
            bytes.fromhex(token.sha256): TokenGrant(team.name, f"{team.name}/{token.label}")
            for team in settings.teams
            for token in team.labelled_tokens
        }
        # The tokens a request is checked against: the settings' ones, until a running router's live
        # tokens (router/live_tokens.py) replace the whole mapping in one assignment, with tokens issued on
        # the running fleet added and revoked ones left out. So a revocation costs a request nothing.
        self.tokens: Mapping[bytes, TokenGrant] = self.settings_tokens
        self.revoked: Mapping[bytes, str] = {}  # digest -> holder, to say "revoked" rather than "invalid"
        self.used: dict[bytes, float] = {}  # digest -> last use (unix seconds): one assignment a request
        self.clock: Callable[[], float] = time.time
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
        self.entry_models = {entry.name: entry.model for entry in settings.entries}
        self.chat_models = {entry.name: entry.chat_model for entry in settings.entries if entry.chat_model}
        # Chat and health per team (None: requests without a team), decided once.
        self._chat: dict[str | None, tuple[str | None, str]] = {
            key: resolve_chat_entry(settings, self.teams[key] if key else None) for key in (None, *self.teams)
        }
        self._adverts: dict[str | None, ChatAdvert] = {}
        for key, (chat_entry, _) in self._chat.items():
            team = self.teams[key] if key else None
            completion_entry = (team.entry if team else None) or self.default_entry
            if chat_entry is not None and completion_entry is not None and chat_entry != completion_entry:
                self._adverts[key] = ChatAdvert(self.chat_models[chat_entry], chat_entry)
        # A hub team's health advertises the hub: webserver true and the hub's chat model (VS Code then
        # offers its chat panel, reference/tabby-hub.md §7), whatever entry answers it.
        hub = settings.hub
        self.hub_enabled = hub.enabled
        self.hub_teams = frozenset(name for name in self.teams if hub.serves(name))
        hub_chat = self.chat_models.get(hub.chat_entry) if hub.enabled and hub.chat_entry else None
        if hub_chat is not None and hub.chat_entry is not None:
            for name in self.teams:
                if hub.serves(name):
                    self._adverts[name] = ChatAdvert(hub_chat, hub.chat_entry, webserver=True)

    # -- the decision ---------------------------------------------------------------------------

    def route(
        self,
        path: str,
        authorization: str | None = None,
        team_header: str | None = None,
        model_header: str | None = None,
    ) -> Route:
        parts = _split_path(path)
        token_team, user = self._authenticate(authorization)
        team, team_reason = self._team(token_team, _clean(team_header), parts.team)
        try:
            route = self._route(parts, team, team_reason, _clean(model_header))
        except FleetError as error:
            if team is not None:
                error.team = team.name  # for the router's log and metrics
            raise
        if team is not None:
            route = route._replace(user=user or team.name)
        return route

    def _route(self, parts: _PathParts, team: Team | None, team_reason: str, model_header: str | None) -> Route:
        kind = PATH_KINDS.get(parts.rest)
        if model_header:
            entry, reason = self._select(model_header, team, "X-Tabby-Model header"), MODEL_HEADER
        elif parts.model:
            entry, reason = self._select(parts.model, team, "/models/<entry> path"), MODEL_PATH
        elif kind is CHAT:
            chat_entry = self._chat[team.name if team else None][0]
            if chat_entry is None:
                raise self._no_chat(team, None)
            return Route(chat_entry, team.name if team else None, CHAT_ENTRY, parts.rest, kind)
        elif team is not None and team.entry is not None:
            entry, reason = team.entry, team_reason
        elif self.default_entry is not None:
            entry, reason = self.default_entry, DEFAULT_ENTRY
        else:
            raise FleetError(
                400,
                "no-entry-selected",
                "nothing selects a fleet entry for this request: send an X-Tabby-Model header, use a "
                "/models/<entry>/ or /teams/<team>/ path prefix, or ask your fleet admin to set "
                "router.default_entry",
                self._allowed(team),
            )
        if team is not None and team.allowed_entries and entry not in team.allowed_entries:
            # 404, not 403: tabby-agent takes 401 and 403 for a bad token and asks for a new one
            # (docs/ERRORS.md); the token is fine, the entry is the thing to fix.
            raise FleetError(
                404,
                "entry-not-allowed",
                f"team {team.name!r} may not use entry {entry!r}; name one of its allowed entries in "
                f"X-Tabby-Model or /models/<entry>/, or name none to use the team's own; {WHOAMI_HINT}",
                team.allowed_entries,
                entry=entry,
            )
        if kind is CHAT and entry not in self.chat_models:
            raise self._no_chat(team, entry)
        return Route(entry, team.name if team else None, reason, parts.rest, kind)

    def health_advert(self, route: Route) -> ChatAdvert | None:
        """For a health answer: the chat model to advertise when the route's chat goes elsewhere."""
        advert = self._adverts.get(route.team)
        if route.reason in EXPLICIT and (advert is None or not advert.webserver):
            return None  # a named entry: its chat is its own, and its health says so
        return advert

    def fleet_grant(self, authorization: str | None) -> TokenGrant | None:
        """The grant of a bearer that is a fleet team token, in either auth mode; None for no bearer or one the
        fleet does not know (a hub login, a hub user's own token). A revoked or expired fleet token is refused
        as :meth:`route` refuses it: the hub never receives a fleet token unmapped."""
        token = _bearer_token(authorization)
        if token is None:
            return None
        digest = token_digest(token)
        grant = self.tokens.get(digest)
        if grant is None:
            if digest in self.revoked:
                self._authenticate_required(authorization)
            return None
        now = self.clock()
        if grant.expires is not None and now >= grant.expires:
            self._authenticate_required(authorization)
        self.used[digest] = now
        return grant

    def chat_entry(self, team: str | None) -> tuple[str | None, str]:
        """The team's chat entry and how it was chosen (resolve_chat_entry)."""
        return self._chat[team]

    # -- the steps --------------------------------------------------------------------------------

    def _authenticate(self, authorization: str | None) -> tuple[str | None, str | None]:
        """The token's team and its holder ("<team>/<label>"), when tokens are in use; else (None, None)."""
        if not self.tokens_required:
            return None, None
        return self._authenticate_required(authorization)

    def _authenticate_required(self, authorization: str | None) -> tuple[str, str]:
        token = _bearer_token(authorization)
        if token is None:
            raise FleetError(
                401,
                "missing-token",
                "this fleet requires a team token: send 'Authorization: Bearer <token>' (in tabby-agent's "
                'config.toml: [server] token = "<token>"); ask your fleet admin for one',
            )
        digest = token_digest(token)
        grant = self.tokens.get(digest)  # one dict lookup: why that leaks nothing, fleet.tokens.find_token
        if grant is None:
            holder = self.revoked.get(digest)
            if holder is not None:
                raise FleetError(
                    401,
                    "token-revoked",
                    f"this token ({holder}) was revoked by your fleet admin; ask them for a new one "
                    "(`fleet token new`) and put it in [server] token of tabby-agent's config.toml",
                )
            raise FleetError(
                401,
                "invalid-token",
                "the bearer token matches no team; check [server] token in tabby-agent's config.toml, "
                "or ask your fleet admin for a new one",
            )
        now = self.clock()
        if grant.expires is not None and now >= grant.expires:
            raise FleetError(
                401,
                "token-expired",
                f"this token ({grant.user}) has expired; ask your fleet admin for a new one (`fleet token new "
                f"--team {grant.team} --label LABEL --url <router>`) and put it in [server] token of "
                "tabby-agent's config.toml",
                team=grant.team,
            )
        self.used[digest] = now
        return grant.team, grant.user

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
                # 404 like entry-not-allowed: a 401/403 would have the IDE ask for another token.
                raise FleetError(
                    404,
                    "team-mismatch",
                    f"your token belongs to team {token_team!r}, so it cannot act for team {claimed!r}; "
                    f"drop the team header or path (the token names the team), or use that team's token",
                    team=token_team,
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

    def _no_chat(self, team: Team | None, entry: str | None) -> FleetError:
        usable = tuple(name for name in self.chat_models if name in self._allowed(team))
        if entry is not None:
            where = "X-Tabby-Model or /models/<entry>/"
            advice = f"send chat to one that has ({where}: {', '.join(usable)})" if usable else (
                "ask your fleet admin to set chat_model on an entry you may use"
            )  # fmt: skip
            message = f"entry {entry!r} has no chat model; {advice}"
        else:
            who = f"team {team.name!r}" if team is not None else "a request without a team"
            message = (
                f"{who} has no chat: no entry it may use has a chat model; ask your fleet admin to set "
                f"chat_model on one of its entries (fleet check warns about this)"
            )
        return FleetError(501, "no-chat-model", message, usable, entry=entry)

    def _allowed(self, team: Team | None) -> tuple[str, ...]:
        if team is not None and team.allowed_entries:
            return team.allowed_entries
        return self.entry_names

    # -- the explanation ----------------------------------------------------------------------------

    def whoami(
        self,
        path: str,
        authorization: str | None = None,
        team_header: str | None = None,
        model_header: str | None = None,
    ) -> dict[str, Any]:
        """What a developer's requests select, and why: ``path`` is ``[/teams/<t>][/models/<e>]/fleet/whoami``.

        Refusals are the ones the proxy gives a completion with the same token, headers and prefixes.
        Only the caller's own team is described.
        """
        prefix = path.removesuffix(WHOAMI_PATH)
        if _split_path(prefix + "/v1/completions").rest != "/v1/completions":  # only routing prefixes before it
            raise FleetError(404, "unknown-path", f"{path!r} is not served here; use <endpoint>{WHOAMI_PATH}")
        route = self.route(prefix + "/v1/completions", authorization, team_header, model_header)
        team = self.teams[route.team] if route.team else None
        team_from = None
        if team is not None:
            team_from = TEAM_TOKEN if self.tokens_required else (TEAM_HEADER if _clean(team_header) else TEAM_PATH)
        answer: dict[str, Any] = {
            "team": route.team,
            "team_from": team_from,
            "entry": route.entry,
            "model": self.entry_models[route.entry],
            "entry_from": route.reason,
            "allowed_entries": list(self._allowed(team)),
            "allowed_from": "team" if team is not None and team.allowed_entries else "all-entries",
        }
        # Chat: named entry (header or path), else the team's chat entry; refused where there is none.
        chat_from = route.reason if route.reason in EXPLICIT else self._chat[route.team][1]
        try:
            chat_entry: str | None = self.route(
                prefix + "/v1/chat/completions", authorization, team_header, model_header
            ).entry
            chat_error = None
        except FleetError as error:  # no-chat-model: everything else was checked by the route above
            chat_entry, chat_error = None, error.payload()["error"]
        answer |= {
            "chat_entry": chat_entry,
            "chat_model": self.chat_models.get(chat_entry) if chat_entry else None,
            "chat_from": chat_from,
            "chat_error": chat_error,
        }
        if self.hub_enabled:  # whether the IDE offers this team the chat panel (its health says webserver: true)
            answer["chat_panel"] = route.team is not None and route.team in self.hub_teams
        answer["explain"] = _explain(answer)
        return answer


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


_TEAM_FROM = {
    TEAM_TOKEN: "Your token belongs to team {team!r}",
    TEAM_HEADER: "The X-Tabby-Team header names team {team!r}",
    TEAM_PATH: "The /teams/{team}/ path names team {team!r}",
}
_ENTRY_FROM = {
    MODEL_HEADER: "the X-Tabby-Model header names it",
    MODEL_PATH: "the /models/<entry>/ path names it",
    TEAM_TOKEN: "it is your team's entry",
    TEAM_HEADER: "it is your team's entry",
    TEAM_PATH: "it is your team's entry",
    DEFAULT_ENTRY: "it is the fleet's default entry",
}
_CHAT_FROM = {
    MODEL_HEADER: "the X-Tabby-Model header names the entry",
    MODEL_PATH: "the /models/<entry>/ path names the entry",
    CHAT_FROM_CHAT_ENTRY: "it is your team's chat_entry",
    CHAT_FROM_ENTRY: "your entry has a chat model",
    CHAT_FROM_FIRST_ALLOWED: "your entry has no chat model; it is the first entry you may use that has one",
}


def _explain(answer: dict[str, Any]) -> list[str]:
    """The whoami answer as sentences a developer reads."""
    lines = []
    team = answer["team"]
    lines.append(_TEAM_FROM[answer["team_from"]].format(team=team) + "." if team else "No team: none is named.")
    why = _ENTRY_FROM[answer["entry_from"]]
    lines.append(f"Completions go to entry {answer['entry']!r} ({answer['model']}): {why}.")
    if answer["allowed_from"] == "team":
        lines.append(f"Your team may use: {', '.join(answer['allowed_entries'])}.")
    else:
        lines.append(f"Every entry may be used: {', '.join(answer['allowed_entries'])}.")
    if answer["chat_entry"]:
        lines.append(
            f"Chat goes to entry {answer['chat_entry']!r} ({answer['chat_model']}): {_CHAT_FROM[answer['chat_from']]}."
        )
    else:
        lines.append(f"No chat: {answer['chat_error']['message']}.")
    if answer.get("chat_panel") is True:
        lines.append("Your IDE is offered the chat panel (the fleet's hub: Tabby's chat and Answer Engine).")
    elif answer.get("chat_panel") is False:
        lines.append("No chat panel: your team is not among [hub] teams; ask your fleet admin.")
    return lines


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
