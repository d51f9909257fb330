"""A request's head, read once: the routing headers, the request id, and the headers that may go upstream.

Hop-by-hop headers (RFC 9110 7.6.1, and those named in ``Connection``) are never forwarded, in either
direction; nor are the client's token, the routing headers (the backend never sees a fleet token),
``X-Fleet-Hub-Authorization`` (an admin's hub token: fleet/hub_paths.py::hub_pass decides what becomes of it)
and ``Cookie`` (a browser's session with the hub: the hub's relay alone sends it on).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from router.observe import REQUEST_ID, new_request_id

Scope = MutableMapping[str, Any]

# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded, in either direction. The client's
# Authorization is its team token: the backend never sees it. Host and Content-Length are set anew.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
     b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)  # fmt: skip
# Expect: the router has read the whole body already; a 100 Continue from the backend means nothing
# to anyone (uvicorn answered the client's own Expect).
NOT_FORWARDED = HOP_BY_HOP | {
    b"authorization", b"host", b"content-length", b"expect", b"x-tabby-team", b"x-tabby-model", b"x-request-id",
    b"x-tabby-user",  # the router says who is asking (from the token or team), never the client
    b"x-fleet-hub-authorization",  # an admin's hub token: read by the hub relay, sent on as Authorization or refused
    b"cookie",  # a browser's cookies for the hub's pages (its session): kept for the hub only (RequestHead.cookies)
}  # fmt: skip


class RequestHead:
    """What the proxy needs from the request's headers, read in one pass over the raw pairs."""

    __slots__ = ("authorization", "content_length", "cookies", "count", "forwarded", "hub_authorization", "model",
                 "raw_path", "request_id", "size", "team")  # fmt: skip

    def __init__(self, scope: Scope) -> None:
        self.authorization = self.team = self.model = self.hub_authorization = None
        self.content_length = self.size = 0
        self.cookies: list[bytes] | None = None  # Cookie lines, for the hub's relay only: an entry never sees them
        connection = request_id = None
        forwarded: list[tuple[bytes, bytes]] = []
        headers = scope["headers"]
        for name, value in headers:
            self.size += len(name) + len(value)
            if name in NOT_FORWARDED:
                if name == b"authorization":
                    self.authorization = value.decode("latin-1")
                elif name == b"x-tabby-team":
                    self.team = value.decode("latin-1")
                elif name == b"x-tabby-model":
                    self.model = value.decode("latin-1")
                elif name == b"x-fleet-hub-authorization":
                    self.hub_authorization = value.decode("latin-1")
                elif name == b"content-length" and value.isdigit():
                    self.content_length = int(value)
                elif name == b"connection":  # a list: each field line adds to it (RFC 9110 5.3)
                    connection = value if connection is None else connection + b"," + value
                elif name == b"x-request-id" and REQUEST_ID.match(value):
                    request_id = value.decode("ascii")
                elif name == b"cookie":
                    self.cookies = [value] if self.cookies is None else [*self.cookies, value]
                continue
            forwarded.append((name, value))
        if connection:
            forwarded = drop_connection_listed(forwarded, connection)
        self.request_id: str = request_id or new_request_id()
        forwarded.append((b"x-request-id", self.request_id.encode()))
        self.forwarded = forwarded
        self.count = len(headers)
        self.raw_path: bytes = scope.get("raw_path") or scope["path"].encode()


def drop_connection_listed(headers: list[tuple[bytes, bytes]], connection: bytes) -> list[tuple[bytes, bytes]]:
    """Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1)."""
    listed = {token.strip().lower() for token in connection.split(b",")} - {b"keep-alive", b"close", b""}
    if not listed:
        return headers
    return [(name, value) for name, value in headers if name not in listed]
