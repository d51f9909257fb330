"""The fleet on Modal, as specs: what `fleet deploy` declares, worked out from FleetSettings.

:mod:`apps.modal.deploy` declares the app from these specs (it is what ``modal deploy -m`` imports);
``fleet plan`` prints them. Per entry (:func:`entry_spec`):

- a class named after the entry (``small`` -> ``TabbySmall``), which the container finds by name;
- its own image: Tabby's registry image with Python, the entrypoint cleared, and the entry's models
  downloaded at build time into ``/models`` (outside the Volume mount, so a cold start downloads
  nothing);
- its GPU, idle window, container limits and concurrency, from the entry's settings;
- ``tabby serve --no-webserver`` as a ``web_server`` behind Modal proxy auth, supervised (the
  container ends when Tabby does), with ``TABBY_ROOT=/data/<entry>/<container's task id>`` on the
  one shared Volume (one root per container: Tabby's event log is appended, and on a Volume the
  last commit of a file wins).

The router (:func:`router_spec`) is an ``asgi_app`` function in the same app. It finds each class's
URL at start-up and holds the proxy token (a Modal Secret) that the classes require.

When an entry has warm hours (``warm``), a scheduled function ``warm_hours`` (:func:`warm_spec`) runs
every 5 minutes and sets each such entry's ``min_containers`` for the time of day with
``update_autoscaler``.

Settings travel to the containers frozen: the deploying process resolves them (file, ``.env`` and
``FLEET_*`` variables) and passes the result as JSON in ``TABBY_FLEET_SETTINGS_JSON``, so every
container builds exactly the fleet that was deployed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import modal

from apps.tabby import IMAGE_TABBY_BIN, tabby_download_argv, tabby_serve_argv
from fleet.loading import load_settings
from fleet.settings import Entry, FleetSettings
from fleet.warm import WARM_LEAD

TABBY_PORT = 8080  # where tabby serve listens inside its container
DATA_MOUNT = "/data"  # the shared Volume; each container's TABBY_ROOT is DATA_MOUNT/<entry>/<task id>
# The routers' own state (usage) on the same Volume: one Volume to create, back up and pay for, and the
# store's day folders (YYYY-MM-DD) never clash with an entry's folders of task ids (router/store.py).
ROUTER_STATE = f"{DATA_MOUNT}/fleet-state"
MODEL_CACHE = "/models"  # baked model weights, outside the Volume mount so it cannot hide them
PYTHON_VERSION = "3.11"  # the containers' Python: the one this project is tested on (requires-python >=3.11)
FROZEN_SETTINGS_ENV = "TABBY_FLEET_SETTINGS_JSON"  # where a container finds the settings of its deploy
ROUTER_FUNCTION = "router"  # the router function's Modal name (its URL label is <app>-router unless set)
# Tabby 0.32 always loads this embedding model at start-up (0.33 only with TABBY_EMBEDDING_ENABLED):
# baked in too, or every cold start would download it.
EMBEDDING_MODEL = "TabbyML/Nomic-Embed-Text"
# router.upstream_ca_bundle names a file on the deploying machine; the router image carries it here.
ROUTER_CA_BUNDLE = "/etc/tabby-fleet/upstream-ca.pem"
ROUTER_TIMEOUT = 600  # seconds one router request may run; Modal answers web requests over 150 s with a 303
# Warm hours: a scheduled function sets each warm entry's min_containers. It runs every WARM_LEAD (5
# min): often enough that a window's containers are asked for one run before it starts (a cold GPU
# container takes minutes), rarely enough to cost nothing worth counting (a CPU container for a second).
WARM_FUNCTION = "warm_hours"
WARM_SCHEDULE = f"*/{int(WARM_LEAD.total_seconds() // 60)} * * * *"  # Modal's Cron runs in UTC by default
WARM_TIMEOUT = 120  # seconds one run may take: one update_autoscaler call per warm entry
# What every GPU container of an entry gets in its environment besides TABBY_ROOT (set per container,
# in EntryServer.serve): where the baked weights are, and no usage reports to TabbyML.
TABBY_SERVE_ENV = {"TABBY_DISABLE_USAGE_COLLECTION": "1", "TABBY_MODEL_CACHE_ROOT": MODEL_CACHE}

# What the containers import from this package, pinned to the versions tested locally. The GPU
# classes import only the settings; the router also the web stack. (Inside a container these lists
# are only re-declared, never built, so a package missing there is simply left unpinned.)
SETTINGS_PACKAGES = ("pydantic", "pydantic-settings")
# tzdata: warm windows name IANA timezones, and a slim image has no /usr/share/zoneinfo.
ROUTER_PACKAGES = (*SETTINGS_PACKAGES, "aiohttp", "fastapi", "prometheus-client", "tzdata")
# This project's packages, shipped to every container, and the files of them they need: the code,
# and its data (the router's copy of Tabby's OpenAPI, the example settings).
FLEET_PACKAGES = ("fleet", "apps", "router")
PACKAGE_FILES = ~modal.FilePatternMatcher("**/*.py", "**/*.json", "**/*.toml")


def pinned(packages: tuple[str, ...]) -> list[str]:
    requirements = []
    for package in packages:
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            requirements.append(package)
    return requirements


def current_settings() -> FleetSettings:
    """In a container: the frozen settings of the deploy. Locally: load them the usual way."""
    frozen = os.environ.get(FROZEN_SETTINGS_ENV)
    if frozen:
        return FleetSettings.model_validate_json(frozen)
    return load_settings()


# -- the specs: everything the app declares, worked out before anything is declared -------------------


@dataclass(frozen=True)
class EntrySpec:
    """One entry's Modal class, as :mod:`apps.modal.deploy` declares it and ``fleet plan`` prints it."""

    entry: Entry  # the entry's settings (its name, for TABBY_ROOT; completion_timeout, for Tabby's config.toml)
    class_name: str  # Modal tags a class by its __name__ and the container finds it by that name
    models: tuple[str, ...]  # downloaded into the image at build time (after EMBEDDING_MODEL)
    cls: dict[str, Any]  # app.cls(**cls)
    concurrent: dict[str, int]  # modal.concurrent(**concurrent), on the class
    web_server: dict[str, Any]  # modal.web_server(**web_server), on its serve method
    argv: tuple[str, ...]  # what serve runs: tabby serve
    env: dict[str, str]  # added to the container's environment for tabby serve
    frozen_settings: str  # the JSON in FROZEN_SETTINGS_ENV: all the container knows of the settings


