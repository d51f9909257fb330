"""A Tabby-compatible stand-in server: Tabby's HTTP API with canned answers, and no model.

It follows the protocol facts in shared/reference/tabby-protocol.md (sections 1 and 7): health with
``model``, ``device`` and ``version.git_describe``; completions with ``cmpl-`` ids and ``mode``;
axum's 400/415/422 rejections; events; server_setting; chat as SSE with no ``[DONE]``. Its answers
are deterministic and name the model it stands in for, so a person (or a test) sees which fleet
entry answered. It says everywhere that it is a stand-in.

Run: ``python -m apps.local.standin --model TabbyML/StarCoder-1B --port 8081``.
Like ``tabby serve``, it opens its port only once "loaded" (after ``--start-delay``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("tabby_fleet.standin")

STAND_IN_NOTICE = "tabby-fleet stand-in: canned answers, not a model"
TABBY_VERSION = "v0.32.0"  # the Tabby release whose API this stand-in follows
COMPLETION_TIMEOUT = 30.0  # Tabby's default server-side completion timeout (408 after it)
JSON_CONTENT_TYPES = ("application/json",)


class StandIn:
    """The stand-in's state: what it stands in for, its delays, and what it has seen."""

    def __init__(
        self,
        model: str,
        chat_model: str | None = None,
        chunk_delay: float = 0.0,
        completion_delay: float = 0.0,
        root: Path | None = None,
        completion_timeout: float = COMPLETION_TIMEOUT,
    ) -> None:
        self.model = model
        self.chat_model = chat_model
        self.chunk_delay = chunk_delay
        self.completion_delay = completion_delay
        self.root = root
        self.completion_timeout = completion_timeout
        self.started_at = time.time()
        self.requests: Counter[str] = Counter()
        self.completed = 0
        self.cancelled = 0
        self.last_cancelled_at: float | None = None  # time.time(), for the disconnect benchmark
        self.in_flight = 0
        self.events: Counter[str] = Counter()
        self.last_headers: dict[str, str] = {}

    def completion_text(self, language: str) -> str:
        # One plain line: tabby-agent drops multi-line text mid-line and text that repeats the suffix.
        comment = "//" if language in {"javascript", "typescript", "go", "rust", "java", "c", "cpp"} else "#"
        return f"return a + b  {comment} {self.model}"

    def chat_reply(self, question: str) -> str:
        return f"Hello from {self.chat_model} ({STAND_IN_NOTICE}). You asked: {question[:80]}"

    def health(self) -> dict[str, Any]:
        models: dict[str, Any] = {
            "completion": {"local": {"model_id": self.model, "device": "cpu"}},
            "embedding": {"local": {"model_id": "Nomic-Embed-Text", "device": "cpu"}},
        }
        body: dict[str, Any] = {"model": self.model}
        if self.chat_model:
            body["chat_model"] = self.chat_model
            body["chat_device"] = "cpu"
            models["chat"] = {"local": {"model_id": self.chat_model, "device": "cpu"}}
        body |= {
            "device": "cpu",
            "cuda_devices": [],
            "models": models,
            "arch": platform.machine(),
            "cpu_info": STAND_IN_NOTICE,
            "cpu_count": os.cpu_count() or 1,
            "version": {
                "build_date": "2026-01-26",
                "build_timestamp": "2026-01-26T00:00:00Z",
                "git_sha": "stand-in",
                "git_describe": TABBY_VERSION,
            },
            "webserver": False,
            "stand_in": STAND_IN_NOTICE,
        }
        return body

    def stats(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "chat_model": self.chat_model,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "requests": dict(self.requests),
            "completed": self.completed,
            "cancelled": self.cancelled,
            "last_cancelled_at": self.last_cancelled_at,
            "in_flight": self.in_flight,
            "events": dict(self.events),
            "last_headers": self.last_headers,
        }

    def note_cancelled(self) -> None:
        self.cancelled += 1
        self.last_cancelled_at = time.time()

    def record_event(self, event: dict[str, Any]) -> None:
        self.events[event["type"]] += 1
        if self.root is None:
            return
        # Tabby appends JSON lines to $TABBY_ROOT/events/YYYY-MM-DD.json; so do we (unbuffered).
        folder = self.root / "events"
        folder.mkdir(parents=True, exist_ok=True)
        line = {"user": None, "ts": int(time.time() * 1000), "event": {event["type"]: event}}
        with (folder / time.strftime("%Y-%m-%d.json", time.gmtime())).open("a") as file:
            file.write(json.dumps(line) + "\n")


