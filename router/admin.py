"""Who may see the fleet's configuration and usage: holders of an admin token.

Admin tokens are stored as sha256 (``router.admin_token_sha256``) and compared in constant time, like
team tokens; a client sends one as a Bearer token, or (a browser, for the status page) as the password of
HTTP Basic with any user name. With no admin token configured, admin endpoints answer loopback clients only: a
developer's local fleet works out of the box, a deployed router reveals nothing.
"""

from __future__ import annotations

import base64
import ipaddress

from fastapi import Request

from fleet.errors import FleetError
from fleet.settings import FleetSettings
from fleet.tokens import match_token

BASIC_CHALLENGE = 'Basic realm="tabby-fleet"'  # a 401 from a page carries it, so the browser asks for a login


class AdminAuth:
    def __init__(self, settings: FleetSettings, *, loopback_admin: bool = True) -> None:
        """``loopback_admin``: with no admin token, loopback clients are admins. Off where no client is
        local and the client address is another's to fill in (on Modal the router answers nobody then)."""
        self._digests = tuple((bytes.fromhex(d), True) for d in settings.router.admin_token_digests)
        self._loopback_admin = loopback_admin

    def allows(self, request: Request) -> bool:
        try:
            self.require(request)
        except FleetError:
            return False
        return True

    def require(self, request: Request) -> None:
        """FastAPI dependency: return if the request may see admin endpoints, else raise 401/403."""
        if not self._digests:
            if self._loopback_admin and _is_loopback(request.client.host if request.client else ""):
                return
            where = "only local clients" if self._loopback_admin else "nobody on Modal"
            raise FleetError(
                403,
                "admin-not-configured",
                f"admin endpoints answer {where} until an admin token is set: run "
                "`fleet token new --admin --label <who> --write` (it adds the hash to router.admin_tokens), then "
                "reload or redeploy",
            )
        token = _presented_token(request.headers.get("authorization", ""))
        if not token:
            raise FleetError(
                401,
                "admin-token-missing",
                "send 'Authorization: Bearer <admin token>' (a browser: log in with any user name and the admin "
                "token as the password)",
            )
        if match_token(token, self._digests) is None:  # constant time, like team tokens
            raise FleetError(403, "admin-token-invalid", "that token is not an admin token of this router")


def _presented_token(authorization: str) -> str:
    """The admin token of an ``Authorization`` header: a Bearer token, or the password of HTTP Basic (which
    a browser can send to a page, /fleet/status); "" when there is none."""
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]  # any user name
    return ""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
