"""The fleet on Modal: one GPU class per entry and the router beside them, all from FleetSettings.

This module declares; :mod:`apps.modal.deploy` is what ``fleet deploy`` hands to
``modal deploy -m``. Per entry it declares:

- a class named after the entry (``small`` -> ``TabbySmall``), a module-level global so the container
  finds it by name;
- its own image: Tabby's registry image with Python, the entrypoint cleared, and the entry's models
  downloaded at build time into ``/models`` (outside the Volume mount, so a cold start downloads
  nothing);
- its GPU, idle window, container limits and concurrency, from the entry's settings;
- ``tabby serve --no-webserver`` as a ``web_server`` behind Modal proxy auth, supervised (the
  container ends when Tabby does), with ``TABBY_ROOT=/data/<entry>/<container's task id>`` on the
  one shared Volume (one root per container: Tabby's event log is appended, and on a Volume the
  last commit of a file wins).

The router is an ``asgi_app`` function in the same app. It finds each class's URL at start-up and
holds the proxy token (a Modal Secret) that the classes require.

When an entry has warm hours (``warm``), a scheduled function ``warm_hours`` runs every 5 minutes
and sets each such entry's ``min_containers`` for the time of day with ``update_autoscaler``.

Settings travel to the containers frozen: the deploying process resolves them (file, ``.env`` and
``FLEET_*`` variables) and passes the result as JSON in ``TABBY_FLEET_SETTINGS_JSON``, so every
container builds exactly the fleet that was deployed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import modal

from apps.tabby import (
    IMAGE_TABBY_BIN,
    container_root,
    supervise,
    tabby_download_argv,
    tabby_env,
    tabby_serve_argv,
    write_tabby_config,
)
from fleet.loading import load_settings
from fleet.settings import Entry, FleetSettings
from fleet.warm import WARM_LEAD, apply_warm_hours

TABBY_PORT = 8080  # where tabby serve listens inside its container
DATA_MOUNT = "/data"  # the shared Volume; each container's TABBY_ROOT is DATA_MOUNT/<entry>/<task id>
MODEL_CACHE = "/models"  # baked model weights, outside the Volume mount so it cannot hide them
PYTHON_VERSION = "3.11"
FROZEN_SETTINGS_ENV = "TABBY_FLEET_SETTINGS_JSON"
ROUTER_FUNCTION = "router"
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
WARM_SCHEDULE = f"*/{int(WARM_LEAD.total_seconds() // 60)} * * * *"
WARM_TIMEOUT = 120  # seconds one run may take: one update_autoscaler call per warm entry

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


@dataclass
class FleetApp:
    """What a deploy creates: the app, one class per entry (by entry name), and the router."""

    app: modal.App
    classes: dict[str, Any]  # entry name -> the modal Cls
    user_classes: dict[str, type]  # entry name -> the plain class behind it (its SERVE_ARGV, SERVE_ENV)
    router: Any
    volume: modal.Volume
    warm_hours: Any = None  # the scheduled function, when an entry has warm windows


def build_fleet_app(settings: FleetSettings, namespace: dict[str, Any]) -> FleetApp:
    """Declare the whole fleet on a new modal.App.

    Each class and the router are bound in ``namespace`` (a module's globals) under their names,
    with that module as their ``__module__``: a container finds them there by name.
    """
    module = namespace.get("__name__", __name__)
    app = modal.App(settings.modal.app_name)
    volume = modal.Volume.from_name(settings.modal.volume, create_if_missing=True)
    # The router gets every setting. The GPU classes only need what names and shapes them, so a
    # change to teams or router options does not replace their (slow to start) containers.
    frozen_all = {FROZEN_SETTINGS_ENV: router_settings_json(settings)}
    proxy_auth = modal.Secret.from_name(settings.modal.proxy_auth_secret)
    classes = {}
    user_classes = {}
    for entry in settings.entries:
        if entry.url is not None:
            continue  # an external Tabby server: nothing to deploy
        frozen_entry = entry_settings_json(settings, entry)
        user_cls = user_classes[entry.name] = _tabby_class(entry, module, frozen_entry)
        concurrency = {"max_inputs": entry.max_inputs}
        if entry.target_inputs is not None:
            concurrency["target_inputs"] = entry.target_inputs
        user_cls = modal.concurrent(**concurrency)(user_cls)
        options: dict[str, Any] = {}
        if entry.buffer_containers is not None:
            options["buffer_containers"] = entry.buffer_containers
        deployed = app.cls(
            image=tabby_image(settings, entry),
            gpu=list(entry.gpus) if len(entry.gpus) > 1 else entry.gpu,  # a list: Modal's ordered fallback
            scaledown_window=entry.scaledown_window,
            max_containers=entry.max_containers,
            min_containers=entry.min_containers,
            timeout=entry.timeout,
            startup_timeout=entry.startup_timeout,
            volumes={DATA_MOUNT: volume},
            env={FROZEN_SETTINGS_ENV: frozen_entry},
            **options,
        )(user_cls)
        namespace[entry.class_name] = deployed
        classes[entry.name] = deployed

    def router() -> Any:
        from apps.modal.backends import ModalBackends
        from router.app import create_app

        fleet = current_settings()
        return create_app(fleet, ModalBackends(fleet))

    router.__module__ = module
    router.__qualname__ = ROUTER_FUNCTION
    web_app = modal.asgi_app(label=settings.modal.router_label)(router)
    web_app = modal.concurrent(max_inputs=settings.modal.router_max_inputs)(web_app)
    router_function = app.function(
        image=router_image(settings.router.upstream_ca_bundle),
        name=ROUTER_FUNCTION,
        secrets=[proxy_auth],
        env=frozen_all,
        min_containers=settings.modal.router_min_containers,
        max_containers=settings.modal.router_max_containers,
        cpu=settings.modal.router_cpu,
        memory=settings.modal.router_memory,
        timeout=ROUTER_TIMEOUT,
    )(web_app)
    namespace[ROUTER_FUNCTION] = router_function
    warm_function = _warm_hours_function(app, settings, module)
    if warm_function is not None:
        namespace[WARM_FUNCTION] = warm_function
    return FleetApp(app, classes, user_classes, router_function, volume, warm_function)


def _warm_hours_function(app: modal.App, settings: FleetSettings, module: str) -> Any:
    """The scheduled function that applies warm hours, or None when no deployed entry has windows.

    Each run sets every warm entry's ``min_containers`` for the current time (fleet/warm.py,
    ``apply_warm_hours``) with ``update_autoscaler``. A deploy resets the autoscaler to the static
    ``min_containers``; the next run (within ``WARM_LEAD``) applies the windows again.
    """
    frozen = warm_settings_json(settings)
    if frozen is None:
        return None

    def warm_hours() -> dict[str, int]:
        fleet = current_settings()

        def autoscale(entry: Entry, min_containers: int) -> None:
            cls = modal.Cls.from_name(fleet.modal.app_name, entry.class_name)
            cls().update_autoscaler(min_containers=min_containers)

        now = datetime.now(UTC)
        applied = apply_warm_hours(fleet, now, autoscale)
        print(f"warm hours at {now:%Y-%m-%d %H:%M} UTC: min_containers set to {applied}", flush=True)
        return applied

    warm_hours.__module__ = module
    warm_hours.__qualname__ = WARM_FUNCTION
    return app.function(
        image=router_image(),
        name=WARM_FUNCTION,
        schedule=modal.Cron(WARM_SCHEDULE),
        env={FROZEN_SETTINGS_ENV: frozen},
        timeout=WARM_TIMEOUT,
    )(warm_hours)


def _tabby_class(entry: Entry, module: str, frozen_settings: str) -> type:
    """A plain class for one entry, with its own web_server (each needs its own startup_timeout)."""
    argv = tabby_serve_argv(
        entry, binary=IMAGE_TABBY_BIN, port=TABBY_PORT, device="cuda", parallelism=entry.decoding_slots
    )
    environment = {"TABBY_DISABLE_USAGE_COLLECTION": "1", "TABBY_MODEL_CACHE_ROOT": MODEL_CACHE}

    def serve(self: Any) -> None:
        root = container_root(DATA_MOUNT, entry, os.environ.get("MODAL_TASK_ID"))
        write_tabby_config(root, entry)  # makes the folder too
        # Tabby opens its port only once the model is loaded; Modal waits for the port. If Tabby
        # exits first, the watchdog ends the container so that Modal replaces it at once.
        supervise(argv, {**os.environ, **environment, **tabby_env(root)}, name=f"entry {entry.name!r}")

    serve.__qualname__ = f"{entry.class_name}.serve"
    serve.__module__ = module
    attributes = {
        "__module__": module,
        "__doc__": f"Tabby serving {entry.model} for fleet entry {entry.name!r}.",
        "ENTRY": entry.name,
        # What the container runs and is given, kept visible for `fleet plan` and the tests.
        "SERVE_ARGV": tuple(argv),
        "SERVE_ENV": dict(environment),
        "FROZEN_SETTINGS": frozen_settings,
        "serve": modal.web_server(TABBY_PORT, startup_timeout=entry.startup_timeout, requires_proxy_auth=True)(serve),
    }
    return type(entry.class_name, (), attributes)
