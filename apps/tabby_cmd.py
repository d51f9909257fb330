"""The one place that knows how to start a Tabby server: its argv and its environment.

Shared by the local runtime (``--device cpu``, loopback) and the Modal app (``--device cuda``).
Facts: shared/reference/tabby-protocol.md section 5 (CLI flags, environment, TABBY_ROOT layout).
"""

from __future__ import annotations

import sys
from pathlib import Path

from fleet.settings import Entry

# Tabby's Docker image keeps its binary here; the Modal image uses it.
IMAGE_TABBY_BIN = "/opt/tabby/bin/tabby"


def tabby_serve_argv(
    entry: Entry, *, binary: str, port: int, device: str, host: str = "0.0.0.0", parallelism: int = 1
) -> list[str]:
    """``tabby serve`` for one entry. --no-webserver: no Tabby auth or SQLite, the router does auth."""
    argv = [binary, "serve", "--no-webserver", "--model", entry.model]
    if entry.chat_model:
        argv += ["--chat-model", entry.chat_model]
    argv += ["--host", host, "--port", str(port), "--device", device, "--parallelism", str(parallelism)]
    if entry.chat_model:
        argv += ["--chat-device", device]  # explicit: the chat model runs where the completion model does
    return argv


def tabby_download_argv(model: str, *, binary: str = IMAGE_TABBY_BIN) -> list[str]:
    return [binary, "download", "--model", model]


def tabby_env(root: Path | str) -> dict[str, str]:
    """Environment for one Tabby process: its own TABBY_ROOT, no telemetry to the vendor."""
    return {"TABBY_ROOT": str(root), "TABBY_DISABLE_USAGE_COLLECTION": "1"}


def standin_argv(entry: Entry, *, port: int, host: str = "127.0.0.1") -> list[str]:
    """The built-in stand-in, for machines without a tabby binary (and for tests)."""
    argv = [sys.executable, "-m", "apps.standin", "--model", entry.model]
    if entry.chat_model:
        argv += ["--chat-model", entry.chat_model]
    options = entry.standin
    argv += ["--host", host, "--port", str(port)]
    argv += ["--start-delay", str(options.start_delay), "--chunk-delay", str(options.chunk_delay)]
    argv += ["--completion-delay", str(options.completion_delay)]
    return argv
