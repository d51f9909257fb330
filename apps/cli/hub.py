"""``fleet hub bootstrap``: the hub's owner and one hub user per team, made through the router, and the
``FLEET_HUB_TEAM_TOKENS`` that maps each team's fleet token to its user.

It goes through the router (on Modal the hub sits behind proxy auth) with an admin token, which the router
strips: the hub sees an anonymous caller, which is what registering its owner needs, and which
``ui_open = false`` lets through to the hub's data paths for admins only. The calls that need the owner's login
send it in ``X-Fleet-Hub-Authorization``: the router sends that header's value on as the hub's
``Authorization`` for an admin caller only, and refuses it from anyone else (fleet/hub_paths.py::hub_pass).

Tabby v0.32.0's GraphQL, read from its source (``S`` = ee/tabby-schema, ``W`` = ee/tabby-webserver/src):

- ``serverInfo { isAdminInitialized }``: no login (S/graphql/schema.graphql:1229-1236; S/src/schema/mod.rs:545-559).
- ``register(email, password1, password2, invitationCode, name): RegisterResponse { accessToken refreshToken }``
  (schema.graphql:847, 1175-1178): the first user on a hub without an admin becomes its owner and needs no
  invitation; later ones need the code of an invitation for their email (W/service/auth.rs:95-151, 837-862).
  Passwords: 8 to 20 characters with a lower and an upper case letter, a digit and a punctuation character
  (S/src/schema/auth.rs:83-111, 547-590).
- ``tokenAuth(email, password): TokenAuthResponse`` (schema.graphql:848, 1326-1329; W/service/auth.rs:313-348).
- ``createInvitation(email): ID!`` (schema.graphql:852): an admin's login (mod.rs:1270-1274, 221-250), a free
  seat (W/service/auth.rs:473-492). It answers the ID only; the code is read from ``invitations { edges { node
  { id email code } } }`` (schema.graphql:1105, 641-646; an admin, mod.rs:359-378), which also finds the
  invitation a run cut short left behind.
- ``users { edges { node { email } } }`` (schema.graphql:1104; a login, mod.rs:334-357): who exists already.
- ``me { authToken }`` (schema.graphql:1102, 1374-1385; mod.rs:329-331): the user's ``auth_...`` token.
- ``license { type status seats seatsUsed }`` (schema.graphql:1135, 706-714; mod.rs:561-563).

These were run here against the stand-in hub (apps/local/standin_accounts.py), not against a real Tabby.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import string
import sys
import time
from typing import Any

from apps.cli.common import CliError, load_for_command
from apps.cli.reload import add_router_options
from apps.cli.remote import admin_token, call_router, send_request
from apps.cli.status import MAKE_TOKEN, TOKEN_ENV, router_base
from fleet.hub import JWT_SECRET_ENV, ROUTER_TOKEN_ENV, TEAM_TOKENS_ENV, HubOptions
from fleet.hub_paths import HUB_AUTHORIZATION_HEADER
from fleet.slugs import slug

START_WAIT_SECONDS = 600.0  # a cold hub on Modal: its startup_timeout's default
PASSWORD_SYMBOLS = "!#%+-.=@^_~"  # punctuation a shell leaves alone inside single quotes, and Tabby counts
SERVER_INFO = "query { serverInfo { isAdminInitialized } }"
REGISTER = (
    "mutation($email: String!, $password1: String!, $password2: String!, $invitationCode: String, $name: String!) "
    "{ register(email: $email, password1: $password1, password2: $password2, invitationCode: $invitationCode, "
    "name: $name) { accessToken refreshToken } }"
)
TOKEN_AUTH = (
    "mutation($email: String!, $password: String!) { tokenAuth(email: $email, password: $password) { accessToken } }"
)
CREATE_INVITATION = "mutation($email: String!) { createInvitation(email: $email) }"
INVITATIONS = "query { invitations { edges { node { id email code } } } }"
USERS = "query { users { edges { node { email } } } }"
ME = "query { me { email isAdmin isOwner authToken } }"
LICENSE = "query { license { type status seats seatsUsed } }"


def add_hub_commands(sub: Any, with_config: Any) -> None:
    """Register ``fleet hub bootstrap`` on the ``fleet`` command's subparsers."""
    hub = sub.add_parser("hub", help="The hub (Tabby's chat panel and users): bootstrap its owner and team users.")
    hub_sub = hub.add_subparsers(title="hub commands")
    text = "Create the hub's owner and one hub user per team through the router; print FLEET_HUB_TEAM_TOKENS."
    boot = with_config(hub_sub.add_parser("bootstrap", help=text, description=text))
    add_router_options(boot)
    boot.add_argument("--owner-email", required=True, help="the hub owner's email (its login)")
    boot.add_argument(
        "--owner-password-stdin",
        action="store_true",
        help="read the owner's password from standard input (default: a strong one is made and printed once); "
        "also how to log in as an existing owner",
    )
    boot.add_argument("--team", action="append", required=True, help="a hub team to give a hub user (repeatable)")
    boot.add_argument("--email-domain", help="the team users' email domain (default: hub.<modal.app_name>)")
    boot.add_argument(
        "--wait", type=float, default=START_WAIT_SECONDS, help="seconds to wait for a cold hub to start (default 600)"
    )
    boot.set_defaults(func=cmd_bootstrap)


