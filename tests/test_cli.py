"""The fleet command, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from apps.cli.main import up_banner
from fleet.loading import load_settings
from fleet.settings import PACKAGED_EXAMPLE
from fleet.tokens import hash_token

ROOT = Path(__file__).resolve().parent.parent


def fleet(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `fleet ARGS` with no FLEET_* variable of ours leaking in (plus ``env``)."""
    child_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLEET_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "apps.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=60, env=child_env
    )


# A fleet in token mode: two teams with a token each (frontend's in the legacy form), comments to keep.
TOKEN_A, TOKEN_B, ADMIN = "tft_frontend-alice", "tft_platform-ci", "tfa_ops"
TOKEN_FLEET = f"""# my fleet: comments must survive edits
[router]
default_entry = "small"   # the default
admin_tokens = [{{label = "ops", sha256 = "{hash_token(ADMIN)}"}}]

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"

[[entries]]
name = "medium"
model = "TabbyML/StarCoder-3B"

# the web people
[[teams]]
name = "frontend"
entry = "small"
tokens = [
    {{label = "alice", sha256 = "{hash_token(TOKEN_A)}"}},  # alice's laptop
]

[[teams]]
name = "platform"   # infra
entry = "medium"
token_sha256 = ["{hash_token(TOKEN_B)}"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


# -- check, plan, route ---------------------------------------------------------------------------


def test_check_ok_on_example() -> None:
    result = fleet("check", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 0 and "3 entries, 3 teams" in result.stdout


def test_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = (
        PACKAGED_EXAMPLE.read_text()
        .replace('gpu = "L4"', 'gpu = "L5"')
        .replace("scaledown_window = 300", "scaledown_window = 1")
        .replace('entry = "large"', 'entry = "huge"')
    )
    (tmp_path / "fleet.toml").write_text(bad)
    result = fleet("check", cwd=tmp_path)  # ./fleet.toml is picked up
    assert result.returncode == 1
    assert "entries[\"small\"].gpu: unknown GPU type 'L5'" in result.stderr
    assert 'entries["medium"].scaledown_window' in result.stderr
    assert "teams[\"research\"].entry: unknown entry 'huge'" in result.stderr  # in the same run
    assert "Traceback" not in result.stderr


def test_check_refuses_a_mix_of_teams_with_and_without_tokens(tmp_path: Path) -> None:
    mixed = TOKEN_FLEET.replace(f'token_sha256 = ["{hash_token(TOKEN_B)}"]\n', "")
    result = fleet("check", "--config", str(write(tmp_path, mixed)))
    assert result.returncode == 1 and "'platform'" in result.stderr and "locked out (401)" in result.stderr


def test_check_checks_a_configured_tabby_binary(tmp_path: Path) -> None:
    missing = fleet("check", "--config", str(PACKAGED_EXAMPLE), env={"FLEET_TABBY_BIN": str(tmp_path / "no-tabby")})
    assert missing.returncode == 1 and "FLEET_TABBY_BIN" in missing.stderr and "no-tabby" in missing.stderr
    tabby = tmp_path / "tabby"
    tabby.write_text("#!/bin/sh\n")
    tabby.chmod(0o755)
    found = fleet("check", "--config", str(PACKAGED_EXAMPLE), env={"FLEET_TABBY_BIN": str(tabby)})
    assert found.returncode == 0 and f"local backends: tabby serve ({tabby})" in found.stdout


def test_check_warns_about_an_unknown_fleet_variable() -> None:
    result = fleet("check", "--config", str(PACKAGED_EXAMPLE), env={"FLEET_ROUTER_DEFAULT_ENTRY": "large"})
    assert result.returncode == 0
    assert "warning: FLEET_ROUTER_DEFAULT_ENTRY is not a fleet setting" in result.stderr
    assert "did you mean FLEET_ROUTER__DEFAULT_ENTRY?" in result.stderr


def test_bad_json_in_a_fleet_variable_is_a_settings_error(tmp_path: Path) -> None:
    for command in (("check",), ("plan", "--local-only"), ("route",)):
        result = fleet(*command, "--config", str(PACKAGED_EXAMPLE), env={"FLEET_ENTRIES": "[{"})
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "FLEET_ENTRIES: not valid JSON" in result.stderr


def test_plan_shows_every_entry() -> None:
    result = fleet("plan", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 0, result.stderr
    for expected in ("small *", "TabbyML/StarCoder-7B", "A100-80GB", "120s", "8/container = 16", "frontend"):
        assert expected in result.stdout
    assert "TABBY_ROOT=/data/small/<container's task id>" in result.stdout
    assert "fleet deploy / serve: refused unless given --public" in result.stdout
    assert "shared image layers (built and stored once for every entry)" in result.stdout
    assert "TabbyML/Nomic-Embed-Text (every Tabby 0.32 loads it)" in result.stdout
    assert "cpu Modal default, memory Modal default" in result.stdout


def test_plan_shows_gpu_fallbacks_and_router_sizing(tmp_path: Path) -> None:
    text = PACKAGED_EXAMPLE.read_text().replace('gpu = "L4"', 'gpu = ["L4", "A10G"]')
    (tmp_path / "fleet.toml").write_text(text + "\n[modal]\nrouter_cpu = 1.5\nrouter_memory = 2048\n")
    result = fleet("plan", "--config", str(tmp_path / "fleet.toml"))
    assert result.returncode == 0, result.stderr
    assert "GPU L4, else A10G" in result.stdout
    assert "cpu 1.5, memory 2048 MiB" in result.stdout


def test_plan_says_who_can_reach_the_router(tmp_path: Path) -> None:
    opened = fleet("plan", "--local-only", "--config", str(PACKAGED_EXAMPLE))
    assert "auth: open - anyone who can reach the URL can use every entry a team may use" in opened.stdout
    assert "admin: no admin token" in opened.stdout
    locked = fleet("plan", "--local-only", "--config", str(write(tmp_path, TOKEN_FLEET)))
    assert "auth: tokens - 2 teams, 2 tokens; anyone without a team token gets 401" in locked.stdout
    assert "admin: 1 admin token guarding" in locked.stdout


def test_route_dry_run_and_refusal() -> None:
    ok = fleet("route", "--config", str(PACKAGED_EXAMPLE), "--path", "/teams/research/v1/completions")
    assert ok.returncode == 0 and re.search(r"entry:\s+large", ok.stdout) and "team-path" in ok.stdout
    refused = fleet("route", "--config", str(PACKAGED_EXAMPLE), "--team", "frontend", "--model", "large")
    assert refused.returncode == 1 and "refused: HTTP" in refused.stdout and '"entry-not-allowed"' in refused.stdout


# -- the README and the docs are true --------------------------------------------------------------


def readme_fleet_commands() -> list[list[str]]:
    """Every `.venv/bin/fleet ...` line of the README's sh blocks, as argv after `fleet`."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M):
        for line in block.splitlines():
            if line.startswith(".venv/bin/fleet "):
                commands.append(shlex.split(line.removeprefix(".venv/bin/fleet "), comments=True))
    return commands


