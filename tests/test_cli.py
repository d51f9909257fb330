"""The fleet command, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fleet.routing import hash_token
from fleet.settings import PACKAGED_EXAMPLE


def fleet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apps.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_check_ok_on_example() -> None:
    result = fleet("check", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 0 and "3 entries, 3 teams" in result.stdout


def test_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = (
        PACKAGED_EXAMPLE.read_text()
        .replace('gpu = "L4"', 'gpu = "L5"')
        .replace("scaledown_window = 300", "scaledown_window = 1")
    )
    (tmp_path / "fleet.toml").write_text(bad)
    result = fleet("check", cwd=tmp_path)  # ./fleet.toml is picked up
    assert result.returncode == 1
    assert "entries[0].gpu: unknown GPU type 'L5'" in result.stderr
    assert "entries[1].scaledown_window" in result.stderr


def test_plan_shows_every_entry() -> None:
    result = fleet("plan", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 0
    for expected in ("small *", "TabbyML/StarCoder-7B", "A100-80GB", "120s", "8/container = 16", "frontend"):
        assert expected in result.stdout


def test_route_dry_run_and_refusal() -> None:
    ok = fleet("route", "--config", str(PACKAGED_EXAMPLE), "--path", "/teams/research/v1/completions")
    assert ok.returncode == 0 and re.search(r"entry:\s+large", ok.stdout) and "team-path" in ok.stdout
    refused = fleet("route", "--config", str(PACKAGED_EXAMPLE), "--team", "frontend", "--model", "large")
    assert refused.returncode == 1 and "HTTP 403" in refused.stdout and '"entry-not-allowed"' in refused.stdout


def test_token_new_prints_token_and_matching_hash(tmp_path: Path) -> None:
    result = fleet("token", "new", "--team", "frontend", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 0
    token = re.search(r"^\s+(tft_\S+)$", result.stdout, re.M)
    line = re.search(r'^\s+(token_sha256 = \["[0-9a-f]{64}"\])$', result.stdout, re.M)
    assert token and line
    assert hash_token(token.group(1)) in line.group(1)
    assert len(token.group(1)) >= 40
    # the printed line, pasted into the settings, makes the token route to its team
    config = PACKAGED_EXAMPLE.read_text().replace(
        'name = "frontend"\nentry = "small"\n', f'name = "frontend"\nentry = "small"\n{line.group(1)}\n'
    )
    (tmp_path / "fleet.toml").write_text(config)
    routed = fleet("route", "--token", token.group(1), cwd=tmp_path)
    assert routed.returncode == 0 and "team-token" in routed.stdout and "frontend" in routed.stdout


def test_token_new_unknown_team() -> None:
    result = fleet("token", "new", "--team", "nobody", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 1 and "frontend, platform, research" in result.stderr


def test_up_refuses_missing_tabby_bin(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apps.cli", "up", "--config", str(PACKAGED_EXAMPLE), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"FLEET_TABBY_BIN": str(tmp_path / "no-such-tabby"), "PATH": ""},
    )
    assert result.returncode == 1 and "FLEET_TABBY_BIN" in result.stderr


def test_admin_token_new_prints_a_working_admin_hash(tmp_path: Path) -> None:
    result = fleet("token", "new", "--admin", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 0
    token = re.search(r"^\s+(tfa_\S+)$", result.stdout, re.M)
    line = re.search(r'^\s+(admin_token_sha256 = \["[0-9a-f]{64}"\])$', result.stdout, re.M)
    assert token and line and hash_token(token.group(1)) in line.group(1)
    config = PACKAGED_EXAMPLE.read_text().replace("[router]\n", f"[router]\n{line.group(1)}\n")
    (tmp_path / "fleet.toml").write_text(config)
    assert fleet("check", cwd=tmp_path).returncode == 0


def test_token_new_needs_a_team_or_admin() -> None:
    result = fleet("token", "new", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 2 and "--team" in result.stderr and "--admin" in result.stderr


def test_deploy_refuses_invalid_settings_before_modal_is_involved(tmp_path: Path) -> None:
    bad = PACKAGED_EXAMPLE.read_text().replace("scaledown_window = 120", "scaledown_window = 1")
    (tmp_path / "fleet.toml").write_text(bad)
    for verb in ("deploy", "serve"):
        result = fleet(verb, "--config", str(tmp_path / "fleet.toml"))
        assert result.returncode == 1 and "entries[0].scaledown_window" in result.stderr
        assert "modal" not in result.stdout  # the modal CLI never ran