class HubGraphQL:
    """GraphQL calls to the hub through the router at ``base`` with an admin token, as nobody or as a login."""

    def __init__(self, base: str, token: str, wait: float) -> None:
        self.base, self.token, self.wait = base, token, wait

    def call(self, what: str, query: str, variables: dict[str, Any] | None = None, login: str | None = None) -> Any:
        """The ``data`` of one operation (``what``: its name, the field read back); advice on any failure."""
        extra = {HUB_AUTHORIZATION_HEADER: f"Bearer {login}"} if login else {}
        body = {"query": query, "variables": variables or {}}
        deadline = time.monotonic() + self.wait
        while True:
            status, headers, raw = asyncio.run(send_request("POST", self.base, "/graphql", self.token, body, extra))
            retry = headers.get("Retry-After", "")
            if status == 503 and retry.isdigit() and time.monotonic() + int(retry) < deadline:
                time.sleep(max(1, int(retry)))
                continue
            break
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            shown = raw[:200].decode(errors="replace") or "(empty)"
            raise CliError(f"{self.base}/graphql answered HTTP {status}, not JSON ({shown}): is the hub Tabby?")
        if status != 200 or "error" in answer:
            raise _router_refusal(self.base, status, answer)
        errors = answer.get("errors") or []
        if errors:
            message = str(errors[0].get("message", errors[0])) if isinstance(errors[0], dict) else str(errors[0])
            raise HubError(what, message)
        data = answer.get("data") or {}
        if what not in data:
            raise CliError(f"the hub answered {what} without it ({str(answer)[:200]}): is the hub Tabby 0.32?")
        return data[what]


class HubError(CliError):
    """A GraphQL error of the hub: the operation and Tabby's message."""

    def __init__(self, operation: str, message: str) -> None:
        self.operation, self.message = operation, message
        super().__init__(f'the hub refused {operation}: "{message}"')


def _router_refusal(base: str, status: int, answer: dict[str, Any]) -> CliError:
    error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
    assert isinstance(error, dict)
    code, message = str(error.get("code", "")), str(error.get("message", ""))
    if status == 404 and code in ("hub-off", "unknown-path"):
        return _hub_off(base)
    if code in ("hub-closed", "hub-header-admin-only"):
        return CliError(
            f"the router at {base} did not take the token as an admin token on the hub's paths ({code}).",
            f"Pass an admin token of that router (--admin-token or ${TOKEN_ENV}); a router without one makes none "
            f"admin here: add one with `{MAKE_TOKEN}` and restart or reload it.",
        )
    if status == 503:
        return CliError(f"the hub did not start in time ({code}: {message}).", "Try again, or see its log.")
    return CliError(f"the router at {base} refused POST /graphql: HTTP {status} {code}: {message}")


def _hub_off(base: str) -> CliError:
    return CliError(
        f"the router at {base} has no hub (hub-off).",
        "Set [hub] enabled = true in its fleet.toml (docs/CONFIGURATION.md, [hub]), then restart or deploy it.",
    )


def new_password() -> str:
    """A strong password Tabby takes: 20 characters (its maximum) with every class it asks for."""
    alphabet = string.ascii_letters + string.digits + PASSWORD_SYMBOLS
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(20))
        classes = (string.ascii_lowercase, string.ascii_uppercase, string.digits, PASSWORD_SYMBOLS)
        if all(any(c in chars for c in password) for chars in classes):
            return password


def cmd_bootstrap(args: argparse.Namespace) -> int:
    settings = load_for_command(args)
    hub = settings.hub
    try:
        teams = list(dict.fromkeys(slug(team, "--team") for team in args.team))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    domain = args.email_domain or f"hub.{settings.modal.app_name}"
    token = admin_token(args)
    if not token:
        raise CliError(
            "an admin token is needed: the router lets only admins reach a hub without an owner as nobody.",
            f"Pass --admin-token TOKEN or set {TOKEN_ENV}; make one with `{MAKE_TOKEN}`.",
        )
    base = router_base(args.url)
    call_router("GET", args.url, "/fleet/entries", token)  # the router is there and takes the token (advice if not)
    if call_router("GET", args.url, "/fleet/health", token).get("hub") is None:
        raise _hub_off(base)
    password = sys.stdin.readline().rstrip("\r\n") if args.owner_password_stdin else None
    graphql = HubGraphQL(base, token, args.wait)
    login = _owner_login(graphql, args.owner_email, password)
    owner = graphql.call("me", ME, login=login)
    if not owner.get("isAdmin"):
        raise CliError(f"{args.owner_email} is not an admin of the hub: log in as its owner (--owner-email).")
    existing = {edge["node"]["email"] for edge in graphql.call("users", USERS, login=login)["edges"]}
    created: dict[str, str] = {}
    for team in teams:
        email = f"{team}@{domain}"
        if email in existing:
            print(f"team {team}: its hub user {email} exists already; its token is not shown again.")
            continue
        created[team] = _team_user(graphql, login, team, email)
        print(f"team {team}: hub user {email} created.")
    _print_next(hub, settings.hub.secret, created, [t for t in teams if t not in created], teams)
    _print_seats(graphql.call("license", LICENSE, login=login), hub)
    return 0


