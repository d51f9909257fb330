"""`pip install tabby-fleet` with no extras: every `fleet` command works with the runtime dependencies alone.

The venv is made once for the module (`python -m venv`, then `pip install <this checkout>`: not editable,
no extras, pip's cache reused). It is skipped only when pip cannot reach a package index; CI has PyPI.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleetproc import run_fleet
from tests.support.fleets import SMALL_AND_LARGE

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("fleet", "router", "apps")
# pip's words for "no index to download from" (the only failure that skips rather than fails).
NO_NETWORK = re.compile(
    r"NewConnectionError|Temporary failure in name resolution|Network is unreachable|ProxyError|"
    r"No matching distribution found for setuptools",
)
COPY_IGNORE = (".git", ".venv", "node_modules", "build", "*.egg-info", "__pycache__", ".*_cache", ".fleet-data")
COMMANDS = re.compile(r"^  \{([a-z,-]+)\}$", re.MULTILINE)  # the line listing the subcommands in --help


def _env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH to this checkout, no FLEET_* of ours."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.upper().startswith("FLEET_")}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin folder of a venv holding `pip install <checkout>` and nothing else."""
    folder = tmp_path_factory.mktemp("plain-install")
    venv, source = folder / "venv", folder / "source"
    # pip builds in the source folder (build/, *.egg-info): a copy keeps the checkout's work tree clean.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*COPY_IGNORE))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(),
    )
    if pip.returncode != 0:
        if NO_NETWORK.search(pip.stdout + pip.stderr):
            pytest.skip(f"pip cannot reach a package index: {(pip.stdout + pip.stderr)[-500:]}")
        raise AssertionError(f"pip install {ROOT} failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}")
    yield venv / "bin"


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "fleet"), *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=_env()
    )


def test_every_fleet_command_runs_after_a_plain_install(plain: Path, tmp_path: Path) -> None:
    """Before: `fleet status` died with ModuleNotFoundError: httpx (only in the dev extra)."""
    top = run(plain, "--help", cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    commands = COMMANDS.search(top.stdout)
    assert commands, top.stdout
    seen = []
    pending = [[name] for name in commands.group(1).split(",")]
    while pending:  # each command's --help, and its own subcommands' (fleet token new, ...)
        command = pending.pop()
        done = run(plain, *command, "--help", cwd=tmp_path)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (command, done.stderr)
        seen.append(" ".join(command))
        nested = COMMANDS.search(done.stdout)
        if nested:
            pending += [[*command, name] for name in nested.group(1).split(",")]
    assert {"up", "status", "token", "token new"} <= set(seen), seen
    assert run(plain, "check", cwd=tmp_path).returncode == 0
    with run_fleet(tmp_path / "fleet", SMALL_AND_LARGE) as fleet:
        status = run(plain, "status", "--url", fleet.base_url, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in status.stderr and "small" in status.stdout and "large" in status.stdout


def _dev_only_modules() -> set[str]:
    """The top-level modules of the dev extra's packages that are not runtime dependencies too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower().replace("-", "_") for req in requirements}

    dev = names(project["optional-dependencies"]["dev"]) - names(project["dependencies"])
    return {"asgi_proxy" if name == "asgi_proxy_lib" else name for name in dev}


def test_the_product_imports_no_dev_only_package() -> None:
    dev_only = _dev_only_modules()
    assert {"httpx", "pytest", "hypothesis", "trustme", "schemathesis"} <= dev_only
    found = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: {m}" for m in modules if m.split(".")[0] in dev_only
                ]
    assert not found, "the product imports packages only the dev extra installs:\n" + "\n".join(found)
