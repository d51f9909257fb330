"""LiveTokens: team tokens issued and revoked on a running fleet, and when each token was last used.

Issuing and revoking are records in the state store (router/state.py, kind ``"token"``): ``issue`` (team,
label, sha256, created, expires), ``revoke`` (team, label, sha256, at; also for a token of the settings
file, so a restart or a redeploy that reads the same file never brings it back) and ``used`` (sha256, at).
Every router reads them all at start and the other routers' every 2 s, so a revocation reaches every
router sharing the store within seconds.

How they reach a request: :meth:`LiveTokens.install` builds the routing table's whole digest -> grant
mapping (the settings' tokens minus the revoked ones, plus the live ones not revoked) aside and puts it
in place with one assignment. It runs when records arrive and after a reload, never per request: a
request still costs one hash and one dict lookup, whatever the number of tokens or revocations.

Last used: the routing table assigns ``used[digest] = now`` per request (the dict is this object's,
shared by every version of the table); :meth:`produce` writes a token's time at most once per
``USED_RESOLUTION`` seconds of it, so the store grows with tokens in use, not with requests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleet.routing import RoutingTable
from fleet.settings import FleetSettings
from fleet.tokens import TokenGrant

log = logging.getLogger("router.tokens")

KIND = "token"  # the store's record kind (StateSync consumers and producers)
USED_RESOLUTION = 300.0  # seconds: "last used" is kept on disk to within five minutes
LIVE = "live"
SETTINGS = "settings"


@dataclass(frozen=True, slots=True)
class LiveToken:
    """A token issued on a running fleet (its sha256 only; the token itself was shown once)."""

    team: str
    label: str
    sha256: str
    created: float
    expires: float | None


@dataclass(frozen=True, slots=True)
class Revocation:
    team: str
    label: str
    at: float


class LiveTokens:
    def __init__(self) -> None:
        self.issued: dict[str, LiveToken] = {}  # sha256 hex -> token issued on a running fleet
        self.revoked: dict[str, Revocation] = {}  # sha256 hex -> its revocation (live and settings tokens)
        self.used: dict[bytes, float] = {}  # digest -> last use here; every routing table writes into it
        self._used_elsewhere: dict[str, float] = {}  # sha256 hex -> last use written by any router
        self._written: dict[bytes, float] = {}  # digest -> the last use this router wrote
        self.bad_records = 0

    # --- records: from the store, and made here ------------------------------------------------------

    def apply(self, records: list[dict[str, Any]]) -> None:
        """Take token records (read back from the store, or just written by this router)."""
        for record in records:
            try:
                self._apply(record)
            except (KeyError, TypeError, ValueError):
                self.bad_records += 1  # another version's record, or a damaged one: skipped, counted
                log.warning("token record skipped, not understood: %.200r", record)

    def _apply(self, record: dict[str, Any]) -> None:
        op = record["op"]
        digest = _hex(record["sha256"])
        if op == "issue":
            expires = record.get("expires")
            self.issued[digest] = LiveToken(
                str(record["team"]), str(record["label"]), digest, float(record["created"]),
                None if expires is None else float(expires),
            )  # fmt: skip
        elif op == "revoke":
            self.revoked.setdefault(digest, Revocation(str(record["team"]), str(record["label"]), float(record["at"])))
        elif op == "used":
            at = float(record["at"])
            if at > self._used_elsewhere.get(digest, 0.0):
                self._used_elsewhere[digest] = at
        else:
            raise ValueError(op)

    @staticmethod
    def issue_record(token: LiveToken) -> dict[str, Any]:
        return {
            "t": KIND, "op": "issue", "team": token.team, "label": token.label, "sha256": token.sha256,
            "created": token.created, "expires": token.expires,
        }  # fmt: skip

    @staticmethod
    def revoke_record(team: str, label: str, sha256: str, at: float) -> dict[str, Any]:
        return {"t": KIND, "op": "revoke", "team": team, "label": label, "sha256": sha256, "at": at}

    def produce(self) -> list[dict[str, Any]]:
        """StateSync producer: the last use of each token whose time moved by USED_RESOLUTION since written."""
        records = []
        for digest, at in list(self.used.items()):
            if at - self._written.get(digest, 0.0) >= USED_RESOLUTION:
                self._written[digest] = at
                records.append({"t": KIND, "op": "used", "sha256": digest.hex(), "at": round(at, 3)})
        return records

    # --- into the routing table ------------------------------------------------------------------

    def install(self, table: RoutingTable) -> None:
        """Give ``table`` the tokens to check, in one assignment each: not per request."""
        tokens: dict[bytes, TokenGrant] = {}
        revoked: dict[bytes, str] = {}
        for digest, grant in table.settings_tokens.items():
            if digest.hex() in self.revoked:
                revoked[digest] = grant.user
            else:
                tokens[digest] = grant
        for sha256, token in self.issued.items():
            digest = bytes.fromhex(sha256)
            user = f"{token.team}/{token.label}"
            if sha256 in self.revoked:
                revoked[digest] = user
            elif token.team in table.teams and digest not in tokens:  # a removed team's tokens do nothing
                tokens[digest] = TokenGrant(token.team, user, token.expires)
        table.used = self.used
        table.revoked = revoked
        table.tokens = tokens

    # --- what the endpoints ask ------------------------------------------------------------------

    def active(self, settings: FleetSettings, team: str) -> list[tuple[str, str, str]]:
        """The team's tokens not revoked: (label, sha256, source)."""
        found = []
        for holder in settings.teams:
            if holder.name == team:
                found += [(t.label, t.sha256, SETTINGS) for t in holder.labelled_tokens if t.sha256 not in self.revoked]
        found += [
            (t.label, t.sha256, LIVE) for t in self.issued.values() if t.team == team and t.sha256 not in self.revoked
        ]
        return found

    def listing(self, settings: FleetSettings) -> list[dict[str, Any]]:
        """Every token, the settings' first (team, label, hash prefix, source, created, last used, expires,
        revoked); never a whole hash, never a token."""
        rows = []
        for team in settings.teams:
            for token in team.labelled_tokens:
                rows.append(self._row(team.name, token.label, token.sha256, SETTINGS, None, None))
        for live in sorted(self.issued.values(), key=lambda t: t.created):
            rows.append(self._row(live.team, live.label, live.sha256, LIVE, live.created, live.expires))
        return rows

    def _row(
        self, team: str, label: str, sha256: str, source: str, created: float | None, expires: float | None
    ) -> dict[str, Any]:
        used = max(self.used.get(bytes.fromhex(sha256), 0.0), self._used_elsewhere.get(sha256, 0.0))
        revocation = self.revoked.get(sha256)
        return {
            "team": team, "label": label, "sha256_prefix": prefix(sha256), "source": source,
            "created": iso(created), "last_used": iso(used or None), "expires": iso(expires),
            "revoked": iso(revocation.at) if revocation else None,
        }  # fmt: skip


def prefix(sha256: str) -> str:
    """What a listing shows of a hash: enough to tell tokens apart, never enough to be one."""
    return sha256[:8]


def iso(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def _hex(value: Any) -> str:
    text = str(value).lower()
    bytes.fromhex(text)  # ValueError for anything but hex
    if len(text) != 64:
        raise ValueError(text)
    return text
