"""Every settings rule: the good example loads; each bad value fails at load with advice."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from fleet.errors import FleetError
from fleet.loading import SettingsError, env_warnings, load_settings, resolve_config_path
from fleet.routing import RoutingTable
from fleet.rules import settings_warnings
from fleet.settings import PACKAGED_EXAMPLE, FleetSettings
from router.admin import AdminAuth

HASH = hashlib.sha256(b"secret").hexdigest()

BASE = """
[router]
default_entry = "small"

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
aliases = ["starcoder-1b"]

[[entries]]
name = "medium"
model = "TabbyML/StarCoder-3B"
gpu = "A10G"

[[teams]]
name = "frontend"
entry = "small"
allowed_entries = ["small", "medium"]
"""


def load(tmp_path: Path, text: str, **overrides: Any) -> FleetSettings:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return load_settings(path, **overrides)


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, text)
    return "\n".join(caught.value.problems)


def test_packaged_example_loads() -> None:
    settings = load_settings(PACKAGED_EXAMPLE)
    assert [e.name for e in settings.entries] == ["small", "medium", "large"]
    assert [e.gpu for e in settings.entries] == ["L4", "A10G", "A100-80GB"]
    assert settings.router.default_entry == "small"
    assert {t.name for t in settings.teams} == {"frontend", "platform", "research"}


def test_base_loads_with_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, BASE)
    small = settings.entry("small")
    assert small.capacity == small.max_containers * small.max_inputs
    assert small.class_name == "TabbySmall"
    assert settings.entry("medium").gpu == "A10G"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ROUTER__DEFAULT_ENTRY", "medium")
    monkeypatch.setenv("FLEET_ROUTER__QUEUE_TIMEOUT", "3.5")
    settings = load(tmp_path, BASE)
    assert settings.router.default_entry == "medium"
    assert settings.router.queue_timeout == 3.5


def test_init_arguments_override_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_TABBY_BIN", "/from/env")
    assert load(tmp_path, BASE).tabby_bin == "/from/env"
    assert load(tmp_path, BASE, tabby_bin="/from/init").tabby_bin == "/from/init"


def test_dotenv_is_read_below_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("FLEET_ROUTER__DEFAULT_ENTRY=medium\nUNRELATED=1\n")
    assert load(tmp_path, BASE).router.default_entry == "medium"
    monkeypatch.setenv("FLEET_ROUTER__DEFAULT_ENTRY", "small")
    assert load(tmp_path, BASE).router.default_entry == "small"


def test_config_path_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLEET_CONFIG", raising=False)
    assert resolve_config_path(None) == PACKAGED_EXAMPLE
    (tmp_path / "fleet.toml").write_text(BASE)
    assert resolve_config_path(None) == Path("fleet.toml")
    monkeypatch.setenv("FLEET_CONFIG", "/etc/other.toml")
    assert resolve_config_path(None) == Path("/etc/other.toml")
    assert resolve_config_path("explicit.toml") == Path("explicit.toml")


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(tmp_path / "absent.toml")
    assert "does not exist" in str(caught.value) and "--config" in str(caught.value)


def test_invalid_toml(tmp_path: Path) -> None:
    assert "not valid TOML" in problems(tmp_path, "[router\n")


def test_unknown_top_level_key_suggests_spelling(tmp_path: Path) -> None:
    assert "did you mean 'entries'" in problems(tmp_path, BASE + "\n[[entrys]]\nname='x'\n")


def test_unknown_entry_field(tmp_path: Path) -> None:
    text = BASE.replace('gpu = "A10G"', 'gpu = "A10G"\ngpus = 2')
    assert "entries[\"medium\"].gpus: unknown field 'gpus'; did you mean 'gpu'?" in problems(tmp_path, text)


def test_no_entries(tmp_path: Path) -> None:
    assert "entries" in problems(tmp_path, "[router]\n")


def test_missing_model(tmp_path: Path) -> None:
    text = BASE.replace('model = "TabbyML/StarCoder-3B"\n', "")
    assert problems(tmp_path, text) == "entries[\"medium\"].model: required field 'model' is missing; add it"


@pytest.mark.parametrize("bad", ["Small", "small_1", "-small", "a" * 40, "smäll", ""])
def test_entry_name_must_be_slug(tmp_path: Path, bad: str) -> None:
    text = BASE.replace('name = "small"', f'name = "{bad}"')
    assert "not a slug" in problems(tmp_path, text)


def test_duplicate_entry_names(tmp_path: Path) -> None:
    text = BASE.replace('name = "medium"', 'name = "small"')
    assert "duplicate entry name 'small'" in problems(tmp_path, text)


def test_modal_class_name_collision(tmp_path: Path) -> None:
    text = BASE.replace('name = "small"', 'name = "a-b"').replace('name = "medium"', 'name = "ab"')
    text = text.replace('"small"', '"a-b"')
    assert "same Modal class name" in problems(tmp_path, text)


def test_duplicate_alias(tmp_path: Path) -> None:
    text = BASE.replace('gpu = "A10G"', 'gpu = "A10G"\naliases = ["starcoder-1b"]')
    assert "alias 'starcoder-1b' already selects entry 'small'" in problems(tmp_path, text)


def test_alias_equal_to_other_entry_name(tmp_path: Path) -> None:
    text = BASE.replace('aliases = ["starcoder-1b"]', 'aliases = ["medium"]')
    assert "alias 'medium' already selects entry 'medium'" in problems(tmp_path, text)


def test_alias_equal_to_other_model_id(tmp_path: Path) -> None:
    text = BASE.replace('aliases = ["starcoder-1b"]', 'aliases = ["tabbyml/starcoder-3b"]')
    assert "is the model id of entry 'medium'" in problems(tmp_path, text)


def test_unknown_default_entry_lists_choices(tmp_path: Path) -> None:
    text = BASE.replace('default_entry = "small"', 'default_entry = "huge"')
    found = problems(tmp_path, text)
    assert "router.default_entry: unknown entry 'huge'" in found and "small, medium" in found


def test_team_unknown_entry(tmp_path: Path) -> None:
    text = BASE.replace('entry = "small"\nallowed', 'entry = "tiny"\nallowed')
    assert "teams[\"frontend\"].entry: unknown entry 'tiny'" in problems(tmp_path, text)


def test_team_unknown_allowed_entry(tmp_path: Path) -> None:
    text = BASE.replace('allowed_entries = ["small", "medium"]', 'allowed_entries = ["small", "xl"]')
    assert "allowed_entries: unknown entry 'xl'" in problems(tmp_path, text)


def test_team_entry_outside_allowed(tmp_path: Path) -> None:
    text = BASE.replace('allowed_entries = ["small", "medium"]', 'allowed_entries = ["medium"]')
    assert "'small' is not in its allowed_entries" in problems(tmp_path, text)


def test_default_outside_team_allowed_list(tmp_path: Path) -> None:
    text = BASE.replace('entry = "small"\nallowed_entries = ["small", "medium"]', 'allowed_entries = ["medium"]')
    assert "router.default_entry 'small' is outside its allowed_entries" in problems(tmp_path, text)


def test_duplicate_team_names(tmp_path: Path) -> None:
    text = BASE + '\n[[teams]]\nname = "frontend"\n'
    assert "duplicate team name 'frontend'" in problems(tmp_path, text)


@pytest.mark.parametrize("window", [0, 1, 3601, -5])
def test_scaledown_window_bounds(tmp_path: Path, window: int) -> None:
    text = BASE.replace('gpu = "A10G"', f'gpu = "A10G"\nscaledown_window = {window}')
    found = problems(tmp_path, text)
    assert 'entries["medium"].scaledown_window' in found and "2..3600" in found and str(window) in found


def test_scaledown_window_bounds_inclusive(tmp_path: Path) -> None:
    for window in (2, 3600):
        text = BASE.replace('gpu = "A10G"', f'gpu = "A10G"\nscaledown_window = {window}')
        assert load(tmp_path, text).entry("medium").scaledown_window == window


def test_min_containers_above_max(tmp_path: Path) -> None:
    text = BASE.replace('gpu = "A10G"', 'gpu = "A10G"\nmin_containers = 3\nmax_containers = 2')
    assert "min_containers (3) is greater than max_containers (2)" in problems(tmp_path, text)


@pytest.mark.parametrize("field", ["max_inputs", "max_containers"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_concurrency(tmp_path: Path, field: str, value: int) -> None:
    text = BASE.replace('gpu = "A10G"', f'gpu = "A10G"\n{field} = {value}')
    assert f'entries["medium"].{field}: {field} must be at least 1' in problems(tmp_path, text)


def test_target_inputs_above_max(tmp_path: Path) -> None:
    text = BASE.replace('gpu = "A10G"', 'gpu = "A10G"\nmax_inputs = 4\ntarget_inputs = 5')
    assert "target_inputs must be 1..max_inputs (4)" in problems(tmp_path, text)


def test_unknown_gpu_lists_valid_types(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE.replace('gpu = "A10G"', 'gpu = "A11G"'))
    assert "unknown GPU type 'A11G'" in found and "Did you mean 'A10G'" in found and "H100" in found


@pytest.mark.parametrize("gpu", ["H100:0", "H100:9", "L4:x"])
def test_bad_gpu_count(tmp_path: Path, gpu: str) -> None:
    assert "GPU count" in problems(tmp_path, BASE.replace('gpu = "A10G"', f'gpu = "{gpu}"'))


@pytest.mark.parametrize(("given", "stored"), [("h100:2", "H100:2"), ("l4", "L4"), ("A100-80GB", "A100-80GB")])
def test_gpu_normalised(tmp_path: Path, given: str, stored: str) -> None:
    assert load(tmp_path, BASE.replace('gpu = "A10G"', f'gpu = "{given}"')).entry("medium").gpu == stored


@pytest.mark.parametrize("digest", ["abc", "z" * 64, HASH + "0"])
def test_malformed_token_hash(tmp_path: Path, digest: str) -> None:
    text = BASE.replace('allowed_entries = ["small", "medium"]', f'allowed_entries = []\ntoken_sha256 = ["{digest}"]')
    assert "not a sha256 hex digest" in problems(tmp_path, text)


def test_token_hash_shared_by_two_teams(tmp_path: Path) -> None:
    text = BASE.replace('allowed_entries = ["small", "medium"]', f'token_sha256 = ["{HASH}"]')
    text += f'\n[[teams]]\nname = "backend"\ntoken_sha256 = ["{HASH.upper()}"]\n'
    assert 'teams["backend"].token_sha256: the hash' in (found := problems(tmp_path, text))
    assert "is also a token of team 'frontend'" in found


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace('default_entry = "small"', 'default_entry = "huge"').replace(
        'entry = "small"\n', 'entry = "x"\n'
    )
    found = problems(tmp_path, text)
    assert "router.default_entry" in found and 'teams["frontend"].entry' in found


def test_field_errors_are_all_reported(tmp_path: Path) -> None:
    text = BASE.replace('gpu = "A10G"', 'gpu = "A11G"\nscaledown_window = 1').replace(
        'aliases = ["starcoder-1b"]', "max_inputs = 0"
    )
    found = problems(tmp_path, text)
    assert 'entries["medium"].gpu' in found and 'entries["medium"].scaledown_window' in found
    assert 'entries["small"].max_inputs' in found


def test_entries_from_environment_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ENTRIES", '[{"name": "solo", "model": "TabbyML/StarCoder-1B"}]')
    monkeypatch.setenv("FLEET_TEAMS", "[]")
    monkeypatch.setenv("FLEET_ROUTER__DEFAULT_ENTRY", "solo")
    settings = load(tmp_path, BASE)
    assert [e.name for e in settings.entries] == ["solo"]


# -- auth mode ------------------------------------------------------------------------------------

HASH_A, HASH_B, HASH_C = (hashlib.sha256(t).hexdigest() for t in (b"tft_a", b"tft_b", b"tft_c"))

TWO_TEAMS = (
    BASE
    + """
