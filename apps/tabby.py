"""The one place that knows how to start a Tabby server: its argv, its environment, its root folder,
and (on Modal) how to supervise it.

Shared by the local runtime (``--device cpu``, loopback) and the Modal app (``--device cuda``).
Facts: shared/reference/tabby-protocol.md sections 5 and 9 (CLI flags, environment, TABBY_ROOT).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

import tomlkit

from fleet.hub import JWT_SECRET_ENV
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


def tabby_config_toml(entry: Entry) -> str:
    """The entry's ``TABBY_ROOT/config.toml``: what Tabby reads from a file, from settings."""
    return (
        "# written by tabby-fleet from its settings at every start; edit the settings, not this file\n"
        f"[server]\ncompletion_timeout = {entry.completion_timeout}\n"
    )


def write_tabby_config(root: Path | str, entry: Entry) -> None:
    path = Path(root) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tabby_config_toml(entry))


def hub_serve_argv(*, binary: str, port: int, device: str, host: str = "0.0.0.0") -> list[str]:
    """``tabby serve`` for the hub: the webserver on (no --no-webserver), and no --model: the hub needs no
    completion model, its chat goes through the router (``hub_config_toml``), and its one local model is
    the embedding model Tabby 0.32 always loads (reference/tabby-hub.md sections 0 and 3)."""
    return [binary, "serve", "--host", host, "--port", str(port), "--device", device]


def hub_chat_url(router_url: str, chat_entry: str) -> str:
    """Where the hub's chat goes: the chat entry through the router, ``<router>/models/<chat_entry>/v1`` (an
    OpenAI base URL; Tabby appends ``/chat/completions``). Both runtimes' hubs call it."""
    return f"{router_url.rstrip('/')}/models/{chat_entry}/v1"


def hub_config_toml(*, chat_url: str, chat_model: str, api_key: str) -> str:
    """The hub's ``TABBY_ROOT/config.toml``: its chat is an OpenAI-style HTTP model at ``chat_url``
    (``<router>/models/<chat_entry>/v1``; Tabby appends ``/chat/completions``), called with ``api_key``
    (a fleet token of ``hub.router_team``; "" in an open fleet). Written with tomlkit, which escapes."""
    http = tomlkit.table()
    http.update({"kind": "openai/chat", "api_endpoint": chat_url, "model_name": chat_model, "api_key": api_key})
    chat = tomlkit.table(is_super_table=True)
    chat.add("http", http)
    model = tomlkit.table(is_super_table=True)
    model.add("chat", chat)
    document = tomlkit.document()
    document.add(tomlkit.comment("written by tabby-fleet from its settings at every start; edit the settings"))
    document.add("model", model)
    return tomlkit.dumps(document)


def hub_env(root: Path | str, jwt_secret: str) -> dict[str, str]:
    """The hub's environment: ``tabby_env`` plus the JWT secret (a UUID, kept across restarts, so that
    logins survive them)."""
    return tabby_env(root) | {JWT_SECRET_ENV: jwt_secret}


def die_with_parent() -> None:
    """In a child, before exec (``preexec_fn``): ask Linux to SIGTERM it when its parent dies, so none is
    orphaned. The signal follows the parent *thread* that started the child: start children from the
    main thread."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def container_root(data_mount: str, entry: Entry, task_id: str | None) -> str:
    """One TABBY_ROOT per container, below the entry's folder: ``/data/<entry>/<task id>``.

    Tabby appends its event log to ``TABBY_ROOT/events/<date>.json``; on a Modal Volume the last
    commit of a file wins, so two containers sharing one root would lose each other's events.
    """
    return f"{data_mount}/{entry.name}/{task_id or 'no-task-id'}"


LAST_LINES = 40  # lines of Tabby's output kept to explain an exit


def supervise(
    argv: list[str], env: dict[str, str], *, name: str, on_exit: Callable[[int], None] = os._exit
) -> subprocess.Popen[bytes]:
    """Start Tabby and watch it: its output passes through, and when it exits, its exit code and
    last lines are printed and ``on_exit(1)`` ends this process (on Modal: the container, which Modal
    then replaces, instead of waiting up to startup_timeout for a port that will never open)."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def watch() -> None:
        last: deque[str] = deque(maxlen=LAST_LINES)
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            last.append(line)
            print(line, flush=True)
        code = process.wait()
        tail = "\n".join(f"  | {line}" for line in last) or "  | (no output)"
        print(f"tabby-fleet: tabby serve for {name} exited with code {code}; its last lines:\n{tail}\n"
              f"tabby-fleet: ending this container so that it is replaced", file=sys.stderr, flush=True)  # fmt: skip
        on_exit(1)

    threading.Thread(target=watch, name=f"tabby-watchdog-{name}", daemon=True).start()
    return process
