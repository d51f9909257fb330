"""`./dev`, run as an admin runs it: from their own folder, with their own fleet.toml.

The script is run from a copy of the clone's `dev` and `pyproject.toml` whose `.venv` is a stand-in
(fresh install stamps, `bin/fleet` running this checkout's `fleet`), so no install happens; everything
else is the real script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A fleet only this folder has: `fleet up` refuses it at once, naming the file it read.
MINE = """
not_a_setting = 1

[[entries]]
name = "mine"
model = "TabbyML/StarCoder-1B"
"""


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A copy of the clone's dev script whose venv runs this checkout's fleet (no pip, no network)."""
    repo = tmp_path / "clone"
    (repo / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(ROOT / "dev", repo / "dev")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / ".venv" / "bin" / "python").symlink_to(sys.executable)
    fleet = repo / ".venv" / "bin" / "fleet"
    fleet.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m apps.cli "$@"\n')
    fleet.chmod(0o755)
    (repo / ".venv" / ".installed-runtime").touch()
    return repo


def dev(clone: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLEET_")}
    # Before the fix the packaged example started and ran: the timeout ends that with a failure.
    return subprocess.run([str(clone / "dev"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args", [(), ("--config", "fleet.toml")])
def test_dev_up_from_the_admins_folder_uses_that_folders_fleet_toml(
    clone: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    mine = tmp_path / "admin"
    mine.mkdir()
    (mine / "fleet.toml").write_text(MINE)
    result = dev(clone, "up", *args, cwd=mine)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not_a_setting: unknown top-level key" in result.stderr
    assert "does not exist" not in result.stderr


def test_dev_up_with_a_missing_config_names_the_absolute_path_it_looked_for(clone: Path, tmp_path: Path) -> None:
    result = dev(clone, "up", "--config", "nothere.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert f"'{tmp_path / 'nothere.toml'}' does not exist" in result.stderr


def test_dev_help_lists_its_commands(clone: Path, tmp_path: Path) -> None:
    result = dev(clone, "help", cwd=tmp_path)
    assert result.returncode == 0 and "./dev up" in result.stdout and "./dev test" in result.stdout


def test_dev_test_fails_a_run_that_leaves_the_work_tree_changed(clone: Path, tmp_path: Path) -> None:
    """Before: the status-page test rewrote the tracked docs/img/fleet-status.png on every run, unseen."""
    missing = [tool for tool in ("chromium", "npm", "git") if shutil.which(tool) is None]
    if missing:  # ./dev test installs chromium (as root) and needs npm before its tests run
        pytest.skip(f"./dev test needs {', '.join(missing)} on PATH before it runs the tests")
    bin_dir = clone / ".venv" / "bin"
    for tool in ("ruff", "mypy"):  # lint and types are not what this test is about
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "python").unlink()  # `python -m pytest` stands for a suite that writes into the clone
    (bin_dir / "python").write_text(f'#!/bin/sh\necho changed > "{clone}/tracked.txt"\nexit 0\n')
    (bin_dir / "python").chmod(0o755)
    (clone / ".venv" / ".installed-dev").touch()
    agent = clone / "tests" / "agent"
    (agent / "node_modules").mkdir(parents=True)
    (agent / "package-lock.json").write_text("{}")
    (agent / "node_modules" / ".installed").touch()
    (clone / ".gitignore").write_text(".venv/\nnode_modules/\n")
    (clone / "tracked.txt").write_text("as committed\n")
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "clone"], check=True)
    result = dev(clone, "test", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the tests changed the work tree" in result.stderr and "tracked.txt" in result.stderr
