"""The docs name the tests that prove their claims: every test they name exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUALIFIED = re.compile(r"(test_\w+\.py)::(test_\w+)(\*?)")
TEST_DEF = re.compile(r"^(?:async )?def (test_\w+)", re.MULTILINE)


def test_every_test_the_docs_name_exists() -> None:
    defined = {path.name: set(TEST_DEF.findall(path.read_text())) for path in (ROOT / "tests").glob("test_*.py")}
    missing = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for module, name, wildcard in QUALIFIED.findall(doc.read_text()):
            names = defined.get(module, set())
            found = any(n.startswith(name) for n in names) if wildcard else name in names
            if not found:
                missing.append(f"{doc.name}: {module}::{name}{wildcard}")
    assert not missing, "docs name tests that do not exist:\n" + "\n".join(missing)
