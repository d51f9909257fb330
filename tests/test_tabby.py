"""How a Tabby process is started and supervised (apps/tabby.py), with real child processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A container stand-in: supervise a "tabby" that prints and exits, then idle as a web_server would.
CONTAINER = textwrap.dedent(
    """
    import os, sys, time
    from apps.tabby import supervise
    tabby = [sys.executable, "-c", "print('loading model'); print('CUDA error: out of memory'); raise SystemExit(3)"]
    supervise(tabby, dict(os.environ), name="entry 'large'")
    time.sleep(60)  # the container would wait here for the port; the watchdog must end it first
    """
)


def test_the_container_ends_when_tabby_exits_with_its_code_and_last_lines() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CONTAINER], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 20  # not the 60 s the "container" would otherwise wait
    assert done.returncode == 1
    assert "loading model" in done.stdout  # Tabby's own output still reaches the container log
    assert "tabby serve for entry 'large' exited with code 3" in done.stderr
    assert "| CUDA error: out of memory" in done.stderr  # the last lines explain why


def test_a_running_tabby_is_left_alone() -> None:
    still_running = "import time; time.sleep(5)"  # outlives the 2 s "container", then ends by itself
    script = CONTAINER.replace("raise SystemExit(3)", still_running).replace("time.sleep(60)", "time.sleep(2)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "exited" not in done.stderr
