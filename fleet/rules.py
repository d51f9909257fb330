"""The rules across fields of the settings: each broken one as a line of advice, all of them at once.

Names are unique and unambiguous (entries, their Modal class names, aliases, teams); references
name entries that exist (router.default_entry, a team's entry, allowed_entries and chat_entry, an
entry's fallback, without a cycle); a token belongs to one holder; router.auth agrees with the teams'
tokens (an open fleet may hold tokens while it is moved to tokens: :func:`auth_move_advice`).
:func:`cross_problems` lists them; :mod:`fleet.loading` runs it on every load, and :func:`checked` is
the entry point for settings built by hand. :func:`settings_warnings`: valid, but probably not what
the admin meant.
"""

from __future__ import annotations

from fleet.hub import COMMUNITY_SEATS, ROUTER_TOKEN_ENV, SUPPORTED_TABBY
from fleet.routing import resolve_chat_entry
from fleet.settings import Entry, FleetSettings, Team
from fleet.tokens import TokenHolder


class RuleError(ValueError):
    """Settings break rules across fields; ``problems`` holds one line of advice per broken rule."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def checked(settings: FleetSettings) -> FleetSettings:
    """``settings`` when it keeps every rule across fields, else a :class:`RuleError` listing every problem."""
    found = cross_problems(settings)
    if found:
        raise RuleError(found)
    return settings


def cross_problems(settings: FleetSettings, *, check_auth: bool = True) -> list[str]:
    """Every rule across fields: references between entries and teams, tokens and (with ``check_auth``)
    the auth mode."""
    found = reference_problems(settings) + token_problems(settings) + hub_problems(settings)
    return found + auth_problems(settings) if check_auth else found


def reference_problems(settings: FleetSettings) -> list[str]:
    """Names and aliases unambiguous, and every reference between entries and teams to an entry that exists
    (default entry, team entries, allowed and chat entries, fallbacks), each broken one as advice."""
    problems: list[str] = []
    entry_names = [e.name for e in settings.entries]
    known = set(entry_names)
    choices = ", ".join(entry_names)

    seen: dict[str, int] = {}
    for index, name in enumerate(entry_names):
        if name in seen:
            problems.append(
                f"entries[{index}].name: duplicate entry name {name!r} (also the name of entries[{seen[name]}], "
                f"counting from 0); give each entry a unique name"
            )
        seen.setdefault(name, index)

    class_names: dict[str, str] = {}
    for entry in settings.entries:
        key = entry.class_name.lower()  # Modal's web URLs are lower-case, so compare that way
        if key in class_names and class_names[key] != entry.name:
            problems.append(
                f'entries["{entry.name}"].name: entries {class_names[key]!r} and {entry.name!r} would get the '
                f"same Modal class name {entry.class_name!r}; rename one of them"
            )
        class_names.setdefault(key, entry.name)

    # Names and aliases select an entry in the X-Tabby-Model header: they must be unambiguous.
    selectors: dict[str, str] = {name: name for name in entry_names}
    for entry in settings.entries:
        for alias in entry.aliases:
            owner = selectors.get(alias)
            if owner is not None and owner != entry.name:
                problems.append(
                    f'entries["{entry.name}"].aliases: alias {alias!r} already selects entry {owner!r}; '
                    f"pick another alias"
                )
            elif owner == entry.name and alias != entry.name:
                problems.append(f'entries["{entry.name}"].aliases: alias {alias!r} is listed twice; list it once')
            selectors[alias] = entry.name
        for other in settings.entries:
            if other.name != entry.name and other.model.lower() in entry.aliases:
                problems.append(
                    f'entries["{entry.name}"].aliases: alias {other.model.lower()!r} is the model id of entry '
                    f"{other.name!r}; pick another alias"
                )

    default = settings.router.default_entry
    if default is not None and default not in known:
        problems.append(f"router.default_entry: unknown entry {default!r}; choose one of: {choices}")

    team_seen: set[str] = set()
    for team in settings.teams:
        where = f'teams["{team.name}"]'
        if team.name in team_seen:
            problems.append(f"{where}.name: duplicate team name {team.name!r}; give each team a unique name")
        team_seen.add(team.name)
        for allowed in team.allowed_entries:
            if allowed not in known:
                problems.append(f"{where}.allowed_entries: unknown entry {allowed!r}; choose from: {choices}")
        if team.entry is not None:
            if team.entry not in known:
                problems.append(f"{where}.entry: unknown entry {team.entry!r}; choose one of: {choices}")
            elif team.allowed_entries and team.entry not in team.allowed_entries:
                problems.append(
                    f"{where}.entry: {team.entry!r} is not in its allowed_entries "
                    f"({', '.join(team.allowed_entries)}); add it there or pick one of those"
                )
        elif default is not None and default in known and team.allowed_entries and default not in team.allowed_entries:
            problems.append(
                f"{where}: has no entry and router.default_entry {default!r} is outside its "
                f"allowed_entries ({', '.join(team.allowed_entries)}); set the team's entry"
            )
        problems += _chat_entry_problems(settings, team, where, known)
    problems += _fallback_problems(settings, choices)
    return problems


def _fallback_problems(settings: FleetSettings, choices: str) -> list[str]:
    """An entry's fallback: another entry that exists, no cycle; chat fallback needs a chat model there."""
    problems: list[str] = []
    entries = {entry.name: entry for entry in settings.entries}
    for entry in settings.entries:
        where = f'entries["{entry.name}"]'
        target = entry.fallback
        if target is None:
            if entry.fallback_chat:
                problems.append(f"{where}.fallback_chat: set without a fallback; set fallback, or drop fallback_chat")
            continue
        if target == entry.name:
            problems.append(f"{where}.fallback: an entry cannot fall back to itself; name another entry: {choices}")
        elif target not in entries:
            problems.append(f"{where}.fallback: unknown entry {target!r}; choose one of: {choices}")
        elif _fallback_cycle(entries, entry.name):
            cycle = " -> ".join(_fallback_cycle(entries, entry.name))
            problems.append(f"{where}.fallback: fallbacks form a cycle ({cycle}); end the chain at an entry without")
        elif entry.fallback_chat and not entries[target].chat_model:
            problems.append(
                f"{where}.fallback_chat: the fallback {target!r} has no chat_model, so it cannot answer chat; "
                f'set entries["{target}"].chat_model or drop fallback_chat'
            )
    return problems


