"""The router's Modal backends over loopback: a fake URL lookup and a fake Modal edge; the rest real."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from apps.modal.backends import ModalBackends, proxy_auth_headers
from fleet.errors import FleetError
from fleet.settings import Entry, FleetSettings

from .support.fake_modal_edge import edge_argv
from .support.fleetproc import COMPLETION, free_port, serve_process, standin_argv
from .support.modal_router import ADMIN, router_argv, router_env

KEY, SECRET = "wk-test", "ws-test"
CONFIG = """
[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"

[[entries]]
name = "slow"
model = "TabbyML/StarCoder-3B"
first_byte_timeout = 10

[[entries]]
name = "missing"
model = "TabbyML/StarCoder-7B"

[[teams]]
name = "frontend"
entry = "small"
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    workdir: Path = tmp_path_factory.mktemp("modal-router")
    (workdir / "fleet.toml").write_text(CONFIG)
    with ExitStack() as stack:
        small_port, slow_port, edge_port, router_port = (free_port() for _ in range(4))
        small = stack.enter_context(serve_process(standin_argv(small_port), small_port))
        slow = stack.enter_context(
            serve_process(standin_argv(slow_port, "--completion-delay", "1.5", model="TabbyML/StarCoder-3B"), slow_port)
        )
        edge = stack.enter_context(
            serve_process(edge_argv(edge_port, slow, KEY, SECRET, "--redirect-after", "0.5"), edge_port)
        )
        urls = {"TabbySmall": small, "TabbySlow": edge}  # no TabbyMissing: its lookup fails
        argv = router_argv(workdir / "fleet.toml", router_port, urls)
        router = stack.enter_context(serve_process(argv, router_port, env=router_env(KEY, SECRET)))
        deadline = time.monotonic() + 10
        while httpx.get(f"{router}/fleet/health").json()["entries"]["missing"]["state"] != "failed":
            assert time.monotonic() < deadline, "URL lookups did not finish"
            time.sleep(0.05)
        yield {"router": router, "small": small, "slow": slow, "edge": edge}


def test_requests_reach_the_looked_up_class_with_proxy_auth(fleet: dict[str, str]) -> None:
    response = httpx.post(
        f"{fleet['router']}/teams/frontend/v1/completions", json=COMPLETION, headers={"Authorization": "Bearer x"}
    )
    assert response.status_code == 200 and "StarCoder-1B" in response.json()["choices"][0]["text"]
    seen = httpx.get(f"{fleet['small']}/_standin/stats").json()["last_headers"]
    assert (seen["modal-key"], seen["modal-secret"]) == (KEY, SECRET)
    assert "authorization" not in seen


def test_long_call_redirected_by_modal_is_followed(fleet: dict[str, str]) -> None:
    before = httpx.get(f"{fleet['edge']}/_edge/stats").json()
    response = httpx.post(f"{fleet['router']}/models/slow/v1/completions", json=COMPLETION, timeout=30)
    after = httpx.get(f"{fleet['edge']}/_edge/stats").json()
    assert response.status_code == 200, response.text
    assert "StarCoder-3B" in response.json()["choices"][0]["text"]
    assert after["redirects"] == before["redirects"] + 1  # the edge did answer 303 ...
    assert after["result_gets"] == before["result_gets"] + 1  # ... and the router fetched the result
    assert after["unauthorized"] == before["unauthorized"] == 0  # with proxy auth on the GET too


def test_class_not_deployed_is_reported_and_refused_with_advice(fleet: dict[str, str]) -> None:
    health = httpx.get(f"{fleet['router']}/fleet/health", headers=ADMIN).json()["entries"]
    assert health["missing"]["state"] == "failed" and "fleet deploy" in health["missing"]["last_error"]
    assert health["small"]["state"] in {"ready", "cold"}
    response = httpx.post(f"{fleet['router']}/models/missing/v1/completions", json=COMPLETION)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "backend-failed" and "TabbyMissing" in error["message"]


def test_entry_state_estimate_follows_traffic(fleet: dict[str, str]) -> None:
    httpx.post(f"{fleet['router']}/models/small/v1/completions", json=COMPLETION)
    assert httpx.get(f"{fleet['router']}/fleet/health").json()["entries"]["small"]["state"] == "ready"


def test_missing_proxy_token_names_the_fix() -> None:
    with pytest.raises(FleetError) as caught:
        proxy_auth_headers({})
    assert "modal workspace proxy-tokens create" in caught.value.message
    assert proxy_auth_headers({"TABBY_FLEET_PROXY_KEY": "k", "TABBY_FLEET_PROXY_SECRET": "s"}) == (
        (b"modal-key", b"k"),
        (b"modal-secret", b"s"),
    )


def test_the_stats_the_router_polls_are_modals_current_stats_of_the_class() -> None:
    # Offline (Modal's servers are out of reach): the installed client has what modal_stats calls and reads.
    import dataclasses

    import modal
    from modal.types import FunctionCurrentStats

    method = modal.Cls.from_name("tabby-fleet", "TabbySmall")().serve  # lazy: no call to Modal yet
    assert callable(method.get_current_stats.aio)
    assert {"num_total_runners", "backlog"} <= {field.name for field in dataclasses.fields(FunctionCurrentStats)}


def test_on_modal_a_loopback_client_is_no_admin(tmp_path: Path) -> None:
    """Locally, with no admin token, the router's own machine may read the admin endpoints. On Modal no
    client is local and the client address is Modal's to fill in, so nobody may: the answer says how to fix it."""
    (tmp_path / "fleet.toml").write_text(CONFIG)
    port = free_port()
    argv = router_argv(tmp_path / "fleet.toml", port, {}, admin_token=None)  # no admin token, as deployed bare
    with serve_process(argv, port, env=router_env(KEY, SECRET)) as router:
        for path in ("/fleet/entries", "/fleet/usage", "/metrics"):
            refused = httpx.get(f"{router}{path}")
            assert refused.status_code == 403, path
            assert refused.json()["error"]["code"] == "admin-not-configured"
            assert "nobody on Modal" in refused.json()["error"]["message"]
        health = httpx.get(f"{router}/fleet/health").json()
        assert "last_error" not in health["entries"]["small"]  # states only, no admin details


def test_an_entry_never_answered_is_cold_even_on_a_machine_booted_a_minute_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monotonic clock counts from boot: on a fresh container (or CI machine) it reads a few
    seconds. An entry that never answered is not "ready" then (found as a flaky cold-start test: with
    last success at 0.0, the first scaledown_window seconds after boot made every entry look ready)."""
    monkeypatch.setenv("TABBY_FLEET_PROXY_KEY", "wk-test")
    monkeypatch.setenv("TABBY_FLEET_PROXY_SECRET", "ws-test")
    settings = FleetSettings(entries=[Entry(name="small", model="TabbyML/StarCoder-1B")])
    backends = ModalBackends(settings, lookup=lambda entry: "http://127.0.0.1:9", stats=None)
    state = backends.entries["small"]
    state.url = "http://127.0.0.1:9"  # the lookup done
    for seconds_since_boot in (1.0, 60.0, 299.0, 10_000.0):
        assert state.state(seconds_since_boot) == "cold", seconds_since_boot
