"""The hub in the local runtime: one more process, ``python -m apps.hub.run`` around ``tabby serve`` with
its webserver on (when a tabby binary is found) or the stand-in hub.

It lives under ``data_dir/hub/``: ``root/`` (its TABBY_ROOT, scratch: restored from the newest snapshot
at every start, as on Modal), ``snapshots/`` (every ``hub.snapshot_interval`` seconds and at a clean
stop, ``hub.snapshots_kept`` kept), ``jwt-secret`` (a UUID made once, mode 0600, so logins survive
restarts), ``config.toml`` (the chat model: the router's ``/models/<chat_entry>/v1`` with
``$FLEET_HUB_ROUTER_TOKEN``; mode 0600) and ``hub.log``. Its lifecycle is an entry's
(:class:`LocalBackend`): started on first use, stopped after ``hub.scaledown_window`` idle seconds
(a lease held by an open WebSocket counts as in use), started again after a crash.
"""

from __future__ import annotations

import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apps.hub import run as hub_run
from apps.hub.snapshots import complete, taken_at
from apps.local import standin_hub
from apps.local.process import HOST, LocalBackend
from apps.tabby import hub_chat_url, hub_config_toml, hub_env, hub_serve_argv
from fleet.hub import ROUTER_TOKEN_ENV, HubOptions
from fleet.settings import Entry, FleetSettings

HUB_FOLDER = "hub"  # under data_dir
HUB_STOP_GRACE = 60.0  # the supervisor stops the hub, then takes its last snapshot


def jwt_secret(path: Path) -> str:
    """The hub's JWT secret: a UUID kept in ``path`` (created once, mode 0600)."""
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = str(uuid.uuid4())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secret + "\n")
        return secret
    try:
        uuid.UUID(secret)
    except ValueError:
        raise OSError(
            f"{path} does not hold a UUID (Tabby's JWT secret must be one); delete it and a new one is made "
            "(logged-in hub sessions then end)"
        ) from None
    return secret


def chat_url(settings: FleetSettings, router_url: str | None) -> str | None:
    """The hub's chat model: the router's ``/models/<chat_entry>/v1``, or None without the router's URL."""
    entry = settings.hub.chat_entry
    return hub_chat_url(router_url, entry) if router_url and entry else None


class HubBackend(LocalBackend):
    """The hub's process, with an entry's lifecycle (its timings from ``[hub]``)."""

    stop_grace = HUB_STOP_GRACE

    def __init__(self, settings: FleetSettings, tabby_bin: str | None, router_url: str | None) -> None:
        hub = settings.hub
        # The lifecycle reads an entry: this one names the hub and carries [hub]'s timings.
        entry = Entry(
            name=HUB_FOLDER,
            model="(the hub: no completion model)",
            scaledown_window=hub.scaledown_window,
            startup_timeout=hub.startup_timeout,
        )
        super().__init__(entry, settings, tabby_bin)
        self.log_path = self.root / "hub.log"
        self.hub: HubOptions = hub
        chat_entry = next((e for e in settings.entries if e.name == hub.chat_entry), None)
        self.chat_model = (chat_entry.chat_model if chat_entry else None) or "(no chat model)"
        self.chat_url = chat_url(settings, router_url)
        # What the process is made from: a reload that changes it replaces the process.
        self.spec = (hub, self.chat_model, self.chat_url, tabby_bin)
        # The process this one replaces: both would use data_dir/hub/root, so it is stopped (its last
        # snapshot taken) before this one starts, open sockets or not.
        self.replaces: HubBackend | None = None

    @property
    def kind(self) -> str:
        return "tabby" if self.tabby_bin else "stand-in hub"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    def command(self, port: int) -> tuple[list[str], dict[str, str]]:
        """``apps.hub.run`` around the hub's own command line, and its environment."""
        secret = jwt_secret(self.root / "jwt-secret")
        root = self.root / "root"
        argv = [sys.executable, "-m", hub_run.__name__, "--root", str(root), "--snapshots", str(self.snapshots)]
        argv += ["--interval", str(self.hub.snapshot_interval), "--keep", str(self.hub.snapshots_kept)]
        argv += ["--name", "local"]
        if self.tabby_bin:
            if self.chat_url is not None:
                config = self.root / "config.toml"
                key = os.environ.get(ROUTER_TOKEN_ENV, "")
                text = hub_config_toml(chat_url=self.chat_url, chat_model=self.chat_model, api_key=key)
                fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as file:
                    file.write(text)
                argv += ["--config", str(config)]
            child = hub_serve_argv(binary=self.tabby_bin, port=port, device="cpu", host=HOST)
        else:
            child = [sys.executable, "-m", standin_hub.__name__, "--host", HOST, "--port", str(port)]
            child += ["--chat-model", self.chat_model]
            child += ["--chat-url", self.chat_url] if self.chat_url else []
        # The router token and FLEET_HUB_STANDIN_USERS pass through from the environment.
        return [*argv, "--", *child], {**os.environ, **hub_env(root, secret)}

    async def _start(self) -> None:
        previous, self.replaces = self.replaces, None
        if previous is not None:
            await previous.stop("replaced by a reload of [hub]")
        await super()._start()

    def hub_status(self) -> dict[str, Any]:
        """State, port, kind, and the snapshots kept (how many, when the newest was taken)."""
        kept = complete(self.snapshots)
        newest = datetime.fromtimestamp(taken_at(kept[-1]), UTC).isoformat() if kept else None
        status = self.status()
        return {
            "state": self.state,
            "kind": self.kind,
            "port": self.port if status["pid"] else None,
            "url": self.url,
            "pid": status["pid"],
            "in_flight": self.in_flight,
            "starts": self.starts,
            "stops": self.stops,
            "snapshots": len(kept),
            "newest_snapshot": newest,
            "last_error": self.last_error,
            # what usage counts the hub's container time and cost from, as an entry's (router/usage.py)
            "containers": status["containers"],
            "container_seconds": status["container_seconds"],
            "backend": "stand-in" if self.tabby_bin is None else "tabby",
        }
