"""Attacks on usage, cost and the status (issue 11, parts 2 and 3): what a reload, a hostile client or a
router that is not one does to /fleet/usage, the Prometheus series and `fleet status`.

Usage runs with an injected clock (only clocks are faked); `fleet status` talks to real sockets: a raw
HTTP server (tests/support/rude_backend.py) that answers like something that is not a router."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apps.cli.common import CliError
from apps.cli.status import fetch_status
from fleet.settings import FleetSettings
from router.observe import Observer, RequestRecord
from router.usage import Usage
from router.usage_report import parse_since
from router.usage_report import snapshot as usage_snapshot

from .support import fleets
from .support.fleetproc import run_fleet
from .support.rude_backend import Connection, Request, head, ok, rude_backend

T0 = 1_800_000_000.0  # a bucket boundary
H100_HOURLY = 3.9492


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _settings(
    *, teams: tuple[str, ...] = ("alpha", "beta"), large: str | None = "H100:2", fallback: str = "small"
) -> FleetSettings:
    entries: list[dict[str, Any]] = [{"name": "small", "model": "TabbyML/StarCoder-1B", "gpu": "L4"}]
    entries.append({"name": "medium", "model": "TabbyML/StarCoder-3B", "gpu": "L4"})
    if large is not None:
        entries.append({"name": "large", "model": "TabbyML/StarCoder-7B", "gpu": large, "fallback": fallback})
    return FleetSettings.model_validate(
        {"entries": entries, "teams": [{"name": team, "entry": "small"} for team in teams]}
    )


def _record(team: str, entry: str, **facts: Any) -> RequestRecord:
    record = RequestRecord("id", "POST", "/v1/completions")
    record.team, record.entry, record.kind, record.status = team, entry, "completion", 200
    for name, value in facts.items():
        setattr(record, name, value)
    return record


def _series(observer: Observer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every usage sample /metrics exposes (parsed as Prometheus parses it), by name and labels."""
    text = generate_latest(observer.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.startswith(("fleet_requests", "fleet_in_flight", "fleet_queued", "fleet_backend"))
    }


# --- Prometheus: a counter never moves to other labels ------------------------------------------------


def test_a_reload_leaves_every_usage_series_where_it_was_counted() -> None:
    """Before: a reload that removed team beta moved its counts to team "-" (a phantom jump there, and a
    drop, read as a counter reset, if beta came back), and one that changed large's fallback relabelled
    the fallbacks already counted with the new fallback; a changed GPU count rescaled past GPU-seconds."""
    clock = Clock()
    usage = Usage(_settings(), clock=clock)
    observer = Observer(usage)
    status = {"large": {"containers": 1}}
    observer.watch_usage(usage, lambda: status)
    usage.sample(status)
    usage.observe(_record("beta", "small", fallback_from="large", start_seconds=1.0, upstream_seconds=0.2), 1.2)
    usage.observe(_record("beta", "large", upstream_seconds=0.3), 0.3)
    clock.now += 600
    before = _series(observer)
    assert before[("fleet_fallbacks_total", (("entry", "large"), ("fallback", "small"), ("team", "beta")))] == 1
    assert before[("fleet_gpu_seconds_total", (("entry", "large"), ("gpu", "H100")))] == pytest.approx(1200)

    for settings in (_settings(teams=("alpha",), large="H100:4", fallback="medium"), _settings()):
        usage.adopt(settings)  # beta removed, large on 4 GPUs falling back to medium; then as before
        after = _series(observer)
        moved = {key: (value, after.get(key)) for key, value in before.items() if after.get(key) != value}
        assert not moved, (
            f"{len(moved)} series changed without traffic after a reload, e.g. {sorted(moved.items())[:3]}"
        )
        assert not any(dict(labels).get("team") == "-" for _, labels in after)
        assert not any(dict(labels).get("fallback") == "medium" and value for (_, labels), value in after.items())


# --- the window's cost after a reload -----------------------------------------------------------------


def test_a_reload_that_removes_an_entry_keeps_what_its_time_cost() -> None:
    """Before: an entry a reload removed lost its price, so the hour it ran read "unknown" (its GPU-seconds
    0), or vanished from the snapshot when it had served nothing; a changed price rewrote past costs."""
    clock = Clock()
    usage = Usage(_settings(), clock=clock)
    usage.sample({"large": {"containers": 1}, "medium": {"containers": 1}})
    clock.now += 3600
    usage.observe(_record("beta", "large", upstream_seconds=1.0), 1.0)
    usage.sample({"large": {"containers": 0}, "medium": {"containers": 0}})
    usage.adopt(
        FleetSettings.model_validate(
            {
                "entries": [
                    {"name": "small", "model": "TabbyML/StarCoder-1B", "gpu": "L4"},
                    {"name": "medium", "model": "TabbyML/StarCoder-3B", "gpu": "H200"},  # no price now
                ],
                "teams": [{"name": "alpha", "entry": "small"}],
            }
        )
    )
    snapshot = usage_snapshot(usage, parse_since("2h", datetime.fromtimestamp(clock.now, UTC)), {})
    large, medium = snapshot["entries"]["large"], snapshot["entries"]["medium"]
    assert large["cost"] == pytest.approx(2 * H100_HOURLY, rel=1e-6) and large["gpu_seconds"] == pytest.approx(7200)
    assert snapshot["teams"]["beta"]["cost"] == pytest.approx(2 * H100_HOURLY, rel=1e-6)
    assert medium["container_seconds"] == pytest.approx(3600) and medium["cost"] == pytest.approx(0.7992, rel=1e-6)


# --- fleet status against something that is not a router ----------------------------------------------


