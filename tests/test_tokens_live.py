"""Team tokens issued, listed and revoked on a running fleet (router/token_endpoints.py), end to end through
`fleet up`: the token works at once, a revocation holds across restarts and reaches a second router on the
same data_dir within 10 s, expiry, bad input, cross-site requests (headless Chromium), the CLI's --url.

The entries have a `url` (one stand-in the module starts), so no router starts a backend of its own.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.tokens import hash_token

from .support.fleetproc import COMPLETION, RunningFleet, free_port, run_fleet, serve_process, standin_argv
from .test_status_page import chromium_profile, run_chromium

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability

ADMIN, FILE_TOKEN = "tfa_live-admin", "tft_from-the-file"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
REVOCATION_SECONDS = 10.0  # the issue's bound: every router refuses a revoked token within it


def config(standin: str, *, admin: bool = True, data_dir: Path | None = None) -> str:
    top = f"data_dir = {json.dumps(str(data_dir))}" if data_dir is not None else ""
    router = f'admin_tokens = [{{label = "ops", sha256 = "{hash_token(ADMIN)}"}}]' if admin else ""
    return f"""
{top}
[router]
{router}

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
url = "{standin}"

[[teams]]
name = "frontend"
entry = "small"
tokens = [{{label = "file-laptop", sha256 = "{hash_token(FILE_TOKEN)}"}}]

