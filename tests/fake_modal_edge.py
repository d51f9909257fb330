"""A stand-in for Modal's web edge in front of one backend: proxy auth, and the 303 of long calls.

    python -m tests.fake_modal_edge --port P --backend URL --key K --secret S --redirect-after SECONDS

Requests without ``Modal-Key``/``Modal-Secret`` get 401. A call still running after
``--redirect-after`` seconds is answered with a 303 to ``<same path>?__modal_function_call_id=<id>``;
a GET there waits for the call and returns its result, as Modal documents for web requests over
150 s. ``GET /_edge/stats`` counts what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import aiohttp
from aiohttp import web


def build(backend: str, key: str, secret: str, redirect_after: float) -> web.Application:
    calls: dict[str, asyncio.Task[tuple[int, bytes, str]]] = {}
    counter = itertools.count(1)
    stats = {"requests": 0, "redirects": 0, "result_gets": 0, "unauthorized": 0}

    async def forward(request: web.Request, body: bytes) -> tuple[int, bytes, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "modal-key", "modal-secret")}
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, backend + request.path, data=body, headers=headers) as response,
        ):
            return response.status, await response.read(), response.headers.get("Content-Type", "")

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/_edge/stats":
            return web.json_response(stats)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--redirect-after", type=float, default=150.0)
    args = parser.parse_args()
    web.run_app(build(args.backend, args.key, args.secret, args.redirect_after), host="127.0.0.1", port=args.port,
                print=None, access_log=None)  # fmt: skip


if __name__ == "__main__":
    main()
