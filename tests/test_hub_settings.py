"""``[hub]`` in the settings: `fleet check` names every broken hub rule in one pass, each with its fix; a
developer's own hub token becomes their fleet token with `fleet token new --stdin` (identity = "user")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fleet.loading import load_settings
from fleet.tokens import hash_token

HUB_FLEET = """
[router]
auth = "tokens"
[modal]
tabby_image = "tabbyml/tabby:0.33.1"
[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
[[entries]]
name = "large"
model = "TabbyML/StarCoder-7B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"
[[teams]]
name = "frontend"
tokens = [{label = "a", sha256 = "%(a)s"}]
[[teams]]
name = "bots"
allowed_entries = ["small"]
[hub]
enabled = true
teams = ["frontend", "ghosts"]
chat_entry = "small"
router_team = "bots"
licence_seats = 2
"""


def fleet(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "apps.cli", *args], capture_output=True, text=True, timeout=60, env=env, input=stdin
    )


def test_fleet_check_names_every_hub_problem_with_its_fix(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(HUB_FLEET % {"a": hash_token("tft_a_token_value")})
    result = fleet("check", "--config", str(path))
    assert result.returncode == 1
    problems = result.stderr
    assert "hub.teams names 'ghosts', not a team; choose from frontend, bots" in problems
    assert "hub.chat_entry 'small' has no chat_model" in problems
    assert "hub.router_team 'bots' has no token; run `fleet token new --team bots --label hub --write`" in problems
    assert "may not use hub.chat_entry 'small'" not in problems  # small is allowed: that rule holds
    assert "hub needs Tabby 0.32.x" in problems and "tabbyml/tabby:0.32.0" in problems
    assert "need 3 seats; the licence has 2 (hub.licence_seats" in problems


def test_a_hub_that_keeps_every_rule_loads(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    text = (HUB_FLEET % {"a": hash_token("tft_a_token_value")}).replace("tabbyml/tabby:0.33.1", "tabbyml/tabby:0.32.0")
    text = text.replace('teams = ["frontend", "ghosts"]', 'teams = ["frontend"]').replace('chat_entry = "small"', "")
    hub_digest = hash_token("x" * 20)
    text = text.replace('allowed_entries = ["small"]', f'tokens = [{{label = "hub", sha256 = "{hub_digest}"}}]')
    text = text.replace("[hub]", '[hub]\nchat_entry = "large"')
    path.write_text(text)
    settings = load_settings(path)
    assert settings.hub.enabled and settings.hub.chat_entry == "large"
    assert fleet("check", "--config", str(path)).returncode == 0


def test_identity_team_needs_token_mode(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[[entries]]\nname = "s"\nmodel = "m"\nchat_model = "c"\n[hub]\nenabled = true\nchat_entry = "s"\n')
    result = fleet("check", "--config", str(path))
    assert result.returncode == 1 and 'needs router.auth = "tokens"' in result.stderr
    assert "fleet token enable" in result.stderr


def test_a_developers_own_hub_token_becomes_their_fleet_token(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[router]\nauth = "open"\n[[entries]]\nname = "s"\nmodel = "m"\n[[teams]]\nname = "frontend"\n')
    hub_token = "auth_0123456789abcdef0123456789abcdef"
    result = fleet("token", "new", "--team", "frontend", "--label", "alice", "--stdin", "--write", "--config",
                   str(path), stdin=hub_token + "\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert hub_token not in result.stdout  # never echoed: its holder has it
    assert hash_token(hub_token) in path.read_text()
    refused = fleet("token", "new", "--team", "frontend", "--label", "bob", "--stdin", "--config", str(path),
                    stdin="two words\n")  # fmt: skip
    assert refused.returncode == 1 and "no usable token" in refused.stderr


def test_an_entry_named_hub_is_refused_beside_the_hub(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[router]\nauth = "open"\n[[entries]]\nname = "hub"\nmodel = "m"\nchat_model = "c"\n'
                    '[hub]\nenabled = true\nidentity = "user"\nchat_entry = "hub"\n')  # fmt: skip
    result = fleet("check", "--config", str(path))
    assert result.returncode == 1 and "entry 'hub' would share its local data folder" in result.stderr
