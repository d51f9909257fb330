"""The status page (GET /fleet/status) and `fleet status`, against a real fleet; the page in headless Chromium.

Chromium is Debian's `chromium` (`./dev test` installs it when missing). Every Chromium run is bounded
by CHROMIUM_SECONDS and its process group killed afterwards. The screenshot docs/OPERATIONS.md shows
(docs/img/fleet-status.png) is taken by this run, into a temporary folder; with FLEET_UPDATE_SCREENSHOT=1
it replaces the one in docs/ (the suite otherwise leaves the work tree as it found it).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from fleet.errors import FleetError
from fleet.loading import load_settings
from fleet.settings import FleetSettings
from fleet.tokens import hash_token
from router.admin import AdminAuth
from router.charts import line_chart
from router.observe import RequestRecord
from router.status_page import render_status
from router.usage import Usage
from router.usage_report import MAX_POINTS, series, snapshot

from .support.fleetproc import COMPLETION, RunningFleet, free_port, run_fleet

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "img" / "fleet-status.png"
CHROMIUM_SECONDS = 60
ADMIN = "tfa_status-page-admin"

FLEET = """
[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
gpu = "L4"

[[entries]]
name = "large"
model = "TabbyML/StarCoder-7B"
gpu = "A100-80GB"
warm = [{days = "mon-fri", start = "08:00", end = "19:00", timezone = "Europe/Berlin", min_containers = 1}]

[[teams]]
name = "frontend"
entry = "small"
allowed_entries = ["small"]

[[teams]]
name = "ml"
entry = "large"
"""
GUARDED_FLEET = f"""
[router]
admin_tokens = [{{label = "ops", sha256 = "{hash_token(ADMIN)}"}}]
{FLEET}
"""


class Rows(HTMLParser):
    """The status page's table rows: {(table key, first cell): [cell texts]} (rows carry data-<table>)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], list[str]] = {}
        self._row: tuple[str, str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            keyed = [(name[5:], value or "") for name, value in attrs if name.startswith("data-")]
            self._row = keyed[0] if keyed else None
            if self._row:
                self.rows[self._row] = []
        elif tag == "td" and self._row:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row and self._cell is not None:
            self.rows[self._row].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def rows(page: str) -> dict[tuple[str, str], list[str]]:
    parser = Rows()
    parser.feed(page)
    return parser.rows


def use_the_fleet(fleet: RunningFleet) -> None:
    """small started; frontend: 3 completions, 2 views and a select; 2 refusals (an entry not allowed to
    frontend, an unknown team)."""
    fleet.start("small")
    with fleet.client() as client:
        ids = []
        for _ in range(3):
            answer = client.post("/teams/frontend/v1/completions", json=COMPLETION)
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["id"])
        for kind, completion_id in (("view", ids[0]), ("view", ids[1]), ("select", ids[1])):
            event = {"type": kind, "completion_id": completion_id, "choice_index": 0}
            assert client.post("/teams/frontend/v1/events", json=event).status_code == 200
        refused = client.post("/teams/frontend/v1/completions", json=COMPLETION, headers={"X-Tabby-Model": "large"})
        assert refused.status_code >= 400
        assert client.post("/teams/nobody/v1/completions", json=COMPLETION).status_code >= 400


@contextlib.contextmanager
def chromium_profile(tmp_path: Path) -> Iterator[list[str]]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: run `apt-get install -y chromium` (./dev test installs it)")
    profile = tmp_path / "chromium-profile"
    yield [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
    ]  # fmt: skip


def run_chromium(argv: list[str]) -> str:
    """Run Chromium to its end (at most CHROMIUM_SECONDS), then kill whatever of its process group is left."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=CHROMIUM_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"chromium ran over {CHROMIUM_SECONDS}s: {err.decode()[-2000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """A non-interlaced 8-bit RGB/RGBA PNG (what Chromium writes) as (width, channels, rows of raw pixels)."""
    data = path.read_bytes()
    width, height = png_size(path)
    depth, colour, interlace = data[24], data[25], data[28]
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    channels = 4 if colour == 6 else 3
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        if data[at + 4 : at + 8] == b"IDAT":
            chunks.append(data[at + 8 : at + 8 + length])
        at += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    lines: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        lines.append(bytes(line))
        previous = line
    return width, channels, lines


def count_colour(path: Path, rgb: tuple[int, int, int], tolerance: int = 8) -> int:
    """How many pixels of the PNG are ``rgb`` (each channel within ``tolerance``)."""
    width, channels, lines = png_pixels(path)
    return sum(
        1
        for line in lines
        for x in range(0, width * channels, channels)
        if all(abs(line[x + c] - rgb[c]) <= tolerance for c in range(3))
    )


def test_chromium_shows_a_started_entry_and_a_teams_usage(tmp_path: Path) -> None:
    with run_fleet(tmp_path / "fleet", FLEET) as fleet, chromium_profile(tmp_path) as chromium:
        use_the_fleet(fleet)
        url = f"{fleet.base_url}/fleet/status"
        dom = run_chromium([*chromium, "--dump-dom", url])
        shot = tmp_path / "status.png"
        run_chromium([*chromium, f"--screenshot={shot}", "--window-size=1280,900", url])
    shown = rows(dom)
    assert shown[("entries", "small")][1] == "ready", shown
    # model, GPU, in flight, queued; the stand-in's cost is marked simulated
    assert shown[("entries", "small")][2:6] == ["TabbyML/StarCoder-1B", "L4 (stand-in: none used)", "0", "0"]
    assert shown[("entries", "small")][13].endswith("(simulated: stand-in, no GPU)"), shown
    # the six charts are SVG in Chromium's DOM, with a line or a dot drawn for frontend's requests
    charts = re.findall(r'<svg[^>]*id="chart-([a-z0-9_-]+)"[^>]*width="(\d+)" height="(\d+)"', dom)
    assert {key for key, _, _ in charts} == {f"{group}-{metric}" for group in ("teams", "entries")
                                             for metric in ("requests", "p95_ms", "cost")}, charts  # fmt: skip
    assert all(int(w) > 0 and int(h) > 0 for _, w, h in charts)
    teams_requests = dom[dom.index('id="chart-teams-requests"') :].split("</svg>")[0]
    assert "<polyline" in teams_requests or "<circle" in teams_requests, teams_requests
    assert "frontend" in teams_requests
    # ... and drawn: the legend's second colour (#cf222e; no table text uses it for a ready fleet)
    assert count_colour(shot, (0xCF, 0x22, 0x2E)) >= 100, "the charts' legend is not in the screenshot"
    frontend = shown[("teams", "frontend")]
    assert int(frontend[1]) >= 3 and frontend[2] == "3", frontend  # requests (events too), completions
    assert ("teams", "(no team)") in shown or ("teams", "nobody") in shown, shown
    assert "mon-fri" in shown[("entries", "large")][-1], shown  # its warm hours
    assert any(key[0] == "recent-refusals" for key in shown), shown
    assert png_size(shot) == (1280, 900)
    assert shot.stat().st_size > 20_000, "the screenshot is nearly empty"
    if os.environ.get("FLEET_UPDATE_SCREENSHOT") == "1":  # else the picture stays in tmp_path
        shutil.copyfile(shot, SCREENSHOT)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    """A fleet with an admin token, used by the team frontend."""
    with run_fleet(tmp_path_factory.mktemp("guarded"), GUARDED_FLEET) as fleet:
        use_the_fleet(fleet)
        yield fleet


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_status_page_asks_a_browser_for_the_admin_token(guarded: RunningFleet) -> None:
    with guarded.client() as client:
        missing = client.get("/fleet/status")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Basic realm="tabby-fleet"'
        assert "admin token as the password" in missing.text
        wrong = client.get("/fleet/status", headers=basic("anyone", "tfa_wrong"))
        assert wrong.status_code == 401 and "admin-token-invalid" in wrong.text  # the browser asks again
        page = client.get("/fleet/status", headers=basic("anyone", ADMIN))
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert client.get("/fleet/status", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        assert client.get("/fleet/entries", headers=basic("", ADMIN)).status_code == 200  # Basic is an admin login
        other = client.get("/fleet/entries")
        assert other.status_code == 401 and "Basic" not in other.headers["www-authenticate"]  # only the page asks
    shown = rows(page.text)
    assert shown[("entries", "small")][1] == "ready"
    assert shown[("teams", "frontend")][2] == "3"
    assert '<meta http-equiv="refresh" content="15">' in page.text
    for fetches in ("<script", "<link", "@import", "url(", "<img", "http://", "https://"):
        assert fetches not in page.text, fetches  # complete on its own: nothing loaded from anywhere


def test_basic_login_takes_the_password_as_the_admin_token() -> None:
    auth = AdminAuth(
        FleetSettings(entries=[{"name": "a", "model": "m"}], router={"admin_token_sha256": [hash_token(ADMIN)]})
    )

    def refusal(authorization: str) -> tuple[int, str] | None:
        headers = [(b"authorization", authorization.encode())]
        scope = {"type": "http", "method": "GET", "path": "/fleet/status", "headers": headers, "query_string": b""}
        request = Request({**scope, "client": ("10.1.2.3", 5555)})
        try:
            auth.require(request)
        except FleetError as error:
            return error.status, error.code
        return None

    assert refusal(basic("alice", ADMIN)["Authorization"]) is None
    assert refusal(basic("", ADMIN)["Authorization"]) is None  # any user name, even none
    assert refusal(basic(ADMIN, "")["Authorization"]) == (401, "admin-token-missing")  # the token is the password
    assert refusal(basic("alice", "tfa_wrong")["Authorization"]) == (403, "admin-token-invalid")
    assert refusal("Basic not base64!") == (401, "admin-token-missing")
    assert refusal("Basic " + base64.b64encode(ADMIN.encode()).decode()) == (401, "admin-token-missing")  # no colon
    assert refusal(f"Bearer {ADMIN}") is None


def test_the_status_page_escapes_every_value() -> None:
    evil = '<script>alert("x")</script>'
    snapshot: dict[str, Any] = {
        "since": "2026-11-27T00:00:00+00:00", "until": "2026-11-27T10:31:02+00:00",
        "covers_from": "2026-11-27T09:58:00+00:00",
        "prices": {"currency": "USD", "date": "2026-05-07", "source": f"a <b>source</b> {evil}"},
        "entries": {"small": {"state": evil, "containers": 1, "requests": 2, "cost": None}},
        "teams": {evil: {"requests": 2, "completions": 2, "acceptance_rate": 0.5, "cost": 0.25,
                         "latency_ms": {"p50": 10.0, "p95": 20.0}, "refusals": {evil: 1}}},
        "refusals": [{"at": "2026-11-27T10:30:59+00:00", "team": evil, "entry": evil, "status": 429, "code": evil}],
        "tokens": [{"team": evil, "label": f"{evil}-label", "requests": 2, "completions": 2, "acceptance_rate": 0.5,
                    "latency_ms": {"p50": 10.0, "p95": 20.0}, "busy_seconds": 1.5, "cost": 0.125}],
    }  # fmt: skip
    health = {"version": evil, "runtime": "local", "uptime_seconds": 5, "entries": {},
              "store": {"ok": False, "error": f"cannot write {evil}", "path": evil, "pending_records": 3}}  # fmt: skip
    page = render_status(snapshot, health, load_settings(None))
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    shown = rows(page)
    assert shown[("teams", evil)][-1] == "0.2500 USD"  # an escaped name reads back as itself
    assert (
        shown[("developers", evil)][1:3] == [f"{evil}-label", "2"] and shown[("developers", evil)][-1] == "0.1250 USD"
    )
    assert 'class="banner"' in page and f"cannot write {evil}" not in page  # the store's banner, escaped too
    assert shown[("entries", "small")][13] == "unknown"  # no price: cost unknown
    assert "2026-05-07" in page  # the prices' date in the footer


def test_costs_add_up_and_say_what_is_unknown() -> None:
    """The header's cost is the entries'; a cost no team incurred (an idle warm entry) has its own row in the
    teams table, so that column adds up too; an entry without a price is named, never counted as 0."""
    snapshot: dict[str, Any] = {
        "since": "2026-11-27T00:00:00+00:00", "until": "2026-11-27T10:31:02+00:00",
        "prices": {"currency": "EUR", "date": "2026-11-01", "source": "our invoice"},
        "entries": {
            "small": {"cost": 0.5, "unattributed_cost": 0.0, "container_seconds": 600.0, "busy_seconds": 3.0},
            "large": {"cost": 2.0, "unattributed_cost": 2.0, "container_seconds": 3600.0, "busy_seconds": 0.0},
            "exotic": {"cost": None, "unattributed_cost": None, "container_seconds": 60.0},
            "external": {"cost": None, "unattributed_cost": None, "container_seconds": 0.0},
        },
        "teams": {"frontend": {"requests": 4, "completions": 4, "busy_seconds": 3.0, "cost": 0.5},
                  "ml": {"requests": 0, "busy_seconds": 0.0, "cost": None}},
        "refusals": [],
    }  # fmt: skip
    health = {"version": "1", "runtime": "local", "uptime_seconds": 90, "entries": {}}
    page = render_status(snapshot, health, load_settings(None))
    shown = rows(page)
    assert shown[("teams", "frontend")][-1] == "0.5000 EUR"
    assert shown[("teams", "ml")][-1] == "-"  # used nothing: no share, not "unknown"
    assert shown[("teams", "(unused entries)")][-1] == "2.00 EUR"
    assert shown[("entries", "exotic")][13] == "unknown"
    assert "2.50 EUR + unknown (exotic unpriced)" in page  # external ran no container of ours: not named
    assert "2026-11-01 (our invoice)" in page


def fleet_status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "apps.cli", "status", *args],
        capture_output=True, text=True, timeout=60, env=child_env, cwd=ROOT,
    )  # fmt: skip


def test_fleet_status_prints_the_teams_and_entries(guarded: RunningFleet) -> None:
    done = fleet_status("--url", guarded.base_url, env={"FLEET_ADMIN_TOKEN": ADMIN})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    small = next(line.split() for line in lines if line.startswith("small "))
    assert small[1] == "ready", done.stdout
    frontend = next(line.split() for line in lines if line.startswith("frontend "))
    assert frontend[2] == "3", done.stdout  # completions
    large = next(line for line in lines if line.startswith("large "))
    assert "mon-fri" in large, done.stdout  # its warm hours
    assert "Refusals by code" in done.stdout and "GPU time only" in done.stdout
    flag = fleet_status("--url", guarded.base_url, "--admin-token", ADMIN, "--since", "1h")
    assert flag.returncode == 0 and "frontend" in flag.stdout, flag.stderr


def test_fleet_status_says_what_to_do_when_it_cannot_show_the_status(guarded: RunningFleet) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = fleet_status("--url", nowhere)
    assert unreachable.returncode == 1
    assert nowhere in unreachable.stderr and "fleet up" in unreachable.stderr, unreachable.stderr
    no_token = fleet_status("--url", guarded.base_url)
    assert no_token.returncode == 1
    assert "--admin-token" in no_token.stderr and "FLEET_ADMIN_TOKEN" in no_token.stderr, no_token.stderr
    assert "fleet token new --admin" in no_token.stderr, no_token.stderr
    wrong = fleet_status("--url", guarded.base_url, "--admin-token", "tfa_wrong")
    assert wrong.returncode == 1 and "admin-token-invalid" in wrong.stderr, wrong.stderr
    since = fleet_status("--url", guarded.base_url, "--admin-token", ADMIN, "--since", "yesterday-ish")
    assert since.returncode == 1 and "'yesterday-ish'" in since.stderr and "15m" in since.stderr, since.stderr
    assert not (unreachable.stdout or no_token.stdout or wrong.stdout or since.stdout)


# --- the window, the entries' details and the charts (issue 20, finding 7) ------------------------------


def test_the_status_page_takes_a_window_and_refuses_a_bad_one_with_advice(guarded: RunningFleet) -> None:
    """Before: the page was fixed to today and ignored ?since=, even since=bogus was a 200."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with guarded.client() as client:
        bogus = client.get("/fleet/status", params={"since": "bogus"}, headers=admin)
        future = client.get("/fleet/status", params={"since": "2999-01-01T00:00:00Z"}, headers=admin)
        nobody = client.get("/fleet/status", params={"team": "nobody"}, headers=admin)
        hour = client.get("/fleet/status", params={"since": "1h"}, headers=admin)
        week = client.get("/fleet/status", params={"since": "7d", "team": "frontend"}, headers=admin)
        default = client.get("/fleet/status", headers=admin)
    assert bogus.status_code == 400 and bogus.headers["content-type"].startswith("text/html")
    assert "bad-since" in bogus.text and "15m, 1h, 24h, 7d" in bogus.text and "&#x27;bogus&#x27;" in bogus.text
    assert 'href="?since=1h"' in bogus.text and 'href="?since=7d"' in bogus.text  # where to go instead
    assert future.status_code == 400 and "in the future" in future.text
    assert nobody.status_code == 400 and "unknown-team" in nobody.text and "frontend" in nobody.text
    assert hour.status_code == 200 and '<a href="?since=1h" aria-current="page"' in hour.text
    assert 'href="?since=7d"' in hour.text and 'href="?since=today"' in hour.text and 'href="?since=24h"' in hour.text
    assert week.status_code == 200 and '<a href="?since=7d&amp;team=frontend" aria-current="page"' in week.text
    assert 'href="?since=1h&amp;team=frontend"' in week.text  # the team is kept in the other windows' links
    week_teams = {key[1] for key in rows(week.text) if key[0] == "teams"} - {"(unused entries)"}
    assert week_teams == {"frontend"}
    assert '<a href="?since=today" aria-current="page"' in default.text


def test_the_status_page_shows_model_gpu_load_and_a_simulated_cost(guarded: RunningFleet) -> None:
    """Before: no model or GPU per entry, no in-flight/queued counts, and USD costs for the local stand-in,
    which runs no GPU."""
    with guarded.client() as client:
        page = client.get("/fleet/status", headers={"Authorization": f"Bearer {ADMIN}"})
        health = client.get("/fleet/health", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert health["entries"]["small"]["backend"] == "stand-in"
    small = rows(page.text)[("entries", "small")]
    assert small[:6] == ["small", "ready", "TabbyML/StarCoder-1B", "L4 (stand-in: none used)", "0", "0"], small
    assert re.fullmatch(r"[0-9.]+ USD \(simulated: stand-in, no GPU\)", small[13]), small
    assert "(simulated: stand-in, no GPU: small" in page.text  # the header's total says so too
    health_in = {"version": "1", "runtime": "local", "uptime_seconds": 5,
                 "entries": {"small": {"state": "ready", "in_flight": 3, "queued": 2, "backend": "tabby"}}}  # fmt: skip
    shot: dict[str, Any] = {"since": "2026-11-27T00:00:00+00:00", "until": "2026-11-27T10:00:00+00:00",
                            "entries": {"small": {"gpu": "L4", "cost": 0.5}}, "teams": {}, "refusals": []}  # fmt: skip
    settings = FleetSettings(entries=[{"name": "small", "model": "TabbyML/StarCoder-1B", "gpu": "L4"}])
    real = rows(render_status(shot, health_in, settings))[("entries", "small")]
    assert real[2:6] == ["TabbyML/StarCoder-1B", "L4", "3", "2"] and real[13] == "0.5000 USD"  # a real tabby


EVIL = "<script>alert(\"x\")</script> 'quoted' & co"


def test_chart_labels_are_escaped_inside_the_svg() -> None:
    chart = line_chart(
        EVIL, f"title {EVIL}", [(EVIL, [(0.0, 1.0), (60.0, None), (120.0, 3.0)]), ("b", [(0.0, 2.0)])],
        x_text=lambda x: f"{EVIL}{x}", y_text=lambda y: f"{y} {EVIL}",
    )  # fmt: skip
    assert "<script" not in chart and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in chart
    svg = ET.fromstring(chart)  # well-formed: every label stayed text
    texts = [element.text for element in svg.iter() if element.text]
    assert EVIL in texts and f"title {EVIL}" in texts and f"0.0 {EVIL}" in texts
    assert svg.get("width") == "380" and svg.get("aria-label") == f"title {EVIL}"
    assert len(svg.findall("circle")) == 3  # the None splits the first line into two dots; b has one point


T0 = 1_800_000_000.0  # a bucket boundary


def _completion(team: str, entry: str, seconds: float) -> RequestRecord:
    record = RequestRecord("id", "POST", "/v1/completions")
    record.team, record.entry, record.kind, record.status = team, entry, "completion", 200
    record.upstream_seconds = seconds
    return record


def test_the_series_sum_to_the_snapshot_in_at_most_max_points_and_the_page_draws_them() -> None:
    settings = FleetSettings(
        entries=[{"name": "small", "model": "TabbyML/StarCoder-1B", "gpu": "L4"}],
        teams=[{"name": "ml", "entry": "small"}],
    )  # EVIL is no valid team name, but usage counts what a request named (a team header, a removed team)
    clock = [T0]
    usage = Usage(settings, clock=lambda: clock[0])
    usage.sample({"small": {"state": "ready", "containers": 1, "container_seconds": 0.0}})
    for minute in range(0, 180, 7):
        clock[0] = T0 + minute * 60 + 5
        usage.observe(_completion(EVIL if minute % 2 else "ml", "small", 0.2), 0.3)
        usage.sample({"small": {"state": "ready", "containers": 1, "container_seconds": minute * 60 + 5.0}})
    now = datetime.fromtimestamp(clock[0], UTC)
    totals = snapshot(usage, now - timedelta(hours=4))
    drawn = series(usage, now - timedelta(hours=4))
    assert len(drawn["starts"]) <= MAX_POINTS and drawn["slot_seconds"] == 120
    for team in (EVIL, "ml"):
        assert sum(drawn["teams"][team]["requests"]) == totals["teams"][team]["requests"] > 0
    assert sum(drawn["entries"]["small"]["requests"]) == totals["entries"]["small"]["requests"]
    assert (
        abs(sum(drawn["entries"]["small"]["cost"]) - totals["entries"]["small"]["cost"])
        < 1e-4
        < totals["entries"]["small"]["cost"]
    )
    team_costs = sum(sum(drawn["teams"][team]["cost"]) for team in (EVIL, "ml"))
    assert abs(team_costs - totals["entries"]["small"]["cost"]) < 1e-3  # the teams share the entry's cost
    usage.started = clock[0] - 7 * 86400  # a router with a week of history: 2-hour points
    week = series(usage, now - timedelta(days=7))
    assert len(week["starts"]) <= MAX_POINTS and week["slot_seconds"] == 7200
    health = {"version": "1", "runtime": "local", "uptime_seconds": 5, "entries": {}}
    page = render_status(totals, health, settings, drawn)
    svgs = re.findall(r"<svg.*?</svg>", page)
    assert len(svgs) == 6 and all(ET.fromstring(svg) is not None for svg in svgs)
    assert "<script" not in page and all("&lt;script&gt;alert(&quot;x&quot;)" in svg for svg in svgs[:3])
