"""Names in the fleet (entries, teams, token labels) are slugs: short, lower-case, URL- and label-safe."""

from __future__ import annotations

import re

SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


def slug(value: str, what: str) -> str:
    """``value`` when it is a slug, else a ValueError naming ``what`` and suggesting one."""
    if not SLUG_PATTERN.match(value):
        raise ValueError(
            f"{what} {value!r} is not a slug: use 1-32 characters of a-z, 0-9 and '-', "
            f"starting and ending with a letter or digit (e.g. {slugify(value)!r})"
        )
    return value


def slugify(value: str) -> str:
    """A slug made from ``value``: lower case, other characters as '-', at most 32 characters."""
    found = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    return found[:32].strip("-") or "my-name"
