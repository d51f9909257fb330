"""``fleet reload``: a running router re-reads its settings and says what changed.

It POSTs ``/fleet/reload`` (with the admin token, as ``fleet status`` takes it) and prints the router's
``changes``: entries, teams and tokens by label (router/changes.py), never a secret. A router on Modal
refuses (409) with its advice: there, settings change with ``fleet deploy``.
"""

from __future__ import annotations

import argparse
from typing import Any

from apps.cli.remote import admin_token, call_router
from apps.cli.status import DEFAULT_URL, TOKEN_ENV


def add_reload_command(sub: Any) -> None:
    """Register ``fleet reload`` on the ``fleet`` command's subparsers."""
    help_text = "Have a running router re-read its settings file, and print what changed."
    reload = sub.add_parser("reload", help=help_text, description=help_text)
    add_router_options(reload)
    reload.set_defaults(func=cmd_reload)


def add_router_options(cmd: argparse.ArgumentParser, url_default: str | None = DEFAULT_URL) -> None:
    """--url and --admin-token, as ``fleet status`` has them."""
    shown = f" (default {DEFAULT_URL}, fleet up's)" if url_default else ""
    cmd.add_argument("--url", default=url_default, help=f"the running router's URL{shown}")
    cmd.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help=f"an admin token of that router (default: ${TOKEN_ENV}, which other users cannot see in `ps`)",
    )


def cmd_reload(args: argparse.Namespace) -> int:
    answer = call_router("POST", args.url, "/fleet/reload", admin_token(args), {})
    entries, teams = answer.get("entries") or [], answer.get("teams") or []
    print(f"Reloaded: {len(entries)} entries ({', '.join(entries)}), {len(teams)} teams ({', '.join(teams)}).")
    changes = answer.get("changes") or []
    for line in changes:
        print(f"  {line}")
    if not changes:
        print("  nothing changed")
    return 0
