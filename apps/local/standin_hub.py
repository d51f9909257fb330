"""The stand-in hub: a test double of Tabby's webserver (the hub), for machines without a tabby binary
and for the tests. aiohttp, like apps/local/standin.py.

What it fakes, honestly:

- **Users** are a fixed table, ``FLEET_HUB_STANDIN_USERS`` = JSON ``{"auth_token": "user name"}``, never
  admins, plus the users registered in its database (apps/local/standin_accounts.py: the first
  ``register`` is the owner, later ones need an invitation; login JWTs signed with
  ``TABBY_WEBSERVER_JWT_TOKEN_SECRET``; the community licence's 5 seats). Auth follows Tabby's rules
  (reference/tabby-hub.md section 2): on ``/v1/*`` and ``/v1beta/*`` a missing or unknown
  ``Authorization: Bearer`` (an auth token or a login JWT) is a 401 with an empty body, health included;
  GraphQL answers ``UNAUTHORIZED`` for ``me``.
- **GraphQL** answers ``me``, ``serverInfo``, ``myThreads``, ``users``, ``invitations`` and ``license``, the
  mutations ``register``, ``tokenAuth`` and ``createInvitation`` over ``POST /graphql``
  (apps/local/standin_graphql.py), and the subscription ``createThreadAndRun`` over ``/subscriptions``. It
  recognises them by name: it is no GraphQL parser, returns whole objects whatever fields were selected
  (``me`` excepted), and answers anything else with a GraphQL error that says what it answers.
- **Threads** are real rows in SQLite at ``TABBY_ROOT/ee/db.sqlite`` in WAL mode (as Tabby keeps its
  data), so the hub's snapshots have something real to keep. Tabby's schema is not copied.
- **The Answer Engine** is one streamed answer that names the user: canned, or, with ``--chat-url``, a
  real streaming ``POST <chat-url>/chat/completions`` with ``Authorization: Bearer <chat-key>`` (the
  router), so the hub's chat really goes through the router.
- **WebSocket** ``/subscriptions`` speaks ``graphql-transport-ws`` and the legacy ``graphql-ws``; the
  token is ``connection_init.payload.authorization``. An unknown token is closed with 4401 (the
  protocol's Unauthorized); what Tabby's own server does there is UNVERIFIED.
- **Pages**: ``/`` and ``/chat`` are one small page of our own (Tabby's UI is not copied, ee/LICENSE)
  with ``/_next/static/standin.js``. It waits for ``postMessage({type: "init", fetcherOptions:
  {authorization: "<token>"}})`` from its parent: that is this stand-in's protocol, not Tabby's
  tabby-threads handshake. Then it asks GraphQL ``me``, runs one ``createThreadAndRun`` over
  ``ws(s)://<origin>/subscriptions`` (graphql-transport-ws), writes ``#me``, ``#answer`` and
  ``#status`` ("done") and posts ``{type: "done", me, answer}`` back to its parent.
- ``GET /stand-in/seen`` (for tests): each request's path, Authorization, ``x-tabby-*`` headers and
  whether ``modal-key`` was sent; each WebSocket's subprotocol and init payload.

Run: ``python -m apps.local.standin_hub --port P --chat-model M [--chat-url URL --chat-key K]``, with
``TABBY_ROOT`` in the environment (``--chat-key`` defaults to ``$FLEET_HUB_ROUTER_TOKEN``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sqlite3
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from apps.local.standin_accounts import Accounts
from apps.local.standin_graphql import answer_graphql
from apps.local.standin_page import PAGE_HTML, PAGE_SCRIPT
from fleet.hub import JWT_SECRET_ENV, ROUTER_TOKEN_ENV, STANDIN_USERS_ENV

log = logging.getLogger("tabby_fleet.standin_hub")

NOTICE = "tabby-fleet stand-in hub: a test double of Tabby's webserver, not Tabby"
USERS_ENV = STANDIN_USERS_ENV
TABBY_VERSION = "v0.32.0"  # the release whose webserver this stand-in imitates
PROTOCOLS = ("graphql-transport-ws", "graphql-ws")
INIT_TIMEOUT = 10.0  # seconds for the first WebSocket message
SEEN_KEPT = 1000  # requests and sockets remembered for /stand-in/seen


class ChatFailed(Exception):
    """The chat model (the router) did not answer; the message says what it said."""


class StandInHub:
    """The stand-in hub's state: its users, its database, what it has seen."""

    def __init__(
        self,
        root: Path,
        chat_model: str,
        users: dict[str, str],
        chat_url: str | None = None,
        chat_key: str = "",
        jwt_secret: str | None = None,
    ) -> None:
        self.chat_model = chat_model
        self.chat_url = chat_url.rstrip("/") if chat_url else None
        self.chat_key = chat_key
        self.requests: deque[dict[str, Any]] = deque(maxlen=SEEN_KEPT)
        self.sockets: deque[dict[str, Any]] = deque(maxlen=SEEN_KEPT)
        self.session: aiohttp.ClientSession | None = None
        (root / "ee").mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(root / "ee" / "db.sqlite")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS threads (id TEXT PRIMARY KEY, user TEXT NOT NULL, question TEXT NOT NULL, "
            "answer TEXT NOT NULL, created_at REAL NOT NULL)"
        )
        self.db.commit()
        self.accounts = Accounts(self.db, users, jwt_secret)

    def user(self, authorization: object) -> str | None:
        """The name of the user a ``Bearer`` value (an auth token or a login JWT) names, or None."""
        account = self.accounts.by_bearer(authorization)
        return account.name if account is not None else None

    def note(self, request: web.Request) -> None:
        headers = request.headers
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "authorization": headers.get("Authorization"),
                "x_tabby": {
                    name.lower(): value for name, value in headers.items() if name.lower().startswith("x-tabby-")
                },
                "modal_key": "Modal-Key" in headers,
            }
        )

    def save_thread(self, thread_id: str, user: str, question: str, answer: str) -> None:
        self.db.execute(
            "INSERT INTO threads (id, user, question, answer, created_at) VALUES (?, ?, ?, ?, ?)",
            (thread_id, user, question, answer, time.time()),
        )
        self.db.commit()

    def threads(self, user: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, question, answer FROM threads WHERE user = ? ORDER BY created_at", (user,)
        ).fetchall()
        return [{"id": row[0], "question": row[1], "answer": row[2]} for row in rows]

    def health(self) -> dict[str, Any]:
        """Tabby's HealthState with the webserver on and an HTTP chat model: no ``model`` field."""
        return {
            "chat_model": self.chat_model,
            "device": "cpu",
            "cuda_devices": [],
            "models": {"embedding": {"local": {"model_id": "Nomic-Embed-Text", "device": "cpu"}}},
            "arch": platform.machine(),
            "cpu_info": NOTICE,
            "cpu_count": os.cpu_count() or 1,
            "version": {
                "build_date": "2026-01-26",
                "build_timestamp": "2026-01-26T00:00:00Z",
                "git_sha": "stand-in",
                "git_describe": TABBY_VERSION,
            },
            "webserver": True,
            "stand_in": NOTICE,
        }

    async def answer(self, user: str, question: str) -> AsyncIterator[str]:
        """The answer's pieces: the user's name first, then the canned text or the router's stream."""
        yield f"{user} asked: {question}\n\n"
        if self.chat_url is None:
            for word in f"This is the canned answer of the {NOTICE}; no model was asked.".split(" "):
                yield word + " "
            return
        assert self.session is not None  # set at start-up
        body = {"model": self.chat_model, "stream": True, "messages": [{"role": "user", "content": question}]}
        headers = {"Authorization": f"Bearer {self.chat_key}"}
        url = f"{self.chat_url}/chat/completions"
        try:
            async with self.session.post(url, json=body, headers=headers) as response:
                if response.status != 200:
                    text = (await response.text())[:300]
                    raise ChatFailed(f"the chat model at {url} answered {response.status}: {text}")
                async for line in response.content:
                    delta = _sse_delta(line)
                    if delta:
                        yield delta
        except aiohttp.ClientError as exc:
            raise ChatFailed(f"the chat model at {url} did not answer: {exc}") from None