def entry_spec(settings: FleetSettings, entry: Entry, volume: modal.Volume) -> EntrySpec:
    """Everything Modal is told about one entry's class, from its settings (``volume``: the shared one)."""
    frozen = entry_settings_json(settings, entry)
    concurrent = {"max_inputs": entry.max_inputs}  # requests one container takes at once
    if entry.target_inputs is not None:  # the autoscaler aims for this many (Modal: max_inputs when unset)
        concurrent["target_inputs"] = entry.target_inputs
    cls: dict[str, Any] = {
        "image": tabby_image(settings, entry),  # Tabby, the shared layers, then this entry's models
        "gpu": list(entry.gpus) if len(entry.gpus) > 1 else entry.gpu,  # a list: Modal's ordered fallback
        "scaledown_window": entry.scaledown_window,  # idle seconds before a container stops
        "max_containers": entry.max_containers,
        "min_containers": entry.min_containers,  # the static floor; warm_hours raises it in its windows
        "timeout": entry.timeout,  # seconds one request may run
        "startup_timeout": entry.startup_timeout,  # seconds a container may take to start
        "volumes": {DATA_MOUNT: volume},  # the one shared Volume: every container's TABBY_ROOT is on it
        "env": {FROZEN_SETTINGS_ENV: frozen},  # this entry's frozen settings (Modal sends them as a Secret)
    }
    if entry.buffer_containers is not None:  # only when set: Modal's own default otherwise
        cls["buffer_containers"] = entry.buffer_containers
    return EntrySpec(
        entry=entry,
        class_name=entry.class_name,
        models=(entry.model, *([entry.chat_model] if entry.chat_model else [])),
        cls=cls,
        concurrent=concurrent,
        # Modal waits startup_timeout seconds for the port (Tabby opens it once the model is loaded,
        # which takes as long as the container's start may), then proxies to it, behind proxy auth:
        # only the router, which holds the proxy token, may call a class.
        web_server={"port": TABBY_PORT, "startup_timeout": entry.startup_timeout, "requires_proxy_auth": True},
        argv=tuple(
            tabby_serve_argv(
                entry, binary=IMAGE_TABBY_BIN, port=TABBY_PORT, device="cuda", parallelism=entry.decoding_slots
            )
        ),
        env=dict(TABBY_SERVE_ENV),
        frozen_settings=frozen,
    )