def test_readme_fleet_examples_succeed_on_the_packaged_example(tmp_path: Path) -> None:
    commands = readme_fleet_commands()
    assert len(commands) >= 4 and ["check"] in commands
    for argv in commands:
        result = fleet(*argv, cwd=tmp_path)  # no fleet.toml there: the packaged example is used
        assert result.returncode == 0, f"`fleet {shlex.join(argv)}` failed:\n{result.stdout}\n{result.stderr}"


def whole_configs() -> list[tuple[str, str]]:
    """(where, text) of every ```toml block in docs/*.md and README.md that is a whole fleet config: one with
    an [[entries]] table. A block that shows only part of a config says so: ```toml partial."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for index, (info, text) in enumerate(re.findall(r"^```toml([^\n]*)\n(.*?)^```", doc.read_text(), re.S | re.M)):
            if "partial" not in info and re.search(r"^\[\[entries\]\]", text, re.M):
                found.append((f"{doc.name} block {index + 1}", text))
    return found


def test_every_whole_config_in_the_docs_passes_check(tmp_path: Path) -> None:
    configs = whole_configs()
    assert any(where.startswith("CONFIGURATION.md") for where, _ in configs)
    for where, text in configs:
        result = fleet("check", "--config", str(write(tmp_path, text)))
        assert result.returncode == 0, f"{where}:\n{result.stderr}"


# -- tokens --------------------------------------------------------------------------------------


def new_token(result: subprocess.CompletedProcess[str], prefix: str = "tft_") -> str:
    found = re.search(rf"^\s+({prefix}\S+)$", result.stdout, re.M)
    assert found, result.stdout + result.stderr
    return found.group(1)


def test_token_new_prints_token_and_the_line_to_paste(tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_FLEET)
    result = fleet("token", "new", "--team", "frontend", "--label", "bob", "--config", str(path))
    assert result.returncode == 0
    token = new_token(result)
    line = re.search(r"^\s+(tokens = \[.*\])$", result.stdout, re.M)
    assert line and len(token) >= 40
    assert line.group(1) == (
        f'tokens = [{{label = "alice", sha256 = "{hash_token(TOKEN_A)}"}}, '
        f'{{label = "bob", sha256 = "{hash_token(token)}"}}]'
    )
    assert path.read_text() == TOKEN_FLEET  # printed, not written
    # the printed line, pasted in place of the team's tokens line, makes the new token route to its team
    old_block = TOKEN_FLEET[TOKEN_FLEET.index("tokens = [\n") : TOKEN_FLEET.index("]\n\n[[teams]]") + 2]
    write(tmp_path, TOKEN_FLEET.replace(old_block, line.group(1) + "\n"))
    for bearer in (token, TOKEN_A):
        routed = fleet("route", "--token", bearer, cwd=tmp_path)
        assert routed.returncode == 0 and "team-token" in routed.stdout and "frontend" in routed.stdout, routed.stderr


def test_token_new_in_an_open_fleet_says_what_else_is_needed() -> None:
    result = fleet("token", "new", "--team", "frontend", "--label", "alice", "--config", str(PACKAGED_EXAMPLE))
    assert 'router.auth is "open"' in result.stdout and "tokens are not checked" in result.stdout


def test_token_new_write_keeps_comments_and_the_token_works(tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_FLEET)
    result = fleet("token", "new", "--team", "platform", "--label", "bob", "--write", "--config", str(path))
    assert result.returncode == 0, result.stderr
    token = new_token(result)
    assert "/fleet/reload" in result.stdout and "kill -HUP" in result.stdout
    text = path.read_text()
    for comment in ("# my fleet: comments must survive edits", "# the default", "# the web people", "# infra",
                    "# alice's laptop"):  # fmt: skip
        assert comment in text
    assert f'{{label = "bob", sha256 = "{hash_token(token)}"}}' in text
    assert text.replace(text[text.index('tokens = [\n    {label = "bob"') :], "") in TOKEN_FLEET  # only appended
    routed = fleet("route", "--token", token, "--config", str(path))
    assert routed.returncode == 0 and re.search(r"team:\s+platform", routed.stdout)


def test_token_new_write_in_an_open_fleet_keeps_it_loadable_and_says_what_is_left(tmp_path: Path) -> None:
    config = PACKAGED_EXAMPLE.read_text().replace('auth = "open"\n', "")  # the mode left to inference
    path = write(tmp_path, config)
    first = fleet("token", "new", "--team", "frontend", "--label", "a", "--write", "--config", str(path))
    assert first.returncode == 0 and "do not load yet" not in first.stdout
    assert 'router.auth = "open" in [router]' in first.stdout  # written with the first token, so it loads
    assert "still without a token: 'platform', 'research'" in first.stdout and "fleet token enable" in first.stdout
    assert 'auth = "open"' in path.read_text()
    checked = fleet("check", "--config", str(path))
    assert checked.returncode == 0 and "auth: open" in checked.stdout and "1 of 3 teams have tokens" in checked.stdout
    for team in ("platform", "research"):  # the token commands work on the half-moved fleet
        step = fleet("token", "new", "--team", team, "--label", "a", "--write", "--config", str(path))
        assert step.returncode == 0 and fleet("check", "--config", str(path)).returncode == 0
    assert "the one step left is the mode" in step.stdout and "without a token" not in step.stdout
    enabled = fleet("token", "enable", "--config", str(path))
    assert enabled.returncode == 0 and "every team had a token already" in enabled.stdout
    checked = fleet("check", "--config", str(path))
    assert checked.returncode == 0 and "auth: tokens - 3 teams, 3 tokens" in checked.stdout


def test_token_write_refuses_the_packaged_example() -> None:
    before = PACKAGED_EXAMPLE.read_text()
    for command in (("new", "--team", "frontend", "--label", "a", "--write"), ("revoke", "--admin", "--label", "a")):
        result = fleet("token", *command, "--config", str(PACKAGED_EXAMPLE))
        assert result.returncode == 1
    result = fleet("token", "new", "--team", "frontend", "--label", "a", "--write", "--config", str(PACKAGED_EXAMPLE))
    assert "copy it first" in result.stderr and "fleet.toml" in result.stderr
    assert PACKAGED_EXAMPLE.read_text() == before


def test_token_new_refuses_a_taken_or_bad_label(tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_FLEET)
    taken = fleet("token", "new", "--team", "frontend", "--label", "alice", "--config", str(path))
    assert taken.returncode == 1 and "already has a token labelled 'alice'" in taken.stderr
    legacy = fleet("token", "new", "--team", "platform", "--label", "token-1", "--config", str(path))
    assert legacy.returncode == 1 and "labels: token-1" in legacy.stderr
    bad = fleet("token", "new", "--team", "frontend", "--label", "Alice Laptop", "--config", str(path))
    assert bad.returncode == 1 and "not a slug" in bad.stderr and "alice-laptop" in bad.stderr


def test_token_new_unknown_team() -> None:
    result = fleet("token", "new", "--team", "nobody", "--label", "a", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 1 and "frontend, platform, research" in result.stderr


def test_token_commands_need_a_team_or_admin_and_a_label() -> None:
    result = fleet("token", "new", "--label", "a", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 2 and "--team" in result.stderr and "--admin" in result.stderr
    result = fleet("token", "revoke", "--team", "frontend", "--config", str(PACKAGED_EXAMPLE))
    assert result.returncode == 2 and "--label" in result.stderr


def test_token_list_shows_labels_and_a_hash_prefix_only(tmp_path: Path) -> None:
    result = fleet("token", "list", "--config", str(write(tmp_path, TOKEN_FLEET)))
    assert result.returncode == 0
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["frontend", "alice", hash_token(TOKEN_A)[:8] + "...", "tokens"] in rows
    assert ["platform", "token-1", hash_token(TOKEN_B)[:8] + "...", "token_sha256", "(legacy)"] in rows
    assert ["(admin)", "ops", hash_token(ADMIN)[:8] + "...", "admin_tokens"] in rows
    assert not re.search(r"[0-9a-f]{12}", result.stdout)  # never a whole hash, nor much of one


def test_token_revoke_keeps_comments_and_says_how_to_reload(tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_FLEET)
    second, third = (
        new_token(fleet("token", "new", "--team", "frontend", "--label", label, "--write", "--config", str(path)))
        for label in ("alice-2", "alice-3")
    )
    result = fleet("token", "revoke", "--team", "frontend", "--label", "alice-2", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "keeps accepting it until it re-reads its settings" in result.stdout
    assert "/fleet/reload" in result.stdout and "kill -HUP" in result.stdout and "fleet deploy" in result.stdout
    assert fleet("route", "--token", second, "--config", str(path)).returncode == 1
    for kept in (TOKEN_A, third):
        assert fleet("route", "--token", kept, "--config", str(path)).returncode == 0
    assert fleet("token", "revoke", "--team", "frontend", "--label", "alice", "--config", str(path)).returncode == 0
    text = path.read_text()
    assert hash_token(TOKEN_A) not in text and "# alice's laptop" not in text  # the line and its comment
    assert "# the web people" in text and "# infra" in text and "# the default" in text
    assert "# my fleet: comments must survive edits" in text


def test_token_revoke_a_legacy_hash(tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_FLEET)
    assert (
        fleet("token", "new", "--team", "platform", "--label", "ci", "--write", "--config", str(path)).returncode == 0
    )
    result = fleet("token", "revoke", "--team", "platform", "--label", "token-1", "--config", str(path))
    assert result.returncode == 0 and "legacy token_sha256" in result.stdout
    assert "token_sha256" not in path.read_text()  # the emptied list goes
    assert fleet("route", "--token", TOKEN_B, "--config", str(path)).returncode == 1


def test_token_revoke_refuses_the_last_token_of_a_team_in_token_mode(tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_FLEET)
    result = fleet("token", "revoke", "--team", "frontend", "--label", "alice", "--config", str(path))
    assert result.returncode == 1
    assert "last token of team 'frontend'" in result.stderr and "locked out" in result.stderr
    assert "fleet token new --team frontend --label NEW --write" in result.stderr  # how to proceed
    assert path.read_text() == TOKEN_FLEET


def test_token_revoke_names_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_FLEET)
    team = fleet("token", "revoke", "--team", "backend", "--label", "alice", "--config", str(path))
    assert team.returncode == 1 and "teams: frontend, platform" in team.stderr
    label = fleet("token", "revoke", "--team", "frontend", "--label", "bob", "--config", str(path))
    assert label.returncode == 1 and "no token labelled 'bob'; its labels: alice" in label.stderr


def test_admin_token_new_write_and_revoke(tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_FLEET)
    result = fleet("token", "new", "--admin", "--label", "ci-scraper", "--write", "--config", str(path))
    assert result.returncode == 0
    token = new_token(result, "tfa_")
    assert load_settings(path).router.admin_token_digests == (hash_token(ADMIN), hash_token(token))
    printed = fleet("token", "new", "--admin", "--label", "other", "--config", str(path))
    line = re.search(r"^\s+(admin_tokens = \[.*\])$", printed.stdout, re.M)
    assert line and '"ops"' in line.group(1) and '"ci-scraper"' in line.group(1) and '"other"' in line.group(1)
    for label in ("ops", "ci-scraper"):
        revoked = fleet("token", "revoke", "--admin", "--label", label, "--config", str(path))
        assert revoked.returncode == 0, revoked.stderr
    assert "last admin token" in revoked.stdout
    assert load_settings(path).router.admin_token_digests == ()


# -- deploy / serve ------------------------------------------------------------------------------


def test_deploy_refuses_invalid_settings_before_modal_is_involved(tmp_path: Path) -> None:
    bad = PACKAGED_EXAMPLE.read_text().replace("scaledown_window = 120", "scaledown_window = 1")
    (tmp_path / "fleet.toml").write_text(bad)
    for verb in ("deploy", "serve"):
        result = fleet(verb, "--public", "--no-admin", "--config", str(tmp_path / "fleet.toml"))
        assert result.returncode == 1 and 'entries["small"].scaledown_window' in result.stderr
        assert "modal" not in result.stdout  # the modal CLI never ran


@pytest.mark.parametrize("verb", ["deploy", "serve"])
def test_deploy_refuses_an_open_fleet_without_public(tmp_path: Path, verb: str) -> None:
    opened = PACKAGED_EXAMPLE.read_text().replace(
        "[router]\n", f'[router]\nadmin_tokens = [{{label = "ops", sha256 = "{hash_token(ADMIN)}"}}]\n'
    )
    result = fleet(verb, "--config", str(write(tmp_path, opened)))
    assert result.returncode == 1 and "modal" not in result.stdout
    assert "the fleet is open" in result.stderr and "--public" in result.stderr and "fleet token new" in result.stderr
    assert "admin token" not in result.stderr


@pytest.mark.parametrize("verb", ["deploy", "serve"])
def test_deploy_refuses_a_fleet_without_admin_token(tmp_path: Path, verb: str) -> None:
    no_admin = TOKEN_FLEET.replace(f'admin_tokens = [{{label = "ops", sha256 = "{hash_token(ADMIN)}"}}]\n', "")
    result = fleet(verb, "--config", str(write(tmp_path, no_admin)))
    assert result.returncode == 1 and "modal" not in result.stdout
    assert "no admin token is set" in result.stderr and "--no-admin" in result.stderr and "/metrics" in result.stderr
    assert "open" not in result.stderr


def test_deploy_flags_waive_only_their_own_refusal(tmp_path: Path) -> None:
    path = write(tmp_path, PACKAGED_EXAMPLE.read_text())  # open, and no admin token
    both = fleet("deploy", "--config", str(path))
    assert both.returncode == 1 and "the fleet is open" in both.stderr and "no admin token" in both.stderr
    public = fleet("deploy", "--public", "--config", str(path))
    assert public.returncode == 1 and "the fleet is open" not in public.stderr and "no admin token" in public.stderr
    no_admin = fleet("deploy", "--no-admin", "--config", str(path))
    assert no_admin.returncode == 1 and "the fleet is open" in no_admin.stderr and "admin" not in no_admin.stderr
    assert "modal" not in both.stdout + public.stdout + no_admin.stdout


# -- fleet up ----------------------------------------------------------------------------------------


def test_up_refuses_missing_tabby_bin(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apps.cli", "up", "--config", str(PACKAGED_EXAMPLE), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"FLEET_TABBY_BIN": str(tmp_path / "no-such-tabby"), "PATH": ""},
    )
    assert result.returncode == 1 and "FLEET_TABBY_BIN" in result.stderr


def test_up_banner_on_every_interface_prints_a_reachable_address() -> None:
    settings = load_settings(PACKAGED_EXAMPLE)
    banner = up_banner(settings, "0.0.0.0", 8080, PACKAGED_EXAMPLE, None)
    assert "0.0.0.0" not in banner.replace("Listening on every interface (0.0.0.0)", "")
    assert 'endpoint = "http://127.0.0.1:8080/teams/frontend"' in banner
    assert "from other machines use this machine's name or IP address" in banner
    assert 'endpoint = "http://[::1]:9000/teams/research"' in up_banner(settings, "::", 9000, PACKAGED_EXAMPLE, None)
    assert "other machines" not in up_banner(settings, "127.0.0.1", 8080, PACKAGED_EXAMPLE, None)


def test_up_banner_in_token_mode_prints_a_placeholder_token_per_team(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, TOKEN_FLEET))
    banner = up_banner(settings, "127.0.0.1", 8080, tmp_path, None)
    for team in ("frontend", "platform"):
        config = (
            f'# team {team}: ~/.tabby-client/agent/config.toml\n[server]\nendpoint = "http://127.0.0.1:8080"\n'
            f'token = "<a {team} token>"   # get one: fleet token new --team {team} --label NAME\n'
        )
        assert config in banner
    assert "/teams/" not in banner and "auth: tokens" in banner


def test_plan_says_where_a_cold_entrys_completions_go(tmp_path: Path) -> None:
    config = (
        '[[entries]]\nname = "small"\nmodel = "m1"\nchat_model = "c1"\n\n'
        '[[entries]]\nname = "large"\nmodel = "m7"\nfallback = "small"\ncold_wait = 1.5\nfallback_chat = true\n'
    )
    result = fleet("plan", "--local-only", "--config", str(write(tmp_path, config)))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("small ", "large "))}
    assert "small after 1.5s, chat too" in rows["large"]
    assert "waits" in rows["small"]