STATE = web.AppKey("standin_hub", StandInHub)


def _sse_delta(line: bytes) -> str:
    """The content of one OpenAI-style SSE line (``data: {...}``), or ""."""
    text = line.decode("utf-8", "replace").strip()
    if not text.startswith("data:") or text == "data: [DONE]":
        return ""
    try:
        choices = json.loads(text[5:]).get("choices") or [{}]
        return str(choices[0].get("delta", {}).get("content") or "")
    except (ValueError, AttributeError, IndexError):
        return ""


# -- HTTP -----------------------------------------------------------------------------------------


@web.middleware
async def tabby_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Record the request; on Tabby's API paths, refuse a missing or unknown token as Tabby does."""
    state = request.app[STATE]
    state.note(request)
    if request.path.startswith(("/v1/", "/v1beta/")) and state.user(request.headers.get("Authorization")) is None:
        return web.Response(status=401)  # Tabby: an empty body (W/service/mod.rs:256-263)
    response: web.StreamResponse = await handler(request)
    return response


async def health(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].health())


async def models(request: web.Request) -> web.Response:
    return web.json_response({"completion": [], "chat": [request.app[STATE].chat_model]})


async def no_completion_model(request: web.Request) -> web.Response:
    return web.Response(status=501)  # the hub has no completion model (T/serve.rs:287-293)


