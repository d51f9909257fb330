"""Tokens: the sha256 a token is known by, its lookup by that digest, and the holders of labelled tokens.

A token itself is never stored: a holder (a team, the admins) lists labelled hashes (:class:`TokenRef`)
and, in the legacy form, bare hashes that are labelled token-1, token-2, ... in list order.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import ClassVar, NamedTuple, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

from fleet.slugs import slug

T = TypeVar("T")

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
TEAM_TOKEN_PREFIX = "tft_"  # makes a leaked token easy to recognise (and to grep for) as a fleet token
ADMIN_TOKEN_PREFIX = "tfa_"
EXPIRY_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
MAX_EXPIRY = timedelta(days=3660)  # ten years: anything later is a typo
LEGACY_LABEL = "token-{}"  # the label of the n-th (1-based) hash of a legacy token_sha256 list


def new_token(prefix: str = TEAM_TOKEN_PREFIX) -> str:
    """A new token: the prefix and 256 bits of randomness."""
    return prefix + secrets.token_urlsafe(32)


def parse_expiry(text: str, now: datetime) -> datetime:
    """When a token given ``--expires text`` at ``now`` expires: ``90d`` (also ``12h``, ``2w``) from now, or an
    ISO date (its 00:00 UTC) or date-time (UTC unless it names its offset); a ValueError with advice else."""
    value = text.strip()
    shown = value if len(value) <= 40 else value[:37] + "..."
    match = re.fullmatch(r"(\d{1,6})([hdw])", value)
    when: datetime
    if match:
        when = now + timedelta(seconds=int(match[1]) * EXPIRY_UNITS[match[2]])
    else:
        try:
            if len(value) == 10:
                day = date.fromisoformat(value)
                when = datetime(day.year, day.month, day.day, tzinfo=UTC)
            else:
                when = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"expires {shown!r} is neither a duration nor an ISO date: write e.g. 90d, 12h, 2w, 2027-03-31 or "
                f"2027-03-31T18:00:00+02:00 (or null: never)"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    if when <= now:
        raise ValueError(f"expires {shown!r} is not in the future (now is {now.isoformat(timespec='seconds')})")
    if when - now > MAX_EXPIRY:
        raise ValueError(f"expires {shown!r} is more than ten years away; pick a nearer date, or null: never")
    return when


def token_digest(token: str) -> bytes:
    """The sha256 of a token: what a holder's hash is the hex of."""
    return hashlib.sha256(token.encode()).digest()


def hash_token(token: str) -> str:
    """The token_sha256 value for a token."""
    return token_digest(token).hex()


def find_token(token: str, known: Mapping[bytes, T]) -> T | None:
    """What ``token`` is known as: the value of its sha256 digest in ``known``, else None. One hash and one
    dict lookup, whatever the number of tokens (bench/token_lookup.py).

    Why a dict lookup, whose timing depends on the digest, leaks nothing usable: the attacker chooses the
    token, not its SHA-256 digest. Timing could at most reveal how far a presented token's digest agrees
    with a stored one (its hash bucket, or a compare that stops at the first differing byte); to use that,
    the attacker would need a token whose digest starts with chosen bytes, which is finding preimages of
    SHA-256, and a stored digest's prefix brings no token closer, since a token is 256 random bits
    (apps/cli/token.py). So the comparison need not be constant time; the former loop over every digest
    with hmac.compare_digest cost 39 us a request at 1,000 tokens and 198 us at 5,000.
    """
    return known.get(token_digest(token))


class TokenGrant(NamedTuple):
    """What a team token grants, as the routing table holds it by digest."""

    team: str
    user: str  # who holds it, "<team>/<label>" (X-Tabby-User)
    expires: float | None = None  # unix seconds; None: never (tokens of the settings file never expire)


def sha256_hexes(value: tuple[str, ...], field: str, command: str) -> tuple[str, ...]:
    """The hashes trimmed and lower-cased; a ValueError for one that is no sha256 hex digest."""
    hashes = tuple(h.strip().lower() for h in value)
    for digest in hashes:
        if not SHA256_PATTERN.match(digest):
            shown = digest if len(digest) <= 20 else digest[:17] + "..."
            raise ValueError(
                f"{field} entry {shown!r} is not a sha256 hex digest (64 characters 0-9a-f). "
                f"Paste the line printed by `{command}`; never the token itself"
            )
    return hashes


def legacy_hashes(field: str, command: str) -> AfterValidator:
    """The validator of a legacy list of bare hashes named ``field``, whose fix is to run ``command``."""

    def check(value: tuple[str, ...]) -> tuple[str, ...]:
        return sha256_hexes(value, field, command)

    return AfterValidator(check)


class TokenRef(BaseModel):
    """One token: who or what holds it (``label``) and its sha256. The token itself is never stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    sha256: str

    @field_validator("label")
    @classmethod
    def _slug_label(cls, value: str) -> str:
        return slug(value, "token label")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        return sha256_hexes((value,), "sha256", "fleet token new")[0]


class TokenHolder:
    """A holder of tokens: labelled ones in its ``TOKENS_FIELD``, legacy bare hashes in its ``LEGACY_FIELD``."""

    TOKENS_FIELD: ClassVar[str]
    LEGACY_FIELD: ClassVar[str]

    def held_tokens(self) -> tuple[TokenRef, ...]:
        """Labelled tokens first, then the legacy bare hashes labelled token-1, token-2, ... in list order."""
        tokens: tuple[TokenRef, ...] = getattr(self, self.TOKENS_FIELD)
        legacy: tuple[str, ...] = getattr(self, self.LEGACY_FIELD)
        return tokens + tuple(
            TokenRef.model_construct(label=LEGACY_LABEL.format(n), sha256=digest) for n, digest in enumerate(legacy, 1)
        )

    def held_digests(self) -> tuple[str, ...]:
        """The sha256 (hex) of every token held: what a bearer token is compared with."""
        return tuple(token.sha256 for token in self.held_tokens())

    def field_of(self, index: int) -> str:
        """The field that lists the ``index``-th of :meth:`held_tokens`."""
        return self.TOKENS_FIELD if index < len(getattr(self, self.TOKENS_FIELD)) else self.LEGACY_FIELD