def _fallback_cycle(entries: dict[str, Entry], start: str) -> list[str]:
    """The chain of fallbacks from ``start`` back to ``start``, or [] when it ends (or leaves the fleet)."""
    chain = [start]
    current = entries[start].fallback
    while current is not None and current in entries and current not in chain:
        chain.append(current)
        current = entries[current].fallback
    return [*chain, start] if current == start else []


def _chat_entry_problems(settings: FleetSettings, team: Team, where: str, known: set[str]) -> list[str]:
    chat_entry = team.chat_entry
    if chat_entry is None:
        return []
    with_chat = [e.name for e in settings.entries if e.chat_model]
    usable = [name for name in with_chat if not team.allowed_entries or name in team.allowed_entries]
    pick = f"choose one of: {', '.join(usable)}" if usable else "(no entry it may use has a chat_model yet)"
    if chat_entry not in known:
        return [f"{where}.chat_entry: unknown entry {chat_entry!r}; {pick}"]
    if team.allowed_entries and chat_entry not in team.allowed_entries:
        return [
            f"{where}.chat_entry: {chat_entry!r} is not in its allowed_entries ({', '.join(team.allowed_entries)}); "
            f"add it there{', or ' + pick if usable else ''}"
        ]
    if chat_entry not in with_chat:
        return [
            f"{where}.chat_entry: entry {chat_entry!r} has no chat_model, so it cannot answer chat; set "
            f'entries["{chat_entry}"].chat_model{", or " + pick if usable else ""}'
        ]
    return []


