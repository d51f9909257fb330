"""Talking to a hub (the stand-in hub, or a router relaying to it) as the chat panel does: GraphQL over
HTTP, and ``createThreadAndRun`` over ``/subscriptions`` with aiohttp's WebSocket client."""

from __future__ import annotations

import json
import sys
from typing import Any

import aiohttp
import httpx

from apps.local import standin_hub

USERS = {"auth_alice": "alice", "auth_frontend": "frontend"}
CHAT_MODEL = "TabbyML/Qwen2-1.5B-Instruct"
SUBSCRIPTION = "subscription R($input: CreateThreadAndRunInput!) { createThreadAndRun(input: $input) { __typename } }"


def hub_argv(port: int, *extra: str) -> list[str]:
    """The stand-in hub's command line on ``port``."""
    return [sys.executable, "-m", standin_hub.__name__, "--port", str(port), "--chat-model", CHAT_MODEL, *extra]


def hub_env() -> dict[str, str]:
    return {standin_hub.USERS_ENV: json.dumps(USERS)}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ask(
    url: str, token: str, question: str, protocol: str = "graphql-transport-ws"
) -> tuple[list[dict[str, Any]], int | None]:
    """One createThreadAndRun over /subscriptions: every message after the ack, and the close code."""
    modern = protocol == "graphql-transport-ws"
    received: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/subscriptions", protocols=(protocol,)) as ws,
    ):
        assert ws.protocol == protocol
        await ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        first = await ws.receive(timeout=10)
        if first.type != aiohttp.WSMsgType.TEXT:
            return received, ws.close_code
        assert json.loads(first.data) == {"type": "connection_ack"}
        variables = {"input": {"thread": {"userMessage": {"content": question}}}}
        payload = {"query": SUBSCRIPTION, "variables": variables}
        await ws.send_json({"id": "7", "type": "subscribe" if modern else "start", "payload": payload})
        while True:
            message = json.loads((await ws.receive(timeout=20)).data)
            received.append(message)
            if message["type"] in ("complete", "error"):
                break
        await ws.close()
        return received, ws.close_code


def answer_of(messages: list[dict[str, Any]]) -> str:
    """The answer text streamed in a subscription's messages."""
    items = [m["payload"]["data"]["createThreadAndRun"] for m in messages if m["type"] in ("next", "data")]
    return "".join(item.get("delta", "") for item in items)


def my_threads(url: str, token: str) -> list[str]:
    """The questions of the user's threads, oldest first (GraphQL myThreads)."""
    query = {"query": "{ myThreads { totalCount edges { node { question } } } }"}
    body = httpx.post(f"{url}/graphql", json=query, headers=bearer(token), timeout=10).json()
    return [edge["node"]["question"] for edge in body["data"]["myThreads"]["edges"]]
