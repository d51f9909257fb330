"""A stand-in for Modal's web edge in front of one backend: proxy auth, the 303 of long calls, cold starts.

    python -m tests.support.fake_modal_edge --port P --backend URL --key K --secret S [--redirect-after SECONDS]
        [--start-delay SECONDS]

Requests without ``Modal-Key``/``Modal-Secret`` get 401. A call still running after
``--redirect-after`` seconds is answered with a 303 to ``<same path>?__modal_function_call_id=<id>``;
a GET there waits for the call and returns its result, as Modal documents for web requests over
150 s.

Cold starts: with ``--start-delay S`` the edge starts cold (no container); the first request then
"starts a container" (one wake, however many requests wait for it) and every waiting request is
forwarded S seconds later. ``POST /_edge/scale_to_zero`` makes it cold again (Modal's scale-down).
``POST /_edge/fail?status=500`` makes every wake fail at once with that status, as a container that
crashes while starting (``status=0`` heals it).

``GET /_edge/stats`` counts what happened, and says what Modal's ``get_current_stats()`` would:
``runners`` (1 while a container runs or starts, else 0) and ``backlog`` (requests waiting for it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from typing import Any

import aiohttp
from aiohttp import web


class Container:
    """The one container behind the edge: cold, starting (one wake task) or running."""

    def __init__(self, start_delay: float) -> None:
        self.start_delay = start_delay
        self.running = start_delay <= 0  # without a start delay it is always up
        self.waking: asyncio.Task[None] | None = None
        self.waiting = 0
        self.fail_status = 0

    async def start(self) -> None:
        await asyncio.sleep(self.start_delay)
        self.running = True


def build(backend: str, key: str, secret: str, redirect_after: float, start_delay: float = 0.0) -> web.Application:
    calls: dict[str, asyncio.Task[tuple[int, bytes, str]]] = {}
    counter = itertools.count(1)
    stats: dict[str, Any] = {"requests": 0, "redirects": 0, "result_gets": 0, "unauthorized": 0, "wakes": 0}
    container = Container(start_delay)

    async def forward(request: web.Request, body: bytes) -> tuple[int, bytes, str]:
        if not container.running:
            if container.fail_status:
                stats["wakes"] += 1
                return container.fail_status, b"container failed to start (fake edge)", "text/plain"
            if container.waking is None or container.waking.done():
                stats["wakes"] += 1
                container.waking = asyncio.create_task(container.start())
            container.waiting += 1
            try:
                await asyncio.shield(container.waking)
            finally:
                container.waiting -= 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "modal-key", "modal-secret")}
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, backend + request.path, data=body, headers=headers) as response,
        ):
            return response.status, await response.read(), response.headers.get("Content-Type", "")

    async def control(request: web.Request) -> web.Response:
        if request.path == "/_edge/scale_to_zero":
            container.running = False
        elif request.path == "/_edge/fail":
            container.fail_status = int(request.query.get("status", "500"))
        else:
            raise web.HTTPNotFound()
        return web.json_response({"running": container.running, "fail_status": container.fail_status})

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/_edge/stats":
            starting = container.waking is not None and not container.waking.done()
            runners = 1 if container.running or starting else 0
            return web.json_response(stats | {"runners": runners, "backlog": container.waiting})
        if request.path.startswith("/_edge/") and request.method == "POST":
            return await control(request)
        stats["requests"] += 1
        if request.headers.get("Modal-Key") != key or request.headers.get("Modal-Secret") != secret:
            stats["unauthorized"] += 1
            return web.Response(status=401, text="missing or invalid Modal proxy auth")
        call_id = request.query.get("__modal_function_call_id")
        if call_id is not None:
            stats["result_gets"] += 1
            status, body, content_type = await calls.pop(call_id)
            return web.Response(status=status, body=body, content_type=content_type.split(";")[0] or None)
        task = asyncio.create_task(forward(request, await request.read()))
        done, _ = await asyncio.wait({task}, timeout=redirect_after)
        if task in done:
            status, body, content_type = task.result()
            return web.Response(status=status, body=body, content_type=content_type.split(";")[0] or None)
        call_id = f"fc-{next(counter)}"
        calls[call_id] = task
        stats["redirects"] += 1
        location = f"http://{request.host}{request.path}?__modal_function_call_id={call_id}"
        return web.Response(status=303, headers={"Location": location})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def edge_argv(port: int, backend: str, key: str, secret: str, *options: str) -> list[str]:
    """The command line that runs this edge in front of ``backend`` (for tests.support.fleetproc.serve_process)."""
    return [sys.executable, "-m", "tests.support.fake_modal_edge", "--port", str(port), "--backend", backend,
            "--key", key, "--secret", secret, *options]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--redirect-after", type=float, default=150.0)
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds a cold start takes (0: always up)")
    args = parser.parse_args()
    app = build(args.backend, args.key, args.secret, args.redirect_after, args.start_delay)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
