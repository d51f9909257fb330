"""The ``fleet`` command: run the fleet locally, check and explain settings, deploy.

Its other commands live beside it: ``fleet token ...`` in :mod:`apps.cli.token`, ``fleet status`` in
:mod:`apps.cli.status`, ``fleet reload`` in :mod:`apps.cli.reload`, ``fleet hub bootstrap`` in
:mod:`apps.cli.hub`; what they share in :mod:`apps.cli.common`; the fleet and warm-hours tables of
``fleet plan`` in :mod:`apps.cli.plan`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from apps.cli.common import ADMIN_ENDPOINTS, CliError, access_summary, example_note, load_for_command
from apps.cli.hub import add_hub_commands
from apps.cli.listen import bind_router, exposure
from apps.cli.modal_reach import modal_problems
from apps.cli.plan import cost_plan, hub_plan, plan_table, warm_plan
from apps.cli.reload import add_reload_command
from apps.cli.status import add_status_command
from apps.cli.token import add_token_commands
from fleet.errors import FleetError
from fleet.hub import TEAM_TOKENS_ENV
from fleet.loading import SettingsError, load_settings, resolve_config_path
from fleet.routing import RoutingTable
from fleet.settings import FleetSettings
from router.hub_access import team_tokens_from_env

STATE_DIR = "state"  # data_dir/state: the router's store (router/store.py), shared by routers on one data_dir
ALL_INTERFACES = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # listen address -> one to connect to


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    up.add_argument(
        "--public",
        action="store_true",
        help="allow an open fleet (no team tokens) on a --host other machines can reach",
    )
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

    add_status_command(sub)
    add_reload_command(sub)
    add_token_commands(sub, with_config)
    add_hub_commands(sub, with_config)

    return parser


def _version() -> str:
    """The installed tabby-fleet's version (pyproject.toml's), or why there is none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"(tabby-fleet {version('tabby-fleet')})"
    except PackageNotFoundError:
        return "(tabby-fleet, not installed: run it from an install, e.g. pip install -e .)"


# -- check, plan, route ---------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from apps.local.backends import find_tabby

    settings = load_for_command(args)
    source = resolve_config_path(args.config).absolute()
    try:
        tabby_bin = find_tabby(settings)  # the same lookup `fleet up` makes
    except FleetError as error:
        raise CliError(error.message) from None
    print(f"ok: {source}: {len(settings.entries)} entries, {len(settings.teams)} teams")
    if note := example_note(source):
        print(note)
    print(access_summary(settings))
    print(f"local backends: {_backend_kind(tabby_bin)}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    settings = load_for_command(args)
    source = resolve_config_path(args.config).absolute()
    print(example_note(source) or f"settings: {source}")
    print(plan_table(settings))
    print()
    print(access_summary(settings))
    print()
    print("\n".join(cost_plan(settings)))
    for section in (warm_plan(settings), hub_plan(settings)):
        if section:
            print()
            print("\n".join(section))
    if not args.local_only:
        from apps.modal.plan import modal_plan

        print()
        print(modal_plan(settings))
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    settings = load_for_command(args)
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


# -- deploy / serve --------------------------------------------------------------------------------


def cmd_modal(args: argparse.Namespace) -> int:
    """Validate here (clear errors before Modal is involved), refuse unsafe fleets, then run the modal CLI."""
    import subprocess

    source = resolve_config_path(args.config).resolve()
    settings = load_for_command(argparse.Namespace(config=source))
    refusals = deploy_refusals(settings, public=args.public, no_admin=args.no_admin)
    if refusals:
        raise CliError(f"not running `modal {args.verb}`:", *refusals)
    extra = [a for a in args.modal_args if a != "--"]
    env = {**os.environ, "FLEET_CONFIG": str(source)}
    print(f"fleet: declaring Modal app {settings.modal.app_name!r} from {source} (offline)", flush=True)
    deploy = _deploy_module(env)
    print("fleet: checking Modal credentials and that Modal's API server answers", flush=True)
    problems = modal_problems()
    if problems:
        raise CliError(f"not running `modal {args.verb}`:", *problems)
    argv = [sys.executable, "-m", "modal", args.verb, *extra, "-m", deploy.__name__]
    print(
        f"fleet: {' '.join(argv[2:])}: builds the images (minutes the first time), then creates a class per "
        f"entry and the router",
        flush=True,
    )
    return subprocess.call(argv, env=env)


def _deploy_module(env: dict[str, str]) -> ModuleType:
    """The module `modal deploy -m` runs, imported here with the settings it will run with.

    Importing it declares the app (offline, as `modal deploy` will again), so a declaration Modal
    refuses fails before Modal is involved, and the module's name comes from the module itself.
    """
    saved = os.environ.get("FLEET_CONFIG")
    os.environ["FLEET_CONFIG"] = env["FLEET_CONFIG"]
    try:
        from apps.modal import deploy
    finally:
        if saved is None:
            del os.environ["FLEET_CONFIG"]
        else:
            os.environ["FLEET_CONFIG"] = saved
    return deploy


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
            f"no admin token is set: on Modal no client is local, so {ADMIN_ENDPOINTS} "
            "and the details of /fleet/health would answer nobody. Add one (fleet token new --admin --label "
            "LABEL --write), or pass --no-admin to deploy without them"
        )
    return refusals


