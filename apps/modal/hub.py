"""The hub on Modal, as a spec: one ``TabbyHub`` class, declared by :mod:`apps.modal.deploy` when
``[hub] enabled`` and the fleet runs it (no ``hub.url``); ``fleet plan`` prints the same spec.

- one container (``max_containers=1``): Tabby's webserver keeps SQLite (WAL) and a tantivy index in its
  ``TABBY_ROOT``, which only one process may own (reference/tabby-hub.md §5);
- that root on the container's local disk (:data:`HUB_ROOT`), never on a Volume (SQLite's locks, tantivy's
  mmaps); snapshots of it go to the hub's own Volume at :data:`HUB_SNAPSHOTS`, the newest restored at
  start (apps/hub/snapshots.py; the container side is :mod:`apps.modal.hub_server`);
- the image every entry starts with (Tabby, the embedding model baked in: the hub's one local model),
  then this project's source; no completion model, and its chat is the router's chat entry over HTTP;
- Tabby's webserver behind Modal proxy auth, like the entries: only the router, which holds the proxy
  token, reaches it;
- its frozen settings (:func:`hub_settings_json`) hold only what the hub's container uses, so a change
  to a team, an entry other than the chat entry, a router option or a router-side ``[hub]`` option
  (teams, identity, ui_open, the relay's limits) leaves the class as it was: no rebuild, no restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import modal

from apps.modal.app import (
    FLEET_PACKAGES,
    FROZEN_SETTINGS_ENV,
    PACKAGE_FILES,
    ROUTER_TIMEOUT,
    TABBY_PORT,
    tabby_base_image,
)
from apps.tabby import IMAGE_TABBY_BIN, hub_serve_argv
from fleet.hub import HUB_CLASS, HubOptions
from fleet.settings import FleetSettings

HUB_MOUNT = "/hub"  # the hub's own Volume: snapshots only, never a live TABBY_ROOT
HUB_SNAPSHOTS = f"{HUB_MOUNT}/snapshots"
HUB_ROOT = "/root/tabby-hub"  # TABBY_ROOT on the container's local disk: SQLite and tantivy never touch the Volume
# What the hub's frozen settings keep of [hub]: what its class and container use. The router-side options
# (teams, identity, ui_open, ingestion, licence_seats, the WebSocket relay's limits) stay out, so changing
# them restarts no hub; url stays out because a hub with a url has no class.
HUB_OPTIONS = frozenset(
    {"enabled", "chat_entry", "router_team", "gpu", "cpu", "memory", "scaledown_window", "min_containers",
     "startup_timeout", "max_inputs", "volume", "secret", "snapshot_interval", "snapshots_kept"}
)  # fmt: skip
# ... and of [modal]: the app (the router's URL is looked up in it), the Tabby image, and the router's label
# (a new label is a new router URL, which the hub writes into its config.toml at start: it must restart).
HUB_MODAL_OPTIONS = frozenset({"app_name", "tabby_image", "router_label"})


@dataclass(frozen=True)
class HubSpec:
    """The hub's Modal class, as :mod:`apps.modal.deploy` declares it and ``fleet plan`` prints it."""

    hub: HubOptions  # [hub] as deployed
    app_name: str  # where the container looks the router's URL up
    chat_entry: str  # the hub's chat: <router>/models/<chat_entry>/v1 ...
    chat_model: str  # ... asking for this model (the chat entry's chat_model)
    device: str  # "cuda" with a GPU, else "cpu"
    volume: modal.Volume  # the hub's own Volume, mounted at HUB_MOUNT (committed after every snapshot)
    cls: dict[str, Any]  # app.cls(**cls)
    concurrent: dict[str, int]  # modal.concurrent(**concurrent), on the class
    web_server: dict[str, Any]  # modal.web_server(**web_server), on its serve method
    argv: tuple[str, ...]  # what serve runs: tabby serve with its webserver on
    frozen_settings: str  # the JSON in FROZEN_SETTINGS_ENV: all the hub's container knows of the settings
    class_name: str = HUB_CLASS


def hub_deployed(settings: FleetSettings) -> bool:
    """Whether the app has a hub class: [hub] is on and is not an existing webserver (``hub.url``)."""
    return settings.hub.enabled and settings.hub.url is None


