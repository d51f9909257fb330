"""``fleet status``: the status page's tables in a terminal, read from a running router over HTTP.

It fetches ``/fleet/usage?since=...``, ``/fleet/health`` and ``/fleet/entries`` (for the warm hours)
with the admin token and prints the rows ``router/status_page.py`` builds for the page, as aligned plain
text. Every failure is one piece of advice: the router is not there (start it, or name its URL), the
token is missing or wrong (how to pass one, how to make one), the window is not understood (the
router's own words).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from apps.cli.common import CliError, text_table
from router.status_page import Table, price_note, status_facts, status_tables, store_banner

DEFAULT_URL = "http://127.0.0.1:8080"  # where `fleet up` listens unless told otherwise (--host, --port)
TOKEN_ENV = "FLEET_ADMIN_TOKEN"
TIMEOUT_SECONDS = 10.0  # to connect, and between two pieces of an answer
DEADLINE_SECONDS = 30.0  # for all three answers: a body trickling in a byte at a time is not waited for
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a snapshot of a hundred teams on ten entries is a few hundred kB
# What each answer holds (key -> type; the items of a dict or list are objects): anything else is not a router.
Shape = dict[str, type[dict[str, Any]] | type[list[Any]]]  # key -> the JSON container its value must be
SHAPES: dict[str, Shape] = {
    "/fleet/usage": {"entries": dict, "teams": dict, "refusals": list},
    "/fleet/health": {"entries": dict},
    "/fleet/entries": {"entries": list},
}
MAKE_TOKEN = "fleet token new --admin --label NAME --write"


def add_status_command(sub: Any) -> None:
    """Register ``fleet status`` on the ``fleet`` command's subparsers."""
    help_text = "Show a running router's entries, teams, costs and refusals (what /fleet/status shows)."
    status = sub.add_parser("status", help=help_text, description=help_text)
    status.add_argument("--url", default=DEFAULT_URL, help=f"the router's URL (default {DEFAULT_URL}, fleet up's)")
    status.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help=f"an admin token of that router (default: ${TOKEN_ENV}, which other users cannot see in `ps`)",
    )
    status.add_argument(
        "--since",
        default="today",
        metavar="WHEN",
        help="the window: an ISO time, unix seconds, a duration back from now (15m, 24h, 7d) or 'today' "
        "(00:00 UTC; the default)",
    )
    status.add_argument(
        "--by",
        default="team",
        choices=("team", "token"),
        help="'token' adds a row per developer (team and token label)",
    )
    status.add_argument("--team", metavar="TEAM", help="that team's rows only")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    token = args.admin_token or os.environ.get(TOKEN_ENV) or None
    answers = fetch_status(
        args.url, token, args.since, by=args.by, team=args.team
    )  # CliError: printed by fleet's main, exit 1
    print(status_text(*answers))
    return 0


