"""The real IDE agent (npm tabby-agent@1.5.0, LSP over stdio) gets a completion through the router.

The agent reads its server settings only from $HOME/.tabby-client/agent/config.toml, so each test
gives it a fresh HOME (shared/reference/tabby-protocol.md section 8).
"""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .fleetproc import RunningFleet, run_fleet

AGENT_CLI = Path(__file__).parent / "agent" / "node_modules" / "tabby-agent" / "dist" / "cli.js"

CONFIG = """
[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"

[[entries]]
name = "large"
model = "TabbyML/StarCoder-7B"

[[teams]]
name = "frontend"
entry = "small"

[[teams]]
name = "research"
entry = "large"
"""
TOKEN = "tft_agent-test-token"


class LspClient:
    """Just enough LSP client to drive tabby-agent: framing, requests, and answers to its requests."""

    def __init__(self, home: Path) -> None:
        node = shutil.which("node")
        assert node, "node is required (Node 20): install it, then run the README's test command"
        assert AGENT_CLI.is_file(), f"{AGENT_CLI} is missing: run the README's test command (it runs npm ci)"
        self.process = subprocess.Popen(
            [node, str(AGENT_CLI), "--lsp", "--stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"HOME": str(home), "PATH": str(Path(node).parent)},
        )
        self._next_id = 0
        self._responses: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _write(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.process.stdin is not None
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def _read_loop(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if length is None:
                continue
            message = json.loads(stream.read(length))
            if "method" in message and "id" in message:
                self._write({"id": message["id"], "result": None})  # e.g. workspace/configuration
            elif "id" in message:
                with self._lock:
                    box = self._responses.get(message["id"])
                if box is not None:
                    box.put(message)

    def request(self, method: str, params: dict[str, Any], timeout: float = 30.0) -> Any:
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            box: queue.Queue[dict[str, Any]] = queue.Queue()
            self._responses[request_id] = box
        self._write({"id": request_id, "method": method, "params": params})
        message = box.get(timeout=timeout)
        assert "error" not in message, message
        return message.get("result")

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._write({"method": method, "params": params})

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def agent_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".tabby-client" / "agent").mkdir(parents=True)
    return home


@pytest.fixture
def lsp_factory(agent_home: Path) -> Iterator[Any]:
    clients: list[LspClient] = []

    def start(endpoint: str, token: str | None = None) -> LspClient:
        server = f'[server]\nendpoint = "{endpoint}"\n' + (f'token = "{token}"\n' if token else "")
        config = server + '\n[anonymousUsageTracking]\ndisable = true\n\n[logs]\nlevel = "silent"\n'
        (agent_home / ".tabby-client" / "agent" / "config.toml").write_text(config)
        client = LspClient(agent_home)
        clients.append(client)
        client.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
        client.notify("initialized", {})
        return client

    yield start
    for client in clients:
        client.close()


def complete_until_answered(client: LspClient, fleet: RunningFleet, timeout: float = 45.0) -> str:
    """Ask for a completion until the agent (which connects in the background) answers one."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        uri = f"file:///work/project/add_{attempt}.py"  # a new document: no cached empty answer
        text = f"# attempt {attempt}\ndef add(a, b):\n    "
        client.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}},
        )
        result = client.request(
            "textDocument/completion",
            {"textDocument": {"uri": uri}, "position": {"line": 2, "character": 4}},
        )
        items = (result or {}).get("items", []) if isinstance(result, dict) else (result or [])
        for item in items:
            edit = item.get("textEdit") or {}
            text = edit.get("newText") or item.get("insertText") or item.get("label", "")
            if text:
                return str(text)
        time.sleep(0.5)
    raise AssertionError(f"the agent returned no completion in {timeout}s\n{fleet.log_tail()}")


def test_agent_gets_completion_from_team_entry_by_path(tmp_path: Path, lsp_factory: Any) -> None:
    with run_fleet(tmp_path / "fleet", CONFIG) as fleet:
        client = lsp_factory(f"{fleet.base_url}/teams/research")
        text = complete_until_answered(client, fleet)
        assert "TabbyML/StarCoder-7B" in text, text
        # the agent spoke to the team's entry only; the other entry was never started
        assert fleet.health()["entries"]["small"]["state"] == "cold"
        stats = fleet.backend_stats("large")
        assert stats["requests"]["health"] >= 1 and stats["completed"] >= 1


def test_agent_gets_completion_by_team_token(tmp_path: Path, lsp_factory: Any) -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    config = CONFIG.replace('entry = "small"\n', f'entry = "small"\ntoken_sha256 = ["{digest}"]\n', 1)
    assert config.count("token_sha256") == 1  # on team frontend, whose entry is small
    with run_fleet(tmp_path / "fleet", config) as fleet:
        client = lsp_factory(fleet.base_url, token=TOKEN)
        text = complete_until_answered(client, fleet)
        assert "TabbyML/StarCoder-1B" in text, text
        assert fleet.health()["entries"]["large"]["state"] == "cold"
