"""The small fleets (fleet.toml text) that more than one test file starts from, written once here.

A fleet that only one file uses stays in that file, next to the tests that read it.
"""

from __future__ import annotations

import hashlib
import json

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


# A fleet with the hub on (the stand-in hub, as `fleet up` runs it without a tabby binary): token mode, team
# frontend offered the hub, team backend not, team hub the one the hub's chat calls the router as. Each team's
# raw token, the hub users' tokens and the environment `fleet up` needs: HUB_ENV.
HUB_TOKENS = {"frontend": "tft_hub-frontend-token", "backend": "tft_hub-backend-token", "hub": "tft_hub-router-token"}
HUB_ADMIN = "tfa_hub-admin-token"
HUB_USERS = {"frontend": "auth_frontend0123456789"}  # the frontend team's hub user token (identity = "team")
HUB_USER_NAMES = {"auth_frontend0123456789": "frontend-user"}  # the stand-in hub's users: token -> name
HUB_ENV = {
    "FLEET_HUB_TEAM_TOKENS": json.dumps(HUB_USERS),
    "FLEET_HUB_STANDIN_USERS": json.dumps(HUB_USER_NAMES),
    "FLEET_HUB_ROUTER_TOKEN": HUB_TOKENS["hub"],
}


def with_hub(hub: str = "") -> str:
    """Entry "small" (StarCoder-1B, chat Qwen2-1.5B) and the hub, with ``hub``'s extra keys of ``[hub]``."""

    def tokens(team: str) -> str:
        return f'tokens = [{{label = "t", sha256 = "{hashlib.sha256(HUB_TOKENS[team].encode()).hexdigest()}"}}]'

    admin = hashlib.sha256(HUB_ADMIN.encode()).hexdigest()
    return f"""\
[router]
auth = "tokens"
admin_tokens = [{{label = "ops", sha256 = "{admin}"}}]

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"

[[teams]]
name = "frontend"
{tokens("frontend")}

[[teams]]
name = "backend"
{tokens("backend")}

[[teams]]
name = "hub"
{tokens("hub")}

[hub]
enabled = true
teams = ["frontend"]
chat_entry = "small"
router_team = "hub"
{hub.strip()}
"""