def _answering(body: bytes, content_type: str = "application/json") -> Any:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request, conn: Connection
    ) -> bool:
        writer.write(ok(body, content_type))
        return True

    return handler


@pytest.mark.parametrize("body", [b"[1, 2, 3]", b'"text"', b'{"entries": [1], "teams": 5}', b"null"])
def test_fleet_status_says_json_of_another_shape_is_not_a_router(body: bytes) -> None:
    """Before: a JSON answer that was not an object of the router's shape ended `fleet status` in a traceback
    (AttributeError: 'list' object has no attribute 'get')."""
    with rude_backend(_answering(body)) as server, pytest.raises(CliError) as refused:
        fetch_status(server.url, None, "today")
    assert "tabby-fleet router" in str(refused.value)


async def _trickle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request, conn: Connection
) -> bool:
    writer.write(head(200, ("content-type", "application/json"), ("content-length", 10_000)))
    for _ in range(200):  # a byte every 0.1 s: never a read timeout, 20 s in all
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.1)
    return False


async def _flood(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request, conn: Connection
) -> bool:
    writer.write(head(200, ("content-type", "application/json"), ("transfer-encoding", "chunked")))
    piece = b"[" + b"1," * 512 * 1024  # 1 MiB
    for _ in range(1024):  # a GiB, unless the client stops reading
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
    return False


def test_fleet_status_gives_up_on_a_slow_answer_within_its_deadline() -> None:
    """Before: httpx's timeout bounds each read, not the answer, so a body trickling a byte at a time held
    `fleet status` for as long as the server liked."""
    with rude_backend(_trickle) as server:
        started = time.monotonic()
        with pytest.raises(CliError) as refused:
            fetch_status(server.url, None, "today", deadline=2.0)
        assert time.monotonic() - started < 8
    assert "took longer than" in str(refused.value)


def test_fleet_status_stops_reading_an_answer_too_large_to_be_a_routers() -> None:
    """Before: the whole body was read into memory (a GiB answer: a GiB of memory, then a JSON error)."""
    with rude_backend(_flood) as server, pytest.raises(CliError) as refused:
        fetch_status(server.url, None, "today")
    assert "larger than" in str(refused.value)


def test_fleet_status_explains_a_url_that_is_not_the_routers_address(tmp_path: Path) -> None:
    """Before: the status page's own URL (`fleet up`'s banner names it) as --url was a 404 about
    '/fleet/status/fleet/usage'; a URL without http:// and an https URL to fleet up's plain HTTP port
    asked whether the router was running; a query string made the requests go to '/'."""
    with run_fleet(tmp_path, '[[entries]]\nname = "small"\nmodel = "TabbyML/StarCoder-1B"\n') as fleet:
        base = fleet.base_url
        address = base.removeprefix("http://")
        for url, advice in (
            (f"{base}/fleet/status", f"--url {base}"),
            (address, f"http://{address}"),
            (f"https://{address}", f"--url http://{address}"),
            (f"{base}?since=today", f"--url {base}"),
        ):
            with pytest.raises(CliError) as refused:
                fetch_status(url, None, "today")
            assert advice in str(refused.value), (url, str(refused.value))
            assert "Is it running" not in str(refused.value)
        assert set(fetch_status(f"{base}/", None, "today")[0]["entries"]) == {"small"}


ADMIN = "tfa_attacks-admin"
GUARDED = fleets.guarded(ADMIN)


def test_a_mistyped_login_on_the_status_page_lets_the_browser_ask_again(tmp_path: Path) -> None:
    """Before: a wrong admin token typed into the browser's login was a 403 without a challenge; a browser
    then keeps sending the login it has (it asks only on a 401), so one typo locked the page until the
    browser was restarted. RFC 9110 11.6.1: a 401 also means "these credentials were refused"."""
    wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:tfa_typo").decode()}
    with run_fleet(tmp_path, GUARDED) as fleet, fleet.client() as client:
        page = client.get("/fleet/status", headers=wrong)
        assert page.status_code == 401 and page.headers["www-authenticate"] == 'Basic realm="tabby-fleet"'
        assert "admin-token-invalid" in page.text and "admin token as the password" in page.text
        api = client.get("/fleet/usage", headers=wrong)  # an API client is told the token is wrong, as before
        assert api.status_code == 403 and api.json()["error"]["code"] == "admin-token-invalid"
        right = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN}".encode()).decode()}
        assert client.get("/fleet/status", headers=right).status_code == 200


def _peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM in /proc")


def test_a_huge_event_body_is_not_parsed_for_its_type(tmp_path: Path) -> None:
    """Before: the router parsed every POST /v1/events body for its type, on the event loop: 60 MiB of empty
    objects (under a max_body_bytes of 64 MiB) took the router from 63 MB to 1.6 GB and held every other
    request 3.7 s; the same body to /v1/completions, forwarded unparsed, stays under 200 MB. Tabby's events
    are a few hundred bytes: a body past EVENT_BODY_MAX is forwarded but not counted as a view/select."""
    config = '[router]\nmax_body_bytes = 67108864\n\n[[entries]]\nname = "small"\nmodel = "TabbyML/StarCoder-1B"\n'
    body = b'{"type": "view", "x": [' + b"{}," * (20 * 1024 * 1024) + b"{}]}"
    with run_fleet(tmp_path, config) as fleet, fleet.client(timeout=60) as client:
        fleet.start("small")
        before = _peak_rss_mb(fleet.process.pid)
        client.post("/v1/events", content=body, headers={"content-type": "application/json"})
        grown = _peak_rss_mb(fleet.process.pid) - before
        usage = client.get("/fleet/usage", params={"since": "1h"}).json()
    assert grown < 700, f"the router grew by {grown} MB for one event"
    assert usage["entries"]["small"]["views"] == 0
