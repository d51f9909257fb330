"""The ``fleet`` command: run the fleet locally, check and explain settings, issue team tokens."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet.errors import FleetError
from fleet.routing import RoutingTable, hash_token
from fleet.settings import FleetSettings, SettingsError, load_settings, resolve_config_path

TOKEN_PREFIX = "tft_"  # makes a leaked token easy to recognise (and to grep for) as a fleet token
ADMIN_TOKEN_PREFIX = "tfa_"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description="Run many Tabby servers behind one router.")
    sub = parser.add_subparsers(title="commands")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "--config",
            type=Path,
            help="fleet.toml to use (default: $FLEET_CONFIG, ./fleet.toml, then the packaged example)",
        )
        return cmd

    up = command("up", "Run the router on this machine; backends start on demand.")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    up.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    up.set_defaults(func=cmd_up)

    check = command("check", "Validate settings; exit 1 listing every problem.")
    check.set_defaults(func=cmd_check)

    plan = command("plan", "Show the fleet, and exactly what `fleet deploy` would create on Modal.")
    plan.add_argument("--local-only", action="store_true", help="skip the Modal section (no modal import)")
    plan.set_defaults(func=cmd_plan)

    for name, verb in (("deploy", "deploy"), ("serve", "serve")):
        modal_cmd = command(name, f"Run `modal {verb}` on the fleet app built from these settings.")
        modal_cmd.add_argument("modal_args", nargs=argparse.REMAINDER, help=f"more arguments for `modal {verb}`")
        modal_cmd.set_defaults(func=cmd_modal, verb=verb)

    route = command("route", "Dry-run the routing decision for a request.")
    route.add_argument("--team", help="X-Tabby-Team header value")
    route.add_argument("--model", help="X-Tabby-Model header value")
    route.add_argument("--token", help="team token (sent as Authorization: Bearer)")
    route.add_argument("--path", default="/v1/completions", help="request path (default /v1/completions)")
    route.set_defaults(func=cmd_route)

    token = sub.add_parser("token", help="Team tokens.")
    token_sub = token.add_subparsers(title="token commands")
    new = token_sub.add_parser("new", help="Print a new random token for a team (or an admin), and its hash line.")
    who = new.add_mutually_exclusive_group(required=True)
    who.add_argument("--team", help="the team the token is for")
    who.add_argument("--admin", action="store_true", help="an admin token: /fleet/* details, /metrics, reload")
    new.add_argument("--config", type=Path, help="fleet.toml to check the team against")
    new.set_defaults(func=cmd_token_new)
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    source = resolve_config_path(args.config)
    print(f"ok: {source}: {len(settings.entries)} entries, {len(settings.teams)} teams")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    print(plan_table(settings))
    if not args.local_only:
        from apps.modal_plan import modal_plan

        print()
        print(modal_plan(settings))
    return 0


def cmd_modal(args: argparse.Namespace) -> int:
    """Validate here (clear errors before Modal is involved), then hand over to the modal CLI."""
    import os
    import subprocess

    source = resolve_config_path(args.config).resolve()
    load_settings(source)
    extra = [a for a in args.modal_args if a != "--"]
    argv = [sys.executable, "-m", "modal", args.verb, *extra, "-m", "apps.modal_deploy"]
    print(f"fleet: {' '.join(argv[2:])}  (settings: {source})", flush=True)
    return subprocess.call(argv, env={**os.environ, "FLEET_CONFIG": str(source)})


def cmd_route(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    table = RoutingTable(settings)
    authorization = f"Bearer {args.token}" if args.token else None
    try:
        route = table.route(args.path, authorization, args.team, args.model)
    except FleetError as error:
        print(f"refused: HTTP {error.status}")
        print(json.dumps(error.payload(), indent=2))
        return 1
    print(f"entry:         {route.entry}")
    print(f"why:           {route.reason}")
    print(f"team:          {route.team or '-'}")
    print(f"upstream path: {route.upstream_path}")
    return 0


def cmd_token_new(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.admin:
        _print_new_token(
            ADMIN_TOKEN_PREFIX, settings.router.admin_token_sha256, "admin_token_sha256",
            "New admin token (shown once; keep it in your password manager):",
            "Put its hash in the [router] table of your fleet.toml:",
        )  # fmt: skip
        return 0
    team = next((t for t in settings.teams if t.name == args.team), None)
    if team is None:
        names = ", ".join(t.name for t in settings.teams) or "(none)"
        print(f"fleet: no team {args.team!r} in the settings; teams: {names}", file=sys.stderr)
        return 1
    _print_new_token(
        TOKEN_PREFIX, team.token_sha256, "token_sha256",
        f"New token for team {team.name!r} (shown once; give it to the team, store it nowhere else):",
        f"Add its hash to the [[teams]] table of {team.name!r} in your fleet.toml:",
    )  # fmt: skip
    return 0


def _print_new_token(prefix: str, existing: tuple[str, ...], field: str, heading: str, where: str) -> None:
    token = prefix + secrets.token_urlsafe(32)  # 256 bits of randomness
    hashes = [*existing, hash_token(token)]
    print(f"{heading}\n\n  {token}\n\n{where}\n")
    print(f"  {field} = [" + ", ".join(f'"{h}"' for h in hashes) + "]")


def cmd_up(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from apps.local import LocalBackends
    from router.app import create_app

    settings = load_settings(args.config)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    try:
        backends = LocalBackends(settings)
    except FleetError as error:
        print(f"fleet: {error.message}", file=sys.stderr)
        return 1
    base_url = f"http://{args.host}:{args.port}"
    print(up_banner(settings, base_url, resolve_config_path(args.config), backends.tabby_bin), flush=True)
    app = create_app(settings, backends, reload_settings=lambda: load_settings(args.config))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,  # a line per keystroke is noise; the router logs failures
        proxy_headers=False,  # X-Forwarded-* rewriting: not needed, and it costs on every request
        timeout_graceful_shutdown=10,
    )
    return 0


def plan_table(settings: FleetSettings) -> str:
    header = ("entry", "model", "chat model", "GPU", "idle", "containers", "inputs", "teams")
    rows = [header]
    for entry in settings.entries:
        teams = [t.name for t in settings.teams if t.entry == entry.name]
        allowed = [
            t.name
            for t in settings.teams
            if t.entry != entry.name and (not t.allowed_entries or entry.name in t.allowed_entries)
        ]
        team_text = ", ".join(teams) + (f" (+ may use: {', '.join(allowed)})" if allowed else "")
        name = entry.name + (" *" if entry.name == settings.router.default_entry else "")
        rows.append(
            (
                name,
                entry.model,
                entry.chat_model or "-",
                entry.gpu if not entry.url else f"(external {entry.url})",
                f"{entry.scaledown_window}s",
                f"{entry.min_containers}..{entry.max_containers}",
                f"{entry.max_inputs}/container = {entry.capacity}",
                team_text or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    if settings.router.default_entry:
        lines.append("* default entry: used when no team or model header selects one")
    return "\n".join(lines)


def up_banner(settings: FleetSettings, base_url: str, source: Path, tabby_bin: str | None) -> str:
    backend = f"tabby serve ({tabby_bin})" if tabby_bin else "the built-in stand-in (no tabby binary found)"
    parts = [
        f"tabby-fleet router: {base_url}",
        f"settings: {source}",
        f"backends: {backend}, started on first use",
        "",
        plan_table(settings),
        "",
    ]
    for team in settings.teams:
        parts.append(f"# team {team.name}: ~/.tabby-client/agent/config.toml")
        parts.append("[server]")
        if team.token_sha256:
            parts.append(f'endpoint = "{base_url}"')
            parts.append(f'token = "<a {team.name} token from `fleet token new --team {team.name}`>"')
        else:
            parts.append(f'endpoint = "{base_url}/teams/{team.name}"')
        parts.append("")
    if not settings.teams:
        parts.append(f'# ~/.tabby-client/agent/config.toml\n[server]\nendpoint = "{base_url}"\n')
    parts.append(f"Router endpoints: {base_url}/fleet/health, {base_url}/fleet/entries, {base_url}/fleet/docs")
    if settings.router.admin_token_sha256:
        parts.append("Admin endpoints (/fleet/entries, /fleet/reload, /metrics) need an admin token.")
    else:
        parts.append(
            "Admin endpoints answer local clients only: set router.admin_token_sha256 (fleet token new --admin)."
        )
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