async def graphql(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await request.json()
        query, variables = body["query"], body.get("variables") or {}
        assert isinstance(query, str) and isinstance(variables, dict)
    except (ValueError, KeyError, TypeError, AssertionError, AttributeError):
        advice = 'send JSON {"query": "...", "variables": {...}}'
        return web.json_response({"errors": [{"message": advice}]}, status=400)
    caller = state.accounts.by_bearer(request.headers.get("Authorization"))
    return web.json_response(answer_graphql(query, variables, caller, state.accounts, state.threads, NOTICE))


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE_HTML.replace("{notice}", NOTICE), content_type="text/html")


async def script(request: web.Request) -> web.Response:
    return web.Response(text=PAGE_SCRIPT, content_type="application/javascript")


async def seen(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"requests": list(state.requests), "sockets": list(state.sockets)})


# -- WebSocket: graphql-transport-ws and graphql-ws -------------------------------------------------


async def subscriptions(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=1024 * 1024)
    await ws.prepare(request)
    protocol = ws.ws_protocol or "graphql-ws"
    try:
        first = await ws.receive(timeout=INIT_TIMEOUT)
    except TimeoutError:
        await ws.close(code=4408, message=b"Connection initialisation timeout")
        return ws
    init = _message(first)
    if init is None or init.get("type") != "connection_init":
        await ws.close(code=4400, message=b"the first message must be connection_init")
        return ws
    payload: dict[str, Any] = init["payload"] if isinstance(init.get("payload"), dict) else {}
    state.sockets.append({"subprotocol": protocol, "init": payload})
    user = state.user(payload.get("authorization"))
    if user is None:
        await ws.close(code=4401, message=b"Unauthorized")
        return ws
    await ws.send_json({"type": "connection_ack"})
    running: dict[str, asyncio.Task[None]] = {}
    try:
        async for raw in ws:
            message = _message(raw)
            if message is None:
                await ws.close(code=4400, message=b"a message must be a JSON object")
                break
            kind, op = message.get("type"), str(message.get("id", ""))
            if kind in ("subscribe", "start"):
                task = asyncio.create_task(_run(state, ws, protocol, op, message.get("payload"), user))
                running[op] = task
                task.add_done_callback(_forget(running, op))
            elif kind in ("complete", "stop") and op in running:
                running[op].cancel()
            elif kind == "ping":
                await ws.send_json({"type": "pong"})
            elif kind == "connection_terminate":
                await ws.close()
                break
    finally:
        for task in list(running.values()):
            task.cancel()
    return ws


def _forget(running: dict[str, asyncio.Task[None]], op: str) -> Callable[[asyncio.Task[None]], None]:
    def forget(task: asyncio.Task[None]) -> None:
        if running.get(op) is task:
            del running[op]
        if not task.cancelled() and task.exception() is not None:
            log.warning("subscription %s failed: %r", op, task.exception())

    return forget


def _message(raw: aiohttp.WSMessage) -> dict[str, Any] | None:
    if raw.type != aiohttp.WSMsgType.TEXT:
        return None
    try:
        message = json.loads(raw.data)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


