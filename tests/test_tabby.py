"""How a Tabby process is started and supervised (apps/tabby.py), with real child processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

from apps.tabby import hub_config_toml, hub_env, hub_serve_argv
from fleet.hub import JWT_SECRET_ENV

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


def test_the_hub_runs_the_webserver_without_a_completion_model() -> None:
    argv = hub_serve_argv(binary="/opt/tabby/bin/tabby", port=8080, device="cuda")
    assert argv == ["/opt/tabby/bin/tabby", "serve", "--host", "0.0.0.0", "--port", "8080", "--device", "cuda"]
    assert "--no-webserver" not in argv and "--model" not in argv
    env = hub_env("/root/tabby", "6f1c1e0e-8a39-4b8f-9a49-0d8f7c0b6f53")
    assert env["TABBY_ROOT"] == "/root/tabby" and env[JWT_SECRET_ENV] == "6f1c1e0e-8a39-4b8f-9a49-0d8f7c0b6f53"
    assert env["TABBY_DISABLE_USAGE_COLLECTION"] == "1"


def test_the_hubs_config_points_its_chat_at_the_router_and_escapes_what_it_writes() -> None:
    text = hub_config_toml(chat_url='http://127.0.0.1:8080/models/small/v1"\n[x]', chat_model="Qwen", api_key="k\\ey")
    assert tomllib.loads(text) == {
        "model": {
            "chat": {
                "http": {
                    "kind": "openai/chat",
                    "api_endpoint": 'http://127.0.0.1:8080/models/small/v1"\n[x]',
                    "model_name": "Qwen",
                    "api_key": "k\\ey",
                }
            }
        }
    }
    assert text.count("[") == 2 and "[model.chat.http]" in text  # the URL's "[x]" stays inside its string