STATE = web.AppKey("standin", StandIn)


# -- request parsing, with axum's status codes ---------------------------------------------------


async def _json_body(request: web.Request) -> Any:
    """Parse like axum's Json extractor: 415 without a JSON content type, 400 on bad syntax."""
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type not in JSON_CONTENT_TYPES and not content_type.endswith("+json"):
        raise web.HTTPUnsupportedMediaType(
            text="Expected request with `Content-Type: application/json`", content_type="text/plain"
        )
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(
            text=f"Failed to parse the request body as JSON: {exc}", content_type="text/plain"
        ) from None


def _unprocessable(message: str) -> web.HTTPException:
    return web.HTTPUnprocessableEntity(
        text=f"Failed to deserialize the JSON body into the target type: {message}", content_type="text/plain"
    )


def _check_completion_request(body: Any) -> None:
    """The CompletionRequest schema: wrong types and a missing segments.prefix are 422."""
    if not isinstance(body, dict):
        raise _unprocessable("invalid type: expected struct CompletionRequest")
    for key in ("language", "user", "mode"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise _unprocessable(f"{key}: invalid type: expected a string")
    if body.get("mode") not in (None, "standard", "next_edit_suggestion"):
        raise _unprocessable(f"mode: unknown variant `{body['mode']}`")
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)):
        raise _unprocessable("temperature: invalid type: expected f32")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _unprocessable("seed: invalid type: expected u64")
    segments = body.get("segments")
    if segments is not None:
        if not isinstance(segments, dict):
            raise _unprocessable("segments: invalid type: expected struct Segments")
        if not isinstance(segments.get("prefix"), str):
            raise _unprocessable("segments: missing field `prefix`")
        for key in ("suffix", "filepath", "git_url", "clipboard"):
            if segments.get(key) is not None and not isinstance(segments[key], str):
                raise _unprocessable(f"segments.{key}: invalid type: expected a string")
    debug = body.get("debug_options")
    if debug is not None and not isinstance(debug, dict):
        raise _unprocessable("debug_options: invalid type: expected struct DebugOptions")


# -- handlers -----------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.requests["health"] += 1
    return web.json_response(state.health())


async def server_setting(request: web.Request) -> web.Response:
    request.app[STATE].requests["server_setting"] += 1
    return web.json_response({"disable_client_side_telemetry": False})


