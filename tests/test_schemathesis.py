"""schemathesis against the router's own OpenAPI (its /fleet endpoints and the forwarded Tabby API).

At least 2,000 generated requests, none answered with a 5xx: every backend here has a chat model,
so Tabby's legitimate 501 ("no chat model") cannot occur, and any 5xx would be the router's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .support.fleetproc import run_fleet

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability

CONFIG = """
[router]
default_entry = "small"

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"
aliases = ["sc-1b"]

[[entries]]
name = "large"
model = "TabbyML/StarCoder-7B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"

[[teams]]
name = "frontend"
entry = "small"
allowed_entries = ["small"]

[[teams]]
name = "research"
entry = "large"
"""
MAX_EXAMPLES = 160  # per operation; 19 operations give 2,000+ cases in about a minute here


def test_no_router_5xx_over_2000_generated_requests(tmp_path: Path, figure: Callable[[str, object], None]) -> None:
    with run_fleet(tmp_path / "fleet", CONFIG) as fleet:
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{fleet.base_url}/fleet/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", str(MAX_EXAMPLES), "--seed", "20261126",
             "--phases", "examples,fuzzing", "--report-dir", str(tmp_path / "report")],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        output = result.stdout + result.stderr
        router_log = fleet.log_path.read_text()
    generated = re.search(r"(\d+) generated", output)
    assert generated, output[-3000:]
    assert int(generated.group(1)) >= 2000, output[-3000:]
    figure("requests generated", int(generated.group(1)))
    assert result.returncode == 0, output[-5000:]
    assert "Traceback" not in router_log, router_log
