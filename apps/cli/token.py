"""``fleet token new / list / revoke``: team and admin tokens, written into the settings file.

A token is shown once; the settings keep its sha256 and a label. ``--write`` edits the file with
tomlkit, so its comments and layout survive, and writes it only if the result still loads. With
``--url`` the commands act on a running router instead (apps/cli/token_remote.py).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apps.cli.common import CliError, access_summary, load_for_command, text_table
from apps.cli.reload import add_router_options
from apps.cli.token_remote import remote_list, remote_new, remote_revoke
from fleet.loading import SettingsError, load_settings, resolve_config_path
from fleet.settings import PACKAGED_EXAMPLE, FleetSettings
from fleet.tokens import ADMIN_TOKEN_PREFIX, LEGACY_LABEL, TEAM_TOKEN_PREFIX, TokenRef, hash_token, new_token

if TYPE_CHECKING:
    from tomlkit.container import Container
    from tomlkit.items import InlineTable, Table
    from tomlkit.toml_document import TOMLDocument


def add_token_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    """Register ``fleet token ...`` on the ``fleet`` command's subparsers."""
    token = sub.add_parser("token", help="Team and admin tokens: new, list, revoke.")
    token_sub = token.add_subparsers(title="token commands")

    def holder(cmd: argparse.ArgumentParser) -> None:
        who = cmd.add_mutually_exclusive_group(required=True)
        who.add_argument("--team", help="the team the token is for")
        who.add_argument("--admin", action="store_true", help="an admin token: /fleet/* details, /metrics, reload")
        cmd.add_argument("--label", required=True, help="who or what holds the token, e.g. alice-laptop (a slug)")
        with_config(cmd)
        running(cmd)

    def running(cmd: argparse.ArgumentParser) -> None:
        add_router_options(cmd, url_default=None)
        cmd.add_argument(
            "--expires",
            metavar="WHEN",
            help="with --url: when the token stops working: 90d, 12h, 2w, or an ISO date (default: never)",
        )

    new = token_sub.add_parser("new", help="Make a token for a team (or an admin): print it once, and its line.")
    holder(new)
    new.add_argument(
        "--write",
        action="store_true",
        help="add the token's line to the settings file (keeps its comments and layout) instead of printing it",
    )
    new.set_defaults(func=cmd_token_new)

    listing = with_config(token_sub.add_parser("list", help="Every token: team, label and a hash prefix."))
    add_router_options(listing, url_default=None)
    listing.set_defaults(func=cmd_token_list)

    revoke = token_sub.add_parser(
        "revoke", help="Remove a token from the settings file (then reload the router), or with --url revoke it live."
    )
    holder(revoke)
    revoke.set_defaults(func=cmd_token_revoke)


def cmd_token_new(args: argparse.Namespace) -> int:
    if args.url:
        return remote_new(args)
    _local_only(args)
    settings = load_for_command(args, check_auth=False)  # works while a fleet is moved to tokens team by team
    _check_label(args.label)
    holder = _holder(settings, args)
    if args.label in holder.labels:
        raise CliError(
            f"{holder.who} already has a token labelled {args.label!r} (labels: {', '.join(holder.labels)}); "
            f"pick another label, or revoke that token first (fleet token revoke {holder.flag} --label {args.label})"
        )
    token = new_token(ADMIN_TOKEN_PREFIX if args.admin else TEAM_TOKEN_PREFIX)  # 256 bits of randomness
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
    if args.url:
        return remote_list(args)
    settings = load_for_command(args, check_auth=False)
    rows = [("team", "label", "sha256", "listed in")]
    for team in settings.teams:
        for index, token in enumerate(team.labelled_tokens):
            rows.append((team.name, token.label, _prefix(token.sha256), _field(index, team.tokens, "token")))
    router = settings.router
    for index, token in enumerate(router.labelled_admin_tokens):
        rows.append(("(admin)", token.label, _prefix(token.sha256), _field(index, router.admin_tokens, "admin_token")))
    if len(rows) > 1:
        print(text_table(rows))
        print()
    else:
        print("no tokens\n")
    print(access_summary(settings))
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    if args.url:
        return remote_revoke(args)
    _local_only(args)
    settings = load_for_command(args, check_auth=False)
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


def _local_only(args: argparse.Namespace) -> None:
    if args.expires:
        raise CliError(
            "--expires is for tokens issued on a running router (add --url URL); tokens in the settings file "
            "do not expire (revoke them with `fleet token revoke`)"
        )


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
        "  local:  fleet reload   (POSTs /fleet/reload to http://127.0.0.1:8080; --url, --admin-token), or\n"
        "          kill -HUP <pid of fleet up>, or restart fleet up\n"
        "  Modal:  fleet deploy\n"
        "(On a running router, `fleet token new|revoke --url URL` works at once, without either.)"
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


def _holder_table(
    document: TOMLDocument, holder: _Holder, path: Path, *, create: bool
) -> Table | InlineTable | Container:
    import tomlkit

    if holder.name is None:
        router = document.get("router")
        if router is None:
            if not create:
                raise CliError(f"{path} has no [router] table, so the admin tokens come from elsewhere (FLEET_*)")
            router = tomlkit.table()
            document.add("router", router)
        return router
    teams: Iterable[Table | InlineTable] = document.get("teams") or []  # [[teams]] tables, or inline ones
    for table in teams:
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
