"""A new admin's first hour with `fleet` (issue 20): which settings are used, where the router listens,
what the plan costs, what a typo or a deploy without Modal says. Each runs the real command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from apps.cli.main import up_banner
from fleet.loading import load_settings
from fleet.settings import PACKAGED_EXAMPLE
from fleet.tokens import hash_token
from tests.support.fleetproc import free_port, run_fleet
from tests.support.fleets import SMALL_AND_LARGE

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_NOTE = "using the packaged example"
TOKENS = f"""
[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"

[[teams]]
name = "web"
entry = "small"
tokens = [{{label = "ci", sha256 = "{hash_token("tft_x")}"}}]
"""


def fleet(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    child_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLEET_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "apps.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=child_env,
    )


# -- which settings ----------------------------------------------------------------------------------


def test_check_and_plan_in_a_folder_with_a_fleet_toml_use_it_and_say_nothing_of_the_example(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(SMALL_AND_LARGE)
    for command in ("check", "plan"):
        result = fleet(command, *(["--local-only"] if command == "plan" else []), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert EXAMPLE_NOTE not in result.stdout
    assert f"ok: {tmp_path / 'fleet.toml'}: 2 entries" in fleet("check", cwd=tmp_path).stdout


def test_check_plan_and_up_on_the_packaged_example_say_so(tmp_path: Path) -> None:
    here = tmp_path / "fleet.toml"
    for command in ("check", "plan"):
        result = fleet(command, *(["--local-only"] if command == "plan" else []), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"no fleet.toml here ({here}): {EXAMPLE_NOTE}" in result.stdout, result.stdout
        assert (
            "an open fleet for trying things out" in result.stdout and f"cp {PACKAGED_EXAMPLE} {here}" in result.stdout
        )
    banner = up_banner(load_settings(PACKAGED_EXAMPLE), "127.0.0.1", 8080, PACKAGED_EXAMPLE, None)
    assert EXAMPLE_NOTE in banner


def test_a_missing_config_names_the_absolute_path_looked_for(tmp_path: Path) -> None:
    result = fleet("check", "--config", "nothere.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert f"'{tmp_path / 'nothere.toml'}' does not exist" in result.stderr


# -- where fleet up listens --------------------------------------------------------------------------


def test_up_on_a_taken_port_fails_before_the_banner_with_the_port_to_pass(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        result = fleet("up", "--config", str(PACKAGED_EXAMPLE), "--port", str(port), cwd=tmp_path, timeout=30)
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    assert "tabby-fleet router:" not in result.stdout, "the banner was printed for a router that never listened"
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr and f"--port {port + 1}" in result.stderr
    assert "Errno" not in result.stderr


def test_up_on_the_port_of_a_running_fleet_points_at_it(tmp_path: Path) -> None:
    with run_fleet(tmp_path / "first", SMALL_AND_LARGE) as running:
        port = running.base_url.rsplit(":", 1)[1]
        result = fleet("up", "--config", str(PACKAGED_EXAMPLE), "--port", port, cwd=tmp_path, timeout=30)
    assert result.returncode == 1 and "tabby-fleet router:" not in result.stdout
    assert f"another fleet is probably running: see {running.base_url}/fleet/health" in result.stderr


def test_up_stops_on_ctrl_c_without_a_traceback(tmp_path: Path) -> None:
    """Before (once fleet up served on its own socket): Ctrl-C ended in a KeyboardInterrupt traceback."""
    with run_fleet(tmp_path, SMALL_AND_LARGE) as running:
        pass  # run_fleet stops it with SIGINT, as Ctrl-C does
    log = running.log_path.read_text()
    assert running.process.returncode == 0 and "Traceback" not in log, log[-3000:]
    assert "Application shutdown complete" in log


def test_up_refuses_an_open_fleet_on_the_network_without_public(tmp_path: Path) -> None:
    result = fleet(
        "up", "--config", str(PACKAGED_EXAMPLE), "--host", "0.0.0.0", "--port", str(free_port()), cwd=tmp_path
    )
    assert result.returncode == 1 and "tabby-fleet router:" not in result.stdout
    assert "the fleet is open" in result.stderr and "--public" in result.stderr


def test_up_on_the_network_over_plain_http_warns_that_tokens_cross_it_in_clear(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(TOKENS)
    with socket.socket() as holder:  # the port is taken, so the router stops right after the warning
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = fleet("up", "--config", str(config), "--host", "0.0.0.0", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert "tokens, prompts and completions cross the network in clear" in result.stderr
    assert "Put TLS in front" in result.stderr and "the fleet is open" not in result.stderr


# -- what the plan costs ------------------------------------------------------------------------------

PRICED = """
[prices]
date = "2026-11-01"
source = "our Modal invoice"
gpu_hour = { L4 = 1.0 }

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
gpu = "L4"
min_containers = 1
max_containers = 3

[[entries]]
name = "outside"
model = "TabbyML/StarCoder-3B"
url = "http://127.0.0.1:9"
"""


def test_plan_says_what_each_entry_costs_a_month_without_warm_hours(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(PRICED)
    result = fleet("plan", "--local-only", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    hours = 365.25 / 12 / 7 * 7 * 24  # 730.5
    assert "prices of 2026-11-01, USD, from our Modal invoice" in result.stdout, result.stdout
    small = next(line for line in result.stdout.splitlines() if line.startswith("  small"))
    assert "USD 1 per container-hour" in small, small
    assert f"min_containers 1 kept up: USD {hours:,.2f} a month" in small, small
    assert f"at most USD {3 * hours:,.2f} a month (max_containers 3 busy all month)" in small, small
    assert "  outside: external (http://127.0.0.1:9/): costs nothing of ours" in result.stdout


# -- small ones ---------------------------------------------------------------------------------------


def test_a_mistyped_variable_under_a_known_table_is_one_error_not_also_a_warning(tmp_path: Path) -> None:
    """Before: FLEET_ROUTER__DEFAULT_ENTRYY was a warning that it "is ignored", then an error about it."""
    typos = {"FLEET_ROUTER__DEFAULT_ENTRYY": "small", "FLEET_PRICES__DATEE": "2026-01-01"}
    result = fleet("check", "--config", str(PACKAGED_EXAMPLE), cwd=tmp_path, env=typos)
    assert result.returncode == 1
    for name in typos:
        assert result.stderr.count(name) == 1, result.stderr
    assert "is ignored" not in result.stderr
    assert "unknown field 'default_entryy'; did you mean 'default_entry'?" in result.stderr
    assert "unknown field 'datee'; did you mean 'date'?" in result.stderr
    ignored = fleet("check", "--config", str(PACKAGED_EXAMPLE), cwd=tmp_path, env={"FLEET_ROUTERR": "1"})
    assert ignored.returncode == 0 and ignored.stderr.count("FLEET_ROUTERR is not a fleet setting and is ignored") == 1


def test_fleet_version_is_the_projects(tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = fleet("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"fleet (tabby-fleet {version})", result


DEPLOYABLE = f"""
[router]
admin_tokens = [{{label = "ops", sha256 = "{hash_token("tfa_ops")}"}}]
{TOKENS}
"""


def test_deploy_says_what_it_does_and_fails_within_seconds_when_modal_cannot_be_reached(tmp_path: Path) -> None:
    """Before: with credentials and no route to Modal, `modal deploy` retried for about a minute, then said
    only "Could not connect to the Modal server"."""
    config = tmp_path / "fleet.toml"
    config.write_text(DEPLOYABLE)
    with socket.socket() as closed:  # a loopback port nothing listens on: Modal's server, unreachable
        closed.bind(("127.0.0.1", 0))
        server = f"http://127.0.0.1:{closed.getsockname()[1]}"
    modal = {"MODAL_TOKEN_ID": "ak-test", "MODAL_TOKEN_SECRET": "as-test", "MODAL_SERVER_URL": server}
    started = time.monotonic()
    result = fleet("deploy", "--config", str(config), cwd=tmp_path, env={**modal, "HOME": str(tmp_path)}, timeout=40)
    assert time.monotonic() - started < 20
    assert result.returncode == 1, result.stdout + result.stderr
    assert "declaring Modal app 'tabby-fleet'" in result.stdout
    assert f"cannot reach Modal's API server (MODAL_SERVER_URL is set: is it right?): {server}" in result.stderr
    assert "nothing was deployed" in result.stderr
    unsigned = fleet("deploy", "--config", str(config), cwd=tmp_path, env={"HOME": str(tmp_path)}, timeout=40)
    assert unsigned.returncode == 1 and "run `modal token new`" in unsigned.stderr, unsigned.stderr
