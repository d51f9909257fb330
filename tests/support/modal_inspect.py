"""Declare the fleet's Modal app offline from given settings, and read back what Modal holds, for the tests.

Modal's public ``Function.info()`` covers most values. The rest (autoscaler settings, web server
config, environment, image layers) sit only in private attributes of modal 1.6: every such read is
in this one module, so a Modal upgrade that moves them breaks the tests here and nowhere else (the
fleet itself, and ``fleet plan``, read only the specs in apps/modal/app.py).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import modal
from modal._utils.async_utils import synchronizer  # private: modal 1.6

from apps.modal.app import FROZEN_SETTINGS_ENV
from fleet.settings import FleetSettings


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def declare(settings: FleetSettings) -> ModuleType:
    """A fresh run of apps/modal/deploy.py with these settings: what ``modal deploy`` (or a container,
    which gets the settings frozen in the same variable) declares. Its ``app``, ``fleet`` (the specs),
    entry classes, ``router`` and ``warm_hours`` (when declared) are its attributes."""
    with _environment({FROZEN_SETTINGS_ENV: settings.model_dump_json()}):
        from apps.modal import deploy  # the first time, this runs it too

        module = importlib.util.module_from_spec(deploy.__spec__)
        assert deploy.__spec__.loader is not None  # a module imported from a file has one
        deploy.__spec__.loader.exec_module(module)
    return module


def _closure(function: Any) -> dict[str, Any]:  # private: the loader's captured arguments
    load = function._load
    return dict(zip(load.__code__.co_freevars, (cell.cell_contents for cell in (load.__closure__ or ())), strict=True))


def _functions(app: modal.App) -> dict[str, Any]:
    return synchronizer._translate_in(app)._local_state.functions  # private: {"TabbySmall.*": _Function}


def image_commands(image: Any) -> list[str]:
    """The Dockerfile commands of every layer, base first (``FROM base`` lines left out)."""
    image = synchronizer._translate_in(image)  # a modal.Image as declared, or Modal's own _Image
    layers: list[list[str]] = []
    while image is not None:
        closure = _closure(image)
        if "dockerfile_function" in closure:
            commands = closure["dockerfile_function"]("2025.06").commands
            layers.append([c for c in commands if c != "FROM base"])
        bases = closure.get("base_images") or {}
        image = closure.get("base_image") or next(iter(bases.values()), None)
    return [command for layer in reversed(layers) for command in layer]


def describe_function(app: modal.App, tag: str) -> dict[str, Any]:
    """Everything the plan and the tests check about one class (``"TabbySmall.*"``) or function."""
    function = _functions(app)[tag]
    info = synchronizer._translate_out(function).info()  # public Function.info()
    closure = _closure(function)
    autoscaler = closure["autoscaler_settings"]
    web = {}
    for name, definition in (closure.get("method_definitions") or {}).items():
        config = definition.webhook_config
        web[name] = {
            "port": config.web_server_port,
            "startup_timeout": config.web_server_startup_timeout,
            "requires_proxy_auth": config.requires_proxy_auth,
        }
    if not web and closure.get("webhook_config") is not None:
        config = closure["webhook_config"]
        web[tag] = {"requires_proxy_auth": config.requires_proxy_auth, "label": config.requested_suffix or None}
    return {
        "gpu": [f"{kind}:{count}" if count > 1 else kind for kind, count in info.gpus],
        "scaledown_window": autoscaler.scaledown_window,
        "max_containers": autoscaler.max_containers,
        "min_containers": autoscaler.min_containers,
        "buffer_containers": autoscaler.buffer_containers,
        "max_inputs": info.concurrency_info.max_inputs if info.concurrency_info else None,
        "target_inputs": info.concurrency_info.target_inputs if info.concurrency_info else None,
        "timeout": info.timeout,
        "startup_timeout": info.startup_timeout,
        "schedule": info.schedule,  # e.g. "Cron('*/5 * * * *', UTC)", or None
        "volumes": {path: mount.name for path, mount in info.volumes.items()},
        "secrets": list(info.secrets),
        "env": _environment_of(function),
        "web": web,
        "image": image_commands(function._spec.image),  # private: _FunctionSpec
        "cpu": function._spec.cpu,  # private: _FunctionSpec
        "memory": function._spec.memory,
    }


def _environment_of(function: Any) -> dict[str, str]:
    """The variables given with ``env=`` (Modal turns them into a ``Secret.from_dict``)."""
    env: dict[str, str] = {}
    for secret in function._spec.secrets:  # private: _FunctionSpec
        load = getattr(secret, "_load_env_dict", None)  # private: set by Secret.from_dict only
        if load is not None:
            env |= load()
    return env


def describe_app(app: modal.App) -> dict[str, dict[str, Any]]:
    """Every class and function the app declares, by tag."""
    return {tag.removesuffix(".*"): describe_function(app, tag) for tag in _functions(app)}


def lifecycle(cls: Any) -> dict[str, list[str]]:
    """The methods of a declared class (``modal.Cls``) that Modal runs at container start (``enter``), as its
    web endpoint (``web``) and at exit (``exit``), found as Modal's container finds them."""
    from modal import _partial_function as partials  # private: modal 1.6

    user_cls = synchronizer._translate_in(cls)._user_cls  # private: _Cls
    flags = partials._PartialFunctionFlags
    found = partials._find_partial_methods_for_user_cls
    return {
        "enter": sorted(found(user_cls, flags.ENTER_POST_SNAPSHOT)),
        "web": sorted(found(user_cls, flags.WEB_INTERFACE)),
        "exit": sorted(found(user_cls, flags.EXIT)),
    }
