"""The Modal app, built offline from settings: what it declares, per class and for the router."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from apps.modal.app import (
    DATA_MOUNT,
    EMBEDDING_MODEL,
    FROZEN_SETTINGS_ENV,
    ROUTER_CA_BUNDLE,
    ROUTER_STATE,
    current_settings,
    router_settings_json,
)
from apps.tabby import container_root
from fleet.loading import load_settings
from fleet.settings import Entry, FleetSettings

from .support.modal_inspect import declare, describe_app, image_commands

THREE = """
[modal]
app_name = "fleet-test"
volume = "fleet-test-data"
tabby_image = "tabbyml/tabby:0.32.0"
proxy_auth_secret = "fleet-test-proxy"
router_min_containers = 0
router_max_inputs = 300

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"
gpu = "L4"
scaledown_window = 120
max_containers = 2
min_containers = 0
max_inputs = 8
target_inputs = 6

[[entries]]
name = "medium"
model = "TabbyML/StarCoder-3B"
gpu = "A10G"
scaledown_window = 300
max_containers = 3
min_containers = 1
buffer_containers = 1
max_inputs = 4
parallelism = 2
startup_timeout = 900
timeout = 300

[[entries]]
name = "large-7b"
model = "TabbyML/StarCoder-7B"
gpu = "h100:2"
scaledown_window = 3600
max_containers = 1
max_inputs = 2
"""


def settings_from(tmp_path: Path, text: str) -> FleetSettings:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return load_settings(path)


def build(settings: FleetSettings) -> tuple[Any, dict[str, dict[str, Any]]]:
    """apps/modal/deploy.py run with these settings, and what its app declares."""
    deployed = declare(settings)
    return deployed, describe_app(deployed.app)


def specs(deployed: Any) -> dict[str, Any]:
    """The EntrySpec of each deployed entry, by entry name."""
    return {spec.entry.name: spec for spec in deployed.fleet.entries}


@pytest.fixture(scope="module")
def declared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, dict[str, Any]]]:
    return build(settings_from(tmp_path_factory.mktemp("modal"), THREE))


def test_one_class_per_entry_plus_router(declared: tuple[Any, dict]) -> None:
    _, classes = declared
    assert set(classes) == {"TabbySmall", "TabbyMedium", "TabbyLarge7b", "router"}


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        ("TabbySmall", {"gpu": ["L4"], "scaledown_window": 120, "max_containers": 2, "min_containers": 0,
                        "buffer_containers": 0, "max_inputs": 8, "target_inputs": 6, "timeout": 600,
                        "startup_timeout": 600}),
        ("TabbyMedium", {"gpu": ["A10G"], "scaledown_window": 300, "max_containers": 3, "min_containers": 1,
                         "buffer_containers": 1, "max_inputs": 4, "target_inputs": None, "timeout": 300,
                         "startup_timeout": 900}),
        ("TabbyLarge7b", {"gpu": ["H100:2"], "scaledown_window": 3600, "max_containers": 1, "min_containers": 0,
                          "max_inputs": 2, "timeout": 600, "startup_timeout": 600}),
    ],
)  # fmt: skip
def test_each_class_declares_its_settings(declared: tuple[Any, dict], cls: str, expected: dict[str, Any]) -> None:
    _, classes = declared
    for key, value in expected.items():
        assert classes[cls][key] == value, key


@pytest.mark.parametrize(("cls", "startup"), [("TabbySmall", 600), ("TabbyMedium", 900)])
def test_web_server_port_startup_and_proxy_auth(declared: tuple[Any, dict], cls: str, startup: int) -> None:
    _, classes = declared
    assert classes[cls]["web"] == {"serve": {"port": 8080, "startup_timeout": startup, "requires_proxy_auth": True}}


def test_one_shared_volume_and_a_data_folder_per_container(declared: tuple[Any, dict]) -> None:
    fleet, classes = declared
    for name in ("TabbySmall", "TabbyMedium", "TabbyLarge7b"):
        assert classes[name]["volumes"] == {DATA_MOUNT: "fleet-test-data"}
    small = Entry(name="small", model="TabbyML/StarCoder-1B")
    assert container_root(DATA_MOUNT, small, "ta-01J") == "/data/small/ta-01J"  # Modal's MODAL_TASK_ID
    assert container_root(DATA_MOUNT, small, None) == "/data/small/no-task-id"
    assert all("TABBY_ROOT" not in spec.env for spec in fleet.fleet.entries)  # set per container
    assert all(spec.env["TABBY_MODEL_CACHE_ROOT"] == "/models" for spec in fleet.fleet.entries)


def test_images_bake_exactly_their_entry_models(declared: tuple[Any, dict]) -> None:
    _, classes = declared

    def downloads(cls: str) -> list[str]:
        return [c.split("--model ")[1] for c in classes[cls]["image"] if "tabby download" in c]

    embedding = "TabbyML/Nomic-Embed-Text"
    assert downloads("TabbySmall") == [embedding, "TabbyML/StarCoder-1B", "TabbyML/Qwen2-1.5B-Instruct"]
    assert downloads("TabbyMedium") == [embedding, "TabbyML/StarCoder-3B"]
    assert downloads("TabbyLarge7b") == [embedding, "TabbyML/StarCoder-7B"]
    image = classes["TabbySmall"]["image"]
    assert image.index("ENTRYPOINT []") < image.index("ENV TABBY_MODEL_CACHE_ROOT=/models")
    assert image.index("ENV TABBY_MODEL_CACHE_ROOT=/models") < next(
        i for i, c in enumerate(image) if "tabby download" in c
    )  # the weights land in /models, outside the /data mount


def test_the_embedding_model_is_in_layers_every_entry_shares(declared: tuple[Any, dict]) -> None:
    """Modal builds and stores a layer once for every image that has the same layers before it."""
    _, classes = declared
    images = [classes[name]["image"] for name in ("TabbySmall", "TabbyMedium", "TabbyLarge7b")]
    shared = 0
    while all(len(image) > shared for image in images) and len({image[shared] for image in images}) == 1:
        shared += 1
    common = images[0][:shared]
    assert any("download --model TabbyML/Nomic-Embed-Text" in c for c in common)
    assert any("pip install" in c for c in common)
    assert not any("StarCoder" in c for c in common)


def test_a_gpu_class_depends_only_on_its_entry_and_the_image_settings(tmp_path: Path) -> None:
    """Changing a router option, a team or another entry must not redefine (and so restart) a GPU class."""
    changed = THREE.replace("router_max_inputs = 300", "router_max_inputs = 50\nrouter_max_containers = 2")
    changed = changed.replace('model = "TabbyML/StarCoder-3B"', 'model = "TabbyML/StarCoder-3B"\naliases = ["m"]')
    changed += '\n[router]\nread_timeout = 60\n\n[[teams]]\nname = "web"\nentry = "small"\n'
    # warm hours are applied by the warm_hours function (update_autoscaler), not by redefining the class
    warm = 'warm = [{days = "daily", start = "08:00", end = "18:00", timezone = "UTC"}]'
    changed = changed.replace("target_inputs = 6", f"target_inputs = 6\n{warm}")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before_fleet, before = build(settings_from(tmp_path / "a", THREE))
    after_fleet, after = build(settings_from(tmp_path / "b", changed))
    for entry, name in (("small", "TabbySmall"), ("large-7b", "TabbyLarge7b")):
        assert after[name] == before[name], name
        assert specs(after_fleet)[entry].frozen_settings == specs(before_fleet)[entry].frozen_settings
    assert specs(after_fleet)["medium"].frozen_settings != specs(before_fleet)["medium"].frozen_settings
    frozen = json.loads(specs(before_fleet)["small"].frozen_settings)
    assert [e["name"] for e in frozen["entries"]] == ["small"] and "teams" not in frozen
    assert not any(key.startswith("router") for key in frozen["modal"])


def test_serve_command(declared: tuple[Any, dict]) -> None:
    fleet, _ = declared
    small = specs(fleet)["small"].argv
    assert small[:3] == ("/opt/tabby/bin/tabby", "serve", "--no-webserver")
    flags = dict(zip(small[3::2], small[4::2], strict=False))
    assert flags == {"--model": "TabbyML/StarCoder-1B", "--chat-model": "TabbyML/Qwen2-1.5B-Instruct",
                     "--host": "0.0.0.0", "--port": "8080", "--device": "cuda", "--parallelism": "8",
                     "--chat-device": "cuda"}  # fmt: skip
    medium = specs(fleet)["medium"].argv
    assert "--chat-model" not in medium and medium[medium.index("--parallelism") + 1] == "2"


def test_router_function(declared: tuple[Any, dict]) -> None:
    _, classes = declared
    router = classes["router"]
    assert router["gpu"] == [] and router["max_inputs"] == 300
    assert (router["min_containers"], router["max_containers"]) == (0, 1)
    assert "modal.Secret.from_name('fleet-test-proxy')" in router["secrets"]
    assert router["web"]["router"]["requires_proxy_auth"] is False  # the IDEs' door; the router does auth
    # its usage store on the fleet's Volume, named by the frozen settings, mounted where ROUTER_STATE points
    assert router["volumes"] == {DATA_MOUNT: "fleet-test-data"} and ROUTER_STATE.startswith(DATA_MOUNT + "/")
    assert any("pip install" in c and "fastapi==" in c for c in router["image"])


def test_frozen_settings_reach_every_container(declared: tuple[Any, dict]) -> None:
    _, classes = declared
    for name in ("TabbySmall", "router"):
        assert f"Secret.from_dict([{FROZEN_SETTINGS_ENV}])" in classes[name]["secrets"]


def test_adding_and_removing_an_entry_adds_and_removes_one_class(tmp_path: Path) -> None:
    _, before = build(settings_from(tmp_path, THREE))
    extra = THREE + '\n[[entries]]\nname = "xl"\nmodel = "TabbyML/CodeLlama-13B"\ngpu = "A100-80GB"\n'
    _, after = build(settings_from(tmp_path, extra))
    assert set(after) - set(before) == {"TabbyXl"} and set(before) <= set(after)
    removed = THREE[: THREE.index('[[entries]]\nname = "large-7b"')]
    _, fewer = build(settings_from(tmp_path, removed))
    assert set(before) - set(fewer) == {"TabbyLarge7b"} and set(fewer) <= set(before)


def test_url_entries_deploy_nothing(tmp_path: Path) -> None:
    text = THREE + '\n[[entries]]\nname = "gpu-box"\nmodel = "TabbyML/StarCoder-1B"\nurl = "http://gpu-box:8080"\n'
    _, classes = build(settings_from(tmp_path, text))
    assert "TabbyGpuBox" not in classes


FIND_CLASSES = """
import json, importlib, modal
from modal._runtime.user_code_imports import _get_cls_or_user_cls  # private: how a container finds its class
from modal_proto import api_pb2
deployed = importlib.import_module({module!r})
names = sorted(k for k in dir(deployed) if k.startswith("Tabby"))
for name in names:  # what Modal's container does with the class's function definition
    definition = api_pb2.Function(module_name={module!r}, implementation_name=name + ".*",
                                  definition_type=api_pb2.Function.DEFINITION_TYPE_FILE)
    assert _get_cls_or_user_cls(definition, None) is getattr(deployed, name), name
