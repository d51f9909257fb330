"""``fleet token new / list / revoke / enable``: team and admin tokens, written into the settings file.

A token is shown once; the settings keep its sha256 and a label. ``--write`` edits the file with
tomlkit, so its comments and layout survive, and writes it only if the result still loads. With
``--url`` the commands act on a running router instead (apps/cli/token_remote.py). ``enable`` moves an
open fleet to tokens in one write; until then ``new --write`` keeps a half-moved fleet loadable and open
(router.auth = "open"). Every write is atomic: written aside, loaded, renamed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apps.cli.common import CliError, access_summary, load_for_command, text_table
from apps.cli.reload import add_router_options
from apps.cli.token_remote import remote_list, remote_new, remote_revoke
from fleet.loading import SettingsError, load_settings, resolve_config_path
from fleet.rules import auth_move_advice
from fleet.settings import PACKAGED_EXAMPLE, FleetSettings
from fleet.tokens import ADMIN_TOKEN_PREFIX, LEGACY_LABEL, TEAM_TOKEN_PREFIX, TokenRef, hash_token, new_token

if TYPE_CHECKING:
    from tomlkit.container import Container
    from tomlkit.items import InlineTable, Table
    from tomlkit.toml_document import TOMLDocument


def add_token_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    """Register ``fleet token ...`` on the ``fleet`` command's subparsers."""
    token = sub.add_parser("token", help="Team and admin tokens: new, list, revoke, enable.")
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
    new.add_argument(
        "--stdin",
        action="store_true",
        help="take the token from standard input instead of making one: a developer's own hub token becomes "
        'their fleet token ([hub] identity = "user"); only its sha256 is kept',
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

    enable = token_sub.add_parser(
        "enable",
        help='Move an open fleet to tokens: a token for every team without one, and router.auth = "tokens", in '
        "one write.",
    )
    enable.add_argument("--label", default="team", help="the label of the tokens it issues (a slug; default: team)")
    with_config(enable)
    enable.set_defaults(func=cmd_token_enable)


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
    token = (
        _token_from_stdin(args) if args.stdin else new_token(ADMIN_TOKEN_PREFIX if args.admin else TEAM_TOKEN_PREFIX)
    )
    new = TokenRef(label=args.label, sha256=hash_token(token))
    holder_text = "an admin" if args.admin else f"team {holder.name!r}"
    if args.write:
        path = _writable_config(args.config)
        document = _read_document(path)
        _add_token(_holder_table(document, holder, path, create=True), holder.field, new)
        stay_open = not args.admin and _keeps_open(settings, holder.name)
        if stay_open:  # else the mix of teams with and without tokens would not load
            _set_auth(document, "open")
        written, remaining = _write_checked(path, document)
        if args.stdin:
            print(f"The token from standard input now belongs to {holder_text}, label {args.label!r}.")
        else:
            print(f"New token for {holder_text}, label {args.label!r} (shown once; give it to its holder):\n")
            print(f"  {token}\n")
        print(f"Added to {path}: {holder.where}.{holder.field} += {_inline(new)}")
        if stay_open:
            print(
                'Also set router.auth = "open" in [router]: other teams have no token yet, so the fleet stays '
                "open (and its settings load) until the move to tokens ends"
            )
        _print_remaining(remaining)
        move = auth_move_advice(written)
        if move:
            print(f"\nNext: {move}")
        print()
        if not args.admin and written.auth_mode == "open":
            print(
                "The router checks it only once the fleet is in token mode (fleet token enable) and it has re-read "
                "its settings (fleet reload, kill -HUP <pid of fleet up>, a restart; on Modal: fleet deploy)."
            )
            return 0
        print(_reload_advice("The running router accepts it only once it re-reads its settings:"))
        return 0
    line = f"{holder.field} = [" + ", ".join(_inline(t) for t in (*holder.tokens, new)) + "]"
    if not args.stdin:
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


def _token_from_stdin(args: argparse.Namespace) -> str:
    """The token a holder already has (a hub user's ``auth_...`` token), one line on standard input."""
    if args.url:
        raise CliError("--stdin works on the settings file (--write, then reload); drop --url")
    token = sys.stdin.readline().strip()
    if len(token) < 16 or any(ch.isspace() for ch in token):
        raise CliError(
            "standard input has no usable token (one line, at least 16 characters, no spaces); pipe it in: "
            "`printf '%s' \"$HUB_TOKEN\" | fleet token new --team T --label L --stdin --write`"
        )
    return token


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
    _, remaining = _write_checked(path, document)
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


def cmd_token_enable(args: argparse.Namespace) -> int:
    """The whole move of a fleet to tokens in one atomic write: a token for each team without one, printed
    once, and router.auth = "tokens"; refused, with what would not load, rather than half done."""
    settings = load_for_command(args, check_auth=False)  # also a half-moved or a broken mix
    _check_label(args.label)
    if not settings.teams:
        raise CliError(
            "there are no teams, so in token mode every request would be refused (401)",
            "add a [[teams]] table for each team (docs/CONFIGURATION.md), then run this again",
        )
    missing = [team.name for team in settings.teams if not team.token_digests]
    if not missing and settings.auth_mode == "tokens":
        print(
            f"Nothing to do: the fleet is in token mode already, and each of its {len(settings.teams)} "
            f"team{'s' if len(settings.teams) != 1 else ''} has a token (fleet token list)."
        )
        return 0
    path = _writable_config(args.config)
    document = _read_document(path)
    issued: list[tuple[str, str]] = []
    for name in missing:
        holder = _Holder(settings, name)
        token = new_token(TEAM_TOKEN_PREFIX)
        _add_token(
            _holder_table(document, holder, path, create=False),
            holder.field,
            TokenRef(label=args.label, sha256=hash_token(token)),
        )
        issued.append((name, token))
    _set_auth(document, "tokens")
    written, _ = _write_checked(path, document, whole=True)
    print(f'Moved {path} to tokens: router.auth = "tokens"', end="")
    if not issued:
        print(" (every team had a token already).")
    else:
        print(f", and a token labelled {args.label!r} for each team that had none.\n")
        print("Each token is shown once. Give each team its own; its developers put it in [server] of")
        print("~/.tabby-client/agent/config.toml (tabby-agent's settings, for VS Code, JetBrains and Vim):\n")
        width = max(len(name) for name, _ in issued)
        for name, token in issued:
            print(f'  {name.ljust(width)}   token = "{token}"')
    kept = [team.name for team in settings.teams if team.name not in missing]
    if kept:
        print(f"\nTeams that had tokens keep them: {', '.join(kept)}.")
    if written.auth_mode != "tokens":
        print(
            f'\nfleet: warning: the file says router.auth = "tokens", but the settings come out '
            f'"{written.auth_mode}": FLEET_ROUTER__AUTH (in the environment or .env) overrides it',
            file=sys.stderr,
        )
    print()
    print(
        _reload_advice(
            "The running router stays open until it re-reads its settings; from then on every request needs a "
            "team token (401 without), so hand out the tokens first:"
        )
    )
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


def _keeps_open(settings: FleetSettings, team: str | None) -> bool:
    """Whether a first token for ``team`` needs router.auth = "open" written with it, so that the settings
    still load: the mode is inferred, and another team would be left without a token."""
    others = [t for t in settings.teams if t.name != team]
    return settings.router.auth is None and any(not t.token_digests for t in others)


def _auth_note(settings: FleetSettings, team: str | None) -> str:
    """What else the fleet needs before this team's new token works (printed by `token new`): only the
    steps still missing."""
    without = [t.name for t in settings.teams if not t.token_digests and t.name != team]
    if settings.router.auth == "tokens":
        return ""  # the token works once the router re-reads its settings
    if settings.router.auth == "open":
        if not without:
            return (
                'Note: router.auth is "open", so tokens are not checked yet. With this token every team has one: '
                'the one step left is the mode, `fleet token enable` (or set router.auth = "tokens").'
            )
        return (
            f'Note: router.auth is "open", so tokens are not checked yet; still without a token: '
            f'{", ".join(without)}. `fleet token enable` gives them one and sets router.auth = "tokens".'
        )
    if without:
        return (
            f"Note: with tokens in use every team needs one, or it is locked out; still without a token: "
            f'{", ".join(without)}. Set router.auth = "open" in [router] too, so the settings load and the '
            f"fleet stays open meanwhile (`--write` does that for you); `fleet token enable` finishes the move."
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


def _write_checked(path: Path, document: TOMLDocument, *, whole: bool = False) -> tuple[FleetSettings, list[str]]:
    """Write the edited settings in place of ``path`` (atomically: written aside, loaded, renamed) if they
    still load but for the auth rules (all rules with ``whole``). Return them, and what `fleet check` will
    still report."""
    import shutil

    import tomlkit

    staged = path.with_name(f".{path.name}.fleet-edit-{os.getpid()}")
    staged.write_text(tomlkit.dumps(document), encoding="utf-8")
    try:
        shutil.copymode(path, staged)
        try:
            written = load_settings(staged, check_auth=False)
        except SettingsError as exc:
            raise CliError("the edited settings would not load, so nothing was written:", *exc.problems) from None
        try:
            load_settings(staged)
        except SettingsError as exc:
            if whole:
                raise CliError("the edited settings would not load, so nothing was written:", *exc.problems) from None
            remaining = exc.problems
        else:
            remaining = []
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return written, remaining


MOVE_COMMENT = "tokens are not checked yet; `fleet token enable` finishes the move"  # on router.auth = "open"


def _set_auth(document: TOMLDocument, mode: str) -> None:
    """router.auth = ``mode`` in the document's [router] table (made at its end when there is none), in
    its place. "open" gets :data:`MOVE_COMMENT`; "tokens" drops it (an admin's own comment stays)."""
    import tomlkit

    router = document.get("router")
    if router is None:
        router = tomlkit.table()
        document.add("router", router)
    router["auth"] = mode
    trivia = router["auth"].trivia
    if mode == "open":
        trivia.comment_ws, trivia.comment = "  ", f"# {MOVE_COMMENT}"
    elif MOVE_COMMENT in trivia.comment:
        trivia.comment_ws, trivia.comment = "", ""