[[teams]]
name = "backend"
entry = "small"
tokens = [{{label = "ci", sha256 = "{hash_token("tft_backend-ci")}"}}]
"""


@pytest.fixture(scope="module")
def standin() -> Iterator[str]:
    port = free_port()
    with serve_process(standin_argv(port), port) as url:
        yield url


@pytest.fixture(scope="module")
def fleet(standin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    with run_fleet(tmp_path_factory.mktemp("tokens-live"), config(standin)) as running:
        yield running


def issue(fleet: RunningFleet, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{fleet.base_url}/fleet/tokens", json=body, headers=headers or ADMIN_AUTH, timeout=10)


def revoke(fleet: RunningFleet, team: str, label: str) -> httpx.Response:
    return httpx.delete(f"{fleet.base_url}/fleet/tokens/{team}/{label}", headers=ADMIN_AUTH, timeout=10)


def listing(fleet: RunningFleet) -> list[dict[str, Any]]:
    answer = httpx.get(f"{fleet.base_url}/fleet/tokens", headers=ADMIN_AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["tokens"]
    return rows


def complete(fleet: RunningFleet, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{fleet.base_url}/v1/completions", json=COMPLETION, headers=headers, timeout=10)


def refused_within(fleet: RunningFleet, token: str, seconds: float) -> httpx.Response:
    """The first refusal of ``token`` within ``seconds`` (polled), else an AssertionError."""
    deadline = time.monotonic() + seconds
    while True:
        answer = complete(fleet, token)
        if answer.status_code == 401:
            return answer
        assert time.monotonic() < deadline, f"still accepted after {seconds} s: {answer.status_code}"
        time.sleep(0.2)


def store_bytes(workdir: Path) -> int:
    return sum(path.stat().st_size for path in (workdir / ".fleet-data" / "state").glob("*.jsonl"))


def test_a_token_issued_on_a_running_fleet_works_at_once_and_is_listed_without_secrets(fleet: RunningFleet) -> None:
    answer = issue(fleet, {"team": "frontend", "label": "alice-laptop", "expires": "90d"})
    assert answer.status_code == 201, answer.text
    issued = answer.json()
    token = issued["token"]
    assert token.startswith("tft_") and issued["team"] == "frontend" and issued["label"] == "alice-laptop"
    assert issued["sha256_prefix"] == hash_token(token)[:8]
    expires = datetime.fromisoformat(issued["expires"]) - datetime.fromisoformat(issued["created"])
    assert abs(expires - timedelta(days=90)) < timedelta(seconds=2)
    used = complete(fleet, token)
    assert used.status_code == 200, used.text
    assert used.headers["x-fleet-entry"] == "small"
    rows = {(row["team"], row["label"]): row for row in listing(fleet)}
    row = rows[("frontend", "alice-laptop")]
    assert row["source"] == "live" and row["revoked"] is None and row["last_used"] is not None
    assert rows[("frontend", "file-laptop")]["source"] == "settings"
    text = httpx.get(f"{fleet.base_url}/fleet/tokens", headers=ADMIN_AUTH, timeout=10).text
    for secret in (token, hash_token(token), FILE_TOKEN, hash_token(FILE_TOKEN)):
        assert secret not in text


def test_a_revoked_token_is_refused_at_once_and_after_a_restart(standin: str, tmp_path: Path) -> None:
    with run_fleet(tmp_path, config(standin)) as fleet:
        token = issue(fleet, {"team": "backend", "label": "bob", "expires": None}).json()["token"]
        assert complete(fleet, token).status_code == 200
        answer = revoke(fleet, "backend", "bob")
        assert answer.status_code == 200, answer.text
        assert answer.json()["revoked"][0]["source"] == "live"
        refused = refused_within(fleet, token, 1.0)
        assert refused.json()["error"]["code"] == "token-revoked"
        assert revoke(fleet, "backend", "bob").json()["error"]["code"] == "unknown-token"
    with run_fleet(tmp_path, config(standin)) as restarted:  # same workdir: same data_dir
        again = complete(restarted, token)
        assert again.status_code == 401 and again.json()["error"]["code"] == "token-revoked"
        row = next(r for r in listing(restarted) if r["label"] == "bob")
        assert row["revoked"] is not None and row["expires"] is None


def test_a_settings_file_token_revoked_stays_revoked_after_a_restart(standin: str, tmp_path: Path) -> None:
    with run_fleet(tmp_path, config(standin)) as fleet:
        assert complete(fleet, FILE_TOKEN).status_code == 200
        answer = revoke(fleet, "frontend", "file-laptop")
        assert answer.status_code == 200 and answer.json()["revoked"][0]["source"] == "settings", answer.text
        assert refused_within(fleet, FILE_TOKEN, 1.0).json()["error"]["code"] == "token-revoked"
        reloaded = httpx.post(f"{fleet.base_url}/fleet/reload", json={}, headers=ADMIN_AUTH, timeout=10)
        assert reloaded.status_code == 200, reloaded.text
        assert complete(fleet, FILE_TOKEN).status_code == 401  # a reload of the same file keeps it revoked
    with run_fleet(tmp_path, config(standin)) as restarted:  # the same fleet.toml, still listing the token
        assert complete(restarted, FILE_TOKEN).json()["error"]["code"] == "token-revoked"
        assert complete(restarted, "tft_backend-ci").status_code == 200


def test_an_expired_token_is_refused_with_token_expired(fleet: RunningFleet) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=3)).isoformat(timespec="seconds")
    answer = issue(fleet, {"team": "frontend", "label": "short-lived", "expires": soon})
    assert answer.status_code == 201, answer.text
    token = answer.json()["token"]
    assert complete(fleet, token).status_code == 200
    refused = refused_within(fleet, token, 8.0)
    error = refused.json()["error"]
    assert error["code"] == "token-expired" and "fleet token new" in error["message"], error


def test_a_token_revoked_on_one_router_is_refused_by_another_within_10_s(standin: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared-data"
    with (
        run_fleet(tmp_path / "a", config(standin, data_dir=shared)) as first,
        run_fleet(tmp_path / "b", config(standin, data_dir=shared)) as second,
    ):
        token = issue(first, {"team": "frontend", "label": "carol"}).json()["token"]
        deadline = time.monotonic() + REVOCATION_SECONDS
        while complete(second, token).status_code != 200:  # issued on one, read back by the other
            assert time.monotonic() < deadline, "the second router never took the new token"
            time.sleep(0.2)
        assert revoke(first, "frontend", "carol").status_code == 200
        assert refused_within(second, token, REVOCATION_SECONDS).json()["error"]["code"] == "token-revoked"
        assert revoke(second, "frontend", "file-laptop").status_code == 200  # and the other way round
        refused_within(first, FILE_TOKEN, REVOCATION_SECONDS)


BAD_INPUT = [
    ("unknown team", {"team": "nobody", "label": "x"}, 404, "unknown-team"),
    ("label in the file", {"team": "frontend", "label": "file-laptop"}, 409, "duplicate-label"),
    ("not a slug", {"team": "frontend", "label": "Alice Laptop"}, 400, "bad-token-request"),
    ("10,000-character label", {"team": "frontend", "label": "a" * 10_000}, 413, "body-too-large"),
    ("1,000-character label", {"team": "frontend", "label": "a" * 1_000}, 400, "bad-token-request"),
    ("no label", {"team": "frontend"}, 400, "bad-token-request"),
    ("unknown field", {"team": "frontend", "label": "x", "admin": True}, 400, "bad-token-request"),
    ("a list", ["frontend", "x"], 400, "bad-token-request"),
    ("expiry in words", {"team": "frontend", "label": "x", "expires": "tomorrow"}, 400, "bad-expiry"),
    ("expiry past", {"team": "frontend", "label": "x", "expires": "2020-01-01"}, 400, "bad-expiry"),
    ("expiry too far", {"team": "frontend", "label": "x", "expires": "99999d"}, 400, "bad-expiry"),
    ("expiry a number", {"team": "frontend", "label": "x", "expires": 90}, 400, "bad-token-request"),
]


@pytest.mark.parametrize(("case", "body", "status", "code"), BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_token_requests_are_refused_with_advice_and_write_nothing(
    fleet: RunningFleet, case: str, body: Any, status: int, code: str
) -> None:
    before, stored = listing(fleet), store_bytes(fleet.workdir)
    answer = issue(fleet, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and len(error["message"]) < 400, error
    assert listing(fleet) == before and store_bytes(fleet.workdir) == stored


def test_a_duplicate_live_label_a_non_admin_and_a_body_that_is_not_json_are_refused(fleet: RunningFleet) -> None:
    assert issue(fleet, {"team": "backend", "label": "twice"}).status_code == 201
    before, stored = listing(fleet), store_bytes(fleet.workdir)
    assert issue(fleet, {"team": "backend", "label": "twice"}).json()["error"]["code"] == "duplicate-label"
    as_team = issue(fleet, {"team": "backend", "label": "mine"}, {"Authorization": f"Bearer {FILE_TOKEN}"})
    assert as_team.status_code == 403 and as_team.json()["error"]["code"] == "admin-token-invalid"
    not_json = httpx.post(
        f"{fleet.base_url}/fleet/tokens", content=b"team=backend&label=x",
        headers={**ADMIN_AUTH, "Content-Type": "application/json"}, timeout=10,
    )  # fmt: skip
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]["message"]
    unknown = revoke(fleet, "backend", "never-issued")
    assert unknown.status_code == 404 and unknown.json()["error"]["choices"] == ["ci", "twice"]
    assert revoke(fleet, "backend", "x" * 10_000).json()["error"]["code"] == "bad-token-request"
    assert listing(fleet) == before and store_bytes(fleet.workdir) == stored


CROSS_SITE = [
    ("Sec-Fetch-Site cross-site", {"Sec-Fetch-Site": "cross-site"}, 403, "cross-site-request"),
    ("Sec-Fetch-Site same-site (another port)", {"Sec-Fetch-Site": "same-site"}, 403, "cross-site-request"),
    ("a foreign Origin", {"Origin": "http://127.0.0.1:1"}, 403, "cross-site-request"),
    ("Origin null", {"Origin": "null"}, 403, "cross-site-request"),
    ("a form's Content-Type", {"Content-Type": "text/plain"}, 415, "json-body-required"),
    ("the status page's Basic login", {"Authorization": "Basic OnRmYV9saXZlLWFkbWlu"}, 401, "admin-bearer-required"),
]


@pytest.mark.parametrize(("case", "headers", "status", "code"), CROSS_SITE, ids=[case[0] for case in CROSS_SITE])
@pytest.mark.parametrize("path", ["/fleet/tokens", "/fleet/reload"])
def test_changes_refuse_cross_site_requests_and_the_browser_login(
    fleet: RunningFleet, path: str, case: str, headers: dict[str, str], status: int, code: str
) -> None:
    before = listing(fleet)
    body = json.dumps({"team": "frontend", "label": "csrf"}).encode()
    sent = {**ADMIN_AUTH, "Content-Type": "application/json", **headers}
    answer = httpx.post(f"{fleet.base_url}{path}", content=body, headers=sent, timeout=10)
    assert answer.status_code == status and answer.json()["error"]["code"] == code, answer.text
    assert listing(fleet) == before
    same = httpx.post(
        f"{fleet.base_url}{path}", content=b"{}",
        headers={**ADMIN_AUTH, "Content-Type": "application/json", "Origin": fleet.base_url,
                 "Sec-Fetch-Site": "same-origin"}, timeout=10,
    )  # fmt: skip
    assert same.status_code in (200, 400), same.text  # its own origin passes (tokens: {} lacks a team)


@contextlib.contextmanager
def serve_page(html: str) -> Iterator[str]:
    """One HTML page on another loopback origin (a thread; bounded by the test's block)."""
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_cross_origin_form_in_chromium_mints_nothing_on_a_local_fleet(standin: str, tmp_path: Path) -> None:
    # No admin token: loopback clients are admins, the browser included. The form posts text/plain whose
    # text is valid JSON (the classic trick), so only the Origin, Sec-Fetch-Site and Content-Type checks stop it.
    with run_fleet(tmp_path / "fleet", config(standin, admin=False)) as fleet, chromium_profile(tmp_path) as chromium:
        page = f"""<!doctype html><html><body>
<form id="f" method="post" enctype="text/plain" action="{fleet.base_url}/fleet/tokens">
<input name='{{"team": "frontend", "label": "csrf", "x": "' value='"}}'>
</form><script>document.getElementById("f").submit()</script></body></html>"""
        with serve_page(page) as url:
            dom = run_chromium([*chromium, "--virtual-time-budget=5000", "--dump-dom", url])
        assert "cross-site-request" in dom, dom[-2000:]  # the form reached the router, which refused it
        rows = httpx.get(f"{fleet.base_url}/fleet/tokens", timeout=10).json()["tokens"]
        assert [row["label"] for row in rows if row["source"] == "live"] == []
        minted = httpx.post(f"{fleet.base_url}/fleet/tokens", json={"team": "frontend", "label": "cli"}, timeout=10)
        assert minted.status_code == 201, minted.text  # the same request, not from a browser, works


def test_a_store_that_cannot_be_written_is_a_503_and_nothing_is_issued(standin: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "state").write_text("a file where the store's directory should be\n")
    with run_fleet(tmp_path / "fleet", config(standin, data_dir=data)) as fleet:
        answer = issue(fleet, {"team": "frontend", "label": "dave"})
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "token-store-unavailable" and "nothing was changed" in error["message"]
        assert "token" not in answer.json()
        assert revoke(fleet, "frontend", "file-laptop").status_code == 503
        assert complete(fleet, FILE_TOKEN).status_code == 200
        assert [row for row in listing(fleet) if row["source"] == "live"] == []


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apps.cli", *args], capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}, **(env or {})},
    )  # fmt: skip


