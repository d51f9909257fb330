"""Moving an open fleet to tokens: every step loads, and `fleet token enable` makes the whole move in one write."""

from __future__ import annotations

import re
from pathlib import Path

from fleet.settings import PACKAGED_EXAMPLE
from fleet.tokens import hash_token
from tests.test_cli import fleet, new_token, write

TEAMS = ("frontend", "platform", "research")
COMMENTS = ("# my own fleet: keep this", "# used when nothing else selects an entry", "# the web people")


def open_fleet(tmp_path: Path) -> Path:
    """The packaged example (open, three teams, no token), with comments of the admin's own."""
    text = PACKAGED_EXAMPLE.read_text()
    text = (
        COMMENTS[0]
        + "\n"
        + text.replace('[[teams]]\nname = "frontend"', '# the web people\n[[teams]]\nname = "frontend"')
    )
    return write(tmp_path, text)


def issued(stdout: str) -> dict[str, str]:
    """team -> token, from the lines `fleet token enable` prints for tabby-agent's config.toml."""
    return dict(re.findall(r'^\s+(\S+)\s+token = "(tft_\S+)"$', stdout, re.M))


def check(path: Path) -> str:
    result = fleet("check", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_token_enable_moves_an_open_fleet_to_tokens_in_one_write(tmp_path: Path) -> None:
    path = open_fleet(tmp_path)
    result = fleet("token", "enable", "--config", str(path))
    assert result.returncode == 0, result.stderr
    tokens = issued(result.stdout)
    assert sorted(tokens) == sorted(TEAMS) and len(set(tokens.values())) == 3
    assert "~/.tabby-client/agent/config.toml" in result.stdout and "/fleet/reload" in result.stdout
    for token in tokens.values():
        assert result.stdout.count(token) == 1  # shown once
    text = path.read_text()
    for comment in COMMENTS:
        assert comment in text
    assert 'auth = "tokens"' in text and 'auth = "open"' not in text
    assert all(hash_token(token) in text and token not in text for token in tokens.values())
    assert "auth: tokens - 3 teams, 3 tokens" in check(path)
    for team, token in tokens.items():
        routed = fleet("route", "--token", token, "--config", str(path))
        assert routed.returncode == 0 and re.search(rf"team:\s+{team}\b", routed.stdout), routed.stdout
    assert fleet("route", "--team", "frontend", "--config", str(path)).returncode == 1  # no token: refused
    again = fleet("token", "enable", "--config", str(path))
    assert again.returncode == 0 and "Nothing to do" in again.stdout and not issued(again.stdout)
    assert path.read_text() == text


def test_every_step_from_open_to_tokens_loads(tmp_path: Path) -> None:
    for mode in ('auth = "open"\n', ""):  # the example's explicit open mode, and the mode left to inference
        path = write(tmp_path, PACKAGED_EXAMPLE.read_text().replace('auth = "open"\n', mode))
        assert "auth: open" in check(path)
        first = fleet("token", "new", "--team", "frontend", "--label", "alice", "--write", "--config", str(path))
        assert first.returncode == 0, first.stderr
        alice = new_token(first)
        state = check(path)  # a token issued, none checked yet: still open, and it loads
        assert "auth: open" in state and "1 of 3 teams have tokens" in state
        assert "still without a token: 'platform', 'research'" in state
        step = fleet("token", "new", "--team", "platform", "--label", "ci", "--write", "--config", str(path))
        assert step.returncode == 0 and "still without a token: 'research'" in check(path)
        enabled = fleet("token", "enable", "--config", str(path))  # the rest in one write
        assert enabled.returncode == 0 and list(issued(enabled.stdout)) == ["research"]
        assert "Teams that had tokens keep them: frontend, platform" in enabled.stdout
        assert "auth: tokens - 3 teams, 3 tokens" in check(path)
        routed = fleet("route", "--token", alice, "--config", str(path))  # a token issued early works now
        assert routed.returncode == 0 and re.search(r"team:\s+frontend\b", routed.stdout)


def test_the_advice_names_only_the_steps_still_missing(tmp_path: Path) -> None:
    path = open_fleet(tmp_path)
    printed = fleet("token", "new", "--team", "frontend", "--label", "a", "--config", str(path))  # not written
    assert "still without a token: platform, research" in printed.stdout and "every team" not in printed.stdout
    for team in ("frontend", "platform"):
        assert fleet("token", "new", "--team", team, "--label", "a", "--write", "--config", str(path)).returncode == 0
    last = fleet("token", "new", "--team", "research", "--label", "a", "--config", str(path))
    assert "the one step left is the mode" in last.stdout and "give every team" not in last.stdout
    written = fleet("token", "new", "--team", "research", "--label", "a", "--write", "--config", str(path))
    assert "Next:" in written.stdout and "the one step left is the mode" in written.stdout
    assert "without a token" not in written.stdout
    state = check(path)
    assert "the one step left is the mode" in state and "without a token" not in state
    enabled = fleet("token", "enable", "--config", str(path))
    assert enabled.returncode == 0 and "every team had a token already" in enabled.stdout
    assert "the one step left" not in check(path)


def test_token_enable_refuses_rather_than_half_done(tmp_path: Path) -> None:
    no_teams = write(tmp_path, PACKAGED_EXAMPLE.read_text().split("# Teams.")[0])
    before = no_teams.read_text()
    refused = fleet("token", "enable", "--config", str(no_teams))
    assert refused.returncode == 1 and "no teams" in refused.stderr and no_teams.read_text() == before
    path = open_fleet(tmp_path)
    before = path.read_text()
    bad = fleet("token", "enable", "--label", "Not A Slug", "--config", str(path))
    assert bad.returncode == 1 and "--label" in bad.stderr and path.read_text() == before
    elsewhere = fleet(
        "token", "enable", "--config", str(path), env={"FLEET_TEAMS": '[{"name": "ops", "entry": "small"}]'}
    )
    assert elsewhere.returncode == 1 and "'ops' is not in" in elsewhere.stderr and path.read_text() == before
    assert not list(tmp_path.glob(".fleet.toml.fleet-edit-*"))  # nothing left aside
    example = fleet("token", "enable", "--config", str(PACKAGED_EXAMPLE))
    assert example.returncode == 1 and "copy it first" in example.stderr
