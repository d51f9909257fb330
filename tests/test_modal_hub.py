"""The hub on Modal: its class built offline (as tests/test_modal_app.py builds the app), what its container does
at start, the router's "@hub" backend over loopback (a fake Modal edge), and `fleet plan`'s lines for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from apps.hub.run import prepare_root
from apps.hub.snapshots import take
from apps.modal.app import FROZEN_SETTINGS_ENV
from apps.modal.backends import HUB_WAKE_PATH, ModalBackends, ModalClass, StatsLike
from apps.modal.hub import HUB_MOUNT, hub_settings_json, hub_spec
from apps.modal.hub_server import HubSetupError, jwt_secret, router_token, tabby_process_env
from apps.tabby import hub_chat_url, hub_config_toml
from fleet.hub import HUB_BACKEND, JWT_SECRET_ENV, ROUTER_TOKEN_ENV, TEAM_TOKENS_ENV
from fleet.loading import load_settings
from fleet.settings import FleetSettings
from fleet.tokens import hash_token
from router.upstream import UpstreamClient

from .support.fake_modal_edge import edge_argv
from .support.fleetproc import free_port, serve_process
from .support.modal_inspect import declare, describe_app, image_commands, lifecycle

HUB_TOKEN = "tft_hub-router"
FLEET = f"""
[modal]
app_name = "fleet-test"
proxy_auth_secret = "fleet-test-proxy"

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"

[[entries]]
name = "large"
model = "TabbyML/StarCoder-7B"
gpu = "A100-80GB"

[[teams]]
name = "frontend"
entry = "small"
token_sha256 = ["{hash_token("tft_frontend")}"]