def hub_spec(settings: FleetSettings) -> HubSpec:
    """Everything Modal is told about the hub's class (when :func:`hub_deployed`)."""
    hub = settings.hub
    chat_entry, chat_model = hub_chat(settings)
    frozen = hub_settings_json(settings)
    volume = modal.Volume.from_name(hub.volume, create_if_missing=True)
    device = "cuda" if hub.gpu else "cpu"
    cls: dict[str, Any] = {
        # Tabby and the embedding model (the hub's only local model) in the layers every entry shares, then
        # this project's source: no entry's models, and no layer of its own to build.
        "image": tabby_base_image(settings).add_local_python_source(*FLEET_PACKAGES, ignore=PACKAGE_FILES),
        "gpu": hub.gpu or None,  # the embedding model's GPU; None: a CPU container
        "cpu": hub.cpu,  # None: Modal's default
        "memory": hub.memory,  # None: Modal's default
        "max_containers": 1,  # one Tabby owns the hub's SQLite database and index, never two
        "min_containers": hub.min_containers,  # 1 keeps the panel's first load from waiting on a cold start
        "scaledown_window": hub.scaledown_window,  # idle seconds before the hub stops (a final snapshot first)
        # Seconds one request or WebSocket may run: the router's own limit, which nothing it relays outlives.
        "timeout": ROUTER_TIMEOUT,
        "startup_timeout": hub.startup_timeout,  # the restore, the embedding model's load and Tabby's migrations
        "volumes": {HUB_MOUNT: volume},  # snapshots only: its own Volume, so entries' attach times stay the same
        # TABBY_WEBSERVER_JWT_TOKEN_SECRET (logins survive restarts), FLEET_HUB_ROUTER_TOKEN (its chat calls to
        # the router). No proxy-auth Secret: the hub calls only the router, which needs none.
        "secrets": [modal.Secret.from_name(hub.secret)],
        "env": {FROZEN_SETTINGS_ENV: frozen},  # the hub's frozen settings (Modal sends them as a Secret)
    }
    return HubSpec(
        hub=hub,
        app_name=settings.modal.app_name,
        chat_entry=chat_entry,
        chat_model=chat_model,
        device=device,
        volume=volume,
        cls=cls,
        # Requests and open sockets at once: every WebSocket of a chat panel is one Modal input.
        concurrent={"max_inputs": hub.max_inputs},
        # Modal waits startup_timeout seconds for Tabby's port, then proxies to it behind proxy auth: only
        # the router, which holds the proxy token, may call the hub.
        web_server={"port": TABBY_PORT, "startup_timeout": hub.startup_timeout, "requires_proxy_auth": True},
        argv=tuple(hub_serve_argv(binary=IMAGE_TABBY_BIN, port=TABBY_PORT, device=device)),
        frozen_settings=frozen,
    )


def hub_chat(settings: FleetSettings) -> tuple[str, str]:
    """The hub's chat entry and its chat model; advice when [hub] names none (settings built by hand
    and never checked: `fleet check` reports the same)."""
    name = settings.hub.chat_entry
    entry = next((e for e in settings.entries if e.name == name), None)
    if entry is None or not entry.chat_model:
        raise ValueError(
            f"hub.chat_entry {name!r} is not an entry with a chat_model; set [hub] chat_entry to one "
            "(`fleet check` lists the hub's problems)"
        )
    return entry.name, entry.chat_model


def hub_settings_json(settings: FleetSettings) -> str:
    """The hub container's frozen settings: the [hub] options it uses, its chat entry (name, model,
    chat_model: the least a settings entry is), and the app, image and router label. Nothing else, so
    that nothing else changes the hub's class."""
    chat_entry, chat_model = hub_chat(settings)
    frozen = {
        "entries": [{"name": chat_entry, "model": settings.entry(chat_entry).model, "chat_model": chat_model}],
        "hub": settings.hub.model_dump(mode="json", include=set(HUB_OPTIONS)),
        "modal": settings.modal.model_dump(mode="json", include=set(HUB_MODAL_OPTIONS)),
    }
    return json.dumps(frozen, sort_keys=True)
