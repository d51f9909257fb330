"""The design card's layout: top-level packages fleet/, apps/, router/, and nothing shadowing them."""

from __future__ import annotations

import ast
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
    assert top == ["cli", "hub", "local", "modal", "tabby.py"], top
    assert not list(ROOT.glob("apps/**/*_cmd.py"))


# -- the import graph ----------------------------------------------------------------------------------

PRODUCT = ("fleet", "router", "apps")
MAX_MODULE_LINES = 600
MAX_SETTINGS_LINES = 500


def _product_modules() -> dict[str, Path]:
    """Every module of fleet/, router/ and apps/ by dotted name (a package by its own name)."""
    modules = {}
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(module, name) for every import in the file, wherever it is (in functions, under TYPE_CHECKING):
    ``import a.b`` gives ("a.b", None); ``from a.b import c`` gives ("a.b.c", None) when a.b.c is a
    module, else ("a.b", "c")."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.append((child, None) if child in modules else (node.module, alias.name))
    return found


def _import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """The product modules' imports of each other, and every import of another module's underscore name."""
    modules = _product_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []
    for name, path in modules.items():
        for module, imported in _imports(path, modules):
            if module in modules and module != name:
                graph[name].add(module)
            if imported is not None and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{name} imports {imported} from {module}")
    return graph, private


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (its modules, the first repeated at the end), or [] when there is none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        for target in sorted(graph[node]):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return []

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return []


def test_no_import_cycle_in_the_product() -> None:
    """fleet/, router/ and apps/ import each other without a circle, counting imports under TYPE_CHECKING
    and inside functions."""
    graph, _ = _import_graph()
    assert "fleet.warm" in graph["apps.modal.app"], "the graph misses imports"  # the check checks something
    assert not _cycle(graph), f"import cycle: {' -> '.join(_cycle(graph))}"


def test_no_module_imports_another_modules_underscore_names() -> None:
    _, private = _import_graph()
    for path in (ROOT / "tests").glob("*.py"):  # the tests too: they use what the product offers
        for module, imported in _imports(path, _product_modules()):
            if imported is not None and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"tests/{path.name} imports {imported} from {module}")
    assert not private, "\n".join(private)


def test_modules_stay_small() -> None:
    settings = len((ROOT / "fleet" / "settings.py").read_text().splitlines())
    assert settings < MAX_SETTINGS_LINES, f"fleet/settings.py has {settings} lines: the shapes only"
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _product_modules().values()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