[[teams]]
name = "hub"
entry = "small"
token_sha256 = ["{hash_token(HUB_TOKEN)}"]
"""
HUB = """
[hub]
enabled = true
chat_entry = "small"
router_team = "hub"
"""


def settings_from(tmp_path: Path, text: str) -> FleetSettings:
    path = tmp_path / f"fleet-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(text)
    return load_settings(path)


def build(settings: FleetSettings) -> tuple[Any, dict[str, dict[str, Any]]]:
    deployed = declare(settings)
    return deployed, describe_app(deployed.app)


def test_the_hub_is_one_container_with_its_volume_secret_proxy_auth_and_gpu(tmp_path: Path) -> None:
    deployed, held = build(settings_from(tmp_path, FLEET + HUB + 'gpu = "L4"\nmax_inputs = 32\nmin_containers = 1\n'))
    hub = held["TabbyHub"]
    assert (hub["max_containers"], hub["min_containers"], hub["max_inputs"]) == (1, 1, 32)
    assert hub["gpu"] == ["L4"] and hub["scaledown_window"] == 1800 and hub["startup_timeout"] == 600
    assert hub["volumes"] == {HUB_MOUNT: "tabby-fleet-hub"}  # its own Volume, not the entries' one
    assert hub["secrets"] == ["modal.Secret.from_name('tabby-fleet-hub')", f"Secret.from_dict([{FROZEN_SETTINGS_ENV}])"]
    assert hub["web"] == {"serve": {"port": 8080, "startup_timeout": 600, "requires_proxy_auth": True}}
    assert lifecycle(deployed.TabbyHub) == {"enter": ["start"], "web": ["serve"], "exit": ["stop"]}
    # the image: the layers every entry starts with (the embedding model baked in), no entry's model
    shared = image_commands(deployed.fleet.entries[0].cls["image"])
    downloads = [c for c in hub["image"] if " download --model " in c]
    assert downloads == ["RUN /opt/tabby/bin/tabby download --model TabbyML/Nomic-Embed-Text"]
    assert hub["image"][: len(downloads) + 3] == shared[: len(downloads) + 3]
    spec = deployed.hub
    assert spec.argv[:2] == ("/opt/tabby/bin/tabby", "serve") and "--no-webserver" not in spec.argv
    assert spec.argv[spec.argv.index("--device") + 1] == "cuda"


def test_what_modal_holds_is_the_hubs_spec(tmp_path: Path) -> None:
    deployed, held = build(settings_from(tmp_path, FLEET + HUB + "cpu = 2.0\nmemory = 4096\n"))
    spec, options = deployed.hub, deployed.hub.cls
    assert held["TabbyHub"] == {
        "gpu": [options["gpu"]],
        "scaledown_window": options["scaledown_window"],
        "max_containers": 1,
        "min_containers": options["min_containers"],
        "buffer_containers": 0,
        "max_inputs": spec.concurrent["max_inputs"],
        "target_inputs": None,
        "timeout": options["timeout"],
        "startup_timeout": options["startup_timeout"],
        "schedule": None,
        "volumes": {path: volume.name for path, volume in options["volumes"].items()},
        "secrets": [*map(repr, options["secrets"]), f"Secret.from_dict([{FROZEN_SETTINGS_ENV}])"],
        "env": {FROZEN_SETTINGS_ENV: spec.frozen_settings},
        "web": {"serve": spec.web_server},
        "image": image_commands(options["image"]),
        "cpu": 2.0,
        "memory": 4096,
    }


def test_a_cpu_hub_asks_for_no_gpu_and_runs_tabby_on_the_cpu(tmp_path: Path) -> None:
    deployed, held = build(settings_from(tmp_path, FLEET + HUB + 'gpu = ""\n'))
    assert held["TabbyHub"]["gpu"] == []
    assert deployed.hub.argv[deployed.hub.argv.index("--device") + 1] == "cpu"


def test_no_hub_class_when_the_hub_is_off_or_has_a_url(tmp_path: Path) -> None:
    off, held = build(settings_from(tmp_path, FLEET))
    assert "TabbyHub" not in held and not hasattr(off, "TabbyHub")
    assert "modal.Secret.from_name('tabby-fleet-hub')" not in held["router"]["secrets"]
    external, held = build(settings_from(tmp_path, FLEET + HUB + 'url = "https://tabby.example.com"\n'))
    assert "TabbyHub" not in held and not hasattr(external, "TabbyHub")
    # the router still maps team tokens to hub tokens for an external hub: it gets the Secret
    assert "modal.Secret.from_name('tabby-fleet-hub')" in held["router"]["secrets"]


def test_the_router_gets_the_hubs_secret_only_with_the_hub_on(tmp_path: Path) -> None:
    proxy, frozen = "modal.Secret.from_name('fleet-test-proxy')", f"Secret.from_dict([{FROZEN_SETTINGS_ENV}])"
    _, on = build(settings_from(tmp_path, FLEET + HUB + 'secret = "our-hub"\n'))
    assert on["router"]["secrets"] == [proxy, "modal.Secret.from_name('our-hub')", frozen]
    _, off = build(settings_from(tmp_path, FLEET + HUB.replace("enabled = true", "enabled = false")))
    assert off["router"]["secrets"] == [proxy, frozen]


def test_the_hub_class_is_unchanged_by_teams_other_entries_and_router_options(tmp_path: Path) -> None:
    """A redeploy that changes a team, another entry, a router option or a router-side [hub] option
    (teams, identity's seats, ui_open, the relay's limits) must not redefine, and so restart, the hub."""
    before_fleet, before = build(settings_from(tmp_path, FLEET + HUB))
    changed = FLEET.replace('gpu = "A100-80GB"', 'gpu = "H100"\nmax_containers = 3')
    changed = changed.replace('app_name = "fleet-test"', 'app_name = "fleet-test"\nrouter_max_inputs = 50')
    changed += f'\n[[teams]]\nname = "research"\nentry = "large"\ntoken_sha256 = ["{hash_token("tft_r")}"]\n'
    changed += '\n[[entries]]\nname = "xl"\nmodel = "TabbyML/CodeLlama-13B"\n'
    changed += HUB + 'teams = ["frontend"]\nui_open = true\nsocket_idle_timeout = 60.0\nlicence_seats = 50\n'
    after_fleet, after = build(settings_from(tmp_path, changed))
    assert after["TabbyHub"] == before["TabbyHub"]
    assert after_fleet.hub.frozen_settings == before_fleet.hub.frozen_settings
    assert after["router"] != before["router"]  # the router did change: the comparison can fail
    frozen = json.loads(before_fleet.hub.frozen_settings)
    assert [e["name"] for e in frozen["entries"]] == ["small"] and "teams" not in frozen and "router" not in frozen
    assert set(frozen["modal"]) == {"app_name", "tabby_image", "router_label"}


@pytest.mark.parametrize(
    "change", ['gpu = "L4"', "snapshot_interval = 60", "scaledown_window = 600", 'volume = "hub-2"', "max_inputs = 8"]
)
def test_the_hub_class_changes_with_its_own_options(tmp_path: Path, change: str) -> None:
    before_fleet, before = build(settings_from(tmp_path, FLEET + HUB))
    after_fleet, after = build(settings_from(tmp_path, FLEET + HUB + change + "\n"))
    assert after_fleet.hub.frozen_settings != before_fleet.hub.frozen_settings
    assert after["TabbyHub"] != before["TabbyHub"]


def test_the_hubs_chat_model_changes_its_class(tmp_path: Path) -> None:
    before_fleet, _ = build(settings_from(tmp_path, FLEET + HUB))
    after_fleet, _ = build(settings_from(tmp_path, FLEET.replace("Qwen2-1.5B-Instruct", "CodeQwen-7B-Chat") + HUB))
    assert after_fleet.hub.frozen_settings != before_fleet.hub.frozen_settings
    assert after_fleet.hub.chat_model == "TabbyML/CodeQwen-7B-Chat"


def test_a_tabby_upgrade_redefines_the_hub(tmp_path: Path) -> None:
    before_fleet, before = build(settings_from(tmp_path, FLEET + HUB))
    upgraded = '[modal]\ntabby_image = "tabbyml/tabby:0.32.1"'
    after_fleet, after = build(settings_from(tmp_path, FLEET.replace("[modal]", upgraded) + HUB))
    assert after_fleet.hub.frozen_settings != before_fleet.hub.frozen_settings
    assert after["TabbyHub"] != before["TabbyHub"]  # (image_commands leaves out the registry image itself)


FIND_HUB = """
import importlib
from modal._runtime.user_code_imports import _get_cls_or_user_cls  # private: how a container finds its class
from modal_proto import api_pb2
deployed = importlib.import_module("apps.modal.deploy")
definition = api_pb2.Function(module_name="apps.modal.deploy", implementation_name="TabbyHub.*",
                              definition_type=api_pb2.Function.DEFINITION_TYPE_FILE)
