"""The stand-in hub's one page (``/``, ``/chat``) and its script (``/_next/static/standin.js``).

Our own page, not Tabby's UI (which is not copied: ee/LICENSE). Its handshake is the stand-in's own:
it waits for ``postMessage({type: "init", fetcherOptions: {authorization: "<token>"}})`` from its parent
(VS Code's real panel speaks tabby-threads instead), then calls what Tabby's panel calls, at the origin
root: ``POST /graphql`` (``me``) with ``Authorization: Bearer <token>``, and one ``createThreadAndRun``
over ``ws(s)://<origin>/subscriptions`` (graphql-transport-ws, the token in
``connection_init.payload.authorization``). It writes ``#me``, ``#answer`` and ``#status`` ("done"),
and posts ``{type: "done", me, answer}`` (or ``{type: "error", message}``) to its parent. It posts
``{type: "ready"}`` once loaded, so a parent may wait for it. The question is ``?question=`` or a
default.
"""

from __future__ import annotations

PAGE_HTML = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>tabby-fleet stand-in hub</title></head>
<body>
<h1>tabby-fleet stand-in hub</h1>
<p>{notice}. This page is not Tabby's chat panel.</p>
<p>user: <span id="me"></span></p>
<p>status: <span id="status">waiting for init from the parent window</span></p>
<pre id="answer"></pre>
<script src="/_next/static/standin.js"></script>
</body>
</html>
"""

PAGE_SCRIPT = r"""// tabby-fleet stand-in hub: the page's script (not Tabby's UI).
(function () {
  "use strict";
  var statusEl = document.getElementById("status");
  var meEl = document.getElementById("me");
  var answerEl = document.getElementById("answer");
  var question = new URLSearchParams(location.search).get("question") || "What does the stand-in hub do?";
  var started = false;

  function tell(message) {
    if (window.parent && window.parent !== window) window.parent.postMessage(message, "*");
  }
  function fail(message) {
    statusEl.textContent = "error: " + message;
    tell({ type: "error", message: message });
  }

  function run(bearer, me) {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + "/subscriptions", "graphql-transport-ws");
    var answer = "";
    var query = "subscription CreateThreadAndRun($input: CreateThreadAndRunInput!) {" +
      " createThreadAndRun(input: $input) { __typename } }";
    ws.onopen = function () {
      ws.send(JSON.stringify({ type: "connection_init", payload: { authorization: bearer } }));
    };
    ws.onmessage = function (event) {
      var message = JSON.parse(event.data);
      if (message.type === "connection_ack") {
        statusEl.textContent = "asking";
        ws.send(JSON.stringify({ id: "1", type: "subscribe", payload: {
          query: query, variables: { input: { thread: { userMessage: { content: question } } } } } }));
      } else if (message.type === "next") {
        var item = message.payload.data.createThreadAndRun;
        if (item.delta) { answer += item.delta; answerEl.textContent = answer; }
      } else if (message.type === "complete") {
        statusEl.textContent = "done";
        ws.close(1000);
        tell({ type: "done", me: me, answer: answer });
      } else if (message.type === "error") {
        fail(JSON.stringify(message.payload));
      }
    };
    ws.onclose = function (event) {
      if (statusEl.textContent !== "done" && statusEl.textContent.indexOf("error") !== 0) {
        fail("the socket closed with code " + event.code + " " + event.reason);
      }
    };
  }

  window.addEventListener("message", function (event) {
    var message = event.data;
    if (started || !message || message.type !== "init") return;
    var token = message.fetcherOptions && message.fetcherOptions.authorization;
    if (!token) { fail("init carried no fetcherOptions.authorization"); return; }
    started = true;
    var bearer = token.indexOf("Bearer ") === 0 ? token : "Bearer " + token;
    statusEl.textContent = "asking who I am";
    fetch("/graphql", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": bearer },
      body: JSON.stringify({ query: "query { me { id email name isAdmin } }" })
    }).then(function (response) {
      return response.json();
    }).then(function (body) {
      if (!body.data || !body.data.me) { fail("me: " + JSON.stringify(body.errors)); return; }
      meEl.textContent = body.data.me.name;
      run(bearer, body.data.me.name);
    }).catch(function (error) { fail(String(error)); });
  });
  tell({ type: "ready" });
})();
"""