def settings_warnings(settings: FleetSettings, *, auth: bool = True) -> list[str]:
    """Valid but probably unintended: one line of advice each (`fleet check` prints them); with ``auth``,
    what is left of a move to tokens (the token commands, which make that move, say it themselves)."""
    move = auth_move_advice(settings) if auth else None
    warnings = [f"teams: {move}"] if move else []
    for team in settings.teams:
        if resolve_chat_entry(settings, team)[0] is None:
            scope = f"its allowed_entries ({', '.join(team.allowed_entries)})" if team.allowed_entries else "the fleet"
            warnings.append(
                f'teams["{team.name}"]: no chat: no entry of {scope} has a chat_model, so its IDEs offer no chat '
                f"and chat requests get 501 no-chat-model; set chat_model on one of them, or allow the team an "
                f"entry that has one"
            )
    for entry in settings.entries:
        if entry.url is None and settings.prices.entry_hourly(entry.gpus) is None:
            gpu = entry.gpu_spec.kind
            warnings.append(
                f'entries["{entry.name}"]: no price for GPU {gpu}; add it under [prices] gpu_hour to see its cost'
            )
    return warnings


def token_problems(settings: FleetSettings) -> list[str]:
    """Labels unique within a team (and among admin tokens); a hash belongs to one holder only."""
    problems: list[str] = []
    owner_of: dict[str, str] = {}
    holders: list[tuple[TokenHolder, str, str]] = [
        (team, f'teams["{team.name}"]', f"team {team.name!r}") for team in settings.teams
    ]
    holders.append((settings.router, "router", "the admin tokens"))
    for holder, where, who in holders:
        labels: set[str] = set()
        for index, token in enumerate(holder.held_tokens()):
            here = f"{where}.{holder.field_of(index)}"
            if token.label in labels:
                problems.append(
                    f"{here}: label {token.label!r} is used twice in {who}; give each token its own label "
                    f"(token-1, token-2, ... name the hashes of the legacy {holder.LEGACY_FIELD} list)"
                )
            labels.add(token.label)
            owner = owner_of.get(token.sha256)
            if owner is not None:
                problems.append(
                    f"{here}: the hash {token.sha256[:12]}... of {token.label!r} is also a token of {owner}; "
                    f"a token belongs to one holder, so issue a new one with `fleet token new`"
                )
            else:
                owner_of[token.sha256] = f"{who} (label {token.label!r})"
    return problems


def auth_problems(settings: FleetSettings) -> list[str]:
    """router.auth against the teams' tokens: a team nobody can use, or a mix whose mode nobody chose. Each
    names only the steps still missing. An open fleet whose teams have tokens loads (it is being moved to
    tokens): :func:`auth_move_advice` says what is left, as a warning."""
    with_tokens = [team.name for team in settings.teams if team.token_digests]
    without = [team.name for team in settings.teams if not team.token_digests]
    mode = settings.router.auth
    issue = "fleet token new --team {} --label LABEL --write"
    if mode == "tokens":
        if not settings.teams:
            return [
                'router.auth: "tokens", but there are no teams, so every request would be refused (401); add a '
                '[[teams]] table and give it a token (fleet token new), or set router.auth = "open"'
            ]
        every = " (or `fleet token enable`: a token for every team without one)" if len(without) > 1 else ""
        return [
            f'teams["{name}"].tokens: router.auth is "tokens" but team {name!r} has no token, so nobody can '
            f"use it (401); give it one ({issue.format(name)}){every}, or remove the team"
            for name in without
        ]
    if mode is None and with_tokens and without:
        return [
            f"teams: some have tokens ({_quoted(with_tokens)}) and some none ({_quoted(without)}), and router.auth "
            f"is unset. With tokens in use every request needs one, so {_quoted(without)} would be locked out "
            f"(401). To move to tokens: `fleet token enable` (a token for {_quoted(without)} and router.auth = "
            f'"tokens", in one write); to stay open while you issue them one by one, set router.auth = "open" in '
            f"[router]"
        ]
    return []


