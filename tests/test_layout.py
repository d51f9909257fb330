"""The design card's layout: top-level packages fleet/, apps/, router/, and nothing shadowing them."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fleet", "apps", "router")


def test_each_package_imports_from_this_checkout() -> None:
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, f"{name} is not importable"
        assert Path(spec.origin).resolve().is_relative_to(ROOT / name), f"{name} imports from {spec.origin}"


def test_no_other_installed_distribution_provides_our_package_names() -> None:
    """A distribution in the venv with a top-level `fleet`, `apps` or `router` would shadow ours or
    be shadowed by it, depending on sys.path order: rename ours before that happens."""
    providers = metadata.packages_distributions()
    clashes = {name: providers[name] for name in PACKAGES if set(providers.get(name, [])) - {"tabby-fleet"}}
    assert not clashes, f"installed distributions that also provide these top-level names: {clashes}"


def test_fleet_imports_nothing_from_router_or_apps() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+(router|apps)\b", re.MULTILINE)
    offenders = [path.name for path in (ROOT / "fleet").rglob("*.py") if pattern.search(path.read_text())]
    assert not offenders, f"fleet/ must stay pure; these import router/ or apps/: {offenders}"
    code = (
        "import sys, fleet.settings, fleet.routing, fleet.errors; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('router', 'apps')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_imports_are_absolute() -> None:
    relative = re.compile(r"^\s*from\s+\.", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT)) for name in PACKAGES for path in (ROOT / name).rglob("*.py")
        if relative.search(path.read_text())
    ]  # fmt: skip
    assert not offenders, f"use absolute imports (from fleet.settings import ...) in: {offenders}"


def test_the_local_and_modal_runtimes_never_import_each_other() -> None:
    """apps/local/ and apps/modal/ are two runtimes side by side; what they share lives in apps/tabby.py."""
    for runtime, other in (("local", "modal"), ("modal", "local")):
        pattern = re.compile(rf"^\s*(from|import)\s+apps\.{other}\b", re.MULTILINE)
        offenders = [
            str(path.relative_to(ROOT))
            for path in (ROOT / "apps" / runtime).rglob("*.py")
            if pattern.search(path.read_text())
        ]
        assert not offenders, f"apps/{runtime}/ imports apps/{other}/ in: {offenders}"


def test_apps_is_laid_out_by_runtime() -> None:
    """apps/ holds the CLI, the two runtimes and Tabby's command line; no flat *_cmd.py modules."""
    top = sorted(path.name for path in (ROOT / "apps").iterdir() if not path.name.startswith(("_", ".")))
    assert top == ["cli", "local", "modal", "tabby.py"], top
    assert not list(ROOT.glob("apps/**/*_cmd.py"))
