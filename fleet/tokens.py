"""Tokens: the sha256 a token is known by, its constant-time lookup, and the holders of labelled tokens.

A token itself is never stored: a holder (a team, the admins) lists labelled hashes (:class:`TokenRef`)
and, in the legacy form, bare hashes that are labelled token-1, token-2, ... in list order.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import ClassVar, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

from fleet.slugs import slug

T = TypeVar("T")

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
LEGACY_LABEL = "token-{}"  # the label of the n-th (1-based) hash of a legacy token_sha256 list


def token_digest(token: str) -> bytes:
    """The sha256 of a token: what a holder's hash is the hex of."""
    return hashlib.sha256(token.encode()).digest()


def hash_token(token: str) -> str:
    """The token_sha256 value for a token."""
    return token_digest(token).hex()


def match_token(token: str, known: Iterable[tuple[bytes, T]]) -> T | None:
    """What ``token`` is known as: the value beside its sha256 digest in ``known``, else None. In constant
    time: every digest is compared, with no early exit, so the answer's timing says nothing of the match."""
    digest = token_digest(token)
    found = None
    for known_digest, value in known:
        if hmac.compare_digest(digest, known_digest):
            found = value
    return found


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