assert _get_cls_or_user_cls(definition, None) is deployed.TabbyHub
print(deployed.hub.frozen_settings)
"""


def test_the_hubs_container_finds_its_class_from_its_frozen_settings_alone(tmp_path: Path) -> None:
    frozen = hub_settings_json(settings_from(tmp_path, FLEET + HUB))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "TABBY_FLEET"))}
    env |= {FROZEN_SETTINGS_ENV: frozen, "FLEET_CONFIG": "/nonexistent"}
    result = subprocess.run([sys.executable, "-c", FIND_HUB], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == frozen  # the container's spec is the deployed one


def test_a_missing_or_bad_jwt_secret_fails_the_start_with_advice(tmp_path: Path) -> None:
    hub = settings_from(tmp_path, FLEET + HUB + 'secret = "our-hub"\n').hub
    for environ in ({}, {JWT_SECRET_ENV: "  "}, {JWT_SECRET_ENV: "hunter2-not-a-uuid"}):
        with pytest.raises(HubSetupError) as caught:
            jwt_secret(environ, hub)
        advice = str(caught.value)
        assert JWT_SECRET_ENV in advice and "'our-hub'" in advice and "uuid.uuid4()" in advice
        assert "hunter2" not in advice  # a secret is never echoed
    good = str(uuid.uuid4())
    assert jwt_secret({JWT_SECRET_ENV: good}, hub) == good


def test_a_hub_with_a_router_team_needs_its_router_token(tmp_path: Path) -> None:
    hub = settings_from(tmp_path, FLEET + HUB).hub
    with pytest.raises(HubSetupError) as caught:
        router_token({}, hub)
    assert ROUTER_TOKEN_ENV in str(caught.value) and "fleet token new --team hub" in str(caught.value)
    assert router_token({ROUTER_TOKEN_ENV: HUB_TOKEN}, hub) == HUB_TOKEN
    assert router_token({}, hub.model_copy(update={"router_team": None})) == ""  # an open fleet asks for none


def test_the_start_restores_the_newest_snapshot_and_points_the_chat_at_the_router(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, FLEET + HUB)
    spec = hub_spec(settings)
    snapshots, old = tmp_path / "volume" / "snapshots", tmp_path / "old-container"
    (old / "ee").mkdir(parents=True)

    def write(value: str) -> None:  # a real SQLite database: the snapshots copy it with sqlite3's backup API
        with contextlib.closing(sqlite3.connect(old / "ee" / "db.sqlite")) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS kept (value TEXT)")
            db.execute("DELETE FROM kept")
            db.execute("INSERT INTO kept VALUES (?)", (value,))

    write("first")
    take(old, snapshots, keep=3, name="ta-1")
    write("second")
    newest = take(old, snapshots, keep=3, name="ta-2")
    url = hub_chat_url("https://acme--fleet-test-router.modal.run/", spec.chat_entry)
    assert url == "https://acme--fleet-test-router.modal.run/models/small/v1"
    config = hub_config_toml(chat_url=url, chat_model=spec.chat_model, api_key=HUB_TOKEN)
    root = tmp_path / "root"
    assert prepare_root(root, snapshots, config) == newest
    with contextlib.closing(sqlite3.connect(root / "ee" / "db.sqlite")) as restored:
        assert restored.execute("SELECT value FROM kept").fetchall() == [("second",)]
    written = (root / "config.toml").read_text()
    assert url in written and "TabbyML/Qwen2-1.5B-Instruct" in written and HUB_TOKEN in written
    fresh = tmp_path / "fresh"
    assert prepare_root(fresh, tmp_path / "empty-volume", config) is None  # a first start: config only
    assert [p.name for p in fresh.iterdir()] == ["config.toml"]


def test_tabby_gets_the_jwt_secret_and_none_of_the_fleets_tokens(tmp_path: Path) -> None:
    secret = str(uuid.uuid4())
    environ = {"PATH": "/usr/bin", ROUTER_TOKEN_ENV: HUB_TOKEN, TEAM_TOKENS_ENV: '{"frontend": "auth_x"}'}
    env = tabby_process_env(environ, tmp_path, secret)
    assert env[JWT_SECRET_ENV] == secret and env["TABBY_ROOT"] == str(tmp_path) and env["PATH"] == "/usr/bin"
    assert ROUTER_TOKEN_ENV not in env and TEAM_TOKENS_ENV not in env


# -- the router's "@hub" backend, over loopback ----------------------------------------------------------------

KEY, SECRET = "wk-hub", "ws-hub"
HEADERS = ((b"modal-key", KEY.encode()), (b"modal-secret", SECRET.encode()))


def edge_stats(edge: str) -> dict[str, Any]:
    return dict(httpx.get(f"{edge}/_edge/stats").json())


def test_the_hub_lease_gives_its_looked_up_url_with_proxy_auth_and_a_wake_starts_it(tmp_path: Path) -> None:
    """The hub's class, cold behind a fake Modal edge (proxy auth, a 2 s start): the router's lease of
    "@hub" yields the URL Modal's lookup gave, with the proxy token; a warm wakes it with one GET of the
    web UI's index page (its health asks for a user token)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<html>the hub's UI</html>")
    settings = settings_from(tmp_path, FLEET + HUB)
    site_port, edge_port = free_port(), free_port()
    site_argv = [sys.executable, "-m", "http.server", str(site_port), "--bind", "127.0.0.1",
                 "--directory", str(tmp_path / "site")]  # fmt: skip
    with (
        serve_process(site_argv, site_port) as site,
        serve_process(edge_argv(edge_port, site, KEY, SECRET, "--start-delay", "2"), edge_port) as edge,
    ):
        looked_up: list[str] = []

        def lookup(target: ModalClass) -> str:
            looked_up.append(target.class_name)
            return {"TabbySmall": "http://127.0.0.1:9", "TabbyLarge": "http://127.0.0.1:9", "TabbyHub": edge}[
                target.class_name
            ]

        async def stats(target: ModalClass) -> StatsLike:
            sample = await asyncio.to_thread(edge_stats, edge) if target.class_name == "TabbyHub" else {}
            return SimpleNamespace(num_total_runners=sample.get("runners", 0), backlog=sample.get("backlog", 0))

        async def scenario() -> None:
            backends = ModalBackends(settings, lookup=lookup, headers=HEADERS, stats=stats, stats_interval=0.5)
            client = UpstreamClient(connect_timeout=5, read_timeout=30, keepalive=5, ca_bundle=None)
            await backends.start()
            try:
                assert sorted(looked_up) == ["TabbyHub", "TabbyLarge", "TabbySmall"]  # once each, at start
                assert HUB_BACKEND not in backends.status() and set(backends.status()) == {"small", "large"}
                assert backends.backend_state(HUB_BACKEND) == "cold"
                assert backends.warm(HUB_BACKEND) == "starting" and backends.warm(HUB_BACKEND) == "starting"
                assert await backends.wait_ready(HUB_BACKEND, 20)
                async with backends.lease(HUB_BACKEND) as upstream:
                    assert upstream.base_url == edge and upstream.headers == HEADERS and upstream.follow_redirects
                    response = await client.request(upstream, "GET", "/index.html", [], b"")
                    body = b"".join([chunk async for chunk, _ in response.chunks()])
                    assert response.status == 200 and b"the hub's UI" in body
                status = backends.hub_status()
                assert status is not None and status["state"] == "ready" and status["wakes"] == 1
                assert status["url"] == edge
            finally:
                await client.close()
                await backends.close()

        asyncio.run(scenario())
        stats_seen = edge_stats(edge)
        assert stats_seen["wakes"] == 1 and stats_seen["unauthorized"] == 0  # one start, every call with the token
    assert HUB_WAKE_PATH == "/"