assert isinstance(deployed.router, modal.Function)
print(json.dumps(names))
"""


def _class_names_in_fresh_process(module: str, env: dict[str, str]) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "TABBY_FLEET"))}
    code = FIND_CLASSES.format(module=module)
    result = subprocess.run([sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fresh_processes_define_the_same_class_names(declared: tuple[Any, dict], tmp_path: Path) -> None:
    module = declared[0].__name__  # the deploy module, by its own name
    config = tmp_path / "fleet.toml"
    config.write_text(THREE)
    settings = load_settings(config)
    deploying = _class_names_in_fresh_process(module, {"FLEET_CONFIG": str(config)})
    again = _class_names_in_fresh_process(module, {"FLEET_CONFIG": str(config)})
    # a container has no fleet.toml, only the frozen settings the deploy passed to the classes
    container = _class_names_in_fresh_process(
        module,
        {FROZEN_SETTINGS_ENV: settings.model_dump_json(include={"entries", "modal"}), "FLEET_CONFIG": "/nonexistent"},
    )
    assert deploying == again == container == ["TabbyLarge7b", "TabbyMedium", "TabbySmall"]


def test_environment_overrides_are_frozen_into_the_deploy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_MODAL__VOLUME", "from-env")
    deployed = settings_from(tmp_path, THREE)
    _, classes = build(deployed)
    assert classes["TabbySmall"]["volumes"] == {DATA_MOUNT: "from-env"}
    # in the container: no file, no FLEET_* variables, only the frozen copy
    monkeypatch.delenv("FLEET_MODAL__VOLUME")
    monkeypatch.setenv("FLEET_CONFIG", "/nonexistent")
    monkeypatch.setenv(FROZEN_SETTINGS_ENV, deployed.model_dump_json())
    assert current_settings() == deployed


def test_modal_accepts_the_extremes_settings_allow(tmp_path: Path) -> None:
    text = THREE.replace("scaledown_window = 120", "scaledown_window = 2").replace('gpu = "L4"', 'gpu = "B200+:8"')
    text = text.replace("max_inputs = 8\ntarget_inputs = 6", "max_inputs = 1\ntarget_inputs = 1")
    _, classes = build(settings_from(tmp_path, text))
    assert classes["TabbySmall"]["scaledown_window"] == 2 and classes["TabbySmall"]["gpu"] == ["B200+:8"]


CONTAINER_IMPORT = """
import importlib, importlib.abc, sys
BLOCKED = set({blocked!r})
class NotInThisImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in this image)")
        return None
