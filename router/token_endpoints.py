"""Team tokens on a running fleet: ``POST /fleet/tokens``, ``GET /fleet/tokens``, ``DELETE
/fleet/tokens/{team}/{label}``.

Issuing and revoking change the fleet, so they take what :meth:`AdminAuth.require_change` allows (an
admin's Bearer token, no cross-site browser request, a JSON body); listing is an admin read. Each change
is written to the state store before the answer (``StateSync.append_now``); when the store cannot keep
it, the answer is 503 and nothing has changed. Only then does the change reach this router's routing
table (router/live_tokens.py), and the other routers' within seconds, when they read the store back.
A token is in the answer of ``POST`` once; nothing else ever shows more than its hash's prefix.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from fleet.errors import FleetError
from fleet.slugs import slug
from fleet.tokens import TEAM_TOKEN_PREFIX, hash_token, new_token, parse_expiry
from router.endpoints import fleet_of, require_admin, require_admin_change
from router.live_tokens import SETTINGS, LiveToken, iso, prefix
from router.runtime import FleetRuntime
from router.store import StoreError

MAX_BODY_BYTES = 4096  # a team, a label and a date; anything bigger is not a token request
FIELDS = frozenset({"team", "label", "expires"})

_SOURCES = {SETTINGS: "in the settings file"}
ISSUED_HERE = "issued on the running fleet"
router = APIRouter(tags=["tokens"])


@router.post("/fleet/tokens", dependencies=[Depends(require_admin_change)], status_code=201)
async def issue_token(request: Request) -> JSONResponse:
    """Issue a team token on the running fleet (admin): body ``{"team", "label", "expires": "90d" | ISO date
    | null}``. The token is in this answer only; the store keeps its sha256."""
    fleet = fleet_of(request)
    body = await _json_object(request)
    team, label = _slug_field(body, "team"), _slug_field(body, "label")
    now = datetime.now(UTC)
    expires = body.get("expires")
    if expires is not None and not isinstance(expires, str):
        raise _bad("expires must be a duration such as 90d, an ISO date, or null (never)")
    try:
        when = parse_expiry(expires, now).timestamp() if expires else None
    except ValueError as exc:
        raise FleetError(400, "bad-expiry", str(exc)) from None
    _check_can_keep(fleet)
    settings = fleet.state.settings
    teams = [t.name for t in settings.teams]
    if team not in teams:
        raise FleetError(404, "unknown-team", f"there is no team {team!r} in this fleet; add it to fleet.toml", teams)
    taken = [found for found in fleet.live_tokens.active(settings, team) if found[0] == label]
    if taken:
        raise FleetError(
            409,
            "duplicate-label",
            f"team {team!r} already has a token labelled {label!r} ({_SOURCES.get(taken[0][2], ISSUED_HERE)}); pick "
            f"another label, or revoke that one first (fleet token revoke --team {team} --label {label} --url ...)",
        )
    token = new_token(TEAM_TOKEN_PREFIX)
    issued = LiveToken(team, label, hash_token(token), now.timestamp(), when)
    record = fleet.live_tokens.issue_record(issued)
    await _keep(fleet, [record], "issue the token")
    fleet.tokens_changed([record])
    return JSONResponse(
        {
            "token": token, "team": team, "label": label, "sha256_prefix": prefix(issued.sha256),
            "created": iso(issued.created), "expires": iso(when),
        },
        status_code=201,
        headers={"cache-control": "no-store"},
    )  # fmt: skip


@router.get("/fleet/tokens", dependencies=[Depends(require_admin)])
async def list_tokens(request: Request) -> JSONResponse:
    """Every team token (admin): team, label, hash prefix, source (settings file or live), created, last
    used, expires, revoked. Never a whole hash, never a token."""
    fleet = fleet_of(request)
    rows = fleet.live_tokens.listing(fleet.state.settings)
    return JSONResponse({"tokens": rows}, headers={"cache-control": "no-store"})


@router.delete("/fleet/tokens/{team}/{label}", dependencies=[Depends(require_admin_change)])
async def revoke_token(request: Request, team: str, label: str) -> JSONResponse:
    """Revoke the team's token labelled ``label`` (admin), whether issued live or listed in fleet.toml: kept
    in the store, so no restart or redeploy brings it back. Every router refuses it within seconds."""
    fleet = fleet_of(request)
    team, label = _slug_value(team, "team"), _slug_value(label, "label")
    _check_can_keep(fleet)
    settings = fleet.state.settings
    found = [t for t in fleet.live_tokens.active(settings, team) if t[0] == label]
    if not found:
        revoked = [r for r in fleet.live_tokens.revoked.values() if r.team == team and r.label == label]
        state = " (it is already revoked)" if revoked else ""
        labels = sorted({t[0] for t in fleet.live_tokens.active(settings, team)})
        raise FleetError(
            404,
            "unknown-token",
            f"team {team!r} has no token labelled {label!r} to revoke{state}; GET /fleet/tokens (fleet token list "
            f"--url ...) lists them",
            labels,
        )
    at = time.time()
    records = [fleet.live_tokens.revoke_record(team, label, sha256, at) for _, sha256, _ in found]
    await _keep(fleet, records, "revoke the token")
    fleet.tokens_changed(records)
    return JSONResponse(
        {
            "revoked": [
                {"team": team, "label": label, "sha256_prefix": prefix(sha256), "source": source, "at": iso(at)}
                for _, sha256, source in found
            ]
        }
    )


def _check_can_keep(fleet: FleetRuntime) -> None:
    """409 where live tokens would mean nothing (an open fleet) or be forgotten (no store)."""
    if not fleet.state.table.tokens_required:
        raise FleetError(
            409,
            "tokens-not-in-use",
            'this fleet does not check tokens (router.auth is "open"): move it to tokens in fleet.toml '
            "(fleet token enable) and reload, then issue more here",
        )
    if fleet.state_sync.store is None:
        raise FleetError(
            409,
            "no-token-store",
            "this router keeps no state store, so a token issued or revoked here would be forgotten at its next "
            "start; edit fleet.toml instead (fleet token new|revoke ... --write) and reload or redeploy",
        )


async def _keep(fleet: FleetRuntime, records: list[dict[str, Any]], what: str) -> None:
    """The records on disk, or 503 with advice (and nothing changed)."""
    try:
        await fleet.state_sync.append_now(records)
    except StoreError as exc:
        raise FleetError(
            503,
            "token-store-unavailable",
            f"cannot {what}: the state store cannot be written ({exc}), so nothing was changed; fix the store "
            "(space, permissions of data_dir; /fleet/health shows its state) and try again",
            retry_after=10,
        ) from None


async def _json_object(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise FleetError(413, "body-too-large", f"a token request is at most {MAX_BODY_BYTES} bytes of JSON")
    try:
        value = json.loads(body)
    except ValueError:
        raise _bad('the body is not JSON: send {"team": "...", "label": "...", "expires": "90d"}') from None
    if not isinstance(value, dict):
        raise _bad('the body must be a JSON object: {"team": "...", "label": "...", "expires": "90d"}')
    unknown = sorted(set(value) - FIELDS)
    if unknown:
        shown = ", ".join(repr(key[:40]) for key in unknown[:5])
        raise _bad(f"unknown fields {shown}; a token request has team, label and expires")
    return value


def _slug_field(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str):
        raise _bad(f"{field} is required, a string (a slug such as alice-laptop)")
    return _slug_value(value, field)


def _slug_value(value: str, field: str) -> str:
    if len(value) > 32:
        raise _bad(f"{field} is {len(value)} characters long; a {field} is a slug of at most 32 (a-z, 0-9, '-')")
    try:
        return slug(value, field)
    except ValueError as exc:
        raise _bad(str(exc)) from None


def _bad(message: str) -> FleetError:
    return FleetError(400, "bad-token-request", message)