def test_an_external_hub_is_its_url_as_it_is(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, FLEET + HUB + 'url = "https://tabby.example.com/"\n')

    async def scenario() -> None:
        backends = ModalBackends(settings, lookup=lambda target: "http://127.0.0.1:9", headers=HEADERS)
        async with backends.lease(HUB_BACKEND) as upstream:
            assert upstream.base_url == "https://tabby.example.com" and upstream.headers == ()
        assert backends.backend_state(HUB_BACKEND) == "ready" and backends.warm(HUB_BACKEND) == "ready"
        assert backends.hub_status() is None  # someone else's: /fleet/health says its backend_state, "ready"
        await backends.close()

    asyncio.run(scenario())
    off = ModalBackends(settings_from(tmp_path, FLEET), lookup=lambda target: "http://127.0.0.1:9", headers=HEADERS)
    assert off.hub_status() is None and HUB_BACKEND not in off.entries


# -- fleet plan -----------------------------------------------------------------------------------------------


def plan(tmp_path: Path, text: str) -> str:
    config = tmp_path / "fleet.toml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLEET_")}
    result = subprocess.run(
        [sys.executable, "-m", "apps.cli", "plan", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_fleet_plan_shows_the_hub_its_cost_and_what_a_deploy_creates(tmp_path: Path) -> None:
    shown = plan(tmp_path, FLEET + HUB + "min_containers = 1\n")
    hours = 365.25 / 12 * 24  # fleet/warm.py's month
    assert "Hub (Tabby's webserver: chat panel, Answer Engine, users" in shown
    assert "on Modal: GPU T4, containers 1..1, idle 1800s; volume 'tabby-fleet-hub'" in shown
    assert f"min_containers 1 kept up: USD {0.5904 * hours:,.2f} a month" in shown
    assert f"at most USD {0.5904 * hours:,.2f} a month (up all month)" in shown
    assert "class TabbyHub (the hub): GPU T4, containers 1..1" in shown
    assert "snapshots to volume 'tabby-fleet-hub' (created if missing) at /hub/snapshots, every 300s" in shown
    assert "secret 'tabby-fleet-hub' (create it first)" in shown
    assert "chat: <router URL>/models/small/v1, model TabbyML/Qwen2-1.5B-Instruct, as team hub" in shown
    assert "secret 'fleet-test-proxy' and the hub's 'tabby-fleet-hub'" in shown


def test_a_disabled_hub_adds_nothing_to_the_plan(tmp_path: Path) -> None:
    without = plan(tmp_path, FLEET)
    disabled = plan(tmp_path, FLEET + HUB.replace("enabled = true", "enabled = false") + 'gpu = "L4"\n')
    assert disabled == without
    assert "Hub (" not in without and "TabbyHub" not in without and "tabby-fleet-hub" not in without
