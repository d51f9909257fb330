"""Usage and cost (issue 11, part 2): router/usage.py with an injected clock, and end to end through a real
`fleet up` (stand-in backends as processes): GET /fleet/usage and the Prometheus series."""

from __future__ import annotations

import random
import re
import time
import timeit
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.errors import FleetError
from fleet.rules import settings_warnings
from fleet.settings import FleetSettings
from router.observe import Observer, RequestRecord
from router.proxy import event_type
from router.usage import BUCKET_SECONDS, RECENT_REFUSALS, Usage
from router.usage_report import parse_since, percentile
from router.usage_report import snapshot as usage_snapshot

from .support import fleets
from .support.fleetproc import COMPLETION, RunningFleet, run_fleet

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a bucket boundary
SETTINGS = FleetSettings.model_validate(
    {
        "entries": [
            {"name": "small", "model": "TabbyML/StarCoder-1B", "gpu": "L4"},
            {"name": "large", "model": "TabbyML/StarCoder-7B", "gpu": "H100:2", "fallback": "small"},
            {"name": "odd", "model": "TabbyML/StarCoder-3B", "gpu": "H200"},  # no default price
        ],
        "teams": [{"name": "alpha", "entry": "small"}, {"name": "beta", "entry": "large"}],
    }
)
H100X2_HOURLY = 2 * 3.9492
L4_HOURLY = 0.7992


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _usage(clock: Clock) -> Usage:
    return Usage(SETTINGS, clock=clock)


def _record(
    team: str = "alpha", entry: str = "small", kind: str | None = "completion", status: int = 200, **facts: Any
) -> RequestRecord:
    record = RequestRecord("id", "POST", "/v1/completions")
    record.team, record.entry, record.kind, record.status = team, entry, kind, status
    for name, value in facts.items():
        setattr(record, name, value)
    return record


def _since(usage_clock: Clock, text: str) -> datetime:
    return parse_since(text, datetime.fromtimestamp(usage_clock.now, UTC))


# --- since ---------------------------------------------------------------------------------------------


def test_parse_since_reads_iso_unix_durations_and_today() -> None:
    now = datetime(2026, 11, 27, 10, 31, 2, tzinfo=UTC)
    assert parse_since("2026-11-27T08:00:00Z", now) == datetime(2026, 11, 27, 8, tzinfo=UTC)
    assert parse_since("2026-11-27T09:00:00+01:00", now) == datetime(2026, 11, 27, 8, tzinfo=UTC)
    assert parse_since("2026-11-27T08:00:00", now) == datetime(2026, 11, 27, 8, tzinfo=UTC)  # no offset: UTC
    assert parse_since("1795766400", now) == datetime.fromtimestamp(1795766400, UTC)
    assert parse_since("15m", now) == now - timedelta(minutes=15)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("today", now) == datetime(2026, 11, 27, tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "yesterday", "15 minutes", "-1h", "1w", "2026-13-01", "9" * 13, "2099-01-01"])
def test_parse_since_refuses_bad_values_naming_the_accepted_forms(text: str) -> None:
    with pytest.raises(FleetError) as refused:
        parse_since(text, datetime(2026, 11, 27, 10, tzinfo=UTC))
    assert (refused.value.status, refused.value.code) == (400, "bad-since")
    assert repr(text) in refused.value.message and "ISO 8601" in refused.value.message and "7d" in refused.value.message


def test_a_long_bad_since_is_quoted_cut_short() -> None:
    with pytest.raises(FleetError) as refused:
        parse_since("x" * 20_000, datetime(2026, 11, 27, 10, tzinfo=UTC))
    assert len(refused.value.message) < 600 and "(20000 characters)" in refused.value.message


# --- counts, buckets, retention ----------------------------------------------------------------------


