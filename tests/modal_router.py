"""The router with its Modal backends, for tests: Modal's URL lookup is replaced by a table.

    python -m tests.modal_router --config fleet.toml --port P --urls '{"TabbySmall": "http://..."}'

Everything else is the production path: create_app, ModalBackends (proxy-auth headers from
TABBY_FLEET_PROXY_KEY / TABBY_FLEET_PROXY_SECRET, redirects followed), uvicorn.
"""

from __future__ import annotations

import argparse
import json

import uvicorn

from apps.modal_backends import ModalBackends
from fleet.loading import load_settings
from fleet.settings import Entry
from router.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--urls", required=True, help="JSON: class name -> URL; a missing class fails its lookup")
    args = parser.parse_args()
    urls = json.loads(args.urls)

    def lookup(entry: Entry) -> str:
        if entry.class_name not in urls:
            raise LookupError(f"App function/class {entry.class_name!r} not found")  # what Modal says
        return str(urls[entry.class_name])

    settings = load_settings(args.config)
    app = create_app(settings, ModalBackends(settings, lookup=lookup))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
