"""The real IDE agent (npm tabby-agent@1.5.0) through the router: completions, and what it shows when
something is misconfigured (docs/ERRORS.md is the table these tests prove).

The agent runs two ways. Over LSP (``cli.js --lsp --stdio``, what Vim, Helix or Emacs use) it reads its
server settings only from $HOME/.tabby-client/agent/config.toml, so each test gives it a fresh HOME
(shared/reference/tabby-protocol.md section 8), and the only state it shows is a ``window/showMessage``
("Tabby agent status: unauthorized" or "disconnected"). In its JSON-lines mode (``cli.js`` alone, the
protocol the older editor plugins spoke) every method of the agent can be called: its status, the
detail of its "connectionFailed" issue (the text an IDE shows), the health it stored, and
``healthCheck``, which is what the agent runs after a failed completion. The status comes from the
health check alone: 2xx "ready", 401 or 403 "unauthorized", anything else "disconnected".
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from .support import fleets
from .support.fleetproc import COMPLETION, RunningFleet, run_fleet

AGENT_CLI = Path(__file__).parent / "agent" / "node_modules" / "tabby-agent" / "dist" / "cli.js"

CONFIG = fleets.small_and_large(
    then="""
[[teams]]
name = "frontend"
entry = "small"

[[teams]]
name = "research"
entry = "large"
"""
)
TOKEN = "tft_agent-test-token"
OTHER_TOKEN = "tft_agent-other-token"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
        self.shown: queue.Queue[str] = queue.Queue()  # window/showMessage texts: what the editor shows
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
            elif message.get("method") == "window/showMessage":
                self.shown.put(message["params"]["message"])
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


class JsonLinesAgent:
    """tabby-agent in its JSON-lines mode: ``[id, {"func", "args"}]`` in, ``[id, result]`` out (``[0, event]``
    for its events). A call that throws in the agent answers None."""

    def __init__(self, home: Path) -> None:
        node = shutil.which("node")
        assert node, "node is required (Node 20): install it, then run the README's test command"
        assert AGENT_CLI.is_file(), f"{AGENT_CLI} is missing: run the README's test command (it runs npm ci)"
        self.process = subprocess.Popen(
            [node, str(AGENT_CLI)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={"HOME": str(home), "PATH": str(Path(node).parent)},
        )  # fmt: skip
        self._next_id = 0
        self._answers: dict[int, queue.Queue[Any]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read_loop, daemon=True).start()

    def _read_loop(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            request_id, result = json.loads(line)
            with self._lock:
                box = self._answers.get(request_id)
            if box is not None:
                box.put(result)

    def call(self, func: str, *args: Any, timeout: float = 30.0) -> Any:
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            box: queue.Queue[Any] = queue.Queue()
            self._answers[request_id] = box
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps([request_id, {"func": func, "args": list(args)}]) + "\n").encode())
        self.process.stdin.flush()
        return box.get(timeout=timeout)

    def status(self) -> str:
        return str(self.call("getStatus"))

    def recheck(self) -> str:
        """Run the health check the agent runs after a failed completion; the status it leaves."""
        self.call("healthCheck", timeout=60)
        return self.status()

    def connection_problem(self) -> str:
        """What the IDE shows as the detail of "cannot connect" (the agent's connectionFailed issue)."""
        detail = self.call("getIssueDetail", {"name": "connectionFailed"})
        return str(detail["message"]) if detail else ""

    def complete(self, attempt: int) -> Any:
        """One manually triggered completion in a new document (no cached answer); None when it failed."""
        text = f"# attempt {attempt}\ndef add(a, b):\n    "
        request = {"filepath": f"/work/project/add_{attempt}.py", "language": "python", "text": text,
                   "position": len(text), "manually": True}  # fmt: skip
        return self.call("provideCompletions", request)

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


@pytest.fixture
def agent_factory(agent_home: Path) -> Iterator[Any]:
    """Start a JSON-lines agent connected to ``endpoint`` (with ``token``); it has run its first health check."""
    agents: list[JsonLinesAgent] = []
    config = '[anonymousUsageTracking]\ndisable = true\n\n[logs]\nlevel = "silent"\n'
    (agent_home / ".tabby-client" / "agent" / "config.toml").write_text(config)

    def start(endpoint: str, token: str | None = None) -> JsonLinesAgent:
        agent = JsonLinesAgent(agent_home)
        agents.append(agent)
        server: dict[str, Any] = {"endpoint": endpoint} | ({"token": token} if token else {})
        assert agent.call("initialize", {"config": {"server": server, "anonymousUsageTracking": {"disable": True}}})
        return agent

    yield start
    for agent in agents:
        agent.close()


_ATTEMPTS = itertools.count(1)


def complete_until_answered(client: LspClient, fleet: RunningFleet, timeout: float = 45.0) -> str:
    """Ask for a completion until the agent (which connects in the background) answers one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attempt = next(_ATTEMPTS)  # never repeated: the agent caches answers by document and text
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
        # its first health check, large being cold, was the router's own answer (docs/ARCHITECTURE.md)
        assert fleet.backend_stats("large")["completed"] >= 1


def test_agent_gets_completion_by_team_token(tmp_path: Path, lsp_factory: Any) -> None:
    config = CONFIG.replace('entry = "small"\n', f'entry = "small"\ntoken_sha256 = ["{digest(TOKEN)}"]\n', 1)
    config = config.replace('entry = "large"\n', f'entry = "large"\ntoken_sha256 = ["{digest(OTHER_TOKEN)}"]\n')
    assert config.count("token_sha256") == 2  # TOKEN is team frontend's, whose entry is small
    with run_fleet(tmp_path / "fleet", config) as fleet:
        client = lsp_factory(fleet.base_url, token=TOKEN)
        text = complete_until_answered(client, fleet)
        assert "TabbyML/StarCoder-1B" in text, text
        assert fleet.health()["entries"]["large"]["state"] == "cold"


def test_the_agent_completes_and_is_offered_the_chat_panel_with_the_hub_on(
    tmp_path: Path, lsp_factory: Any, agent_factory: Any
) -> None:
    """Issue 19: with [hub] on, the real agent still completes through the router, and a hub team's agent is
    told webserver: true with the hub's chat model (what VS Code needs to offer its chat panel), its
    completion model kept (without `model` the agent would turn completion off)."""
    with run_fleet(tmp_path / "fleet", fleets.with_hub(), env=fleets.HUB_ENV) as fleet:
        client = lsp_factory(fleet.base_url, token=fleets.HUB_TOKENS["frontend"])
        assert "TabbyML/StarCoder-1B" in complete_until_answered(client, fleet)
        agent = agent_factory(fleet.base_url, fleets.HUB_TOKENS["frontend"])
        assert agent.status() == "ready"
        health = agent.call("getServerHealthState")
        assert health["webserver"] is True and health["chat_model"] == "TabbyML/Qwen2-1.5B-Instruct"
        assert health["model"] == "TabbyML/StarCoder-1B"
        other = agent_factory(fleet.base_url, fleets.HUB_TOKENS["backend"])
        assert other.status() == "ready" and not other.call("getServerHealthState").get("webserver")


def test_the_ide_gets_completions_from_the_fallback_while_its_entry_is_cold(tmp_path: Path, lsp_factory: Any) -> None:
    """Issue 11 through the real agent: the team's entry takes 20 s to start; the editor's first
    completion comes from the fallback (within cold_wait), and once the entry is ready, from it."""
    config = CONFIG.replace(
        'model = "TabbyML/StarCoder-7B"\n', 'model = "TabbyML/StarCoder-7B"\nfallback = "small"\ncold_wait = 1\n'
        "standin = { start_delay = 20 }\n",
    )  # fmt: skip
    with run_fleet(tmp_path / "fleet", config) as fleet:
        client = lsp_factory(f"{fleet.base_url}/teams/research")
        started = time.monotonic()
        first = complete_until_answered(client, fleet)
        assert "TabbyML/StarCoder-1B" in first, first  # the fallback answered the editor
        assert time.monotonic() - started < 15, "the editor waited for the cold entry"
        assert fleet.health()["entries"]["large"]["state"] == "starting"
        fleet.wait_for(lambda: fleet.health()["entries"]["large"]["state"] == "ready", 40, "large ready")
        later = complete_until_answered(client, fleet)
        assert "TabbyML/StarCoder-7B" in later, later


# -- what the IDE shows: docs/ERRORS.md ------------------------------------------------------------

TOKENS = {team: f"tft_agent-{team}" for team in ("frontend", "research", "limited", "busy", "fragile")}
ERRORS_CONFIG = f"""
[router]
default_entry = "small"

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"

[[entries]]
name = "chatty"
model = "TabbyML/StarCoder-3B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"

[[entries]]
name = "large"
model = "TabbyML/StarCoder-7B"

[[entries]]
name = "narrow"
model = "TabbyML/CodeLlama-7B"
max_inputs = 1
max_queue = 0
standin = {{ completion_delay = 5 }}

[[entries]]
name = "broken"
model = "TabbyML/DeepseekCoder-1.3B"
startup_timeout = 1
standin = {{ start_delay = 30 }}

[[teams]]
name = "frontend"
entry = "small"
allowed_entries = ["small", "chatty"]
token_sha256 = ["{digest(TOKENS["frontend"])}"]

[[teams]]
name = "research"
entry = "large"
allowed_entries = ["large"]
token_sha256 = ["{digest(TOKENS["research"])}"]

[[teams]]
name = "limited"
entry = "small"
requests_per_minute = 2
token_sha256 = ["{digest(TOKENS["limited"])}"]

[[teams]]
name = "busy"
entry = "narrow"
token_sha256 = ["{digest(TOKENS["busy"])}"]

[[teams]]
name = "fragile"
entry = "broken"
token_sha256 = ["{digest(TOKENS["fragile"])}"]
"""


@pytest.fixture(scope="module")
def errors_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    with run_fleet(tmp_path_factory.mktemp("errors"), ERRORS_CONFIG) as running:
        yield running


def refusals(fleet: RunningFleet, team: str, code: str) -> float:
    """fleet_refusals_total{team, code} from /metrics (the router answers loopback admins)."""
    text = httpx.get(f"{fleet.base_url}/metrics", timeout=10).text
    match = re.search(rf'^fleet_refusals_total{{code="{code}",team="{team}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("token", [None, "tft_not-a-fleet-token"], ids=["no-token", "wrong-token"])
def test_token_problems_show_unauthorized(errors_fleet: RunningFleet, agent_factory: Any, token: str | None) -> None:
    agent = agent_factory(errors_fleet.base_url, token)
    assert agent.status() == "unauthorized"


@pytest.mark.parametrize(
    ("path", "code"),
    [("/models/large", "entry-not-allowed"), ("/models/xl", "unknown-model"), ("/teams/research", "team-mismatch")],
)
def test_a_wrong_entry_or_team_shows_disconnected_not_unauthorized(
    errors_fleet: RunningFleet, agent_factory: Any, path: str, code: str
) -> None:
    """The token is fine: the agent must not ask for another one. It shows "cannot connect", and its
    detail names the URL (endpoint + /v1/health) and "404 Not Found"."""
    before = refusals(errors_fleet, "frontend", code)
    agent = agent_factory(errors_fleet.base_url + path, TOKENS["frontend"])
    assert agent.status() == "disconnected"
    assert f"{path}/v1/health" in agent.connection_problem() and "404 Not Found" in agent.connection_problem()
    assert refusals(errors_fleet, "frontend", code) > before  # logged and counted with the team


def test_health_advertises_the_team_chat_entry(errors_fleet: RunningFleet, agent_factory: Any) -> None:
    """Team frontend completes on small (no chat model) and chats on chatty: the agent, which offers chat
    only when health names a chat model, is told chatty's."""
    agent = agent_factory(errors_fleet.base_url, TOKENS["frontend"])
    assert agent.status() == "ready"
    health = agent.call("getServerHealthState")
    assert (health["model"], health["chat_model"]) == ("TabbyML/StarCoder-1B", "TabbyML/Qwen2-1.5B-Instruct")
    with errors_fleet.client(headers={"Authorization": f"Bearer {TOKENS['frontend']}"}) as client:
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200 and chat.headers["x-fleet-entry"] == "chatty"
    assert "TabbyML/Qwen2-1.5B-Instruct" in chat.text


def test_team_without_chat_sees_none_and_chat_is_refused_by_the_router(
    errors_fleet: RunningFleet, agent_factory: Any
) -> None:
    agent = agent_factory(errors_fleet.base_url, TOKENS["research"])
    assert agent.status() == "ready"
    assert "chat_model" not in agent.call("getServerHealthState")  # so the IDE offers no chat
    with errors_fleet.client(headers={"Authorization": f"Bearer {TOKENS['research']}"}) as client:
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        named = client.post("/models/large/v1/chat/completions", json={"messages": []})
    assert chat.status_code == 501 and chat.json()["error"]["code"] == "no-chat-model"
    assert named.status_code == 501 and named.json()["error"]["code"] == "no-chat-model"
    errors_fleet.wait_for(lambda: errors_fleet.health()["entries"]["large"]["state"] == "ready", 15, "large")
    assert errors_fleet.backend_stats("large")["requests"].get("chat", 0) == 0  # answered by the router


def test_busy_entry_leaves_the_agent_connected(errors_fleet: RunningFleet, agent_factory: Any) -> None:
    """Entry narrow takes one request and queues none. While a completion holds it, the agent's
    completion is refused (503 entry-busy) and the health check it runs next still finds the server."""
    agent = agent_factory(errors_fleet.base_url, TOKENS["busy"])
    assert agent.status() == "ready"
    auth = {"Authorization": f"Bearer {TOKENS['busy']}"}
    holder = threading.Thread(
        target=lambda: httpx.post(f"{errors_fleet.base_url}/v1/completions", json=COMPLETION, headers=auth, timeout=30)
    )
    holder.start()
    try:
        errors_fleet.wait_for(lambda: errors_fleet.health()["entries"]["narrow"]["in_flight"] == 1, 10, "the holder")
        before = refusals(errors_fleet, "busy", "entry-busy")
        assert agent.complete(1) is None
        assert refusals(errors_fleet, "busy", "entry-busy") == before + 1
        assert agent.recheck() == "ready"
    finally:
        holder.join(30)


def test_team_over_its_rate_leaves_the_agent_connected(errors_fleet: RunningFleet, agent_factory: Any) -> None:
    """Team limited may start 2 requests a minute: health checks do not count, so after a 429 the agent
    still finds the server."""
    agent = agent_factory(errors_fleet.base_url, TOKENS["limited"])
    for attempt in range(1, 6):  # 2 completions pass, the 3rd is refused; bounded in case it is not
        agent.complete(attempt)
        if refusals(errors_fleet, "limited", "team-rate-limit"):
            break
    assert refusals(errors_fleet, "limited", "team-rate-limit") >= 1
    for _ in range(3):  # more health checks than the limit allows requests
        assert agent.recheck() == "ready"


def test_failed_entry_shows_disconnected_with_a_502_and_is_started_again(
    errors_fleet: RunningFleet, agent_factory: Any
) -> None:
    """A cold entry's health is the router's own (the agent is connected while it starts); once its
    start has failed, health is a 502 at once, so the IDE shows the failure, and each check starts it
    again in the background (docs/ERRORS.md)."""
    headers = {"Authorization": f"Bearer {TOKENS['fragile']}"}
    completion = httpx.post(f"{errors_fleet.base_url}/v1/completions", json=COMPLETION, headers=headers, timeout=30)
    assert completion.status_code == 502 and completion.json()["error"]["code"] == "backend-failed"
    assert errors_fleet.health()["entries"]["broken"]["state"] == "failed"
    agent = agent_factory(errors_fleet.base_url, TOKENS["fragile"])
    assert agent.status() == "disconnected"
    assert "502 Bad Gateway" in agent.connection_problem()
    # The agent's check started the entry again; that start fails too (startup_timeout = 1).
    errors_fleet.wait_for(lambda: errors_fleet.health()["entries"]["broken"]["state"] == "failed", 10, "the retry")
    started = time.monotonic()
    health = httpx.get(f"{errors_fleet.base_url}/v1/health", headers=headers, timeout=30)
    assert time.monotonic() - started < 1.0  # health never waits, not even for a retry
    assert health.status_code == 502 and health.json()["error"]["code"] == "backend-failed"
    assert errors_fleet.health()["entries"]["broken"]["state"] == "starting"  # and it tries once more


def test_starting_entry_leaves_the_agent_connected(tmp_path: Path, agent_factory: Any) -> None:
    """The router answers the health check of an entry that is not ready itself, at once, in Tabby's
    shape, and starts the entry meanwhile: the agent is connected while the backend starts
    (docs/ARCHITECTURE.md, Cold starts)."""
    config = """
    [router]
    start_timeout = 1

    [[entries]]
    name = "sluggish"
    model = "TabbyML/StarCoder-1B"
    standin = { start_delay = 3 }
    """
    with run_fleet(tmp_path, config) as fleet:
        agent = agent_factory(fleet.base_url)
        assert agent.status() == "ready"
        assert fleet.health()["entries"]["sluggish"]["state"] == "starting"
        fleet.wait_for(lambda: fleet.health()["entries"]["sluggish"]["state"] == "ready", 15, "the start")
        assert agent.recheck() == "ready"


def test_lsp_editor_is_told_unauthorized_only_for_token_problems(errors_fleet: RunningFleet, lsp_factory: Any) -> None:
    """Over LSP the agent's only words to the editor: a warning when its status turns bad."""
    wrong_entry = lsp_factory(f"{errors_fleet.base_url}/models/large", TOKENS["frontend"])
    assert wrong_entry.shown.get(timeout=30) == "Tabby agent status: disconnected"
    wrong_entry.close()
    wrong_token = lsp_factory(errors_fleet.base_url, "tft_not-a-fleet-token")
    assert wrong_token.shown.get(timeout=30) == "Tabby agent status: unauthorized"


HEALTH_OK = {"model": "TabbyML/StarCoder-1B", "device": "cpu", "version": {"git_describe": "v0.32.0"}}


@pytest.fixture
def scripted_server() -> Iterator[tuple[str, dict[str, int]]]:
    """A server (not the router) whose /v1/health answers the status in ``script["health"]``, JSON
    error body included: for learning what the agent makes of each status."""
    script = {"health": 200}

    async def health(request: web.Request) -> web.Response:
        if script["health"] == 200:
            return web.json_response(HEALTH_OK)
        return web.json_response({"error": {"code": "x", "message": "y"}}, status=script["health"])

    async def other(request: web.Request) -> web.Response:
        return web.json_response({"disable_client_side_telemetry": False})

    app = web.Application()
    app.router.add_route("*", "/v1/health", health)
    app.router.add_route("*", "/{tail:.*}", other)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", script
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_agent_status_follows_the_health_answer_alone(agent_factory: Any, scripted_server: Any) -> None:
    """What the router's choices rest on (docs/ERRORS.md): 2xx "ready", 401/403 "unauthorized", anything
    else "disconnected" with the status line (or "Timed out") as the detail the IDE shows."""
    url, script = scripted_server
    agent = agent_factory(url, "tft_any")
    seen = {}
    for status in (200, 400, 401, 403, 404, 408, 409, 429, 499, 501, 502, 503, 504):
        script["health"] = status
        seen[status] = (agent.recheck(), agent.connection_problem().rpartition("\n")[2] if status != 200 else "")
    assert seen[200] == ("ready", "")
    assert seen[401][0] == seen[403][0] == "unauthorized"
    for status in (408, 499):
        assert seen[status][0] == "disconnected" and seen[status][1].endswith("Timed out.")
    for status, reason in ((400, "Bad Request"), (404, "Not Found"), (409, "Conflict"), (429, "Too Many Requests"),
                           (501, "Not Implemented"), (502, "Bad Gateway"), (503, "Service Unavailable"),
                           (504, "Gateway Timeout")):  # fmt: skip
        assert seen[status] == ("disconnected", f"{status} {reason}"), seen