# -- fleet up ---------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from apps.local.backends import LocalBackends
    from router.app import create_app
    from router.store import SegmentStore, writer_id

    settings = load_for_command(args)
    refusals, warnings = exposure(settings, args.host, public=args.public)
    if refusals:
        raise CliError(*refusals)
    for warning in warnings:
        print(f"fleet: warning: {warning}", file=sys.stderr)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    try:
        # The hub's chat calls the router at the URL a client on this machine uses.
        backends = LocalBackends(settings, router_url=client_url(args.host, args.port)[0])
    except FleetError as error:
        print(f"fleet: {error.message}", file=sys.stderr)
        return 1
    sock = bind_router(args.host, args.port, client_url(args.host, args.port)[0])  # before the banner: CliError
    print(up_banner(settings, args.host, args.port, resolve_config_path(args.config), backends.tabby_bin), flush=True)
    app = create_app(
        settings,
        backends,
        reload_settings=lambda: load_settings(args.config),
        settings_source=str(resolve_config_path(args.config)),
        # Usage and live tokens kept across restarts, and shared with every router on this data_dir (router/store.py).
        store=SegmentStore(settings.data_dir / STATE_DIR, writer_id()),
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,  # a line per keystroke is noise; the router logs failures
        proxy_headers=False,  # X-Forwarded-* rewriting: not needed, and it costs on every request
        timeout_graceful_shutdown=10,
        # The largest WebSocket message uvicorn reads (its default 16 MiB): the hub relay's limit, so a client
        # cannot make it buffer more, even before its first message is checked (router/hub_socket.py).
        ws_max_size=settings.hub.max_frame_bytes,
    )
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn has shut down by then, as uvicorn.run does
        server.run(sockets=[sock])  # the socket bound above: nothing took the port since the check
    return 0 if server.started else 3


def hub_lines(
    settings: FleetSettings, base_url: str, tabby_bin: str | None, environ: dict[str, str] | None = None
) -> list[str]:
    """What `fleet up` says about the hub: what runs it, for whom, where its data is, and any hub team that has
    no hub user in FLEET_HUB_TEAM_TOKENS (its panel's calls would get 503 hub-user-missing)."""
    hub = settings.hub
    if not hub.enabled:
        return []
    if hub.url is not None:
        runs = f"the Tabby webserver at {hub.url}"
    else:
        kind = f"tabby serve with its webserver on ({tabby_bin})" if tabby_bin else "the built-in stand-in hub"
        runs = f"{kind}, started on first use; data in {settings.data_dir / 'hub'} (a snapshot every " \
               f"{hub.snapshot_interval}s)"  # fmt: skip
    teams = [t.name for t in settings.teams if hub.serves(t.name)]
    lines = [f"hub: {runs}", f"chat panel for teams: {', '.join(teams) or '(none)'}; Tabby's web UI: {base_url}/"]
    if hub.identity == "team":
        try:
            users = team_tokens_from_env(os.environ if environ is None else environ)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        missing = [team for team in teams if team not in users]
        if missing:
            lines.append(
                f"warning: {TEAM_TOKENS_ENV} has no hub user for {', '.join(missing)}: their chat panel gets 503 "
                "hub-user-missing until it does (docs/DEPLOY.md, The hub)"
            )
    return lines


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
        *filter(None, [example_note(source)]),
        f"backends: {_backend_kind(tabby_bin)}, started on first use",
        *hub_lines(settings, base_url, tabby_bin),
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
        parts.append(f"Admin endpoints ({ADMIN_ENDPOINTS}) need an admin token.")
    else:
        parts.append(
            "Admin endpoints answer local clients only: add an admin token (fleet token new --admin --label NAME)."
        )
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
