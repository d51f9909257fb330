"""What every ``fleet`` command shares: its error, how it loads settings, and how it prints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Container, Sequence
from pathlib import Path

from fleet.loading import env_warnings, load_settings
from fleet.rules import settings_warnings
from fleet.settings import PACKAGED_EXAMPLE, FleetSettings

# What an admin token guards (with none set: answered to the router's own machine only).
ADMIN_ENDPOINTS = "/fleet/entries, /fleet/usage, /fleet/status, /fleet/reload, /metrics"


class CliError(Exception):
    """A refusal of the command line: one or more lines of advice, exit status 1."""

    def __init__(self, *lines: str) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def load_for_command(args: argparse.Namespace, *, check_auth: bool = True) -> FleetSettings:
    """Settings for a command, after printing the warnings about them (a mistyped FLEET_* variable)."""
    for warning in env_warnings():
        print(f"fleet: warning: {warning}", file=sys.stderr)
    settings = load_settings(args.config, check_auth=check_auth)
    for warning in settings_warnings(settings, auth=check_auth):
        print(f"fleet: warning: {warning}", file=sys.stderr)
    return settings


def example_note(source: Path) -> str | None:
    """When the settings in use (``source``) are the packaged example (no --config, no $FLEET_CONFIG, no
    ./fleet.toml), say so: an admin who meant their own fleet.toml must not take the open example for it."""
    if source.resolve() != PACKAGED_EXAMPLE.resolve():
        return None
    here = Path.cwd() / "fleet.toml"
    return (
        f"no fleet.toml here ({here}): using the packaged example ({PACKAGED_EXAMPLE}), an open fleet for "
        f"trying things out. For your own fleet copy it (cp {PACKAGED_EXAMPLE} {here}) and edit it, or pass "
        f"--config PATH or set FLEET_CONFIG."
    )


def access_summary(settings: FleetSettings) -> str:
    """Who can reach the router and what they can do, in words (fleet plan, fleet check, fleet up)."""
    teams = len(settings.teams)
    if settings.auth_mode == "tokens":
        count = sum(len(team.labelled_tokens) for team in settings.teams)
        auth = (
            f"auth: tokens - {teams} team{plural(teams)}, {count} token{plural(count)}; anyone without a team "
            f"token gets 401 (fleet token list)"
        )
    elif settings.teams:
        holding = sum(1 for team in settings.teams if team.token_digests)
        close = (
            f"{holding} of {teams} teams have tokens, not checked until the fleet moves to tokens (fleet token enable)"
            if holding
            else "`fleet token enable` closes it (a token for every team)"
        )
        auth = (
            "auth: open - anyone who can reach the URL can use every entry a team may use, by naming the team "
            f"(X-Tabby-Team or /teams/<team>/); {close}"
        )
    else:
        auth = "auth: open - no teams, so anyone who can reach the URL can use every entry"
    admins = len(settings.router.admin_token_digests)
    metrics = "; /metrics is public (router.metrics_public)" if settings.router.metrics_public else ""
    if admins:
        guarded = f"{ADMIN_ENDPOINTS}{metrics}"
        admin = f"admin: {admins} admin token{plural(admins)} guarding {guarded}"
    else:
        admin = (
            f"admin: no admin token - {ADMIN_ENDPOINTS} answer clients on the router's "
            f"own machine only (on Modal: nobody){metrics}"
        )
    return f"{auth}\n{admin}"


def plural(count: int) -> str:
    return "" if count == 1 else "s"


def text_table(rows: Sequence[tuple[str, ...]], numeric: Container[int] = ()) -> str:
    """``rows`` (the first is the header) as aligned text with a rule under the header; the columns whose
    index is in ``numeric`` are right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        cells = (
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    lines = [line(row) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