sys.meta_path.insert(0, NotInThisImage())
import importlib.metadata as metadata
real_version = metadata.version
def version(distribution):
    if distribution.replace("-", "_") in BLOCKED:
        raise metadata.PackageNotFoundError(distribution)
    return real_version(distribution)
metadata.version = version
deployed = importlib.import_module({module!r})
{then}
print("imported")
"""


def _import_like_a_container(tmp_path: Path, blocked: set[str], then: str = "") -> subprocess.CompletedProcess[str]:
    settings = settings_from(tmp_path, THREE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "TABBY_FLEET"))}
    env |= {FROZEN_SETTINGS_ENV: settings.model_dump_json(), "FLEET_CONFIG": "/nonexistent"}
    module = declare(settings).__name__  # the deploy module, by its own name
    code = CONTAINER_IMPORT.format(blocked=sorted(blocked), then=then, module=module)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_gpu_containers_need_only_the_settings_packages(tmp_path: Path) -> None:
    # The GPU image installs pydantic and pydantic-settings (plus Modal's own client): nothing else.
    result = _import_like_a_container(tmp_path, {"fastapi", "starlette", "httptools", "prometheus_client", "uvicorn"})
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


def test_router_container_has_what_the_router_imports(tmp_path: Path) -> None:
    then = (
        "from router.app import create_app\n"
        "from apps.modal.backends import ModalBackends\n"
        "from router.openapi import tabby_api\n"
        "assert '/v1/completions' in tabby_api()['paths']\n"
        "settings = deployed.current_settings()\n"
        "create_app(settings, ModalBackends(settings, lookup=lambda e: 'http://x', headers=()))\n"
    )
    result = _import_like_a_container(tmp_path, {"uvicorn", "httpx", "uvloop"}, then)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


def test_images_carry_the_packages_the_containers_import(declared: tuple[Any, dict]) -> None:
    _, classes = declared
    router_pip = next(c for c in classes["router"]["image"] if "pip install" in c and "pydantic" in c)
    for package in ("aiohttp==", "fastapi==", "prometheus-client==", "pydantic-settings=="):
        assert package in router_pip, package
    gpu_pip = next(c for c in classes["TabbySmall"]["image"] if "pip install" in c and "pydantic" in c)
    assert "pydantic-settings==" in gpu_pip and "fastapi" not in gpu_pip


def test_gpu_fallback_lists_and_router_sizing_are_declared(tmp_path: Path) -> None:
    text = THREE.replace('gpu = "L4"', 'gpu = ["L4", "a10g"]').replace(
        "router_max_inputs = 300", "router_max_inputs = 300\nrouter_cpu = 0.5\nrouter_memory = 1024"
    )
    _, classes = build(settings_from(tmp_path, text))
    assert classes["TabbySmall"]["gpu"] == ["L4", "A10G"]  # in order: Modal tries L4 first
    assert classes["TabbyMedium"]["gpu"] == ["A10G"]
    assert (classes["router"]["cpu"], classes["router"]["memory"]) == (0.5, 1024)
    _, defaults = build(settings_from(tmp_path, THREE))
    assert (defaults["router"]["cpu"], defaults["router"]["memory"]) == (None, None)  # Modal's defaults


def test_the_routers_ca_bundle_travels_in_its_image(tmp_path: Path) -> None:
    """router.upstream_ca_bundle is a file on the deploying machine: the router image carries a copy and
    the router's frozen settings name that copy, so its container does not fail at start."""
    bundle = tmp_path / "private-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = settings_from(tmp_path, THREE + f'\n[router]\nupstream_ca_bundle = "{bundle}"\n')
    _, classes = build(settings)
    _, without = build(settings_from(tmp_path, THREE))
    # Modal lists a copied local file as a "COPY . /" layer of its own (the file names are in its context).
    assert classes["router"]["image"] == [*without["router"]["image"], "COPY . /"]
    frozen = json.loads(router_settings_json(settings))
    assert frozen["router"]["upstream_ca_bundle"] == ROUTER_CA_BUNDLE
    assert frozen | {"router": None} == settings.model_dump(mode="json") | {"router": None}
    assert json.loads(router_settings_json(settings_from(tmp_path, THREE))) == json.loads(
        settings_from(tmp_path, THREE).model_dump_json()
    )


