"""The ``fleet`` command: run the fleet locally, check and explain settings, deploy, manage tokens."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import FleetError
from fleet.loading import SettingsError, env_warnings, load_settings, resolve_config_path
from fleet.routing import RoutingTable, hash_token
from fleet.settings import LEGACY_LABEL, PACKAGED_EXAMPLE, FleetSettings, TokenRef, settings_warnings
from fleet.warm import warm_plan

if TYPE_CHECKING:
    from tomlkit.container import Container
    from tomlkit.items import Table
    from tomlkit.toml_document import TOMLDocument

TOKEN_PREFIX = "tft_"  # makes a leaked token easy to recognise (and to grep for) as a fleet token
ADMIN_TOKEN_PREFIX = "tfa_"
ALL_INTERFACES = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # listen address -> one to connect to


class CliError(Exception):
    """A refusal of the command line: one or more lines of advice, exit status 1."""

    def __init__(self, *lines: str) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


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
    except CliError as exc:
        for line in exc.lines:
            print(f"fleet: {line}" if line else "", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description="Run many Tabby servers behind one router.")
    sub = parser.add_subparsers(title="commands")

    def with_config(cmd: argparse.ArgumentParser) -> argparse.ArgumentParser:
        cmd.add_argument(
            "--config",
            type=Path,
            help="fleet.toml to use (default: $FLEET_CONFIG, ./fleet.toml, then the packaged example)",
        )
        return cmd

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return with_config(sub.add_parser(name, help=help_text, description=help_text))

    up = command("up", "Run the router on this machine; backends start on demand.")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    up.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    up.set_defaults(func=cmd_up)

    check = command("check", "Validate settings (and the tabby binary, if one is set); exit 1 listing every problem.")
    check.set_defaults(func=cmd_check)

    plan = command("plan", "Show the fleet, who can reach it, and exactly what `fleet deploy` would create on Modal.")
    plan.add_argument("--local-only", action="store_true", help="skip the Modal section (no modal import)")
    plan.set_defaults(func=cmd_plan)

    for name, verb in (("deploy", "deploy"), ("serve", "serve")):
        modal_cmd = command(name, f"Run `modal {verb}` on the fleet app built from these settings.")
        modal_cmd.add_argument(
            "--public",
            action="store_true",
            help="allow an open fleet (no team tokens): anyone who finds the URL can use it",
        )
        modal_cmd.add_argument(
            "--no-admin",
            action="store_true",
            help="allow a fleet without admin tokens: /metrics and /fleet/* details then answer nobody",
        )
        modal_cmd.add_argument("modal_args", nargs=argparse.REMAINDER, help=f"more arguments for `modal {verb}`")
        modal_cmd.set_defaults(func=cmd_modal, verb=verb)

    route = command("route", "Dry-run the routing decision for a request.")
    route.add_argument("--team", help="X-Tabby-Team header value")
    route.add_argument("--model", help="X-Tabby-Model header value")
    route.add_argument("--token", help="team token (sent as Authorization: Bearer)")
    route.add_argument("--path", default="/v1/completions", help="request path (default /v1/completions)")
    route.set_defaults(func=cmd_route)

    from apps.status_cmd import add_status_command

    add_status_command(sub)

    token = sub.add_parser("token", help="Team and admin tokens: new, list, revoke.")
    token_sub = token.add_subparsers(title="token commands")

    def holder(cmd: argparse.ArgumentParser) -> None:
        who = cmd.add_mutually_exclusive_group(required=True)
        who.add_argument("--team", help="the team the token is for")
        who.add_argument("--admin", action="store_true", help="an admin token: /fleet/* details, /metrics, reload")
        cmd.add_argument("--label", required=True, help="who or what holds the token, e.g. alice-laptop (a slug)")
        with_config(cmd)

    new = token_sub.add_parser("new", help="Make a token for a team (or an admin): print it once, and its line.")
    holder(new)
    new.add_argument(
        "--write",
        action="store_true",
        help="add the token's line to the settings file (keeps its comments and layout) instead of printing it",
    )
    new.set_defaults(func=cmd_token_new)

    listing = with_config(token_sub.add_parser("list", help="Every token: team, label and a hash prefix."))
    listing.set_defaults(func=cmd_token_list)

    revoke = token_sub.add_parser("revoke", help="Remove a token from the settings file (then reload the router).")
    holder(revoke)
    revoke.set_defaults(func=cmd_token_revoke)
    return parser


def _load(args: argparse.Namespace, *, check_auth: bool = True) -> FleetSettings:
    """Settings for a command, after printing the warnings about them (a mistyped FLEET_* variable)."""
    for warning in env_warnings():
        print(f"fleet: warning: {warning}", file=sys.stderr)
    settings = load_settings(args.config, check_auth=check_auth)
    for warning in settings_warnings(settings):
        print(f"fleet: warning: {warning}", file=sys.stderr)
    return settings


# -- check, plan, route ---------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from apps.local import find_tabby

    settings = _load(args)
    source = resolve_config_path(args.config)
    try:
        tabby_bin = find_tabby(settings)  # the same lookup `fleet up` makes
    except FleetError as error:
        raise CliError(error.message) from None
    print(f"ok: {source}: {len(settings.entries)} entries, {len(settings.teams)} teams")
    print(access_summary(settings))
    print(f"local backends: {_backend_kind(tabby_bin)}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    settings = _load(args)
    print(plan_table(settings))
    print()
    print(access_summary(settings))
    warm = warm_plan(settings.entries, settings.prices)
    if warm:
        print()
        print("\n".join(warm))
    if not args.local_only:
        from apps.modal_plan import modal_plan

        print()
        print(modal_plan(settings))
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    settings = _load(args)
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


def access_summary(settings: FleetSettings) -> str:
    """Who can reach the router and what they can do, in words (fleet plan, fleet check, fleet up)."""
    teams = len(settings.teams)
    if settings.auth_mode == "tokens":
        count = sum(len(team.labelled_tokens) for team in settings.teams)
        auth = (
            f"auth: tokens - {teams} team{_s(teams)}, {count} token{_s(count)}; anyone without a team token "
            f"gets 401 (fleet token list)"
        )
    elif settings.teams:
        auth = (
            "auth: open - anyone who can reach the URL can use every entry a team may use, by naming the team "
            "(X-Tabby-Team or /teams/<team>/); give every team a token to close it"
        )
    else:
        auth = "auth: open - no teams, so anyone who can reach the URL can use every entry"
    admins = len(settings.router.admin_token_digests)
    metrics = "; /metrics is public (router.metrics_public)" if settings.router.metrics_public else ""
    if admins:
        admin = f"admin: {admins} admin token{_s(admins)} guarding /fleet/entries, /fleet/reload, /metrics{metrics}"
    else:
        admin = (
            "admin: no admin token - /fleet/entries, /fleet/reload and /metrics answer clients on the router's "
            f"own machine only (on Modal: nobody){metrics}"
        )
    return f"{auth}\n{admin}"


def _s(count: int) -> str:
    return "" if count == 1 else "s"


# -- deploy / serve --------------------------------------------------------------------------------


def cmd_modal(args: argparse.Namespace) -> int:
    """Validate here (clear errors before Modal is involved), refuse unsafe fleets, then run the modal CLI."""
    import subprocess

    source = resolve_config_path(args.config).resolve()
    settings = _load(argparse.Namespace(config=source))
    refusals = deploy_refusals(settings, public=args.public, no_admin=args.no_admin)
    if refusals:
        raise CliError(f"not running `modal {args.verb}`:", *refusals)
    extra = [a for a in args.modal_args if a != "--"]
    argv = [sys.executable, "-m", "modal", args.verb, *extra, "-m", "apps.modal_deploy"]
    print(f"fleet: {' '.join(argv[2:])}  (settings: {source})", flush=True)
    return subprocess.call(argv, env={**os.environ, "FLEET_CONFIG": str(source)})


def deploy_refusals(settings: FleetSettings, *, public: bool, no_admin: bool) -> list[str]:
    """Why a deploy would expose the fleet, each with the fix; empty when it is safe (or allowed)."""
    refusals = []
    if settings.auth_mode == "open" and not public:
        refusals.append(
            "the fleet is open (no team tokens): once deployed, anyone who finds its URL can use every entry "
            "a team may use, by naming the team. Give every team a token (fleet token new --team TEAM "
            "--label LABEL --write), or pass --public if an open fleet is what you want"
        )
    if not settings.router.admin_token_digests and not no_admin:
        refusals.append(
            "no admin token is set: on Modal no client is local, so /metrics, /fleet/entries, /fleet/reload "
            "and the details of /fleet/health would answer nobody. Add one (fleet token new --admin --label "
            "LABEL --write), or pass --no-admin to deploy without them"
        )
    return refusals


# -- tokens ----------------------------------------------------------------------------------------


def cmd_token_new(args: argparse.Namespace) -> int:
    settings = _load(args, check_auth=False)  # works while a fleet is moved to tokens team by team
    _check_label(args.label)
    holder = _holder(settings, args)
    if args.label in holder.labels:
        raise CliError(
            f"{holder.who} already has a token labelled {args.label!r} (labels: {', '.join(holder.labels)}); "
            f"pick another label, or revoke that token first (fleet token revoke {holder.flag} --label {args.label})"
        )
    prefix = ADMIN_TOKEN_PREFIX if args.admin else TOKEN_PREFIX
    token = prefix + secrets.token_urlsafe(32)  # 256 bits of randomness
    new = TokenRef(label=args.label, sha256=hash_token(token))
    holder_text = "an admin" if args.admin else f"team {holder.name!r}"
    if args.write:
        path = _writable_config(args.config)
        document = _read_document(path)
        _add_token(_holder_table(document, holder, path, create=True), holder.field, new)
        remaining = _write_checked(path, document)
        print(f"New token for {holder_text}, label {args.label!r} (shown once; give it to its holder):\n")
        print(f"  {token}\n")
        print(f"Added to {path}: {holder.where}.{holder.field} += {_inline(new)}")
        _print_remaining(remaining)
        print()
        print(_reload_advice("The running router accepts it only once it re-reads its settings:"))
        return 0
    line = f"{holder.field} = [" + ", ".join(_inline(t) for t in (*holder.tokens, new)) + "]"
    print(f"New token for {holder_text}, label {args.label!r} (shown once; give it to its holder):\n")
    print(f"  {token}\n")
    print(f"Put this line in {holder.table_text} of {resolve_config_path(args.config)} (it replaces its ")
    print(f"{holder.field} line, if there is one):\n")
    print(f"  {line}\n")
    print("(`--write` adds it to the file for you, keeping its comments and layout.)")
    if not args.admin:
        note = _auth_note(settings, holder.name)
        if note:
            print(f"\n{note}")
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    settings = _load(args, check_auth=False)
    rows = [("team", "label", "sha256", "listed in")]
    for team in settings.teams:
        for index, token in enumerate(team.labelled_tokens):
            rows.append((team.name, token.label, _prefix(token.sha256), _field(index, team.tokens, "token")))
    router = settings.router
    for index, token in enumerate(router.labelled_admin_tokens):
        rows.append(("(admin)", token.label, _prefix(token.sha256), _field(index, router.admin_tokens, "admin_token")))
    if len(rows) > 1:
        print(_table(rows))
        print()
    else:
        print("no tokens\n")
    print(access_summary(settings))
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    settings = _load(args, check_auth=False)
    holder = _holder(settings, args)
    if args.label not in holder.labels:
        labels = ", ".join(holder.labels) or "none"
        raise CliError(f"{holder.who} has no token labelled {args.label!r}; its labels: {labels} (fleet token list)")
    if not args.admin and len(holder.labels) == 1 and _token_mode(settings):
        raise CliError(
            f"{args.label!r} is the last token of team {holder.name!r}: the fleet is in token mode, so without a "
            f"token the team would be locked out (401).",
            f"Issue its replacement first (fleet token new --team {holder.name} --label NEW --write), then revoke "
            f'this one; or remove the team; or, to open the whole fleet, set router.auth = "open" and remove '
            f"every team's tokens",
        )
    path = _writable_config(args.config)
    document = _read_document(path)
    table = _holder_table(document, holder, path, create=False)
    legacy = _remove_token(table, holder, args.label, path)
    remaining = _write_checked(path, document)
    which = "admin token" if args.admin else f"token of team {holder.name!r} labelled"
    print(f"Revoked the {which} {args.label!r} in {path}.")
    if legacy:
        print(
            f"(It was in the legacy {holder.legacy_field} list, whose hashes are labelled by position: the "
            f"ones after it now have new labels; see `fleet token list`.)"
        )
    if args.admin and holder.labels == (args.label,):
        print(
            "That was the last admin token: admin endpoints now answer clients on the router's machine only, "
            "and `fleet deploy` needs a new one (or --no-admin)."
        )
    _print_remaining(remaining)
    print()
    print(_reload_advice("The running router keeps accepting it until it re-reads its settings:"))
    return 0


class _Holder:
    """A team's tokens or the admin tokens: where they live in the settings and how to name them."""

    def __init__(self, settings: FleetSettings, team: str | None) -> None:
        self.name = team
        if team is None:
            self.who = "the admin tokens"
            self.where = "router"
            self.table_text = "the [router] table"
            self.field, self.legacy_field = "admin_tokens", "admin_token_sha256"
            self.flag = "--admin"
            self.tokens = settings.router.admin_tokens
            self.labels = tuple(t.label for t in settings.router.labelled_admin_tokens)
        else:
            found = next(t for t in settings.teams if t.name == team)
            self.who = f"team {team!r}"
            self.where = f'teams["{team}"]'
            self.table_text = f"the [[teams]] table of {team!r}"
            self.field, self.legacy_field = "tokens", "token_sha256"
            self.flag = f"--team {team}"
            self.tokens = found.tokens
            self.labels = tuple(t.label for t in found.labelled_tokens)


