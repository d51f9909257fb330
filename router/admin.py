"""Who may see the fleet's configuration and usage, and who may change it: holders of an admin token.

Admin tokens are stored as sha256 (``router.admin_token_sha256``) and looked up by their digest in a dict,
like team tokens (why that leaks nothing: fleet.tokens.find_token); a client sends one as a Bearer token,
or (a browser, for the status page) as the password of HTTP Basic with any user name. With no admin token
configured, admin endpoints answer loopback clients only: a developer's local fleet works out of the box, a
deployed router reveals nothing.

What changes the fleet (reload, issuing and revoking tokens: :meth:`AdminAuth.require_change`) takes a
Bearer token only, never the browser's remembered Basic login, and refuses what a browser sends for another
site: a request whose ``Sec-Fetch-Site`` is not same-origin (or none: typed by the user), or whose
``Origin`` is not the router's own. A POST must also carry a JSON body, which an HTML form cannot send.
So a page on another origin (even another port of 127.0.0.1, where loopback clients are admins) cannot
make the admin's browser change the fleet.
"""

from __future__ import annotations

import base64
import ipaddress
from urllib.parse import urlsplit

from fastapi import Request

from fleet.errors import FleetError
from fleet.settings import FleetSettings
from fleet.tokens import find_token

BASIC_CHALLENGE = 'Basic realm="tabby-fleet"'  # a 401 from a page carries it, so the browser asks for a login


class AdminAuth:
    def __init__(self, settings: FleetSettings, *, loopback_admin: bool = True) -> None:
        """``loopback_admin``: with no admin token, loopback clients are admins. Off where no client is
        local and the client address is another's to fill in (on Modal the router answers nobody then)."""
        self._digests = {bytes.fromhex(d): True for d in settings.router.admin_token_digests}
        self._loopback_admin = loopback_admin

    def allows(self, request: Request) -> bool:
        try:
            self.require(request)
        except FleetError:
            return False
        return True

    def is_admin_bearer(self, authorization: str | None) -> bool:
        """Whether ``authorization`` is ``Bearer <an admin token>`` (for the hub, which must not receive it)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        return scheme.lower() == "bearer" and bool(token) and find_token(token, self._digests) is not None

    def require(self, request: Request, *, bearer_only: bool = False) -> None:
        """Return if the request may see admin endpoints, else raise 401/403. ``bearer_only``: the token must
        come as a Bearer token (a change), not as HTTP Basic's password (a browser's remembered login)."""
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
        authorization = request.headers.get("authorization", "")
        if bearer_only and authorization.partition(" ")[0].lower() != "bearer":
            raise FleetError(
                401,
                "admin-bearer-required",
                "changing the fleet takes 'Authorization: Bearer <admin token>' (fleet reload, fleet token ... "
                "--url), not the status page's browser login",
            )
        token = _presented_token(authorization)
        if not token:
            raise FleetError(
                401,
                "admin-token-missing",
                "send 'Authorization: Bearer <admin token>' (a browser: log in with any user name and the admin "
                "token as the password)",
            )
        if find_token(token, self._digests) is None:  # one dict lookup, like team tokens
            raise FleetError(403, "admin-token-invalid", "that token is not an admin token of this router")

    def require_change(self, request: Request) -> None:
        """Return if the request may change the fleet: not sent by a browser for another site, from an admin
        with a Bearer token, and (a POST) with a JSON body; else 403, 401 or 415 with advice."""
        refuse_cross_site(request)
        self.require(request, bearer_only=True)
        if request.method == "POST":
            kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
            if kind != "application/json":
                raise FleetError(
                    415,
                    "json-body-required",
                    f"{request.url.path} takes a JSON body: send 'Content-Type: application/json' and a JSON "
                    f"object ({{}} when there is nothing to say); got {kind or 'no Content-Type'}",
                )


def refuse_cross_site(request: Request) -> None:
    """403 for what a browser sends on behalf of another site or origin (a form or script elsewhere)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise FleetError(
            403,
            "cross-site-request",
            f"the browser says this request comes from another site (Sec-Fetch-Site: {fetch_site}); changes to "
            "the fleet are made with `fleet reload` and `fleet token ... --url`, or curl, not from web pages",
        )
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, request):
        raise FleetError(
            403,
            "cross-site-request",
            f"Origin {origin[:100]!r} is not this router's; changes to the fleet are made with `fleet reload` "
            "and `fleet token ... --url`, or curl, not from other web pages",
        )


def _same_origin(origin: str, request: Request) -> bool:
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()


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