def test_the_cli_issues_lists_and_revokes_tokens_on_a_running_router(fleet: RunningFleet) -> None:
    env = {"FLEET_ADMIN_TOKEN": ADMIN}
    new = cli(
        "token", "new", "--url", fleet.base_url, "--team", "backend", "--label", "erin", "--expires", "30d", env=env
    )
    assert new.returncode == 0, new.stderr
    token = next(word for word in new.stdout.split() if word.startswith("tft_"))
    assert complete(fleet, token).status_code == 200
    listed = cli("token", "list", "--url", fleet.base_url, "--admin-token", ADMIN)
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if " erin " in row)
    assert "live" in line and hash_token(token)[:8] in line and token not in listed.stdout
    gone = cli("token", "revoke", "--url", fleet.base_url, "--team", "backend", "--label", "erin", env=env)
    assert gone.returncode == 0 and "Revoked" in gone.stdout, gone.stderr
    assert refused_within(fleet, token, 1.0).json()["error"]["code"] == "token-revoked"


def test_the_cli_says_what_to_do_when_the_router_refuses_or_is_not_there(fleet: RunningFleet) -> None:
    no_token = cli("token", "list", "--url", fleet.base_url)
    assert no_token.returncode == 1 and "FLEET_ADMIN_TOKEN" in no_token.stderr, no_token.stderr
    wrong = cli("token", "new", "--url", fleet.base_url, "--team", "backend", "--label", "x", "--admin-token", "nope")
    assert wrong.returncode == 1 and "does not take that admin token" in wrong.stderr, wrong.stderr
    duplicate = cli(
        "token",
        "new",
        "--url",
        fleet.base_url,
        "--team",
        "frontend",
        "--label",
        "file-laptop",
        env={"FLEET_ADMIN_TOKEN": ADMIN},
    )
    assert duplicate.returncode == 1 and "duplicate-label" in duplicate.stderr, duplicate.stderr
    nobody = cli("reload", "--url", f"http://127.0.0.1:{free_port()}", "--admin-token", ADMIN)
    assert nobody.returncode == 1 and "Is it running?" in nobody.stderr, nobody.stderr
    no_scheme = cli("token", "list", "--url", "127.0.0.1:8080")
    assert no_scheme.returncode == 1 and "has no scheme" in no_scheme.stderr


def test_fleet_reload_prints_what_changed(standin: str, tmp_path: Path) -> None:
    with run_fleet(tmp_path, config(standin)) as fleet:
        path = tmp_path / "fleet.toml"
        new_hash = hash_token("tft_added")
        path.write_text(
            path.read_text().replace('sha256 = "' + hash_token("tft_backend-ci") + '"}]',
            'sha256 = "' + hash_token("tft_backend-ci") + '"}, {label = "added", sha256 = "' + new_hash + '"}]')
        )  # fmt: skip
        reloaded = cli("reload", "--url", fleet.base_url, "--admin-token", ADMIN)
        assert reloaded.returncode == 0, reloaded.stderr
        assert "team 'backend' tokens: added added" in reloaded.stdout, reloaded.stdout
        assert new_hash not in reloaded.stdout
        assert complete(fleet, "tft_added").status_code == 200
        again = cli("reload", "--url", fleet.base_url, "--admin-token", ADMIN)
        assert "nothing changed" in again.stdout