def test_counts_land_in_minute_buckets_and_since_sums_from_its_minute() -> None:
    clock = Clock()
    usage = _usage(clock)
    usage.observe(_record(upstream_seconds=0.5), 0.6)
    clock.now += 2 * BUCKET_SECONDS
    usage.observe(_record(upstream_seconds=0.25), 0.3)
    usage.observe(_record(kind="chat"), 1.0)
    usage.observe(_record(kind="health"), 0.01)  # no model work: not a request
    usage.observe(_record(status=499), 0.2)  # the client left: a request, not a completion

    usage.observe(_record(team="-", kind="health"), 0.01)  # an open fleet's health check: no team, no work

    recent = usage_snapshot(usage, _since(clock, "1m"))
    assert "-" not in recent["teams"]  # nothing to report for it
    small = recent["entries"]["small"]
    assert (small["requests"], small["completions"], small["chats"], small["busy_seconds"]) == (3, 1, 1, 0.25)
    everything = usage_snapshot(usage, _since(clock, "1h"))
    small = everything["entries"]["small"]
    assert (small["requests"], small["completions"], small["busy_seconds"]) == (4, 2, 0.75)
    assert everything["teams"]["alpha"]["requests"] == 4 and everything["teams"]["beta"]["requests"] == 0
    assert everything["covers_from"] == "2027-01-15T08:00:00+00:00"  # the router started then, after since
    assert everything["until"] == "2027-01-15T08:02:00+00:00" and everything["bucket_seconds"] == BUCKET_SECONDS


def test_old_buckets_are_dropped_after_retention_but_prometheus_totals_keep_counting() -> None:
    clock = Clock()
    usage = _usage(clock)
    retention = SETTINGS.store.retention_days * 86400  # [store] retention_days, 90 by default
    usage.observe(_record(), 0.1)
    clock.now += retention + 2 * BUCKET_SECONDS
    usage.observe(_record(), 0.1)
    snapshot = usage_snapshot(usage, datetime.fromtimestamp(T0 - 3600, UTC))
    assert snapshot["entries"]["small"]["completions"] == 1  # the first one is gone
    assert snapshot["since"] == "2027-01-15T07:00:00+00:00"  # what was asked
    covers = datetime.fromisoformat(snapshot["covers_from"]).timestamp()
    # Older than two days, buckets are hours: the window starts at the hour retention reaches into.
    assert clock.now - retention - 3600 <= covers <= clock.now - retention
    cells, _ = usage.lifetime()
    assert cells["alpha", "small"].completions == 2  # counters never go down


def test_percentiles_from_the_histogram_are_within_5_percent() -> None:
    clock = Clock()
    usage = _usage(clock)
    rng = random.Random(11)
    latencies = sorted(rng.lognormvariate(-2.0, 0.8) for _ in range(2000))  # around 135 ms, long tail
    for seconds in latencies:
        usage.observe(_record(), seconds)
    row = usage_snapshot(usage, _since(clock, "1h"))["entries"]["small"]["latency_ms"]
    for quantile, name in ((0.5, "p50"), (0.95, "p95")):
        exact = latencies[int(quantile * len(latencies)) - 1] * 1000
        assert abs(row[name] - exact) / exact < 0.05, (name, row[name], exact)
    assert percentile({}, 0.5) is None


def test_acceptance_rate_is_selects_over_views_as_tabbys_reports() -> None:
    clock = Clock()
    usage = _usage(clock)
    for event in ["view"] * 8 + ["select"] * 2 + ["dismiss"] * 3:
        usage.observe(_record(kind="events", event=event), 0.01)
    usage.observe(_record(kind="events", event="view", status=400), 0.01)  # refused by Tabby: not counted
    usage.observe(_record(team="beta", entry="large", kind="events", event=None), 0.01)  # not an event type
    snapshot = usage_snapshot(usage, _since(clock, "1h"))
    alpha = snapshot["teams"]["alpha"]
    assert (alpha["views"], alpha["selects"], alpha["dismisses"], alpha["acceptance_rate"]) == (8, 2, 3, 0.25)
    assert snapshot["entries"]["small"]["acceptance_rate"] == 0.25
    assert snapshot["teams"]["beta"]["acceptance_rate"] is None and snapshot["teams"]["beta"]["requests"] == 1


def test_event_type_is_read_from_a_json_body_with_a_string_type() -> None:
    assert event_type(b'{"type": "select", "completion_id": "c", "choice_index": 0}') == "select"
    for body in (b"", b"not json", b'["view"]', b'{"type": 1}', b'{"type": "other"}', b"[" * 100_000):
        assert event_type(body) is None