@dataclass(frozen=True)
class FunctionSpec:
    """The router or the warm_hours function, as :mod:`apps.modal.deploy` declares it."""

    function: dict[str, Any]  # app.function(**function)
    concurrent: dict[str, int] | None = None  # modal.concurrent(**concurrent), when set
    asgi_app: dict[str, Any] | None = None  # modal.asgi_app(**asgi_app), when a web function
    cron: str | None = None  # the schedule's cron line (UTC), when scheduled


def router_spec(settings: FleetSettings, proxy_auth: modal.Secret, volume: modal.Volume) -> FunctionSpec:
    """The router: the IDEs' door (no proxy auth: the router checks team tokens itself); it keeps its usage
    on the shared Volume at ROUTER_STATE, so every router container and every deploy sees the same."""
    options = settings.modal
    # With the hub on, its Secret too: FLEET_HUB_TEAM_TOKENS, each team's hub token the router puts in
    # place of the team's fleet token on the hub's paths (fleet/hub.py), whether the hub runs here or at hub.url.
    hub_secrets = [modal.Secret.from_name(settings.hub.secret)] if settings.hub.enabled else []
    return FunctionSpec(
        function={
            "image": router_image(settings.router.upstream_ca_bundle),
            "name": ROUTER_FUNCTION,
            "secrets": [proxy_auth, *hub_secrets],  # the proxy token the classes require, and the hub's
            "env": {FROZEN_SETTINGS_ENV: router_settings_json(settings)},  # all the settings
            "min_containers": options.router_min_containers,  # 1 by default: the day's first keystroke finds it up
            "max_containers": options.router_max_containers,
            "cpu": options.router_cpu,  # None: Modal's default
            "memory": options.router_memory,  # None: Modal's default
            "timeout": ROUTER_TIMEOUT,
            "volumes": {DATA_MOUNT: volume},  # the store at ROUTER_STATE (apps/modal/deploy.py)
        },
        concurrent={"max_inputs": options.router_max_inputs},  # it mostly waits on the classes: many at once
        asgi_app={"label": options.router_label},  # None: Modal's default label, <app>-router
    )


def warm_spec(settings: FleetSettings) -> FunctionSpec | None:
    """The scheduled function that applies warm hours, or None when no deployed entry has windows.

    Each run sets every warm entry's ``min_containers`` for the current time (fleet/warm.py,
    ``apply_warm_hours``) with ``update_autoscaler``. A deploy resets the autoscaler to the static
    ``min_containers``; the next run (within ``WARM_LEAD``) applies the windows again.
    """
    frozen = warm_settings_json(settings)
    if frozen is None:
        return None
    return FunctionSpec(
        function={
            "image": router_image(),  # the router's small CPU image: it has tzdata and Modal's client
            "name": WARM_FUNCTION,
            "schedule": modal.Cron(WARM_SCHEDULE),
            "env": {FROZEN_SETTINGS_ENV: frozen},  # the warm entries and the app's name, nothing else
            "timeout": WARM_TIMEOUT,
        },
        cron=WARM_SCHEDULE,
    )


@dataclass(frozen=True)
class FleetSpec:
    """The whole app: its name, the shared Volume, one class per deployed entry, the functions."""

    app_name: str
    volume: modal.Volume
    entries: tuple[EntrySpec, ...]  # entries with a url run elsewhere: none here
    router: FunctionSpec
    warm: FunctionSpec | None  # None when no deployed entry has warm windows


