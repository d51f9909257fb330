"""Read back what a built (not deployed) Modal app declares, for `fleet plan` and the tests.

Modal's public ``Function.info()`` covers most values. The rest (autoscaler settings, web server
config, image layers) sit only in private attributes of modal 1.6: every such read is in this one
module, so a Modal upgrade that moves them breaks here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import modal
from modal._utils.async_utils import synchronizer  # private: modal 1.6


def _closure(function: Any) -> dict[str, Any]:  # private: the loader's captured arguments
    load = function._load
    return dict(zip(load.__code__.co_freevars, (cell.cell_contents for cell in (load.__closure__ or ())), strict=True))


def _functions(app: modal.App) -> dict[str, Any]:
    return synchronizer._translate_in(app)._local_state.functions  # private: {"TabbySmall.*": _Function}


def image_commands(image: Any) -> list[str]:
    """The Dockerfile commands of every layer, base first (``FROM base`` lines left out)."""
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
        "web": web,
        "image": image_commands(function._spec.image),  # private: _FunctionSpec
        "cpu": function._spec.cpu,  # private: _FunctionSpec
        "memory": function._spec.memory,
    }


def describe_app(app: modal.App) -> dict[str, dict[str, Any]]:
    """Every class and function the app declares, by tag."""
    return {tag.removesuffix(".*"): describe_function(app, tag) for tag in _functions(app)}