async def completions(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.requests["completions"] += 1
    state.last_headers = {name.lower(): value for name, value in request.headers.items()}
    body = await _json_body(request)
    _check_completion_request(body)
    debug = body.get("debug_options") or {}
    segments = body.get("segments")
    if segments is None and not debug.get("raw_prompt"):
        return web.Response(status=400)  # Tabby: a generation error has an empty body
    state.in_flight += 1
    try:
        async with asyncio.timeout(state.completion_timeout):
            if state.completion_delay:
                await asyncio.sleep(state.completion_delay)
    except TimeoutError:
        return web.Response(status=408)
    except asyncio.CancelledError:
        state.note_cancelled()  # the client went away: aiohttp cancels the handler
        raise
    finally:
        state.in_flight -= 1
    state.completed += 1
    mode = body.get("mode") or "standard"
    answer: dict[str, Any] = {
        "id": f"cmpl-{uuid.uuid4()}",
        "choices": [{"index": 0, "text": state.completion_text(body.get("language") or "unknown")}],
        "mode": mode,
    }
    if body.get("debug_options") is not None:
        debug_data: dict[str, Any] = {}
        if debug.get("return_prompt"):
            prefix = (segments or {}).get("prefix", "")
            suffix = (segments or {}).get("suffix") or ""
            debug_data["prompt"] = debug.get("raw_prompt") or (f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>")
        if debug.get("return_snippets"):
            debug_data["snippets"] = []
        answer["debug_data"] = debug_data
    return web.json_response(answer)


async def events(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.requests["events"] += 1
    body = await _json_body(request)
    if not isinstance(body, dict) or body.get("type") not in ("view", "select", "dismiss"):
        return web.Response(status=400)
    if request.query.get("select_kind"):
        body = {**body, "select_kind": request.query["select_kind"]}
    state.record_event(body)
    return web.Response(status=200)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.requests["chat"] += 1
    if not state.chat_model:
        return web.Response(status=501)
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise _unprocessable("missing field `messages`")
    question = ""
    for message in body["messages"]:
        if isinstance(message, dict) and message.get("role") == "user":
            question = str(message.get("content", ""))
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await stream.prepare(request)
    chunk_id = f"chatcmpl-{uuid.uuid4()}"
    words = state.chat_reply(question).split(" ")
    deltas = [{"role": "assistant", "content": ""}] + [
        {"content": word if i == 0 else " " + word} for i, word in enumerate(words)
    ]
    state.in_flight += 1
    try:
        for index, delta in enumerate([*deltas, {}]):
            if index and state.chunk_delay:
                await asyncio.sleep(state.chunk_delay)
            chunk = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": state.chat_model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None if delta else "stop"}],
            }
            await stream.write(f"data: {json.dumps(chunk)}\n\n".encode())
    except (asyncio.CancelledError, ConnectionResetError):
        state.note_cancelled()
        raise
    finally:
        state.in_flight -= 1
    state.completed += 1
    await stream.write_eof()  # Tabby sends no `data: [DONE]`: the stream just ends
    return stream


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats())


async def fallback(request: web.Request) -> web.Response:
    # `tabby serve --no-webserver` redirects every other path to its Swagger UI.
    raise web.HTTPTemporaryRedirect("/swagger-ui")


def build_app(state: StandIn) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE] = state
    app.router.add_route("GET", "/v1/health", health)
    app.router.add_route("POST", "/v1/health", health)
    app.router.add_get("/v1beta/server_setting", server_setting)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/events", events)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1beta/chat/completions", chat_completions)
    app.router.add_get("/_standin/stats", stats)  # outside /v1: the router never forwards it
    app.router.add_route("*", "/{tail:.*}", fallback)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Tabby-compatible stand-in server (" + STAND_IN_NOTICE + ")")
    parser.add_argument("--model", required=True, help="the completion model id to stand in for")
    parser.add_argument("--chat-model", default=None, help="the chat model id to stand in for")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds before the port opens")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chat SSE events")
    parser.add_argument("--completion-delay", type=float, default=0.0, help="seconds per completion")
    parser.add_argument(
        "--completion-timeout", type=float, default=COMPLETION_TIMEOUT, help="408 after this many seconds"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s stand-in %(levelname)s %(message)s")
    root = Path(os.environ["TABBY_ROOT"]) if os.environ.get("TABBY_ROOT") else None
    state = StandIn(args.model, args.chat_model, args.chunk_delay, args.completion_delay, root, args.completion_timeout)
    log.info("%s for %s (chat: %s); loading for %.1fs", STAND_IN_NOTICE, args.model, args.chat_model, args.start_delay)
    time.sleep(args.start_delay)  # like tabby serve: the port opens only once the "model" is loaded
    web.run_app(
        build_app(state),
        host=args.host,
        port=args.port,
        handler_cancellation=True,  # a client disconnect cancels the handler, as axum drops the future
        access_log=None,
        print=lambda message: log.info("listening on http://%s:%d", args.host, args.port),
        loop=_new_loop(),
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