def test_fallbacks_and_cold_waits_count_for_the_entry_asked_for() -> None:
    clock = Clock()
    usage = _usage(clock)
    usage.observe(_record(team="beta", entry="small", start_seconds=1.0, fallback_from="large"), 1.2)
    usage.observe(_record(team="beta", entry="large", start_seconds=4.0), 4.2)  # waited for its own start
    snapshot = usage_snapshot(usage, _since(clock, "1h"))
    large, small = snapshot["entries"]["large"], snapshot["entries"]["small"]
    assert (large["fallbacks"], large["cold_waits"], large["completions"]) == (1, 2, 1)
    assert (small["fallbacks"], small["cold_waits"], small["completions"]) == (0, 0, 1)
    assert (snapshot["teams"]["beta"]["fallbacks"], snapshot["teams"]["beta"]["cold_waits"]) == (1, 2)


def test_refusals_by_code_and_the_last_20_newest_first() -> None:
    clock = Clock()
    usage = _usage(clock)
    for n in range(RECENT_REFUSALS + 5):
        clock.now += 1
        code = "team-rate-limit" if n % 2 else "backend-starting"
        usage.observe(_record(status=429 if n % 2 else 503, code=code), 0.001)
    snapshot = usage_snapshot(usage, _since(clock, "1h"))
    assert snapshot["teams"]["alpha"]["refusals"] == {"backend-starting": 13, "team-rate-limit": 12}
    assert snapshot["entries"]["small"]["refusals"] == {"backend-starting": 13, "team-rate-limit": 12}
    recent = snapshot["refusals"]
    assert len(recent) == RECENT_REFUSALS and recent[0]["at"] > recent[-1]["at"]
    assert recent[0] == {"at": "2027-01-15T08:00:25+00:00", "team": "alpha", "label": "-", "entry": "small",
                         "status": 503, "code": "backend-starting"}  # fmt: skip


# --- containers and cost -------------------------------------------------------------------------------


def test_cost_is_container_seconds_times_the_hourly_price_and_teams_share_it_by_busy_time() -> None:
    clock = Clock()
    usage = _usage(clock)
    usage.sample({"large": {"state": "ready", "container_seconds": 0.0, "starts": 1}})
    usage.observe(_record(team="alpha", entry="large", upstream_seconds=3.0), 3.1)
    usage.observe(_record(team="beta", entry="large", upstream_seconds=1.0), 1.1)
    clock.now += 1800
    snapshot = usage_snapshot(usage, _since(clock, "1h"), {"large": {"state": "ready", "container_seconds": 1800.0}})
    large = snapshot["entries"]["large"]
    assert (large["container_seconds"], large["gpu_seconds"], large["cold_starts"]) == (1800.0, 3600.0, 1)
    assert large["price_per_hour"] == pytest.approx(H100X2_HOURLY) and large["gpu"] == "H100:2"
    assert large["cost"] == pytest.approx(H100X2_HOURLY / 2) and large["unattributed_cost"] == 0.0
    assert snapshot["teams"]["alpha"]["cost"] == pytest.approx(H100X2_HOURLY / 2 * 0.75)
    assert snapshot["teams"]["beta"]["entries"]["large"]["cost"] == pytest.approx(H100X2_HOURLY / 2 * 0.25)
    assert snapshot["prices"]["currency"] == "USD" and snapshot["prices"]["date"]


def test_an_entry_that_served_nothing_has_unattributed_cost_and_an_unknown_price_is_null() -> None:
    clock = Clock()
    usage = _usage(clock)
    usage.sample({"small": {"state": "ready", "container_seconds": 0.0}, "odd": {"state": "ready", "containers": 1}})
    clock.now += 360
    now = {"small": {"state": "ready", "container_seconds": 360.0}, "odd": {"state": "ready", "containers": 1}}
    snapshot = usage_snapshot(usage, _since(clock, "1h"), now)
    small, odd = snapshot["entries"]["small"], snapshot["entries"]["odd"]
    assert small["unattributed_cost"] == small["cost"] == pytest.approx(360 / 3600 * L4_HOURLY)
    assert snapshot["teams"]["alpha"]["cost"] is None  # it used nothing priced
    assert (odd["price_per_hour"], odd["cost"], odd["unattributed_cost"]) == (None, None, None)
    assert odd["container_seconds"] == 360.0  # counted all the same (the Modal way: a count over time)


