"""apps/local/standin_hub.py: the stand-in hub answers as Tabby's webserver does, as a real process.

Auth (401 with an empty body on /v1 and /v1beta, health included), health and models shapes, GraphQL
``me``, ``/subscriptions`` in both subprotocols over aiohttp's WebSocket client, 4401 for an unknown
token, threads kept in SQLite across a restart, and the answer taken from a real chat endpoint.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from tests.support.fleetproc import free_port, serve_process
from tests.support.hub_client import CHAT_MODEL, answer_of, ask, bearer, hub_argv, hub_env


@contextmanager
def running_hub(root: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "TABBY_ROOT": str(root), **hub_env()}
    with serve_process(hub_argv(port, *extra), port, env=env) as url:
        yield url


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_hub(tmp_path_factory.mktemp("hub")) as url:
        yield url


@pytest.mark.parametrize("path", ["/v1/health", "/v1beta/models", "/v1/completions", "/v1beta/server_setting"])
@pytest.mark.parametrize("headers", [{}, bearer("auth_nobody"), {"Authorization": "auth_alice"}])
def test_api_paths_refuse_a_missing_or_unknown_token_with_an_empty_401(
    hub: str, path: str, headers: dict[str, str]
) -> None:
    response = httpx.request("POST" if path == "/v1/completions" else "GET", f"{hub}{path}", headers=headers)
    assert response.status_code == 401 and response.content == b""


def test_health_says_webserver_and_the_chat_model_and_has_no_model(hub: str) -> None:
    body = httpx.get(f"{hub}/v1/health", headers=bearer("auth_alice")).json()
    assert body["webserver"] is True and body["chat_model"] == CHAT_MODEL
    assert "model" not in body and body["version"]["git_describe"] == "v0.32.0"
    assert "not Tabby" in body["stand_in"]


def test_models_lists_only_the_chat_model(hub: str) -> None:
    body = httpx.get(f"{hub}/v1beta/models", headers=bearer("auth_frontend")).json()
    assert body == {"completion": [], "chat": [CHAT_MODEL]}


def test_graphql_me_needs_a_known_token_and_other_operations_are_named(hub: str) -> None:
    me = {"query": "query { me { id email name isAdmin } }"}
    body = httpx.post(f"{hub}/graphql", json=me, headers=bearer("auth_alice")).json()
    assert body == {
        "data": {"me": {"id": "user-alice", "email": "alice@stand-in.invalid", "name": "alice", "isAdmin": False}}
    }
    for headers in ({}, bearer("auth_nobody")):
        refused = httpx.post(f"{hub}/graphql", json=me, headers=headers).json()
        assert refused["errors"][0]["message"] == "Unauthorized"
        assert refused["errors"][0]["extensions"] == {"code": "UNAUTHORIZED"} and refused["data"] is None
    info = httpx.post(f"{hub}/graphql", json={"query": "{ serverInfo { isChatEnabled } }"}).json()
    assert info["data"]["serverInfo"]["isChatEnabled"] is True  # public, as Tabby's
    other = httpx.post(f"{hub}/graphql", json={"query": "{ repositoryList { id } }"}, headers=bearer("auth_alice"))
    message = other.json()["errors"][0]["message"]
    assert "answers only me, serverInfo, myThreads" in message and "repositoryList" in message


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
def test_subscriptions_stream_an_answer_naming_the_user_in_both_protocols(hub: str, protocol: str) -> None:
    messages, _ = asyncio.run(ask(hub, "auth_alice", "what is a fleet?", protocol))
    data_type = "next" if protocol == "graphql-transport-ws" else "data"
    assert [m["type"] for m in messages].count(data_type) >= 4, messages
    assert messages[-1] == {"type": "complete", "id": "7"} and all(m["id"] == "7" for m in messages)
    assert answer_of(messages).startswith("alice asked: what is a fleet?")
    seen = httpx.get(f"{hub}/stand-in/seen").json()["sockets"]
    assert {"subprotocol": protocol, "init": {"authorization": "Bearer auth_alice"}} in seen


def test_an_unknown_token_is_closed_with_4401_and_a_bad_first_message_with_4400(hub: str) -> None:
    messages, code = asyncio.run(ask(hub, "auth_nobody", "hello?"))
    assert messages == [] and code == 4401

    async def not_init() -> int | None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{hub}/subscriptions", protocols=("graphql-transport-ws",)) as ws,
        ):
            await ws.send_json({"type": "subscribe", "id": "1", "payload": {}})
            await ws.receive(timeout=10)
            return ws.close_code

    assert asyncio.run(not_init()) == 4400


def test_seen_records_paths_tokens_tabby_headers_and_modal_key(hub: str) -> None:
    headers = {**bearer("auth_frontend"), "X-Tabby-User": "frontend/alice", "Modal-Key": "wk-1", "Modal-Secret": "ws"}
    httpx.get(f"{hub}/v1beta/models", headers=headers)
    last = httpx.get(f"{hub}/stand-in/seen").json()["requests"][-2]  # the last one is /stand-in/seen itself
    assert last == {
        "method": "GET",
        "path": "/v1beta/models",
        "authorization": "Bearer auth_frontend",
        "x_tabby": {"x-tabby-user": "frontend/alice"},
        "modal_key": True,
    }


def test_the_page_and_its_script_load_without_a_token(hub: str) -> None:
    for path in ("/", "/chat?client=vscode"):
        page = httpx.get(f"{hub}{path}")
        assert page.status_code == 200 and "/_next/static/standin.js" in page.text and 'id="status"' in page.text
    script = httpx.get(f"{hub}/_next/static/standin.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert '"/subscriptions"' in script.text and "connection_init" in script.text and '"done"' in script.text


def test_threads_are_kept_in_sqlite_in_wal_mode_across_a_restart(tmp_path: Path) -> None:
    my_threads = {"query": "{ myThreads { totalCount } }"}
    with running_hub(tmp_path) as url:
        for question in ("one?", "two?"):
            messages, _ = asyncio.run(ask(url, "auth_frontend", question))
            assert messages[-1]["type"] == "complete"
        asyncio.run(ask(url, "auth_alice", "three?"))
        count = httpx.post(f"{url}/graphql", json=my_threads, headers=bearer("auth_frontend")).json()
        assert count["data"]["myThreads"]["totalCount"] == 2, count
    db = sqlite3.connect(tmp_path / "ee" / "db.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = db.execute("SELECT user, question, answer FROM threads ORDER BY created_at").fetchall()
    db.close()
    assert [(user, question) for user, question, _ in rows] == [
        ("frontend", "one?"),
        ("frontend", "two?"),
        ("alice", "three?"),
    ]
    assert rows[0][2].startswith("frontend asked: one?")
    with running_hub(tmp_path) as url:  # a new process on the same TABBY_ROOT
        count = httpx.post(f"{url}/graphql", json=my_threads, headers=bearer("auth_frontend")).json()
        assert count["data"]["myThreads"]["totalCount"] == 2


def test_with_a_chat_url_the_answer_streams_from_that_endpoint_with_the_chat_key(tmp_path: Path) -> None:
    """The hub's chat goes through the router: here a small OpenAI-style endpoint stands for the router."""
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append(
            {"path": request.path, "authorization": request.headers.get("Authorization"), **await request.json()}
        )
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        for word in ("Routed", " answer"):
            chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
            await stream.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await stream.write_eof()  # no [DONE], as Tabby's entries
        return stream

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        app = web.Application()
        app.router.add_post("/models/small/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            chat_url = f"http://127.0.0.1:{port}/models/small/v1"
            with running_hub(tmp_path, "--chat-url", chat_url, "--chat-key", "fleet-hub-token") as url:
                ok, _ = await ask(url, "auth_alice", "route me?")
            with running_hub(tmp_path / "2", "--chat-url", f"http://127.0.0.1:{port}/nowhere/v1") as url:
                failed, _ = await ask(url, "auth_alice", "route me?")
            return ok, failed
        finally:
            await runner.cleanup()

    ok, failed = asyncio.run(run())
    assert answer_of(ok) == "alice asked: route me?\n\nRouted answer"
    assert seen[0]["authorization"] == "Bearer fleet-hub-token" and seen[0]["stream"] is True
    assert seen[0]["model"] == CHAT_MODEL and seen[0]["messages"][-1] == {"role": "user", "content": "route me?"}
    assert failed[-1]["type"] == "error" and "answered 404" in failed[-1]["payload"][0]["message"]


def test_registration_follows_tabbys_rules_owner_first_then_invitations(tmp_path: Path) -> None:
    """apps/local/standin_accounts.py: the first register is the owner with no invitation; later ones need the
    code of an invitation for their email, which only an admin's login (not an auth token) can make; the new
    user's auth token and login both work on /v1 and GraphQL; the fixed users stay as they were."""
    register = (
        "mutation($email: String!, $password1: String!, $password2: String!, $invitationCode: String, "
        "$name: String!) { register(email: $email, password1: $password1, password2: $password2, "
        "invitationCode: $invitationCode, name: $name) { accessToken refreshToken } }"
    )
    invite = "mutation($email: String!) { createInvitation(email: $email) }"

    def gql(hub: str, query: str, variables: dict[str, Any] | None = None, token: str | None = None) -> Any:
        headers = bearer(token) if token else {}
        return httpx.post(f"{hub}/graphql", json={"query": query, "variables": variables or {}}, headers=headers).json()

    def user(email: str, code: str | None = None) -> dict[str, Any]:
        return {"email": email, "password1": "Pa55-word", "password2": "Pa55-word", "invitationCode": code, "name": "x"}

    def message(answer: Any) -> str:
        return str(answer["errors"][0]["message"])

    with running_hub(tmp_path / "root") as hub:
        assert gql(hub, "{ serverInfo { isAdminInitialized } }")["data"]["serverInfo"]["isAdminInitialized"] is False
        owner = gql(hub, register, user("owner@example.com"))["data"]["register"]["accessToken"]
        me = gql(hub, "{ me { isOwner isAdmin authToken } }", token=owner)["data"]["me"]
        assert me["isOwner"] and me["isAdmin"] and me["authToken"].startswith("auth_")
        assert message(gql(hub, register, user("b@example.com"))) == "Invitation code is not valid"
        assert message(gql(hub, invite, {"email": "b@example.com"})) == "You're not logged in"
        refused = gql(hub, invite, {"email": "b@example.com"}, token=me["authToken"])
        assert message(refused) == "Invoking this API with an auth token is not allowed"
        assert gql(hub, invite, {"email": "b@example.com"}, token=owner)["data"]["createInvitation"]
        code = gql(hub, "{ invitations { edges { node { email code } } } }", token=owner)["data"]["invitations"]
        code = code["edges"][0]["node"]["code"]
        assert (
            message(gql(hub, register, user("c@example.com", code))) == "Invitation code is not for this email address"
        )
        login = gql(hub, register, user("b@example.com", code))["data"]["register"]["accessToken"]
        assert message(gql(hub, register, user("b@example.com", code))) == "Invitation code is not valid"  # used up
        assert message(gql(hub, invite, {"email": "d@example.com"}, token=login)) == "You must be admin to proceed"
        token = gql(hub, "{ me { authToken } }", token=login)["data"]["me"]["authToken"]
        for credential in (token, login, "auth_alice"):
            assert httpx.get(f"{hub}/v1/health", headers=bearer(credential)).status_code == 200
        assert httpx.get(f"{hub}/v1/health", headers=bearer(login[:-2] + "xx")).status_code == 401  # bad signature
        license_info = gql(hub, "{ license { seats seatsUsed } }")["data"]["license"]
        assert license_info == {"type": "COMMUNITY", "status": "OK", "seats": 5, "seatsUsed": 4}  # 2 fixed users
