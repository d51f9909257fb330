"""The small fleets (fleet.toml text) that more than one test file starts from, written once here.

A fleet that only one file uses stays in that file, next to the tests that read it.
"""

from __future__ import annotations

import hashlib

SMALL_AND_LARGE = """\
[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"

[[entries]]
name = "large"
model = "TabbyML/StarCoder-7B"
"""
"""Two stand-in entries, "small" (StarCoder-1B) and "large" (StarCoder-7B), nothing else: the fleet
the IDE-agent, cold-start, warm-hours and Modal cold-start tests start from."""


def small_and_large(large: str = "", *, router: str = "", then: str = "") -> str:
    """:data:`SMALL_AND_LARGE` with a test's own additions: ``large``, keys of the large entry (its
    fallback, cold_wait, standin, gpu, warm hours); ``router``, keys of a ``[router]`` table put before
    the entries; ``then``, tables after them (more entries, teams). Each part is TOML text."""
    parts = [f"[router]\n{router}" if router else "", SMALL_AND_LARGE + large.lstrip("\n"), then]
    return "\n".join(part.strip("\n") + "\n" for part in parts if part)


def rude(url: str, router: str) -> str:
    """One entry, "rude", an external backend at ``url`` taking 64 requests at once: the fleet of the
    rude-backend suites (test_upstream_conformance, test_upstream_attacks), in front of a
    :mod:`tests.support.rude_backend`. ``router`` is the keys of its ``[router]`` table (the suite's
    timeouts and limits)."""
    return f"""\
[router]
{router.strip()}

[[entries]]
name = "rude"
model = "TabbyML/StarCoder-1B"
url = "{url}"
max_inputs = 64
"""


def guarded(admin_token: str) -> str:
    """One stand-in entry, "small", behind ``admin_token`` (its sha256 in ``router.admin_token_sha256``):
    the fleet of tests of the admin-only endpoints (usage, the status page's login)."""
    return f"""
[router]
admin_token_sha256 = ["{hashlib.sha256(admin_token.encode()).hexdigest()}"]

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
"""
