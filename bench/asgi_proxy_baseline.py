"""The seed's proxy, asgi-proxy-lib, as the benchmark's baseline: one asgi_proxy per backend.

Run: python -m bench.asgi_proxy_baseline --port P name=URL [name=URL ...]
The X-Tabby-Model header picks the backend (a dict lookup, so the baseline pays no routing cost).
"""

from __future__ import annotations

import argparse

import uvicorn
from asgi_proxy import asgi_proxy
from starlette.types import ASGIApp, Receive, Scope, Send


def build(backends: dict[str, str]) -> ASGIApp:
    proxies: dict[str, ASGIApp] = {name: asgi_proxy(url) for name, url in backends.items()}
    first = next(iter(proxies.values()))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        model = next((v.decode() for k, v in scope["headers"] if k == b"x-tabby-model"), "")
        await proxies.get(model, first)(scope, receive, send)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("backends", nargs="+", help="name=URL")
    args = parser.parse_args()
    backends = dict(item.split("=", 1) for item in args.backends)
    uvicorn.run(
        build(backends),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