def fetch_status(
    url: str,
    token: str | None,
    since: str,
    *,
    deadline: float = DEADLINE_SECONDS,
    by: str = "team",
    team: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The usage snapshot, health and entries of the router at ``url``, or a CliError saying what to do;
    within ``deadline`` seconds (plus at most one TIMEOUT_SECONDS read) and MAX_ANSWER_BYTES an answer.
    Fetched with aiohttp, the router's own client: a runtime dependency, so this works after a plain install."""
    import aiohttp

    base = router_base(url)
    try:
        usage, health, entries = asyncio.run(_fetch_all(base, token, since, deadline, by, team))
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise CliError(
            f"the router at {base} took longer than {TIMEOUT_SECONDS:g} s to answer.",
            "Is it busy or stuck? Try again, or look at its log.",
        ) from None
    except (aiohttp.ClientError, ValueError) as exc:
        if base.startswith("https://") and isinstance(exc, aiohttp.ClientSSLError):
            raise CliError(
                f"{base} does not answer TLS ({exc}).",
                f"If it is `fleet up`'s router, it serves plain HTTP: --url http://{base.removeprefix('https://')}",
            ) from None
        raise CliError(
            f"cannot reach a router at {base} ({exc or type(exc).__name__}).",
            f"Is it running? Start one with `fleet up` (it listens on {DEFAULT_URL}), or pass --url with "
            f"your router's URL.",
        ) from None
    return usage, health, entries


class _Answer(NamedTuple):
    """What :func:`_check` reads of an answer besides its body."""

    status_code: int
    path: str


async def _fetch_all(
    base: str, token: str | None, since: str, deadline: float, by: str, team: str | None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(sock_connect=TIMEOUT_SECONDS, sock_read=TIMEOUT_SECONDS)
    answers = []
    ends = time.monotonic() + deadline
    usage_params = {"since": since, "by": by} | ({"team": team} if team is not None else {})
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        for path, params in (("/fleet/usage", usage_params), ("/fleet/health", {}), ("/fleet/entries", {})):
            async with session.get(f"{base}{path}", params=params, allow_redirects=False) as answer:
                body = await _read(answer.content.iter_any(), base, path, ends, deadline)
                answers.append(_check(_Answer(answer.status, path), body, base, token, since))
    usage, health, entries = answers
    return usage, health, entries


def router_base(url: str) -> str:
    """The router's address from --url (scheme, host, port; a path only where a proxy serves the router
    under one), or a CliError showing how to write it."""
    base = url.strip().rstrip("/")
    if "://" not in base:
        raise CliError(f"--url {url!r} has no scheme: write http://{base} (fleet up) or https://... (a Modal router).")
    parts = urlsplit(base)
    if parts.query or parts.fragment:
        raise CliError(
            f"--url {url!r} has a query or fragment: give the router's address alone, e.g. "
            f"--url {parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        )
    return base


async def _read(chunks: AsyncIterator[bytes], base: str, path: str, ends: float, deadline: float) -> bytes:
    """An answer's body, unless it takes past ``ends`` or grows past MAX_ANSWER_BYTES (CliError)."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise CliError(
                f"{base} answered {path} with more than {MAX_ANSWER_BYTES // 2**20} MB, larger than any "
                f"router's answer: is --url a tabby-fleet router's URL?"
            )
        if time.monotonic() > ends:
            raise CliError(
                f"{base} took longer than {deadline:g} s to answer {path}: is it a tabby-fleet router, and not "
                f"stuck? Try again, or look at its log."
            )
    return bytes(body)


def _check(response: _Answer, body: bytes, base: str, token: str | None, since: str) -> dict[str, Any]:
    """The JSON of a 200 answer of a router's shape, else CliError with advice."""
    path = response.path
    code, message = _error(body)
    if response.status_code == 200 and code != "not-json":
        answer = json.loads(body)
        if not _router_shaped(answer, SHAPES.get(path, {})):
            raise CliError(
                f"{base} answered {path} with JSON that is not a tabby-fleet router's: is --url the router's "
                f"URL (where `fleet up` listens, or the Modal router's URL)? (its answer: "
                f"{body[:200].decode(errors='replace')})"
            )
        return dict(answer)
    if response.status_code == 401:
        raise CliError(
            f"the router at {base} wants an admin token for {path}.",
            f"Pass --admin-token TOKEN or set {TOKEN_ENV}; make one with `{MAKE_TOKEN}`, then reload the router "
            f"(POST /fleet/reload or SIGHUP).",
        )
    if response.status_code == 403:
        fix = (
            f"check the token, or make a new one with `{MAKE_TOKEN}` (then reload the router)."
            if token
            else f"add an admin token to it with `{MAKE_TOKEN}`, reload it, and pass it here with --admin-token "
            f"or {TOKEN_ENV}."
        )
        raise CliError(f"the router at {base} refused {path} ({code}): {message}", f"Fix: {fix}")
    if code == "bad-since":
        raise CliError(f"--since {since!r} is not a window the router understands: {message}")
    if code in ("unknown-team", "bad-by"):
        raise CliError(f"the router refused {'--team' if code == 'unknown-team' else '--by'}: {message}")
    prefix = urlsplit(base).path
    if response.status_code == 404 and prefix and code == "unknown-path":
        address = base.removesuffix(prefix)
        raise CliError(
            f"{base} is not the router's address ({address} answered {path} with 404).",
            f"Pass the router's address alone: --url {address} (with a path only where a proxy serves the router "
            f"under one).",
        )
    if response.status_code == 404 and path == "/fleet/usage":
        raise CliError(
            f"{base} has no /fleet/usage: is it a tabby-fleet router, and one recent enough to count usage? "
            f"(its answer: {message})"
        )
    raise CliError(f"the router at {base} answered {path} with HTTP {response.status_code} ({code}): {message}")


def _router_shaped(answer: Any, shape: Shape) -> bool:
    if not isinstance(answer, dict):
        return False
    for key, kind in shape.items():
        value = answer.get(key)
        if not isinstance(value, kind):
            return False
        if not all(isinstance(item, dict) for item in (value.values() if isinstance(value, dict) else value)):
            return False
    return True


def _error(raw: bytes) -> tuple[str, str]:
    """The error code and message of a router answer; ("not-json", the text) when it is not JSON."""
    try:
        body = json.loads(raw)
    except ValueError:
        return "not-json", raw[:300].decode(errors="replace") or "(empty body)"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code", "")), str(error.get("message", ""))
    return "", ""


def status_text(snapshot: dict[str, Any], health: dict[str, Any], table: dict[str, Any] | None = None) -> str:
    """The status as plain text: the header facts, each table aligned, the price note; ``table`` is
    /fleet/entries' answer, for the warm hours (without it, or from a router that has none, no such column)."""
    facts = status_facts(snapshot, health)
    width = max(len(label) for label, _ in facts)
    lines = [f"{label.ljust(width)}  {value}" for label, value in facts]
    banner = store_banner(health)
    if banner is not None:
        lines += ["", f"WARNING: {banner}"]
    entries = (table or {}).get("entries", [])
    warm = {entry["name"]: entry["warm"] for entry in entries if "warm" in entry} or None
    for shown in status_tables(snapshot, health, warm):
        lines += ["", shown.title, *table_lines(shown)]
    lines += ["", price_note(snapshot)]
    return "\n".join(lines)


def table_lines(table: Table) -> list[str]:
    """A table's lines: header, rule, rows; numbers right-aligned; the 'empty' note when it has no rows."""
    if not table.rows:
        return [f"  ({table.empty})"]
    return text_table([table.header, *table.rows], table.numeric).splitlines()
