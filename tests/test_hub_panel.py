"""The chat panel as the IDE loads it, in headless Chromium (Debian's, driven by playwright-core:
tests/agent/panel.mjs), through `fleet up` with the stand-in hub.

The host page imitates VS Code's chat webview (clients/vscode/src/chat/html/main.html, Tabby v0.32.0): served
from another origin, it iframes ``<endpoint>/chat?client=vscode`` (endpoint = the team's prefix on the router)
and hands the IDE's token to the page in it with ``postMessage``, never as a header. The page (the stand-in's,
not Tabby's UI) then does what Tabby's panel does at the origin root: GraphQL ``me`` over HTTP, and a
``createThreadAndRun`` over ``/subscriptions``, whose answer the hub's chat gets from the router's entry. What
this cannot show: Tabby's real panel and its tabby-threads handshake (docs/DEPLOY.md, The hub, manual checks).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support import fleets
from .support.fleetproc import free_port, run_fleet, serve_process

PANEL_SCRIPT = Path(__file__).parent / "agent" / "panel.mjs"
PANEL_SECONDS = 30  # Chromium's start, the hub's cold start, one streamed answer

HOST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>imitation of VS Code's chat webview</title></head>
<body>
<iframe id="chat" src="{endpoint}/chat?client=vscode" style="width:800px;height:600px;border:0"></iframe>
<pre id="result"></pre>
<script>
  // VS Code's webview hands the panel its token after load (webview.ts: init({{fetcherOptions}})).
  const frame = document.getElementById("chat");
  const result = document.getElementById("result");
  window.addEventListener("message", (event) => {{
    if (event.source !== frame.contentWindow || !event.data) return;
    if (event.data.type === "ready") {{
      frame.contentWindow.postMessage({{type: "init", fetcherOptions: {{authorization: "{token}"}}}}, "*");
    }} else if (event.data.type === "done" || event.data.type === "error") {{
      result.textContent = JSON.stringify(event.data);
      result.setAttribute("data-done", "");
    }}
  }});
</script>
</body></html>
"""


def run_panel(host_url: str) -> dict[str, object]:
    node = shutil.which("node")
    chromium = shutil.which("chromium")
    if node is None or chromium is None:
        pytest.fail("the panel check needs node and chromium: ./dev test installs them (apt-get install chromium)")
    run = subprocess.run(
        [node, str(PANEL_SCRIPT), host_url, str(PANEL_SECONDS)],
        capture_output=True, text=True, timeout=PANEL_SECONDS + 30, env={"CHROMIUM": chromium, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.stdout.strip(), run.stderr[-3000:]
    answer: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return answer


def test_the_panel_loads_in_an_iframe_and_answers_over_the_routers_socket(tmp_path: Path) -> None:
    with run_fleet(tmp_path / "fleet", fleets.with_hub(), env=fleets.HUB_ENV) as fleet:
        site = tmp_path / "webview"
        site.mkdir()
        endpoint = f"{fleet.base_url}/teams/frontend"
        (site / "index.html").write_text(HOST_PAGE.format(endpoint=endpoint, token=fleets.HUB_TOKENS["frontend"]))
        port = free_port()
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)]
        with serve_process(argv, port) as host:  # another origin than the router's, as a webview is
            answer = run_panel(f"{host}/index.html")
        with fleet.client(headers={"Authorization": f"Bearer {fleets.HUB_ADMIN}"}) as client:
            usage = client.get("/fleet/usage").json()
    assert "result" in answer, answer
    result = answer["result"]
    assert isinstance(result, dict) and result.get("type") == "done", answer
    assert result["me"] == "frontend-user"  # the hub saw the team's hub user, from the IDE's fleet token
    assert "frontend-user" in str(result["answer"])  # the canned part names the user
    assert "TabbyML/Qwen2-1.5B-Instruct" in str(result["answer"])  # the hub's chat went through the router
    assert usage["teams"]["frontend"]["entries"]["@hub"]["requests"] >= 2  # the page's GraphQL and its socket
    assert usage["teams"]["hub"]["chats"] >= 1  # the hub's own chat call, as its router team