def _holder(settings: FleetSettings, args: argparse.Namespace) -> _Holder:
    if args.admin:
        return _Holder(settings, None)
    names = [team.name for team in settings.teams]
    if args.team not in names:
        raise CliError(f"no team {args.team!r} in the settings; teams: {', '.join(names) or '(none)'}")
    return _Holder(settings, args.team)


def _check_label(label: str) -> None:
    from pydantic import ValidationError

    try:
        TokenRef(label=label, sha256="0" * 64)
    except ValidationError as exc:
        raise CliError(f"--label: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _token_mode(settings: FleetSettings) -> bool:
    """Token mode as the settings file means it: router.auth = "tokens", or every team has a token."""
    if settings.router.auth is not None:
        return settings.router.auth == "tokens"
    return bool(settings.teams) and all(team.token_digests for team in settings.teams)


def _auth_note(settings: FleetSettings, team: str | None) -> str:
    """What else the fleet needs before this team's new token works (printed by `token new`)."""
    without = [t.name for t in settings.teams if not t.token_digests and t.name != team]
    if settings.router.auth == "open":
        return (
            'Note: router.auth is "open" in these settings, so tokens are not checked. To use tokens, give every '
            'team one and set router.auth = "tokens" (or remove the line).'
        )
    if without:
        return (
            f"Note: with tokens in use every team needs one, or it is locked out; still without a token: "
            f"{', '.join(without)} (fleet token new --team TEAM --label LABEL --write). Until then the settings do "
            f'not load (or set router.auth = "open" and leave tokens out).'
        )
    return ""


def _field(index: int, labelled: tuple[TokenRef, ...], stem: str) -> str:
    return f"{stem}s" if index < len(labelled) else f"{stem}_sha256 (legacy)"


def _prefix(digest: str) -> str:
    return digest[:8] + "..."


def _inline(token: TokenRef) -> str:
    return f'{{label = "{token.label}", sha256 = "{token.sha256}"}}'


def _print_remaining(problems: list[str]) -> None:
    if problems:
        print("\nThe settings do not load yet; fix these before reloading or deploying (fleet check):")
        for problem in problems:
            print(f"  - {problem}")


def _reload_advice(what: str) -> str:
    return (
        f"{what}\n"
        "  local:  curl -X POST http://127.0.0.1:8080/fleet/reload   (from the router's machine when no admin token\n"
        "          is set; else add -H 'Authorization: Bearer <admin token>'), or kill -HUP <pid of fleet up>,\n"
        "          or restart fleet up\n"
        "  Modal:  fleet deploy"
    )


# -- editing the settings file (tomlkit: comments and layout kept) ---------------------------------


def _writable_config(config: Path | None) -> Path:
    path = resolve_config_path(config)
    if path.resolve() == PACKAGED_EXAMPLE.resolve():
        raise CliError(
            f"the settings in use are the packaged example ({PACKAGED_EXAMPLE}), which belongs to the "
            f"installation; copy it first (cp {PACKAGED_EXAMPLE} fleet.toml) and run this again"
        )
    return path


def _read_document(path: Path) -> TOMLDocument:
    import tomlkit

    return tomlkit.parse(path.read_text(encoding="utf-8"))


def _holder_table(document: TOMLDocument, holder: _Holder, path: Path, *, create: bool) -> Table | Container:
    import tomlkit

    if holder.name is None:
        router = document.get("router")
        if router is None:
            if not create:
                raise CliError(f"{path} has no [router] table, so the admin tokens come from elsewhere (FLEET_*)")
            router = tomlkit.table()
            document.add("router", router)
        return router
    for table in document.get("teams") or []:
        if table.get("name") == holder.name:
            return table
    raise CliError(
        f"team {holder.name!r} is not in {path} (its settings come from elsewhere, e.g. FLEET_TEAMS); "
        f"edit its tokens there"
    )


def _add_token(table: Any, field: str, token: TokenRef) -> None:
    import tomlkit
    from tomlkit.items import InlineTable

    item = tomlkit.inline_table()
    item.update({"label": token.label, "sha256": token.sha256})
    if field in table:
        table[field].append(item)
        return
    array = tomlkit.array()
    array.multiline(not isinstance(table, InlineTable))  # one line inside an inline table
    array.append(item)
    table[field] = array


def _remove_token(table: Any, holder: _Holder, label: str, path: Path) -> bool:
    """Remove the token labelled ``label``; True when it was a legacy (position-labelled) hash."""
    labelled = table.get(holder.field) or []
    for index, item in enumerate(labelled):
        if item.get("label") == label:
            del labelled[index]
            if not labelled:
                del table[holder.field]
            return False
    legacy = table.get(holder.legacy_field) or []
    for index in range(len(legacy)):
        if LEGACY_LABEL.format(index + 1) == label:
            del legacy[index]
            if not legacy:
                del table[holder.legacy_field]
            return True
    raise CliError(f"{holder.who} has no token labelled {label!r} in {path} (it is set elsewhere, e.g. FLEET_*)")


def _write_checked(path: Path, document: TOMLDocument) -> list[str]:
    """Write the edited settings in place of ``path`` (atomically) if they still load but for the auth
    rules; return what `fleet check` will still report (a fleet being moved to tokens team by team)."""
    import shutil

    import tomlkit

    staged = path.with_name(f".{path.name}.fleet-edit-{os.getpid()}")
    staged.write_text(tomlkit.dumps(document), encoding="utf-8")
    try:
        shutil.copymode(path, staged)
        try:
            load_settings(staged, check_auth=False)
        except SettingsError as exc:
            raise CliError("the edited settings would not load, so nothing was written:", *exc.problems) from None
        try:
            load_settings(staged)
        except SettingsError as exc:
            remaining = exc.problems
        else:
            remaining = []
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return remaining


# -- fleet up ---------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from apps.local import LocalBackends
    from router.app import create_app

    settings = _load(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    try:
        backends = LocalBackends(settings)
    except FleetError as error:
        print(f"fleet: {error.message}", file=sys.stderr)
        return 1
    print(up_banner(settings, args.host, args.port, resolve_config_path(args.config), backends.tabby_bin), flush=True)
    app = create_app(
        settings,
        backends,
        reload_settings=lambda: load_settings(args.config),
        settings_source=str(resolve_config_path(args.config)),
    )
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
                entry.gpu_text if not entry.url else f"(external {entry.url})",
                f"{entry.scaledown_window}s",
                f"{entry.min_containers}..{entry.max_containers}",
                f"{entry.max_inputs}/container = {entry.capacity}",
                team_text or "-",
            )
        )
    lines = _table(rows).splitlines()
    if settings.router.default_entry:
        lines.append("* default entry: used when no team or model header selects one")
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _backend_kind(tabby_bin: str | None) -> str:
    return f"tabby serve ({tabby_bin})" if tabby_bin else "the built-in stand-in (no tabby binary found)"


