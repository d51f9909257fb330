"""What a settings reload changed, as lines for the router's log: entries, teams, tokens, router options.

Tokens are named by their label (never the token; a hash only by its first 8 characters where a
legacy token has no label), so an admin reading the log sees which holder's access came or went.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from fleet.settings import FleetSettings, Team

TOKEN_FIELDS = frozenset({"token_sha256", "tokens"})


def describe_changes(old: FleetSettings, new: FleetSettings) -> list[str]:
    """One line per kind of change; empty when the reload changed nothing."""
    lines: list[str] = []
    old_entries = {entry.name: entry for entry in old.entries}
    new_entries = {entry.name: entry for entry in new.entries}
    lines += _named_changes("entries", old_entries, new_entries, frozenset())
    old_teams = {team.name: team for team in old.teams}
    new_teams = {team.name: team for team in new.teams}
    lines += _named_changes("teams", old_teams, new_teams, TOKEN_FIELDS)
    for name in sorted(old_teams.keys() | new_teams.keys()):
        before = _tokens(old_teams[name]) if name in old_teams else {}
        after = _tokens(new_teams[name]) if name in new_teams else {}
        line = _token_line(f"team {name!r} tokens", before, after)
        if line:
            lines.append(line)
    line = _token_line("admin tokens", _admin_tokens(old), _admin_tokens(new))
    if line:
        lines.append(line)
    options = _changed_fields(old.router, new.router, frozenset({"admin_token_sha256", "admin_tokens"}))
    if options:
        lines.append(f"router options changed: {', '.join(options)}")
    return lines


def _named_changes(
    what: str, old: Mapping[str, BaseModel], new: Mapping[str, BaseModel], ignore: frozenset[str]
) -> list[str]:
    lines = []
    added = [name for name in new if name not in old]
    removed = [name for name in old if name not in new]
    changed = []
    for name in new:
        if name in old:
            fields = _changed_fields(old[name], new[name], ignore)
            if fields:
                changed.append(f"{name} ({', '.join(fields)})")
    if added:
        lines.append(f"{what} added: {', '.join(added)}")
    if removed:
        lines.append(f"{what} removed: {', '.join(removed)}")
    if changed:
        lines.append(f"{what} changed: {'; '.join(changed)}")
    return lines


def _changed_fields(old: BaseModel, new: BaseModel, ignore: frozenset[str]) -> list[str]:
    before, after = old.model_dump(), new.model_dump()
    return [key for key in after if key not in ignore and before.get(key) != after[key]]


def _tokens(team: Team) -> dict[str, str]:
    """sha256 -> label for each of the team's tokens."""
    return _labels(getattr(team, "labelled_tokens", None), team.token_sha256)


def _admin_tokens(settings: FleetSettings) -> dict[str, str]:
    router = settings.router
    return _labels(getattr(router, "labelled_admin_tokens", None), router.admin_token_sha256)


def _labels(labelled: Iterable[Any] | None, legacy: tuple[str, ...]) -> dict[str, str]:
    if labelled is not None:
        return {token.sha256: token.label for token in labelled}
    return {digest: f"sha256 {digest[:8]}..." for digest in legacy}


def _token_line(what: str, before: dict[str, str], after: dict[str, str]) -> str | None:
    added = [label for digest, label in after.items() if digest not in before]
    removed = [label for digest, label in before.items() if digest not in after]
    if not added and not removed:
        return None
    parts = []
    if added:
        parts.append(f"added {', '.join(added)}")
    if removed:
        parts.append(f"removed {', '.join(removed)}")
    return f"{what}: {'; '.join(parts)}"