def test_a_container_count_is_integrated_over_time_and_rising_from_zero_is_a_cold_start() -> None:
    clock = Clock()
    usage = _usage(clock)
    for containers in (0, 2, 2, 0, 1):  # 10 s apart
        usage.sample({"large": {"state": "ready", "containers": containers}})
        clock.now += 10
    large = usage_snapshot(usage, _since(clock, "1h"), {"large": {"state": "ready", "containers": 1}})["entries"][
        "large"
    ]
    assert large["container_seconds"] == 2 * 10 + 2 * 10 + 0 + 1 * 10  # the partial interval counted too
    assert (large["cold_starts"], large["containers"]) == (2, 1)
    restarted = Usage(SETTINGS, clock=clock)  # a new router process finds containers up: no start of its own
    restarted.sample({"large": {"state": "ready", "containers": 1}})
    clock.now += 10
    large = usage_snapshot(restarted, _since(clock, "1h"), {"large": {"state": "ready", "containers": 1}})["entries"][
        "large"
    ]
    assert (large["cold_starts"], large["container_seconds"]) == (0, 10.0)


def test_a_local_backends_cumulative_seconds_add_their_delta_and_a_new_process_counts_anew() -> None:
    clock = Clock()
    usage = _usage(clock)
    for seconds, starts in ((5.0, 1), (15.0, 1), (3.0, 2)):  # the last: a reload replaced the backend
        usage.sample({"small": {"state": "ready", "container_seconds": seconds, "starts": starts}})
    small = usage_snapshot(usage, _since(clock, "1h"))["entries"]["small"]
    assert (small["container_seconds"], small["cold_starts"]) == (18.0, 2)


def test_a_reload_brings_its_teams_entries_and_prices_and_keeps_what_was_counted() -> None:
    clock = Clock()
    usage = _usage(clock)
    usage.observe(_record(team="beta", entry="large"), 0.1)
    reloaded = SETTINGS.model_copy(
        update={
            "teams": (*SETTINGS.teams, SETTINGS.teams[0].model_copy(update={"name": "delta"})),
            "prices": SETTINGS.prices.model_copy(update={"gpu_hour": {"H200": 4.5}}),
        }
    )
    usage.adopt(reloaded)
    snapshot = usage_snapshot(usage, _since(clock, "1h"))
    assert set(snapshot["teams"]) == {"alpha", "beta", "delta"} and snapshot["teams"]["beta"]["completions"] == 1
    assert snapshot["entries"]["odd"]["price_per_hour"] == 4.5


def test_fleet_check_warns_about_an_entry_whose_gpu_has_no_price() -> None:
    warnings = settings_warnings(SETTINGS)
    assert 'entries["odd"]: no price for GPU H200; add it under [prices] gpu_hour to see its cost' in warnings
    priced = SETTINGS.model_copy(update={"prices": SETTINGS.prices.model_copy(update={"gpu_hour": {"H200": 4.5}})})
    assert not [w for w in settings_warnings(priced) if "no price" in w]


def test_observe_costs_a_few_microseconds_on_the_hot_path() -> None:
    """The hot path's price (printed; docs/PERFORMANCE.md): Observer.finish with and without usage."""
    usage = Usage(SETTINGS)
    record = _record(upstream_seconds=0.1)
    number = 20_000
    alone = min(timeit.repeat(lambda: usage.observe(record, 0.1), number=number, repeat=5)) / number
    without, with_usage = Observer(), Observer(usage)
    finish_without = min(timeit.repeat(lambda: without.finish(record), number=number, repeat=5)) / number
    finish_with = min(timeit.repeat(lambda: with_usage.finish(record), number=number, repeat=5)) / number
    print(f"\nUsage.observe {alone * 1e6:.2f} us; Observer.finish {finish_without * 1e6:.2f} us without usage, "
          f"{finish_with * 1e6:.2f} us with")  # fmt: skip
    assert alone < 50e-6  # generous: a slow CI machine; a real regression is 10x


# --- end to end ------------------------------------------------------------------------------------------

FLEET = """
[router]
start_timeout = 60

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
gpu = "L4"
standin = { completion_delay = 0.2 }

[[entries]]
name = "large"
model = "TabbyML/StarCoder-7B"
gpu = "H100:2"
fallback = "small"
cold_wait = 1
standin = { start_delay = 5, completion_delay = 0.3 }

[[teams]]
name = "alpha"
entry = "small"

[[teams]]
name = "beta"
entry = "large"

[[teams]]
name = "gamma"
entry = "small"
requests_per_minute = 1
"""