def _owner_login(graphql: HubGraphQL, email: str, password: str | None) -> str:
    """The owner's login JWT: registered now when the hub has no owner, else a login with the given password."""
    if graphql.call("serverInfo", SERVER_INFO)["isAdminInitialized"]:
        if password is None:
            raise CliError(
                "the hub already has an owner; this command does not make another.",
                "To add team users, log in as the owner: fleet hub bootstrap --owner-email OWNER_EMAIL "
                "--owner-password-stdin --team ... < a file holding the owner's password (or type it).",
            )
        return str(graphql.call("tokenAuth", TOKEN_AUTH, {"email": email, "password": password})["accessToken"])
    made = password is None
    password = password or new_password()
    variables = {"email": email, "password1": password, "password2": password, "invitationCode": None, "name": "owner"}
    try:
        answer = graphql.call("register", REGISTER, variables)
    except HubError as exc:
        if exc.message == "Invitation code is not valid":  # someone registered first, since serverInfo
            raise CliError(
                "the hub got an owner while this command ran (someone registered first).",
                "If it was not you, the hub is someone else's: stop the router, delete the hub's data, and "
                "bootstrap again with [hub] ui_open = false.",
            ) from None
        raise
    print(f"Owner {email} registered: the hub's owner (admin of its users and settings).")
    if made:
        print(f"Its password (shown once; keep it in your password manager): {password}")
    print("With an owner, [hub] ui_open = true may let Tabby's own logins (its web UI) through the router.")
    return str(answer["accessToken"])


def _team_user(graphql: HubGraphQL, login: str, team: str, email: str) -> str:
    """A new hub user for ``team`` (invited by the owner, registered with the code); its auth token."""
    pending = _invitation(graphql, login, email=email)
    if pending is None:
        made = graphql.call("createInvitation", CREATE_INVITATION, {"email": email}, login=login)
        pending = _invitation(graphql, login, ident=str(made))
        if pending is None:
            raise CliError(f"the hub made invitation {made} for {email} but does not list it: is the hub Tabby 0.32?")
    password = new_password()  # never shown: the team's user is used by its auth token only
    variables = {"email": email, "password1": password, "password2": password, "invitationCode": pending["code"]}
    answer = graphql.call("register", REGISTER, {**variables, "name": team})
    return str(graphql.call("me", ME, login=str(answer["accessToken"]))["authToken"])


def _invitation(graphql: HubGraphQL, login: str, *, email: str = "", ident: str = "") -> dict[str, Any] | None:
    for edge in graphql.call("invitations", INVITATIONS, login=login)["edges"]:
        node = edge["node"]
        if node["email"] == email or node["id"] == ident:
            return dict(node)
    return None


def _print_next(hub: HubOptions, secret: str, created: dict[str, str], kept: list[str], teams: list[str]) -> None:
    value = json.dumps(created)
    print()
    if not created:
        print(f"No new hub user: {TEAM_TOKENS_ENV} stays as it is.")
        return
    print(f"{TEAM_TOKENS_ENV} (the new users' tokens, shown once):\n\n  {value}\n")
    if kept:
        print(f"Merge it with the tokens you already hold for {', '.join(kept)} (not shown again).\n")
    not_served = [team for team in teams if not hub.serves(team)]
    if not_served:
        print(f"Note: [hub] teams does not list {', '.join(not_served)}: add them, or their IDEs get no panel.\n")
    print("Next, on Modal (--force replaces the whole Secret: give its other keys their current values):\n")
    print(f"  modal secret create {secret} {JWT_SECRET_ENV}=<its UUID> {ROUTER_TOKEN_ENV}=<the hub's fleet token> \\")
    print(f"      {TEAM_TOKENS_ENV}='{value}' --force")
    print("  fleet deploy\n")
    print("Or locally, restart the router with it in its environment:\n")
    print(f"  {TEAM_TOKENS_ENV}='{value}' fleet up\n")


def _print_seats(license_info: dict[str, Any], hub: HubOptions) -> None:
    used, seats = int(license_info.get("seatsUsed", 0)), int(license_info.get("seats", 0))
    kind, status = license_info.get("type"), license_info.get("status")
    print(f"Seats: {used} used of {seats} (Tabby licence {kind}, {status}); [hub] licence_seats = {hub.licence_seats}.")
    if used > hub.licence_seats:
        print(f"Warning: {used} active users is more than [hub] licence_seats ({hub.licence_seats}).")