def auth_move_advice(settings: FleetSettings) -> str | None:
    """An open fleet (router.auth = "open") whose teams have tokens is being moved to tokens: what is left, or
    None when no team has a token (or the fleet is not open by choice)."""
    if settings.router.auth != "open":
        return None
    with_tokens = [team.name for team in settings.teams if team.token_digests]
    without = [team.name for team in settings.teams if not team.token_digests]
    if not with_tokens:
        return None
    if not without:
        return (
            'router.auth is "open", so tokens are not checked yet, though every team has a token: the one step '
            'left is the mode, `fleet token enable` (or set router.auth = "tokens" in [router])'
        )
    return (
        f'router.auth is "open", so tokens are not checked yet (anyone may act as a team by naming it); still '
        f"without a token: {_quoted(without)}. `fleet token enable` gives {'it' if len(without) == 1 else 'them'} "
        f'one and sets router.auth = "tokens" in one write (or one by one: '
        f"{'; '.join(f'fleet token new --team {name} --label LABEL --write' for name in without)})"
    )


def _quoted(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def hub_problems(settings: FleetSettings) -> list[str]:
    """The rules of ``[hub]`` that read the rest of the settings, every broken one as advice."""
    hub = settings.hub
    if not hub.enabled:
        return []
    problems: list[str] = []
    teams = {team.name: team for team in settings.teams}
    entries = {entry.name: entry for entry in settings.entries}
    unknown = [name for name in hub.teams if name not in teams]
    if unknown:
        problems.append(
            f"hub.teams names {', '.join(map(repr, unknown))}, not a team; choose from {', '.join(teams) or '(none)'}"
        )
    if hub.chat_entry is None:
        with_chat = [name for name, entry in entries.items() if entry.chat_model]
        problems.append(
            "hub.chat_entry is not set; name the entry the hub's chat uses"
            + (f" (entries with a chat_model: {', '.join(with_chat)})" if with_chat else ", and give it a chat_model")
        )
    elif hub.chat_entry not in entries:
        problems.append(f"hub.chat_entry {hub.chat_entry!r} is not an entry; choose from {', '.join(entries)}")
    elif not entries[hub.chat_entry].chat_model:
        problems.append(
            f"hub.chat_entry {hub.chat_entry!r} has no chat_model; give that entry a chat_model or choose one that has"
        )
    problems += _router_team_problems(settings)
    if "hub" in entries and hub.url is None:
        problems.append("entry 'hub' would share its local data folder (data_dir/hub) with the hub's; rename the entry")
    if hub.identity == "team" and settings.auth_mode != "tokens":
        problems.append(
            'hub.identity = "team" needs router.auth = "tokens": the chat panel sends only the IDE\'s token, so the '
            "team can only come from it (run `fleet token enable`)"
        )
    if hub.url is None and not SUPPORTED_TABBY.search(settings.modal.tabby_image):
        problems.append(
            f"hub needs Tabby 0.32.x (its web paths and WebSocket auth were read there); modal.tabby_image is "
            f"{settings.modal.tabby_image!r}: use tabbyml/tabby:0.32.0"
        )
    if hub.identity == "team":
        seats = 1 + len(hub.teams or teams)
        if seats > hub.licence_seats:
            problems.append(
                f"hub: {len(hub.teams or teams)} hub teams and the owner need {seats} seats; the licence has "
                f"{hub.licence_seats} (hub.licence_seats; community: {COMMUNITY_SEATS}, Team: 50). List fewer "
                "hub.teams, or set hub.licence_seats to the seats your Tabby subscription has"
            )
    return problems


def _router_team_problems(settings: FleetSettings) -> list[str]:
    hub = settings.hub
    if hub.router_team is None:
        if settings.auth_mode == "tokens":
            return ["hub.router_team is not set; name the fleet team the hub calls the router as (give it a token)"]
        return []
    team = next((t for t in settings.teams if t.name == hub.router_team), None)
    if team is None:
        return [f"hub.router_team {hub.router_team!r} is not a team; add a [[teams]] table for it"]
    problems = []
    if settings.auth_mode == "tokens" and not team.token_digests:
        problems.append(
            f"hub.router_team {team.name!r} has no token; run `fleet token new --team {team.name} --label hub --write` "
            f"and put the token in the hub's Secret as {ROUTER_TOKEN_ENV}"
        )
    if hub.chat_entry and team.allowed_entries and hub.chat_entry not in team.allowed_entries:
        problems.append(
            f"hub.router_team {team.name!r} may not use hub.chat_entry {hub.chat_entry!r}; add it to the team's "
            "allowed_entries"
        )
    return problems
