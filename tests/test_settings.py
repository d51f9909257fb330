"""Every settings rule: the good example loads; each bad value fails at load with advice."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fleet.settings import PACKAGED_EXAMPLE, SettingsError, load_settings, resolve_config_path

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


def load(tmp_path: Path, text: str, **overrides: object):
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
    assert "entries[1].gpus: unknown field 'gpus'" in problems(tmp_path, text)


def test_no_entries(tmp_path: Path) -> None:
    assert "entries" in problems(tmp_path, "[router]\n")


def test_missing_model(tmp_path: Path) -> None:
    text = BASE.replace('model = "TabbyML/StarCoder-3B"\n', "")
    assert "entries[1].model: required field is missing" in problems(tmp_path, text)


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
    assert "teams[0] ('frontend').entry: unknown entry 'tiny'" in problems(tmp_path, text)


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
    assert "entries[1].scaledown_window" in found and "2..3600" in found and str(window) in found


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
    assert f"entries[1].{field}: {field} must be at least 1" in problems(tmp_path, text)


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
    assert "is also listed for team 'frontend'" in problems(tmp_path, text)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace('default_entry = "small"', 'default_entry = "huge"').replace(
        'entry = "small"\n', 'entry = "x"\n'
    )
    found = problems(tmp_path, text)
    assert "router.default_entry" in found and "teams[0] ('frontend').entry" in found


def test_field_errors_are_all_reported(tmp_path: Path) -> None:
    text = BASE.replace('gpu = "A10G"', 'gpu = "A11G"\nscaledown_window = 1').replace(
        'aliases = ["starcoder-1b"]', "max_inputs = 0"
    )
    found = problems(tmp_path, text)
    assert "entries[1].gpu" in found and "entries[1].scaledown_window" in found and "entries[0].max_inputs" in found


def test_entries_from_environment_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ENTRIES", '[{"name": "solo", "model": "TabbyML/StarCoder-1B"}]')
    monkeypatch.setenv("FLEET_TEAMS", "[]")
    monkeypatch.setenv("FLEET_ROUTER__DEFAULT_ENTRY", "solo")
    settings = load(tmp_path, BASE)
    assert [e.name for e in settings.entries] == ["solo"]
