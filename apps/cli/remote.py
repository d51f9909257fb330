"""One admin call to a running router over HTTP (aiohttp), its failures as advice: for ``fleet reload`` and
``fleet token ... --url``.

The admin token comes from ``--admin-token`` or ``$FLEET_ADMIN_TOKEN`` (as for ``fleet status``) and goes
as a Bearer token; a body goes as JSON (the router takes changes only so: router/admin.py). A router that
is not there, a wrong URL, a missing or wrong token, an answer that is not a router's: each is a CliError
saying what to do (exit 1).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any

from apps.cli.common import CliError
from apps.cli.status import DEFAULT_URL, MAKE_TOKEN, TOKEN_ENV, router_base

TIMEOUT_SECONDS = 30.0  # the whole call: a reload re-reads the settings and may start no process
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a listing of 10,000 tokens is a few MB


def admin_token(args: Any) -> str | None:
    """--admin-token, else $FLEET_ADMIN_TOKEN, else None (a local router without admin tokens needs none)."""
    return getattr(args, "admin_token", None) or os.environ.get(TOKEN_ENV) or None


def call_router(method: str, url: str, path: str, token: str | None, body: Any = None) -> dict[str, Any]:
    """The JSON object a router at ``url`` answers ``method path`` with (2xx), else a CliError with advice."""
    base = router_base(url)
    status, _, raw = asyncio.run(send_request(method, base, path, token, body))
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CliError(
            f"{base} answered {method} {path} with HTTP {status} and no JSON object: is --url a tabby-fleet "
            f"router's URL (where `fleet up` listens, or the Modal router's)? (its answer: "
            f"{raw[:200].decode(errors='replace') or '(empty)'})"
        )
    if 200 <= status < 300:
        return answer
    found = answer.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    code, message = str(error.get("code", "")), str(error.get("message", ""))
    if status == 401 and code.startswith("admin-"):
        raise CliError(
            f"the router at {base} wants an admin token for {path} ({code}).",
            f"Pass --admin-token TOKEN or set {TOKEN_ENV}; make one with `{MAKE_TOKEN}`, then reload the router.",
        )
    if status == 403 and code == "admin-token-invalid":
        raise CliError(
            f"the router at {base} does not take that admin token ({code}).",
            f"Check --admin-token / {TOKEN_ENV}, or make a new one with `{MAKE_TOKEN}` (then reload the router).",
        )
    if status == 403 and code == "admin-not-configured":
        raise CliError(f"the router at {base} refused {path}: {message}")
    if status == 404 and code == "unknown-path":
        raise CliError(
            f"{base} has no {path} ({message}).",
            "Is --url the router's address alone, and the router recent enough to have it?",
        )
    choices = error.get("choices") or []
    shown = f" (choices: {', '.join(map(str, choices))})" if choices else ""
    raise CliError(f"the router at {base} refused {method} {path}: HTTP {status} {code}: {message}{shown}")


async def send_request(
    method: str, base: str, path: str, token: str | None, body: Any, extra: Mapping[str, str] | None = None
) -> tuple[int, Mapping[str, str], bytes]:
    """One request to the router at ``base`` (``router_base``): its status, headers and body (at most 16 MB);
    the admin ``token`` as a Bearer token, ``body`` as JSON, ``extra`` headers; a router not reached: CliError."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(extra or {})
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, base + path, headers=headers, json=body) as answer,
        ):
            raw = await answer.content.read(MAX_ANSWER_BYTES + 1)
            if len(raw) > MAX_ANSWER_BYTES:
                raise CliError(f"{base} answered {path} with more than 16 MB: is --url a tabby-fleet router's URL?")
            return answer.status, dict(answer.headers), raw
    except TimeoutError:
        raise CliError(
            f"the router at {base} took longer than {TIMEOUT_SECONDS:g} s to answer {path}.",
            "Is it busy or stuck? Try again, or look at its log.",
        ) from None
    except aiohttp.ClientSSLError as exc:
        raise CliError(
            f"{base} does not answer TLS ({exc}).",
            f"If it is `fleet up`'s router, it serves plain HTTP: --url http://{base.removeprefix('https://')}",
        ) from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise CliError(
            f"cannot reach a router at {base} ({exc or type(exc).__name__}).",
            f"Is it running? Start one with `fleet up` (it listens on {DEFAULT_URL}), or pass --url with your "
            f"router's URL.",
        ) from None
