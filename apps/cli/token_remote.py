"""``fleet token new / list / revoke --url URL``: team tokens on a running router, without a deploy.

The router keeps what these do in its state store (router/token_endpoints.py): a token issued so works
at once, on every router sharing the store; a revoked one is refused by each within seconds, and after a
restart or a redeploy too, also when it is listed in fleet.toml. The token is printed once.
"""

from __future__ import annotations

import argparse
from urllib.parse import quote

from apps.cli.common import CliError, text_table
from apps.cli.remote import admin_token, call_router


def check_remote(args: argparse.Namespace) -> None:
    """What --url does not do: admin tokens (they live in fleet.toml), --write (nothing is written here)."""
    if getattr(args, "admin", False):
        raise CliError(
            "--url issues and revokes team tokens only; admin tokens live in the settings file: "
            "fleet token new|revoke --admin --label LABEL --write, then fleet reload (or fleet deploy)"
        )
    if getattr(args, "write", False):
        raise CliError("--write edits the settings file and --url the running router: pick one")


def remote_new(args: argparse.Namespace) -> int:
    check_remote(args)
    body = {"team": args.team, "label": args.label, "expires": args.expires}
    answer = call_router("POST", args.url, "/fleet/tokens", admin_token(args), body)
    expires = answer.get("expires") or "never"
    print(f"New token for team {answer.get('team')!r}, label {answer.get('label')!r} (shown once; give it to its ")
    print("holder):\n")
    print(f"  {answer.get('token')}\n")
    print(f"sha256 {answer.get('sha256_prefix')}..., created {answer.get('created')}, expires {expires}.")
    print("It works now on every router sharing the fleet's store; it is kept there, not in fleet.toml.")
    return 0


def remote_list(args: argparse.Namespace) -> int:
    answer = call_router("GET", args.url, "/fleet/tokens", admin_token(args))
    tokens = answer.get("tokens")
    if not isinstance(tokens, list):
        raise CliError(f"{args.url} answered /fleet/tokens without a token list: is it a tabby-fleet router?")
    rows: list[tuple[str, ...]] = [("team", "label", "sha256", "source", "created", "last used", "expires", "revoked")]
    for token in tokens:
        rows.append(
            tuple(
                str(token.get(key) or "-")
                for key in ("team", "label", "sha256_prefix", "source", "created", "last_used", "expires", "revoked")
            )
        )
    print(text_table(rows) if len(rows) > 1 else "no tokens")
    return 0


def remote_revoke(args: argparse.Namespace) -> int:
    check_remote(args)
    if args.expires:
        raise CliError("--expires is for `fleet token new`")
    path = f"/fleet/tokens/{quote(args.team, safe='')}/{quote(args.label, safe='')}"
    answer = call_router("DELETE", args.url, path, admin_token(args))
    for revoked in answer.get("revoked") or []:
        print(
            f"Revoked the token of team {revoked.get('team')!r} labelled {revoked.get('label')!r} "
            f"(sha256 {revoked.get('sha256_prefix')}..., from {revoked.get('source')})."
        )
    print("Every router sharing the fleet's store refuses it within 10 s; restarts and redeploys keep it revoked.")
    return 0
