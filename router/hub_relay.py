"""The hub's HTTP paths: the chat panel's page and assets, GraphQL, the hub's own API, relayed to the one hub.

:func:`fleet.hub_paths.classify` decides which paths these are; this module sends them on. The request's
token is checked and mapped first (:class:`router.hub_access.HubAccess`: a fleet token becomes its team's hub
user token, an admin token is removed, or replaced by its ``X-Fleet-Hub-Authorization``, anything else passes
only where the hub is open); ``X-Tabby-*``
headers never reach the hub (Tabby reads the first ``X-Tabby-User`` as the user, reference §2). Cookies pass
both ways; the answer streams back chunk by chunk through the proxy's own forwarding (cancelled when the
client leaves), without ``X-Frame-Options`` or a CSP ``frame-ancestors`` (the panel is an iframe in the IDE).
Each request is counted to its team as usage kind ``hub``.

``<endpoint>/chat`` (``/teams/<t>/chat``, ``/models/<e>/chat``) is answered here with a 307 to ``/chat``,
its query kept: the panel's page lives at the origin root, where VS Code's webview finds it.
"""

from __future__ import annotations

from fleet.errors import FleetError
from fleet.hub import HUB_BACKEND
from fleet.hub_paths import chat_redirect
from fleet.routing import Route
from router.observe import CLIENT_LEFT, RequestRecord
from router.proxy import ClientGone, Message, Proxy, Receive, Scope, Send, check_head, read_body, refuse
from router.request_head import RequestHead
from router.usage import HUB

HUB_ROUTE = "hub"  # X-Fleet-Route of the hub's answers, and the route label in metrics and logs
HUB_CLOSED = FleetError(404, "hub-off", "this fleet has no hub (chat panel); Tabby's API is under /v1/...")


async def relay_to_hub(proxy: Proxy, scope: Scope, receive: Receive, send: Send) -> None:
    """One HTTP request to the hub: checked, its token mapped, forwarded, streamed back, counted."""
    state = proxy.state  # this request's version of the settings, even if they are reloaded
    head = RequestHead(scope)
    record = RequestRecord(head.request_id, scope["method"], scope["path"])
    record.entry, record.reason, record.kind = HUB_BACKEND, HUB_ROUTE, HUB
    try:
        try:
            access = state.hub
            if access is None:
                raise HUB_CLOSED
            check_head(state, scope, head)
            passed = access.authorize(scope["path"], head.authorization, head.hub_authorization)
            record.team = passed.team or "-"
            body = await read_body(receive, state.max_body, state.body_timeout)
        except FleetError as error:
            await refuse(send, error, record)
            return
        except ClientGone:
            record.status = CLIENT_LEFT
            return
        forwarded = [(name, value) for name, value in head.forwarded if not name.startswith(b"x-tabby-")]
        forwarded += [(b"cookie", value) for value in head.cookies or ()]  # the browser's session is the hub's
        if passed.authorization is not None:
            forwarded.append((b"authorization", passed.authorization.encode("latin-1")))
        route = Route(HUB_BACKEND, passed.team, HUB_ROUTE, head.raw_path.decode("latin-1"), HUB)
        await proxy.forward(scope, receive, framable(send), route, forwarded, body, record, None)
    finally:
        proxy.observer.finish(record)


def framable(send: Send) -> Send:
    """``send`` with the hub's answers made framable: a ``Content-Security-Policy``'s ``frame-ancestors`` directive
    removed (the header dropped when nothing else is left); the proxy already drops ``X-Frame-Options``."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = ((name, _without_frame_ancestors(name, value)) for name, value in message["headers"])
            message["headers"] = [(name, value) for name, value in headers if value]
        await send(message)

    return sending


def _without_frame_ancestors(name: bytes, value: bytes) -> bytes:
    if name != b"content-security-policy" or b"frame-ancestors" not in value.lower():
        return value
    kept = [part for part in value.split(b";") if (part.split() or [b""])[0].lower() != b"frame-ancestors"]
    return b";".join(kept).strip()


async def redirect_to_chat(scope: Scope, send: Send) -> None:
    """307 to ``/chat`` with the request's query: ``<endpoint>/chat?client=vscode`` -> ``/chat?client=vscode``."""
    location = chat_redirect(scope.get("query_string", b"").decode("latin-1"))
    headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 307, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