def test_what_modal_holds_is_the_spec_of_every_class_and_function(tmp_path: Path) -> None:
    """The deploy module declares exactly its specs (what `fleet plan` prints): read back from Modal."""
    bundle = tmp_path / "private-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    warm = 'warm = [{days = "mon-fri", start = "08:00", end = "18:00", timezone = "Europe/Berlin"}]'
    text = THREE.replace('gpu = "L4"', f'gpu = ["L4", "a10g"]\n{warm}').replace(
        "router_max_inputs = 300",
        'router_max_inputs = 300\nrouter_cpu = 0.5\nrouter_memory = 1024\nrouter_label = "door"',
    )
    text += '\n[[entries]]\nname = "gpu-box"\nmodel = "TabbyML/StarCoder-1B"\nurl = "http://gpu-box:8080"\n'
    text += f'\n[router]\nupstream_ca_bundle = "{bundle}"\n'
    deployed, held = build(settings_from(tmp_path, text))
    fleet = deployed.fleet
    assert set(held) == {*(spec.class_name for spec in fleet.entries), "router", "warm_hours"}
    for spec in fleet.entries:
        cls, options = held[spec.class_name], spec.cls
        gpus = options["gpu"] if isinstance(options["gpu"], list) else [options["gpu"]]
        assert cls == {
            "gpu": gpus,
            "scaledown_window": options["scaledown_window"],
            "max_containers": options["max_containers"],
            "min_containers": options["min_containers"],
            "buffer_containers": options.get("buffer_containers", 0),
            "max_inputs": spec.concurrent["max_inputs"],
            "target_inputs": spec.concurrent.get("target_inputs"),
            "timeout": options["timeout"],
            "startup_timeout": options["startup_timeout"],
            "schedule": None,
            "volumes": {path: volume.name for path, volume in options["volumes"].items()},
            "secrets": [f"Secret.from_dict([{FROZEN_SETTINGS_ENV}])"],
            "env": options["env"],
            "web": {"serve": spec.web_server},
            "image": image_commands(options["image"]),
            "cpu": None,
            "memory": None,
        }, spec.class_name
        downloads = [c.split("--model ")[1] for c in cls["image"] if " download --model " in c]
        assert downloads == [EMBEDDING_MODEL, *spec.models]
    for name, spec in (("router", fleet.router), ("warm_hours", fleet.warm)):
        function, options = held[name], spec.function
        assert function == {
            "gpu": [],
            "scaledown_window": 0,  # unset: Modal's default
            "max_containers": options.get("max_containers") or 0,  # 0: no limit
            "min_containers": options.get("min_containers") or 0,
            "buffer_containers": 0,
            "max_inputs": (spec.concurrent or {}).get("max_inputs"),
            "target_inputs": None,
            "timeout": options["timeout"],
            "startup_timeout": options["timeout"],  # Modal: the timeout, when startup_timeout is unset
            "schedule": None if spec.cron is None else f"Cron('{spec.cron}', UTC)",
            "volumes": {path: volume.name for path, volume in options.get("volumes", {}).items()},
            "secrets": [*map(repr, options.get("secrets", [])), f"Secret.from_dict([{FROZEN_SETTINGS_ENV}])"],
            "env": options["env"],
            "web": {} if spec.asgi_app is None else {name: {"requires_proxy_auth": False, **spec.asgi_app}},
            "image": image_commands(options["image"]),
            "cpu": options.get("cpu"),
            "memory": options.get("memory"),
        }, name
    assert held["router"]["web"]["router"]["label"] == "door" and held["router"]["cpu"] == 0.5
