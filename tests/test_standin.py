"""The stand-in follows Tabby's protocol (reference section 7 checklist), as a real process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .support.fleetproc import COMPLETION, free_port, serve_process, standin_argv


@contextmanager
def running_standin(root: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    with serve_process(standin_argv(port, *extra), port, env={"TABBY_ROOT": str(root), "PATH": ""}) as url:
        yield url


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("standin")
    with running_standin(root, "--chat-model", "TabbyML/Qwen2-1.5B-Instruct", "--completion-delay", "0.01") as url:
        yield url


def test_health_has_what_the_agent_needs(standin: str) -> None:
    for method in ("GET", "POST"):
        body = httpx.request(method, f"{standin}/v1/health").json()
        assert body["model"] == "TabbyML/StarCoder-1B" and body["chat_model"] == "TabbyML/Qwen2-1.5B-Instruct"
        assert body["device"] == "cpu" and body["cuda_devices"] == []
        assert body["version"]["git_describe"].startswith("v0.")
        assert set(body["version"]) == {"build_date", "build_timestamp", "git_sha", "git_describe"}
        assert {"arch", "cpu_info", "cpu_count", "webserver", "models"} <= set(body)
        assert "stand-in" in body["cpu_info"] and "not a model" in body["stand_in"]


def test_completion_shape(standin: str) -> None:
    body = httpx.post(f"{standin}/v1/completions", json=COMPLETION).json()
    assert body["id"].startswith("cmpl-") and body["mode"] == "standard"
    assert body["choices"] == [{"index": 0, "text": "return a + b  # TabbyML/StarCoder-1B"}]
    assert "debug_data" not in body


def test_completion_is_deterministic_and_keeps_mode(standin: str) -> None:
    request = {**COMPLETION, "mode": "next_edit_suggestion", "language": "typescript"}
    first = httpx.post(f"{standin}/v1/completions", json=request).json()
    second = httpx.post(f"{standin}/v1/completions", json=request).json()
    assert first["choices"] == second["choices"] and first["id"] != second["id"]
    assert first["mode"] == "next_edit_suggestion" and "//" in first["choices"][0]["text"]


def test_debug_data_only_when_asked(standin: str) -> None:
    body = httpx.post(f"{standin}/v1/completions", json={**COMPLETION, "debug_options": {}}).json()
    assert body["debug_data"] == {}
    raw = {"debug_options": {"raw_prompt": "<fim_prefix>x", "return_prompt": True}}
    body = httpx.post(f"{standin}/v1/completions", json=raw).json()
    assert body["debug_data"]["prompt"] == "<fim_prefix>x"


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"{}", {}, 415),
        (b"{", {"content-type": "application/json"}, 400),
        (b'{"segments": {}}', {"content-type": "application/json"}, 422),
        (b'{"segments": "x"}', {"content-type": "application/json"}, 422),
        (b'{"temperature": "hot", "segments": {"prefix": ""}}', {"content-type": "application/json"}, 422),
        (b'{"mode": "fast", "segments": {"prefix": ""}}', {"content-type": "application/json"}, 422),
        (b"[]", {"content-type": "application/json"}, 422),
        (b'{"language": "python"}', {"content-type": "application/json"}, 400),
    ],
)
def test_completion_rejections_match_axum(standin: str, content: bytes, headers: dict, status: int) -> None:
    response = httpx.post(f"{standin}/v1/completions", content=content, headers=headers)
    assert response.status_code == status
    if status == 400 and content.startswith(b'{"language"'):
        assert response.content == b""  # Tabby's generation error has an empty body


def test_events(standin: str, tmp_path: Path) -> None:
    ok = httpx.post(
        f"{standin}/v1/events?select_kind=line", json={"type": "select", "completion_id": "c", "choice_index": 0}
    )
    assert (ok.status_code, ok.content) == (200, b"")
    assert (
        httpx.post(f"{standin}/v1/events", json={"type": "view", "completion_id": "c", "choice_index": 0}).status_code
        == 200
    )
    assert httpx.post(f"{standin}/v1/events", json={"type": "explode"}).status_code == 400


def test_server_setting(standin: str) -> None:
    assert httpx.get(f"{standin}/v1beta/server_setting").json() == {"disable_client_side_telemetry": False}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1beta/chat/completions"])
def test_chat_is_sse_without_done(standin: str, path: str) -> None:
    response = httpx.post(f"{standin}{path}", json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in events)
    chunks = [json.loads(block[6:]) for block in events]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "TabbyML/Qwen2-1.5B-Instruct" in "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert "[DONE]" not in response.text


def test_unknown_paths_redirect_to_swagger(standin: str) -> None:
    response = httpx.get(f"{standin}/nothing/here")
    assert response.status_code == 307 and response.headers["location"] == "/swagger-ui"


def test_chat_without_chat_model_is_501_and_timeout_is_408(tmp_path: Path) -> None:
    with running_standin(tmp_path, "--completion-delay", "5", "--completion-timeout", "0.3") as url:
        assert httpx.post(f"{url}/v1/chat/completions", json={"messages": []}).status_code == 501
        response = httpx.post(f"{url}/v1/completions", json=COMPLETION, timeout=10)
        assert (response.status_code, response.content) == (408, b"")


def test_port_opens_only_after_start_delay(tmp_path: Path) -> None:
    started = time.monotonic()
    with running_standin(tmp_path, "--start-delay", "1.0"):
        assert time.monotonic() - started >= 1.0