def _team(name: str) -> dict[str, str]:
    return {"X-Tabby-Team": name}


def _event(client: httpx.Client, team: str, kind: str) -> None:
    body = {"type": kind, "completion_id": "cmpl-1", "choice_index": 0}
    response = client.post("/v1/events?select_kind=line", json=body, headers=_team(team))
    assert response.status_code == 200, response.text


def _usage_now(fleet: RunningFleet) -> dict[str, Any]:
    response = httpx.get(f"{fleet.base_url}/fleet/usage", params={"since": "1h"}, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in /metrics")


def test_usage_end_to_end_counts_teams_entries_events_refusals_fallbacks_and_cost(tmp_path: Path) -> None:
    with run_fleet(tmp_path, FLEET) as fleet, fleet.client() as client:
        fleet.start("small")
        # beta asks for large, which is cold: after cold_wait (1 s) small serves it
        fallback = client.post("/v1/completions", json=COMPLETION, headers=_team("beta"))
        assert fallback.status_code == 200 and fallback.headers["x-fleet-fallback"] == "large"
        for _ in range(3):
            assert client.post("/v1/completions", json=COMPLETION, headers=_team("alpha")).status_code == 200
        for kind in ["view"] * 4 + ["select"] + ["dismiss"] * 2:
            _event(client, "alpha", kind)
        assert client.post("/v1/completions", json=COMPLETION, headers=_team("gamma")).status_code == 200
        refused = client.post("/v1/completions", json=COMPLETION, headers=_team("gamma"))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "team-rate-limit"
        fleet.wait_for(lambda: fleet.health()["entries"]["large"]["state"] == "ready", 30, "large ready")
        served = client.post("/v1/completions", json=COMPLETION, headers=_team("beta"))
        assert served.headers["x-fleet-entry"] == "large" and "x-fleet-fallback" not in served.headers
        for kind in ("view", "view", "select"):
            _event(client, "beta", kind)

        assert httpx.get(f"{fleet.base_url}/fleet/usage", params={"since": "soon"}).json()["error"]["code"] == (
            "bad-since"
        )
        first = _usage_now(fleet)
        small, large = first["entries"]["small"], first["entries"]["large"]
        alpha, beta, gamma = first["teams"]["alpha"], first["teams"]["beta"], first["teams"]["gamma"]
        assert (alpha["completions"], alpha["views"], alpha["selects"], alpha["dismisses"]) == (3, 4, 1, 2)
        assert alpha["acceptance_rate"] == 0.25 and beta["acceptance_rate"] == 0.5
        assert (beta["completions"], beta["fallbacks"], beta["cold_waits"]) == (2, 1, 1)
        assert beta["entries"]["small"]["completions"] == 1 and beta["entries"]["large"]["completions"] == 1
        assert (large["fallbacks"], large["cold_waits"], large["completions"], large["cold_starts"]) == (1, 1, 1, 1)
        assert (gamma["completions"], gamma["refusals"]) == (1, {"team-rate-limit": 1})
        assert small["completions"] == 3 + 1 + 1 and small["refusals"] == {"team-rate-limit": 1}
        assert first["refusals"][0]["team"] == "gamma" and first["refusals"][0]["status"] == 429
        assert 0.2 * 5 <= small["busy_seconds"] < 5 * 5 and small["latency_ms"]["p50"] >= 200 * 0.95
        assert large["latency_ms"]["p95"] >= 300 * 0.95
        for row, price in ((small, L4_HOURLY), (large, H100X2_HOURLY)):
            assert row["container_seconds"] > 0 and row["price_per_hour"] == pytest.approx(price)
            assert row["cost"] == pytest.approx(row["container_seconds"] / 3600 * price, rel=1e-3, abs=1e-6)
        assert large["gpu_seconds"] == pytest.approx(2 * large["container_seconds"], rel=1e-3)
        assert (
            alpha["cost"]
            and beta["cost"]
            and alpha["cost"] + beta["cost"] + gamma["cost"] <= (small["cost"] + large["cost"] + 1e-6)
        )

        time.sleep(2.5)
        later = _usage_now(fleet)
        for name in ("small", "large"):  # both still running: their container time grows with time
            assert later["entries"][name]["container_seconds"] >= first["entries"][name]["container_seconds"] + 2

        metrics = httpx.get(f"{fleet.base_url}/metrics", timeout=10).text
        assert _metric(metrics, "fleet_completions_total", team="alpha", entry="small") == 3
        assert _metric(metrics, "fleet_completion_events_total", team="alpha", entry="small", type="view") == 4
        assert _metric(metrics, "fleet_completion_events_total", team="beta", entry="large", type="select") == 1
        assert _metric(metrics, "fleet_fallbacks_total", team="beta", entry="large", fallback="small") == 1
        assert _metric(metrics, "fleet_cold_waits_total", team="beta", entry="large") == 1
        assert _metric(metrics, "fleet_request_seconds_count", team="alpha", entry="small") == 3
        assert _metric(metrics, "fleet_request_seconds_bucket", team="alpha", entry="small", le="0.1") == 0
        assert _metric(metrics, "fleet_busy_seconds_total", team="alpha", entry="small") >= 0.6
        assert _metric(metrics, "fleet_gpu_price_per_hour", gpu="H100") == pytest.approx(3.9492)
        seconds = _metric(metrics, "fleet_container_seconds_total", entry="large")
        assert seconds >= later["entries"]["large"]["container_seconds"] - 0.01
        assert _metric(metrics, "fleet_gpu_seconds_total", entry="large", gpu="H100") == pytest.approx(2 * seconds)
        assert _metric(metrics, "fleet_cost_total", entry="large") == pytest.approx(
            seconds / 3600 * H100X2_HOURLY, rel=0.05
        )
        assert re.search(r'fleet_request_seconds_bucket\{entry="small",le="\+Inf",team="alpha"\} 3\.0', metrics)


ADMIN = "tfa_usage-admin"
GUARDED = fleets.guarded(ADMIN)


def test_usage_needs_the_admin_token_and_refuses_a_bad_since(tmp_path: Path) -> None:
    with run_fleet(tmp_path, GUARDED) as fleet:
        url = f"{fleet.base_url}/fleet/usage"
        missing = httpx.get(url, timeout=10)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "admin-token-missing"
        admin = {"Authorization": f"Bearer {ADMIN}"}
        bad = httpx.get(url, params={"since": "last week"}, headers=admin, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad-since"
        assert "'last week'" in bad.json()["error"]["message"]
        answer = httpx.get(url, params={"since": "today"}, headers=admin, timeout=10)
        assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
        assert answer.json()["since"].endswith("T00:00:00+00:00") and set(answer.json()["entries"]) == {"small"}
        assert "/fleet/usage" in httpx.get(f"{fleet.base_url}/fleet/openapi.json", timeout=10).json()["paths"]


def test_the_hubs_container_time_is_priced_as_an_entrys_and_a_cpu_hub_is_not_priced() -> None:
    """Issue 19: the hub's container is counted like an entry's, under "@hub", at [hub] gpu's price."""
    hub = {"enabled": True, "identity": "user", "chat_entry": "small"}
    entries = [{"name": "small", "model": "m", "chat_model": "c", "gpu": "L4"}]
    clock = Clock()
    usage = Usage(FleetSettings(entries=entries, hub=hub), clock=clock)
    usage.sample({"@hub": {"state": "ready", "containers": 1, "container_seconds": 0.0}})
    clock.now += 3600
    usage.sample({"@hub": {"state": "ready", "containers": 1, "container_seconds": 3600.0}})
    row = usage_snapshot(usage, _since(clock, "2h"))["entries"]["@hub"]
    assert row["gpu"] == "T4" and row["container_seconds"] == 3600 and row["gpu_seconds"] == 3600
    assert row["cost"] == pytest.approx(usage.pricing["@hub"].hourly)
    cpu = Usage(FleetSettings(entries=entries, hub={**hub, "gpu": ""}), clock=clock)
    assert cpu.pricing["@hub"].hourly is None and cpu.pricing["@hub"].gpu_count == 0
    assert "@hub" not in Usage(FleetSettings(entries=entries), clock=clock).pricing