def client_url(host: str, port: int) -> tuple[str, str]:
    """The URL a client on this machine uses for a router listening on host:port, and a note when the
    router listens on every interface (0.0.0.0 is not an address to connect to)."""
    connect = ALL_INTERFACES.get(host, host)
    shown = f"[{connect}]" if ":" in connect else connect
    note = ""
    if host in ALL_INTERFACES:
        note = (
            f"Listening on every interface ({host or 'all'}): the configs below use {connect}, which works on this "
            f"machine; from other machines use this machine's name or IP address instead."
        )
    return f"http://{shown}:{port}", note


def up_banner(settings: FleetSettings, host: str, port: int, source: Path, tabby_bin: str | None) -> str:
    base_url, note = client_url(host, port)
    parts = [
        f"tabby-fleet router: {base_url}",
        f"settings: {source}",
        f"backends: {_backend_kind(tabby_bin)}, started on first use",
        "",
        plan_table(settings),
        "",
        access_summary(settings),
        "",
    ]
    if note:
        parts += [note, ""]
    tokens = settings.auth_mode == "tokens"
    for team in settings.teams:
        parts.append(f"# team {team.name}: ~/.tabby-client/agent/config.toml")
        parts.append("[server]")
        if tokens:
            parts.append(f'endpoint = "{base_url}"')
            parts.append(
                f'token = "<a {team.name} token>"   # get one: fleet token new --team {team.name} --label NAME'
            )
        else:
            parts.append(f'endpoint = "{base_url}/teams/{team.name}"')
        parts.append("")
    if not settings.teams:
        parts.append(f'# ~/.tabby-client/agent/config.toml\n[server]\nendpoint = "{base_url}"\n')
    parts.append(f"Router endpoints: {base_url}/fleet/health, {base_url}/fleet/entries, {base_url}/fleet/docs")
    parts.append(f"Status page (admin): {base_url}/fleet/status; in a terminal: fleet status --url {base_url}")
    parts.append("Developers: <endpoint>/fleet/whoami shows the team, entry and chat a token selects, and why.")
    if settings.router.admin_token_digests:
        parts.append("Admin endpoints (/fleet/entries, /fleet/reload, /metrics) need an admin token.")
    else:
        parts.append(
            "Admin endpoints answer local clients only: add an admin token (fleet token new --admin --label NAME)."
        )
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