async def _run(state: StandInHub, ws: web.WebSocketResponse, protocol: str, op: str, payload: Any, user: str) -> None:
    """One subscription: ``createThreadAndRun`` streamed as Tabby's ThreadRunItem events, then complete."""
    modern = protocol == "graphql-transport-ws"
    data_type = "next" if modern else "data"

    async def error(message: str) -> None:
        body = [{"message": message}] if modern else {"message": message}
        await ws.send_json({"type": "error", "id": op, "payload": body})

    payload = payload if isinstance(payload, dict) else {}
    query = payload.get("query") if isinstance(payload.get("query"), str) else ""
    if "createThreadAndRun" not in query:
        await error(f"the {NOTICE} streams only the subscription createThreadAndRun; it got: {query[:120]}")
        return
    question = _question(payload.get("variables"))
    if not question:
        await error("createThreadAndRun needs variables.input.thread.userMessage.content (the question)")
        return

    async def send(item: dict[str, Any]) -> None:
        await ws.send_json({"type": data_type, "id": op, "payload": {"data": {"createThreadAndRun": item}}})

    thread_id = f"thread-{uuid.uuid4().hex[:12]}"
    await send({"__typename": "ThreadCreated", "id": thread_id})
    pieces: list[str] = []
    try:
        async for piece in state.answer(user, question):
            pieces.append(piece)
            await send({"__typename": "ThreadAssistantMessageContentDelta", "delta": piece})
    except ChatFailed as exc:
        await error(str(exc))
        return
    answer = "".join(pieces)
    await send({"__typename": "ThreadAssistantMessageCompleted", "id": thread_id})
    state.save_thread(thread_id, user, question, answer)  # kept before the client hears "complete"
    await ws.send_json({"type": "complete", "id": op})


def _question(variables: Any) -> str:
    try:
        content = variables["input"]["thread"]["userMessage"]["content"]
    except (TypeError, KeyError):
        return ""
    return content if isinstance(content, str) else ""


# -- the app ------------------------------------------------------------------------------------------


def build_app(state: StandInHub) -> web.Application:
    app = web.Application(middlewares=[tabby_auth])
    app[STATE] = state

    async def session(app: web.Application) -> AsyncIterator[None]:
        state.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=120))
        yield
        await state.session.close()
        state.db.close()

    app.cleanup_ctx.append(session)
    app.router.add_route("GET", "/v1/health", health)
    app.router.add_route("POST", "/v1/health", health)
    app.router.add_get("/v1beta/models", models)
    app.router.add_post("/v1/completions", no_completion_model)
    app.router.add_post("/graphql", graphql)
    app.router.add_get("/subscriptions", subscriptions)
    app.router.add_get("/", page)
    app.router.add_get("/chat", page)
    app.router.add_get("/_next/static/standin.js", script)
    app.router.add_get("/stand-in/seen", seen)
    return app


def load_users(raw: str | None) -> dict[str, str]:
    """``FLEET_HUB_STANDIN_USERS``: JSON ``{"auth_token": "user name"}``; advice when it is not."""
    try:
        users = json.loads(raw or "{}")
        if not isinstance(users, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in users.items()):
            raise ValueError("not an object of strings")
    except ValueError as exc:
        raise SystemExit(f'{USERS_ENV} must be JSON {{"auth_token": "user name", ...}}: {exc}') from None
    return users


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=NOTICE)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--chat-model", required=True, help="the chat model the hub names (health, /v1beta/models)")
    parser.add_argument(
        "--chat-url", default=None, help="OpenAI-style base URL for answers (the router's /models/<e>/v1)"
    )
    parser.add_argument("--chat-key", default=None, help=f"its bearer token (default: ${ROUTER_TOKEN_ENV})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s stand-in hub %(levelname)s %(message)s")
    if not os.environ.get("TABBY_ROOT"):
        sys.exit("TABBY_ROOT is not set: the stand-in hub keeps its SQLite database there, as Tabby does")
    users = load_users(os.environ.get(USERS_ENV))
    key = args.chat_key if args.chat_key is not None else os.environ.get(ROUTER_TOKEN_ENV, "")
    secret = os.environ.get(JWT_SECRET_ENV) or None
    state = StandInHub(Path(os.environ["TABBY_ROOT"]), args.chat_model, users, args.chat_url, key, secret)
    log.info("%s; %d users; chat: %s", NOTICE, len(users), args.chat_url or "canned")
    web.run_app(
        build_app(state),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda message: log.info("listening on http://%s:%d", args.host, args.port),
    )


if __name__ == "__main__":
    main()