def fleet_spec(settings: FleetSettings) -> FleetSpec:
    """The specs of everything the app declares. Builds Modal objects, but offline: they are lazy."""
    volume = modal.Volume.from_name(settings.modal.volume, create_if_missing=True)
    proxy_auth = modal.Secret.from_name(settings.modal.proxy_auth_secret)
    return FleetSpec(
        app_name=settings.modal.app_name,
        volume=volume,
        entries=tuple(entry_spec(settings, entry, volume) for entry in settings.entries if entry.url is None),
        router=router_spec(settings, proxy_auth, volume),
        warm=warm_spec(settings),
    )


# -- how the specs are made: images and frozen settings ------------------------------------------------


def tabby_base_image(settings: FleetSettings) -> modal.Image:
    """The layers every entry shares, built and stored once: Tabby's image with Python, no
    entrypoint, the embedding model every Tabby 0.32 loads, and the settings packages."""
    return (
        modal.Image.from_registry(settings.modal.tabby_image, add_python=PYTHON_VERSION)
        .dockerfile_commands("ENTRYPOINT []")
        .env({"TABBY_MODEL_CACHE_ROOT": MODEL_CACHE, "TABBY_DISABLE_USAGE_COLLECTION": "1"})
        .run_commands(" ".join(tabby_download_argv(EMBEDDING_MODEL)))
        .pip_install(*pinned(SETTINGS_PACKAGES))
    )


def tabby_image(settings: FleetSettings, entry: Entry) -> modal.Image:
    """The shared layers, then this entry's own models baked in."""
    models = [entry.model, *([entry.chat_model] if entry.chat_model else [])]
    return (
        tabby_base_image(settings)
        .run_commands(*(" ".join(tabby_download_argv(model)) for model in models))
        .add_local_python_source(*FLEET_PACKAGES, ignore=PACKAGE_FILES)
    )


# What a GPU container's frozen settings keep of the modal options: what names the app and builds
# its image and volume. The router_* options stay out, so changing them replaces no GPU container.
GPU_MODAL_OPTIONS = frozenset({"app_name", "volume", "tabby_image", "proxy_auth_secret"})


def entry_settings_json(settings: FleetSettings, entry: Entry) -> str:
    """The frozen settings of one entry's containers: that entry and the image and volume options.

    A class's definition then depends on nothing else: a change to a team, a router option,
    another entry or the entry's warm hours (applied by the warm_hours function) leaves its (slow to
    start) containers alone.
    """
    frozen = {
        "entries": [entry.model_dump(mode="json", exclude={"warm"})],
        "modal": settings.modal.model_dump(mode="json", include=set(GPU_MODAL_OPTIONS)),
    }
    return json.dumps(frozen, sort_keys=True)


def warm_settings_json(settings: FleetSettings) -> str | None:
    """The frozen settings of the warm_hours function: the deployed entries with warm windows and the
    app's name (no teams, no tokens). None when no deployed entry has windows: nothing to schedule."""
    warm = [entry.model_dump(mode="json") for entry in settings.entries if entry.warm and entry.url is None]
    if not warm:
        return None
    return json.dumps({"entries": warm, "modal": {"app_name": settings.modal.app_name}}, sort_keys=True)


def router_image(ca_bundle: Path | None = None) -> modal.Image:
    """Debian with the router's packages and this project's; ``ca_bundle`` (router.upstream_ca_bundle,
    a file on the deploying machine) copied in at ``ROUTER_CA_BUNDLE``."""
    image = modal.Image.debian_slim(python_version=PYTHON_VERSION).pip_install(*pinned(ROUTER_PACKAGES))
    if ca_bundle is not None:
        image = image.add_local_file(ca_bundle, ROUTER_CA_BUNDLE, copy=True)
    return image.add_local_python_source(*FLEET_PACKAGES, ignore=PACKAGE_FILES)


def router_settings_json(settings: FleetSettings) -> str:
    """The router's frozen settings: all of them, with the CA bundle's path as it is in the router image."""
    if settings.router.upstream_ca_bundle is None:
        return settings.model_dump_json()
    router = settings.router.model_dump(mode="json") | {"upstream_ca_bundle": ROUTER_CA_BUNDLE}
    return json.dumps(settings.model_dump(mode="json") | {"router": router})