[[teams]]
name = "platform"
entry = "medium"
"""
)


def with_tokens(text: str, team: str, line: str) -> str:
    """Add a line to the [[teams]] table of ``team``."""
    marker = f'name = "{team}"\n'
    assert text.count(marker) == 1
    return text.replace(marker, marker + line + "\n")


def test_auth_is_inferred_from_the_teams(tmp_path: Path) -> None:
    assert load(tmp_path, TWO_TEAMS).auth_mode == "open"
    both = with_tokens(with_tokens(TWO_TEAMS, "frontend", f'token_sha256 = ["{HASH_A}"]'), "platform",
                       f'tokens = [{{label = "ci", sha256 = "{HASH_B}"}}]')  # fmt: skip
    settings = load(tmp_path, both)
    assert settings.auth_mode == "tokens" and settings.router.auth is None


def test_a_mix_of_teams_with_and_without_tokens_is_refused(tmp_path: Path) -> None:
    mixed = with_tokens(TWO_TEAMS, "frontend", f'tokens = [{{label = "alice", sha256 = "{HASH_A}"}}]')
    found = problems(tmp_path, mixed)
    assert found.count("\n") == 0  # one line
    assert "'platform'" in found and "locked out (401)" in found  # names the team that would be locked out
    assert "fleet token enable" in found  # fix 1: the whole move in one write
    assert 'set router.auth = "open"' in found and "remove the tokens" not in found  # fix 2: stay open meanwhile


def test_explicit_tokens_mode_needs_a_token_on_every_team(tmp_path: Path) -> None:
    text = with_tokens(TWO_TEAMS, "frontend", f'token_sha256 = ["{HASH_A}"]')
    found = problems(tmp_path, text.replace("[router]\n", '[router]\nauth = "tokens"\n'))
    assert 'teams["platform"].tokens: router.auth is "tokens" but team \'platform\' has no token' in found
    assert "frontend" not in found


def test_explicit_tokens_mode_without_teams_is_refused(tmp_path: Path) -> None:
    text = BASE.split("[[teams]]")[0].replace("[router]\n", '[router]\nauth = "tokens"\n')
    assert 'router.auth: "tokens", but there are no teams' in problems(tmp_path, text)


def test_an_open_fleet_being_moved_to_tokens_loads_and_names_only_what_is_left(tmp_path: Path) -> None:
    three = TWO_TEAMS.replace("[router]\n", '[router]\nauth = "open"\n') + '\n[[teams]]\nname = "research"\n'
    first = with_tokens(three, "frontend", f'token_sha256 = ["{HASH_A}"]')
    settings = load(tmp_path, first)  # tokens in an open fleet: a move under way, not an error
    assert settings.auth_mode == "open"
    (move,) = [w for w in settings_warnings(settings) if "router.auth" in w]
    assert "still without a token: 'platform', 'research'" in move and "fleet token enable" in move
    assert "fleet token new --team platform" in move and "'frontend'" not in move
    last = with_tokens(first, "platform", f'tokens = [{{label = "ci", sha256 = "{HASH_B}"}}]')
    (move,) = [w for w in settings_warnings(load(tmp_path, last)) if "router.auth" in w]
    assert "still without a token: 'research'" in move and "gives it one" in move and "platform" not in move
    done = with_tokens(last, "research", f'tokens = [{{label = "r", sha256 = "{HASH_C}"}}]')
    (move,) = [w for w in settings_warnings(load(tmp_path, done)) if "router.auth" in w]
    assert "the one step left is the mode" in move and "fleet token enable" in move
    assert "without a token" not in move and "fleet token new" not in move  # only the missing step


def test_explicit_tokens_mode_names_only_the_team_without_a_token(tmp_path: Path) -> None:
    three = TWO_TEAMS.replace("[router]\n", '[router]\nauth = "tokens"\n') + '\n[[teams]]\nname = "research"\n'
    text = with_tokens(with_tokens(three, "frontend", f'token_sha256 = ["{HASH_A}"]'), "research",
                       f'token_sha256 = ["{HASH_C}"]')  # fmt: skip
    found = problems(tmp_path, text)
    assert found.count("\n") == 0 and "'platform'" in found
    assert "fleet token new --team platform --label LABEL --write" in found
    assert "frontend" not in found and "research" not in found and "fleet token enable" not in found


def test_unknown_auth_mode(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE.replace("[router]\n", '[router]\nauth = "closed"\n'))
    assert "router.auth: must be 'tokens' or 'open' (got 'closed')" in found


def test_routing_follows_the_explicit_mode(tmp_path: Path) -> None:
    open_fleet = RoutingTable(load(tmp_path, TWO_TEAMS.replace("[router]\n", '[router]\nauth = "open"\n')))
    assert open_fleet.route("/v1/completions", team_header="platform").entry == "medium"
    locked = with_tokens(with_tokens(TWO_TEAMS, "frontend", f'token_sha256 = ["{HASH_A}"]'), "platform",
                         f'tokens = [{{label = "ci", sha256 = "{HASH_B}"}}]')  # fmt: skip
    table = RoutingTable(load(tmp_path, locked.replace("[router]\n", '[router]\nauth = "tokens"\n')))
    with pytest.raises(FleetError) as caught:
        table.route("/v1/completions", team_header="platform")
    assert caught.value.code == "missing-token"
    assert table.route("/v1/completions", "Bearer tft_b").team == "platform"  # a labelled token
    assert table.route("/v1/completions", "Bearer tft_a").team == "frontend"  # a legacy one


# -- labelled tokens ------------------------------------------------------------------------------


def test_legacy_hashes_get_positional_labels(tmp_path: Path) -> None:
    text = with_tokens(BASE, "frontend", f'token_sha256 = ["{HASH_A}", "{HASH_B}"]\n'
                                         f'tokens = [{{label = "alice", sha256 = "{HASH_C}"}}]')  # fmt: skip
    team = load(tmp_path, text).teams[0]
    assert [t.label for t in team.labelled_tokens] == ["alice", "token-1", "token-2"]
    assert team.token_digests == (HASH_C, HASH_A, HASH_B)


def test_token_labels_are_slugs_and_unique_within_a_team(tmp_path: Path) -> None:
    bad = with_tokens(BASE, "frontend", f'tokens = [{{label = "Alice Laptop", sha256 = "{HASH_A}"}}]')
    assert 'teams["frontend"].tokens["Alice Laptop"].label: token label \'Alice Laptop\' is not a slug' in problems(
        tmp_path, bad
    )
    twice = with_tokens(BASE, "frontend", f'tokens = [{{label = "a", sha256 = "{HASH_A}"}}, '
                                          f'{{label = "a", sha256 = "{HASH_B}"}}]')  # fmt: skip
    assert "label 'a' is used twice in team 'frontend'" in problems(tmp_path, twice)
    clash = with_tokens(BASE, "frontend", f'token_sha256 = ["{HASH_A}"]\n'
                                          f'tokens = [{{label = "token-1", sha256 = "{HASH_B}"}}]')  # fmt: skip
    assert "label 'token-1' is used twice" in problems(tmp_path, clash)


def test_the_same_label_in_two_teams_is_fine(tmp_path: Path) -> None:
    text = with_tokens(with_tokens(TWO_TEAMS, "frontend", f'tokens = [{{label = "ci", sha256 = "{HASH_A}"}}]'),
                       "platform", f'tokens = [{{label = "ci", sha256 = "{HASH_B}"}}]')  # fmt: skip
    assert load(tmp_path, text).auth_mode == "tokens"


def test_malformed_labelled_hash_is_named_by_its_label(tmp_path: Path) -> None:
    text = with_tokens(BASE, "frontend", 'tokens = [{label = "alice", sha256 = "abc"}]')
    found = problems(tmp_path, text)
    assert 'teams["frontend"].tokens["alice"].sha256' in found and "not a sha256 hex digest" in found


def test_admin_tokens_labelled_and_legacy(tmp_path: Path) -> None:
    text = BASE.replace("[router]\n", f'[router]\nadmin_token_sha256 = ["{HASH_A}"]\n'
                                      f'admin_tokens = [{{label = "ops", sha256 = "{HASH_B}"}}]\n')  # fmt: skip
    router = load(tmp_path, text).router
    assert [t.label for t in router.labelled_admin_tokens] == ["ops", "token-1"]
    assert router.admin_token_digests == (HASH_B, HASH_A)
    auth = AdminAuth(load(tmp_path, text))
    for token in ("tft_a", "tft_b"):  # both forms admit
        auth.require(_admin_request(f"Bearer {token}"))
    with pytest.raises(FleetError):
        auth.require(_admin_request("Bearer tft_c"))


def test_admin_token_may_not_be_a_team_token(tmp_path: Path) -> None:
    text = with_tokens(BASE, "frontend", f'tokens = [{{label = "alice", sha256 = "{HASH_A}"}}]')
    text = text.replace("[router]\n", f'[router]\nadmin_tokens = [{{label = "ops", sha256 = "{HASH_A}"}}]\n')
    assert "router.admin_tokens: the hash" in (found := problems(tmp_path, text))
    assert "is also a token of team 'frontend' (label 'alice')" in found


def test_frozen_settings_keep_tokens_and_mode(tmp_path: Path) -> None:
    """What `fleet deploy` hands the containers (model_dump_json) loads back the same."""
    text = with_tokens(
        BASE, "frontend", f'token_sha256 = ["{HASH_A}"]\ntokens = [{{label = "b", sha256 = "{HASH_B}"}}]'
    )
    text = text.replace(
        "[router]\n", f'[router]\nauth = "tokens"\nadmin_tokens = [{{label = "ops", sha256 = "{HASH_C}"}}]\n'
    )
    settings = load(tmp_path, text)
    again = FleetSettings.model_validate_json(settings.model_dump_json())
    assert again == settings and again.auth_mode == "tokens" and again.teams[0].token_digests == (HASH_B, HASH_A)


# -- every problem in one pass ---------------------------------------------------------------------


def test_field_errors_and_cross_references_in_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ROUTER__DEFAULT_ENTRY", "huge")
    text = BASE.replace('gpu = "A10G"', 'gpu = "A11G"').replace('entry = "small"\nallowed', 'entry = "tiny"\nallowed')
    lines = problems(tmp_path, text).splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("entries[\"medium\"].gpu: unknown GPU type 'A11G'")
    assert any(
        line.startswith("router.default_entry (from FLEET_ROUTER__DEFAULT_ENTRY): unknown entry 'huge'")
        for line in lines
    )
    assert any(line.startswith("teams[\"frontend\"].entry: unknown entry 'tiny'") for line in lines)


def test_cross_checks_see_an_entry_whose_own_field_is_bad(tmp_path: Path) -> None:
    """A bad GPU on "medium" must not make "medium" unknown to the team that allows it."""
    text = BASE.replace('gpu = "A10G"', 'gpu = "A11G"\nmax_inputs = 0')
    lines = problems(tmp_path, text).splitlines()
    assert [line.split(":")[0] for line in lines] == ['entries["medium"].gpu', 'entries["medium"].max_inputs']


def test_unknown_top_level_key_comes_with_the_other_problems(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE.replace('gpu = "A10G"', 'gpu = "A11G"') + "\n[[entrys]]\nname='x'\n")
    assert "did you mean 'entries'" in found and 'entries["medium"].gpu' in found


@pytest.mark.parametrize("text", ["[router]\n", "entries = []\n"])
def test_no_entries_is_advice_not_pydantic(tmp_path: Path, text: str) -> None:
    found = problems(tmp_path, text)
    assert "add at least one [[entries]] table" in found
    assert "Tuple" not in found and "Field required" not in found


def test_bad_json_in_a_fleet_variable_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ENTRIES", "[{")
    found = problems(tmp_path, BASE)
    assert found.startswith("FLEET_ENTRIES: not valid JSON") and "FLEET_ENTRIES='[{" in found


def test_bad_json_in_a_nested_fleet_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ROUTER__ADMIN_TOKENS", "[{label")
    monkeypatch.setenv("FLEET_ROUTER__DEFAULT_ENTRY", "[{")  # a string setting: not JSON, not to blame
    found = problems(tmp_path, BASE)
    assert found.startswith("FLEET_ROUTER__ADMIN_TOKENS: not valid JSON") and "DEFAULT_ENTRY" not in found


def test_a_value_from_dotenv_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLEET_ROUTER__DEFAULT_ENTRY", raising=False)
    (tmp_path / ".env").write_text("FLEET_ROUTER__DEFAULT_ENTRY=huge\n")
    assert "router.default_entry (from FLEET_ROUTER__DEFAULT_ENTRY in .env): unknown entry" in problems(tmp_path, BASE)


def test_entries_from_the_environment_are_named_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ENTRIES", '[{"name": "solo", "model": "m", "gpu": "L5"}]')
    monkeypatch.setenv("FLEET_TEAMS", "[]")
    monkeypatch.setenv("FLEET_ROUTER__DEFAULT_ENTRY", "solo")
    assert "entries[\"solo\"].gpu (from FLEET_ENTRIES): unknown GPU type 'L5'" in problems(tmp_path, BASE)


def test_unknown_fleet_variables_are_warnings_with_the_likely_name(tmp_path: Path) -> None:
    environ = {"FLEET_ROUTER_DEFAULT_ENTRY": "small", "FLEET_CONFIG": "x.toml", "FLEET_ROUTER__QUEUE_TIMEOUT": "3",
               "fleet_tabby_bin": "/x", "FLEET_TEEMS": "[]", "HOME": "/root"}  # fmt: skip
    warnings = env_warnings(environ, dotenv=tmp_path / "absent.env")
    assert len(warnings) == 2, warnings
    assert (
        "FLEET_ROUTER_DEFAULT_ENTRY is not a fleet setting and is ignored; did you mean FLEET_ROUTER__DEFAULT_ENTRY?"
        in warnings
    )
    assert any(w.startswith("FLEET_TEEMS") and "did you mean FLEET_TEAMS?" in w for w in warnings)
    (tmp_path / ".env").write_text("FLEET_MODAL_APP_NAME=x\n")
    assert env_warnings({}, dotenv=tmp_path / ".env") == [
        "FLEET_MODAL_APP_NAME in .env is not a fleet setting and is ignored; did you mean FLEET_MODAL__APP_NAME?"
    ]


def test_an_unknown_fleet_variable_does_not_stop_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ROUTER_DEFAULT_ENTRY", "medium")
    assert load(tmp_path, BASE).router.default_entry == "small"


def _admin_request(authorization: str) -> Request:
    headers = [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "GET", "path": "/metrics", "headers": headers,
                    "client": ("10.0.0.1", 5555), "query_string": b""})  # fmt: skip


def test_a_bad_field_in_the_only_entry_is_one_line(tmp_path: Path) -> None:
    text = '[[entries]]\nname = "solo"\nmodel = "m"\ngpu = "L5"\n'
    lines = problems(tmp_path, text).splitlines()
    assert len(lines) == 1 and lines[0].startswith("entries[\"solo\"].gpu: unknown GPU type 'L5'"), lines


def test_a_bad_router_field_does_not_hide_the_router_cross_references(tmp_path: Path) -> None:
    text = BASE.replace('default_entry = "small"', 'default_entry = "huge"\nqueue_timeout = -1')
    found = problems(tmp_path, text)
    assert "router.queue_timeout: must be greater than or equal to 0 (got -1)" in found
    assert "router.default_entry: unknown entry 'huge'" in found


def test_gpu_takes_one_type_or_an_ordered_fallback_list() -> None:
    entry = FleetSettings(entries=[{"name": "a", "model": "m", "gpu": ["l4", "A10G"]}]).entries[0]
    assert (entry.gpu, entry.gpus, entry.gpu_text) == (("L4", "A10G"), ("L4", "A10G"), "L4, else A10G")
    single = FleetSettings(entries=[{"name": "a", "model": "m", "gpu": ["h100:2"]}]).entries[0]
    assert single.gpu == "H100:2" and single.gpus == ("H100:2",)
    for bad, message in ((["L4", "l4"], "lists a type twice"), ([], "names no GPU"), (["L4", "B9"], "unknown GPU")):
        with pytest.raises(ValidationError, match=message):
            FleetSettings(entries=[{"name": "a", "model": "m", "gpu": bad}])


def test_local_device_and_tabby_completion_timeout_are_checked() -> None:
    entry = FleetSettings(entries=[{"name": "a", "model": "m"}]).entries[0]
    assert (entry.device, entry.completion_timeout) == ("cpu", 30)  # Tabby's own defaults
    with pytest.raises(ValidationError, match="device"):
        FleetSettings(entries=[{"name": "a", "model": "m", "device": "tpu"}])
    with pytest.raises(ValidationError, match="completion_timeout"):
        FleetSettings(entries=[{"name": "a", "model": "m", "completion_timeout": 0}])


FALLBACK = """
[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"

[[entries]]
name = "medium"
model = "TabbyML/StarCoder-3B"
{medium}

[[entries]]
name = "large"
model = "TabbyML/StarCoder-7B"
{large}
"""


def test_fallback_and_cold_wait_load(tmp_path: Path) -> None:
    settings = load(
        tmp_path, FALLBACK.format(medium='fallback = "small"', large='fallback = "medium"\ncold_wait = 0.5')
    )
    assert settings.entry("large").fallback == "medium" and settings.entry("large").cold_wait == 0.5
    assert settings.entry("medium").cold_wait == 2 and settings.entry("small").fallback is None


def test_fallback_unknown_entry(tmp_path: Path) -> None:
    found = problems(tmp_path, FALLBACK.format(medium="", large='fallback = "huge"'))
    assert "entries[\"large\"].fallback: unknown entry 'huge'; choose one of: small, medium, large" in found


def test_fallback_to_itself(tmp_path: Path) -> None:
    found = problems(tmp_path, FALLBACK.format(medium="", large='fallback = "large"'))
    assert 'entries["large"].fallback: an entry cannot fall back to itself' in found


def test_fallback_cycle_is_named(tmp_path: Path) -> None:
    found = problems(tmp_path, FALLBACK.format(medium='fallback = "large"', large='fallback = "medium"'))
    assert "fallbacks form a cycle (large -> medium -> large)" in found
    assert "fallbacks form a cycle (medium -> large -> medium)" in found


def test_fallback_chat_needs_a_fallback_with_a_chat_model(tmp_path: Path) -> None:
    found = problems(
        tmp_path, FALLBACK.format(medium="fallback_chat = true", large='fallback = "small"\nfallback_chat = true')
    )
    assert 'entries["medium"].fallback_chat: set without a fallback' in found
    assert "entries[\"large\"].fallback_chat: the fallback 'small' has no chat_model" in found


@pytest.mark.parametrize("value", ["-1", "61"])
def test_cold_wait_bounds(tmp_path: Path, value: str) -> None:
    found = problems(tmp_path, FALLBACK.format(medium="", large=f'fallback = "small"\ncold_wait = {value}'))
    assert 'entries["large"].cold_wait' in found


def test_prices_default_with_their_source_and_an_admin_overrides_one_type(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[prices]\ndate = "2026-11-01"\nsource = "our invoice"\ngpu_hour = { l4 = 0.5 }\n'
        '[[entries]]\nname = "small"\nmodel = "m"\ngpu = "L4:2"\n'
        '[[entries]]\nname = "big"\nmodel = "m"\ngpu = ["H200", "H100"]\n',
    )
    assert settings.prices.source == "our invoice" and settings.prices.date == "2026-11-01"
    assert settings.prices.entry_hourly(settings.entry("small").gpus) == 1.0  # two L4 at 0.5
    assert settings.prices.entry_hourly(settings.entry("big").gpus) is None  # priced at its first choice: unknown
    assert FleetSettings(entries=[{"name": "a", "model": "m"}]).prices.per_gpu_hour("A100-80GB") == 2.4984
