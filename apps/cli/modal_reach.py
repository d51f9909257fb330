"""Before `fleet deploy` or `fleet serve` hands over to Modal's CLI: can it sign in, and can it reach Modal?

Modal's CLI without credentials says so at once, but with credentials and no route to Modal it retries
for about a minute and then says only "Could not connect to the Modal server". :func:`modal_problems`
finds both in a few seconds (a TCP connection to Modal's API server, as configured by ``modal.config``:
``MODAL_SERVER_URL`` or ``~/.modal.toml``) and names the cause, each with the fix.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

CONNECT_SECONDS = 5.0  # Modal's API answers in well under a second where it can be reached


def modal_problems(timeout: float = CONNECT_SECONDS) -> list[str]:
    """Why `modal deploy` would fail before doing anything (no credentials, Modal not reachable); empty if none."""
    from modal.config import config

    if not (config.get("token_id") and config.get("token_secret")):
        return [
            "no Modal credentials: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new` (it writes "
            "~/.modal.toml); an account is made at modal.com"
        ]
    servers = [url.strip() for url in str(config.get("server_url")).split(",") if url.strip()]
    reasons = []
    for server in servers:
        reason = _unreachable(server, timeout)
        if reason is None:
            return []
        reasons.append(f"{server}: {reason}")
    hint = " (MODAL_SERVER_URL is set: is it right?)" if os.environ.get("MODAL_SERVER_URL") else ""
    return [
        f"cannot reach Modal's API server{hint}: {'; '.join(reasons)}. Check this machine's network (DNS, a "
        f"firewall, HTTPS_PROXY), then run this again; nothing was deployed"
    ]


def _unreachable(server: str, timeout: float) -> str | None:
    """None when a TCP connection to ``server`` opens within ``timeout`` seconds, else why not, in words."""
    parts = urlsplit(server)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme in ("https", "grpcs") else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"its name {host!r} does not resolve ({exc.strerror})"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
