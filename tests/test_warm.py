"""Warm hours: the settings, the pure schedule, Modal's scheduled function, `fleet plan`, and the local
runtime keeping a process running in its window (a real `fleet up`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import modal
import pytest

import apps.cli
from apps.local.backends import LocalBackends
from apps.modal.app import FROZEN_SETTINGS_ENV, WARM_FUNCTION, warm_settings_json
from fleet.loading import SettingsError, load_settings
from fleet.prices import DEFAULT_GPU_HOUR, DEFAULT_PRICES_DATE
from fleet.settings import Entry, FleetSettings
from fleet.warm import apply_warm_hours, min_containers_at, warm_gpu_hours_per_month, warm_hours_per_month
from fleet.window import WarmWindow

from .support import fleets
from .support.fleetproc import run_fleet
from .support.modal_inspect import declare, describe_app

ROOT = Path(__file__).resolve().parent.parent
WEEKS_PER_MONTH = 365.25 / 12 / 7

FLEET = fleets.small_and_large(
    large="""
gpu = "H100:2"
max_containers = 3
warm = [
  {days = "mon-fri", start = "08:00", end = "19:00", timezone = "Europe/Berlin", min_containers = 2},
  {days = "fri", start = "22:00", end = "06:00", timezone = "America/New_York", min_containers = 1},
]
""",
    then="""
[[entries]]
name = "medium"
model = "TabbyML/StarCoder-3B"
min_containers = 1
warm = [{days = "daily", start = "09:00", end = "18:00", timezone = "Asia/Tokyo"}]

[[entries]]
name = "box"
model = "TabbyML/StarCoder-1B"
url = "http://gpu-box:8080"
""",
)


def settings_from(tmp_path: Path, text: str) -> FleetSettings:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return load_settings(path)


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(SettingsError) as caught:
        settings_from(tmp_path, text)
    return str(caught.value)


def window(**fields: Any) -> WarmWindow:
    return WarmWindow(**({"days": "mon-fri", "start": "08:00", "end": "19:00", "timezone": "Europe/Berlin"} | fields))


def entry_with(*windows: WarmWindow, **fields: Any) -> Entry:
    return Entry(name="large", model="TabbyML/StarCoder-7B", max_containers=5, warm=windows, **fields)


def at(text: str, zone: str = "UTC") -> datetime:
    """An aware datetime: "2026-11-25 10:00" in ``zone``."""
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))


# -- settings --------------------------------------------------------------------------------------


def test_warm_windows_load_and_read_back(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, FLEET)
    large = settings.entry("large")
    assert [str(w) for w in large.warm] == [
        "mon-fri 08:00-19:00 Europe/Berlin: 2 containers",
        "fri 22:00-06:00 next day America/New_York: 1 container",
    ]
    assert settings.entry("small").warm == ()


@pytest.mark.parametrize(
    ("days", "weekdays", "shown"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}, "mon-fri"),
        ("Sat, Sun", {5, 6}, "sat,sun"),
        ("mon,wed-fri", {0, 2, 3, 4}, "mon,wed-fri"),
        ("daily", set(range(7)), "daily"),
        ("*", set(range(7)), "daily"),
        ("FRI-MON", {4, 5, 6, 0}, "fri-mon"),  # a range may wrap over the weekend
    ],
)
def test_days_take_names_lists_ranges_and_daily(days: str, weekdays: set[int], shown: str) -> None:
    parsed = window(days=days)
    assert parsed.weekdays == weekdays and parsed.days == shown


@pytest.mark.parametrize(
    ("days", "advice"),
    [
        ("monday-friday", "unknown day 'monday' (did you mean 'mon'?)"),
        ("mon-fir", "unknown day 'fir' (did you mean 'fri'?)"),
        ("weekdays", "unknown day 'weekdays'"),
        ("mon,,fri", "an empty day name"),
    ],
)
def test_a_bad_day_name_is_refused_with_the_right_form(tmp_path: Path, days: str, advice: str) -> None:
    text = FLEET.replace('days = "mon-fri"', f'days = "{days}"')
    found = problems(tmp_path, text)
    assert 'entries["large"].warm[0].days' in found and advice in found and '"mon-fri", "sat,sun"' in found


def test_times_are_24_hour_hh_mm_and_24_00_only_ends() -> None:
    assert (window(start="8:05").start, window(end="24:00").end) == ("08:05", "24:00")
    for bad in ("8am", "25:00", "12:60", "noon", "24:00"):
        with pytest.raises(ValueError, match='write 24-hour "HH:MM"'):
            window(start=bad)
    with pytest.raises(ValueError, match='"24:00" is only an end'):
        window(start="24:00")


def test_a_window_needs_a_length_and_may_run_past_midnight() -> None:
    with pytest.raises(ValueError, match=r'end equals start \("08:00"\).*start = "00:00", end = "24:00"'):
        window(end="08:00")
    overnight = window(start="22:00", end="06:00")
    assert overnight.overnight and overnight.minutes == 8 * 60


def test_an_unknown_timezone_gets_a_did_you_mean(tmp_path: Path) -> None:
    found = problems(tmp_path, FLEET.replace('"Europe/Berlin"', '"Europe/Berln"'))
    where = 'entries["large"].warm[0].timezone'
    assert f"{where}: unknown timezone 'Europe/Berln'; did you mean 'Europe/Berlin'?" in found
    found = problems(tmp_path, FLEET.replace('"Asia/Tokyo"', '"asia/tokyo"'))
    assert "did you mean 'Asia/Tokyo'?" in found


def test_min_containers_of_a_window_is_one_to_max_containers(tmp_path: Path) -> None:
    found = problems(tmp_path, FLEET.replace("min_containers = 2}", "min_containers = 0}"))
    assert "min_containers of a warm window must be at least 1 (got 0)" in found
    found = problems(tmp_path, FLEET.replace("min_containers = 2}", "min_containers = 4}"))
    assert 'entries["large"]: warm: the window mon-fri 08:00-19:00 Europe/Berlin: 4 containers asks for 4' in found
    assert "max_containers is 3; raise max_containers or lower the window's min_containers" in found


def test_an_unknown_window_field_and_a_url_entry_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, FLEET.replace("min_containers = 2}", "mincontainers = 2}"))
    assert "unknown field 'mincontainers' in a warm window; did you mean 'min_containers'?" in found
    text = FLEET.replace('url = "http://gpu-box:8080"', 'url = "http://gpu-box:8080"\nwarm = [{days = "*", '
                         'start = "00:00", end = "24:00", timezone = "UTC"}]')  # fmt: skip
    assert 'entries["box"]: warm: the entry has a url, so the fleet starts nothing for it' in problems(tmp_path, text)


# -- the schedule, a pure function of the clock ----------------------------------------------------

BERLIN = window(min_containers=2)  # mon-fri 08:00-19:00 Europe/Berlin
NEW_YORK_NIGHT = window(days="fri", start="22:00", end="06:00", timezone="America/New_York")


@pytest.mark.parametrize(
    ("when", "zone", "expected"),
    [
        ("2026-11-25 10:00", "Europe/Berlin", 2),  # a Wednesday, inside
        ("2026-11-25 18:59", "Europe/Berlin", 2),
        ("2026-11-25 19:00", "Europe/Berlin", 0),  # the end is not in the window
        ("2026-11-25 07:55", "Europe/Berlin", 2),  # WARM_LEAD (5 min) before the start counts
        ("2026-11-25 07:54", "Europe/Berlin", 0),
        ("2026-11-25 09:00", "UTC", 2),  # the same instant seen from UTC: 10:00 in Berlin
        ("2026-11-25 18:30", "UTC", 0),  # 19:30 in Berlin
        ("2026-11-28 10:00", "Europe/Berlin", 0),  # Saturday
        ("2026-03-30 06:30", "UTC", 2),  # after the spring change (Sunday 29th): 08:30 CEST
        ("2026-03-27 06:30", "UTC", 0),  # before it: 07:30 CET
        ("2026-10-23 05:57", "UTC", 2),  # before the autumn change: 07:57 CEST, within the lead
        ("2026-10-26 05:57", "UTC", 0),  # after it (Sunday 25th): 06:57 CET
    ],
)
def test_min_containers_at_a_clock(when: str, zone: str, expected: int) -> None:
    assert min_containers_at(entry_with(BERLIN), at(when, zone)) == expected


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("2026-11-27 21:56", 1),  # Friday, within the lead of 22:00
        ("2026-11-28 03:00", 1),  # Saturday night: the window started on Friday
        ("2026-11-28 05:59", 1),
        ("2026-11-28 06:00", 0),
        ("2026-11-26 23:00", 0),  # Thursday: not a start day
        ("2026-11-27 03:00", 0),  # Friday morning: Thursday started no window
    ],
)
def test_an_overnight_window_belongs_to_the_day_it_starts(when: str, expected: int) -> None:
    assert min_containers_at(entry_with(NEW_YORK_NIGHT), at(when, "America/New_York")) == expected


def test_on_the_dst_day_itself_a_window_keeps_local_time() -> None:
    daily = entry_with(window(days="daily"))  # 08:00-19:00 Europe/Berlin
    assert min_containers_at(daily, at("2026-03-29 06:30")) == 1  # 08:30 CEST, the first morning of summer time
    assert min_containers_at(daily, at("2026-03-29 05:30")) == 0  # 07:30 CEST
    assert min_containers_at(daily, at("2026-10-25 06:57")) == 1  # 07:57 CET, the first morning of winter time
    assert min_containers_at(daily, at("2026-10-25 06:30")) == 0


def test_the_lead_crosses_midnight_and_static_min_containers_is_the_floor() -> None:
    monday = window(days="mon", start="00:00", end="02:00", timezone="UTC", min_containers=3)
    assert min_containers_at(entry_with(monday), at("2026-11-29 23:56")) == 3  # Sunday night, 4 min before
    assert min_containers_at(entry_with(monday, min_containers=1), at("2026-11-25 12:00")) == 1
    overlapping = entry_with(monday, window(days="daily", start="01:00", end="03:00", timezone="UTC"))
    assert min_containers_at(overlapping, at("2026-11-30 01:30")) == 3  # the largest window wins
    assert min_containers_at(overlapping, at("2026-11-30 02:30")) == 1
    with pytest.raises(ValueError, match="timezone-aware"):
        min_containers_at(entry_with(monday), datetime(2026, 11, 30, 1, 0))


class Recorder:
    """Stands in for Modal's update_autoscaler (Modal's cloud cannot be reached from the tests)."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.fail = fail

    def __call__(self, entry: Entry, min_containers: int) -> None:
        if entry.name == self.fail:
            raise ConnectionError("Modal unreachable")
        self.calls.append((entry.name, entry.class_name, min_containers))


@pytest.mark.parametrize(
    ("when", "zone", "expected"),
    [
        ("2026-11-25 10:00", "Europe/Berlin", {"large": 2, "medium": 1}),  # Tokyo: 18:00, just ended
        ("2026-11-25 07:56", "Europe/Berlin", {"large": 2, "medium": 1}),  # at the lead
        ("2026-11-25 12:00", "Asia/Tokyo", {"large": 0, "medium": 1}),  # Berlin: 04:00; medium's own window
        ("2026-11-28 02:00", "America/New_York", {"large": 1, "medium": 1}),  # overnight; Tokyo 16:00
        ("2026-11-28 08:00", "America/New_York", {"large": 0, "medium": 1}),  # Saturday in Berlin, 14:00
        ("2026-03-29 06:30", "UTC", {"large": 0, "medium": 1}),  # DST day, but a Sunday
        ("2026-03-30 06:30", "UTC", {"large": 2, "medium": 1}),  # Monday: 08:30 CEST
    ],
)
def test_apply_warm_hours_sets_every_warm_entry_for_the_clock(
    tmp_path: Path, when: str, zone: str, expected: dict[str, int]
) -> None:
    settings = settings_from(tmp_path, FLEET)
    autoscale = Recorder()
    assert apply_warm_hours(settings, at(when, zone), autoscale) == expected
    classes = {"large": "TabbyLarge", "medium": "TabbyMedium"}
    assert autoscale.calls == [(name, classes[name], count) for name, count in expected.items()]
    # small and box have no windows: never touched


def test_one_failing_entry_does_not_keep_the_others_cold(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, FLEET)
    autoscale = Recorder(fail="large")
    with pytest.raises(RuntimeError, match=r"set \{'medium': 1\}; could not set large \(min_containers=2\)"):
        apply_warm_hours(settings, at("2026-11-25 10:00", "Europe/Berlin"), autoscale)
    assert autoscale.calls == [("medium", "TabbyMedium", 1)]


def test_warm_hours_per_month() -> None:
    office = entry_with(window(), gpu="H100:2")  # 5 x (11 h + 5 min lead) a week
    hours = 5 * (11 + 5 / 60) * WEEKS_PER_MONTH
    assert warm_hours_per_month(office) == pytest.approx(hours)
    assert warm_gpu_hours_per_month(office) == pytest.approx(2 * hours)
    assert warm_hours_per_month(entry_with(window(), min_containers=1)) == 0  # nothing above the floor
    assert warm_hours_per_month(entry_with(window(min_containers=3), min_containers=1)) == pytest.approx(2 * hours)
    night = entry_with(window(days="fri", start="22:00", end="06:00"))
    assert warm_hours_per_month(night) == pytest.approx((8 + 5 / 60) * WEEKS_PER_MONTH)
    # London 09:00-17:00 and Berlin 10:00-18:00 are the same hours (in winter): counted once
    same = entry_with(window(days="daily", start="09:00", end="17:00", timezone="Europe/London"),
                      window(days="daily", start="10:00", end="18:00"))  # fmt: skip
    assert warm_hours_per_month(same) == pytest.approx(7 * (8 + 5 / 60) * WEEKS_PER_MONTH)


# -- Modal: the scheduled function -----------------------------------------------------------------


def test_the_app_declares_warm_hours_with_its_cron_schedule(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, FLEET)
    fleet = declare(settings)
    declared = describe_app(fleet.app)
    warm = declared[WARM_FUNCTION]
    assert warm["schedule"] == "Cron('*/5 * * * *', UTC)"
    assert warm["gpu"] == [] and warm["web"] == {} and warm["timeout"] == 120
    assert isinstance(getattr(fleet, WARM_FUNCTION), modal.Function)  # a global of the deploy module, like the router
    assert any("tzdata==" in command for command in warm["image"])  # the IANA names on a slim image
    assert warm["image"] == declared["router"]["image"]  # the router's small CPU image
    assert declared["router"]["schedule"] is None and declared["TabbyLarge"]["schedule"] is None


def test_the_warm_function_freezes_only_its_entries_and_the_app_name(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, FLEET + '\n[[teams]]\nname = "web"\nentry = "small"\n')
    fleet = declare(settings)
    assert f"Secret.from_dict([{FROZEN_SETTINGS_ENV}])" in describe_app(fleet.app)[WARM_FUNCTION]["secrets"]
    text = warm_settings_json(settings)
    assert text is not None
    frozen = json.loads(text)
    assert [entry["name"] for entry in frozen["entries"]] == ["large", "medium"]  # not small, not the url entry
    assert frozen["modal"] == {"app_name": "tabby-fleet"} and "teams" not in frozen and "router" not in frozen


def test_no_function_when_no_entry_has_windows(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, FLEET.split('[[entries]]\nname = "large"')[0])  # small only
    assert warm_settings_json(settings) is None
    fleet = declare(settings)
    assert not hasattr(fleet, WARM_FUNCTION) and WARM_FUNCTION not in describe_app(fleet.app)


IN_CONTAINER = """
import importlib, json, modal
calls = []
class Instance:
    def __init__(self, app, cls):
        self.app, self.cls = app, cls
    def update_autoscaler(self, **options):
        calls.append([self.app, self.cls, options])
modal.Cls.from_name = lambda app, cls: (lambda: Instance(app, cls))  # Modal's cloud, faked
deployed = importlib.import_module({module!r})
print(json.dumps({{"applied": deployed.warm_hours.local(), "calls": calls,
                  "classes": sorted(k for k in dir(deployed) if k.startswith("Tabby"))}}))
"""


def test_in_its_container_the_function_calls_update_autoscaler_on_each_class(tmp_path: Path) -> None:
    """What the scheduled container runs: the deploy's module, from the function's frozen settings only."""
    frozen = warm_settings_json(settings_from(tmp_path, FLEET))
    assert frozen is not None
    module = declare(settings_from(tmp_path, FLEET)).__name__  # the deploy module, by its own name
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "TABBY_FLEET"))}
    env |= {FROZEN_SETTINGS_ENV: frozen, "FLEET_CONFIG": "/nonexistent"}
    before = datetime.now(UTC)  # the run uses the real clock
    result = subprocess.run(
        [sys.executable, "-c", IN_CONTAINER.format(module=module)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    settings = FleetSettings.model_validate_json(frozen)
    expected = {entry.name: min_containers_at(entry, before) for entry in settings.entries}
    if out["applied"] != expected:  # a window's edge passed during the run
        expected = {entry.name: min_containers_at(entry, datetime.now(UTC)) for entry in settings.entries}
    assert out["applied"] == expected
    assert out["calls"] == [["tabby-fleet", f"Tabby{name.capitalize()}", {"min_containers": n}]
                            for name, n in expected.items()]  # fmt: skip
    assert out["classes"] == ["TabbyLarge", "TabbyMedium"]


# -- fleet plan ------------------------------------------------------------------------------------


def test_fleet_plan_shows_each_schedule_its_gpu_hours_and_cost(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLEET_")}
    result = subprocess.run(
        [sys.executable, "-m", apps.cli.__name__, "plan", "--config", str(path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    office = 5 * (11 + 5 / 60) * WEEKS_PER_MONTH  # container-hours a month, 2 containers, 2 GPUs each
    assert (
        f"    mon-fri 08:00-19:00 Europe/Berlin: 2 containers -> {office * 2 * 2:,.1f} GPU-hours a month, "
        f"USD {office * 2 * 2 * DEFAULT_GPU_HOUR['H100']:,.2f} a month" in out
    )
    assert "    fri 22:00-06:00 next day America/New_York: 1 container -> " in out
    assert "all windows together (overlaps counted once) -> " in out
    # medium keeps 1 container anyway: its window adds nothing
    assert "    daily 09:00-18:00 Asia/Tokyo: 1 container -> 0.0 GPU-hours a month, USD 0.00 a month" in out
    assert f"prices of {DEFAULT_PRICES_DATE}" in out
    assert "  function warm_hours (schedule Cron('*/5 * * * *', UTC)): sets min_containers of large, medium" in out


# -- the local runtime -----------------------------------------------------------------------------


def _hhmm(moment: datetime) -> str:
    return f"{moment:%H:%M}"


def test_fleet_up_keeps_an_entry_running_in_its_warm_hours(tmp_path: Path) -> None:
    """A window covering now starts the entry without a request and keeps it past its idle window; a
    window later today leaves its entry cold; an entry without one stops when idle, its lifetime kept."""
    now = datetime.now(UTC)
    config = f"""
    [[entries]]
    name = "warm"
    model = "TabbyML/StarCoder-1B"
    scaledown_window = 2
    warm = [{{days = "daily", start = "{_hhmm(now - timedelta(hours=1))}", end = "{_hhmm(now + timedelta(hours=1))}", timezone = "UTC"}}]

    [[entries]]
    name = "later"
    model = "TabbyML/StarCoder-1B"
    scaledown_window = 2
    warm = [{{days = "daily", start = "{_hhmm(now + timedelta(hours=2))}", end = "{_hhmm(now + timedelta(hours=3))}", timezone = "UTC"}}]

    [[entries]]
    name = "plain"
    model = "TabbyML/StarCoder-1B"
    scaledown_window = 2
    """  # noqa: E501
    with run_fleet(tmp_path, config) as fleet:
        fleet.wait_for(lambda: fleet.entries()["warm"]["runtime"]["state"] == "ready", 20, "warm entry started")
        first = fleet.entries()["warm"]["runtime"]
        fleet.start("plain")
        time.sleep(5)  # more than twice the idle window
        entries = fleet.entries()
        warm, later = entries["warm"]["runtime"], entries["later"]["runtime"]
        assert warm["state"] == "ready" and warm["pid"] == first["pid"] and warm["stops"] == 0, warm
        assert warm["containers"] == 1 and warm["kept_warm"] is True
        assert warm["container_seconds"] >= first["container_seconds"] + 4
        assert later["state"] == "cold" and later["starts"] == 0, later
        assert (later["containers"], later["container_seconds"]) == (0, 0)
        plain = fleet.wait_for(
            lambda: (r := fleet.entries()["plain"]["runtime"])["state"] == "cold" and r, 10, "plain stopped when idle"
        )
        assert plain["stops"] == 1 and plain["containers"] == 0
        assert 2 <= plain["container_seconds"] <= 30  # lived at least its idle window
        time.sleep(1)
        assert fleet.entries()["plain"]["runtime"]["container_seconds"] == plain["container_seconds"]


def test_a_reload_that_adds_a_window_covering_now_starts_the_entry_at_once(tmp_path: Path) -> None:
    config = """
    [[entries]]
    name = "small"
    model = "TabbyML/StarCoder-1B"
    """
    with run_fleet(tmp_path, config) as fleet:
        time.sleep(1)
        assert fleet.entries()["small"]["runtime"]["state"] == "cold"
        now = datetime.now(UTC)
        window = f'{{days = "daily", start = "{_hhmm(now - timedelta(hours=1))}", end = "{_hhmm(now + timedelta(hours=1))}", timezone = "UTC"}}'  # noqa: E501
        path = tmp_path / "fleet.toml"
        path.write_text(path.read_text() + f"    warm = [{window}]\n")
        assert httpx.post(f"{fleet.base_url}/fleet/reload", json={}, timeout=10).status_code == 200
        # not at the next 15 s check: the reload itself checks the windows
        fleet.wait_for(lambda: fleet.entries()["small"]["runtime"]["state"] == "ready", 10, "started by the reload")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_the_local_runtime_follows_its_clock_into_and_out_of_a_window(tmp_path: Path) -> None:
    settings = _ten_to_eleven_utc(tmp_path, scaledown_window=2)
    clock = Clock(at("2026-11-25 09:59"))

    async def run() -> None:
        backends = await _standin_backends(settings, clock)
        try:
            await asyncio.sleep(1)
            assert backends.backend_state("small") == "cold"  # a minute before: no lead locally
            clock.now = at("2026-11-25 10:00")
            await _until(lambda: backends.backend_state("small") == "ready", 20)
            await asyncio.sleep(3)  # past the idle window: kept
            assert backends.status()["small"]["stops"] == 0
            clock.now = at("2026-11-25 11:00")
            await _until(lambda: backends.backend_state("small") == "cold", 10)
            assert backends.status()["small"]["stops"] == 1
        finally:
            await backends.close()

    asyncio.run(run())


def _ten_to_eleven_utc(data_dir: Path, **fields: Any) -> FleetSettings:
    """One entry, "small", warm daily from 10:00 to 11:00 UTC."""
    warm = (window(days="daily", start="10:00", end="11:00", timezone="UTC"),)
    entry = Entry(name="small", model="TabbyML/StarCoder-1B", warm=warm, **fields)
    return FleetSettings(data_dir=data_dir, entries=[entry])


async def _standin_backends(settings: FleetSettings, clock: Any) -> LocalBackends:
    """The local runtime on ``clock`` with stand-in backends (wherever a tabby binary is installed), started."""
    backends = LocalBackends(settings, clock=clock, warm_check_seconds=0.2)
    backends.tabby_bin = None
    for backend in backends.backends.values():
        backend.tabby_bin = None
    await backends.start()
    return backends


async def _until(predicate: Any, seconds: float) -> None:
    """Poll ``predicate`` (a state another task changes) until true, at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds}s"
        await asyncio.sleep(0.05)


def test_a_warm_hours_round_that_fails_is_logged_and_the_next_one_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The local keep-alive loop outlives an unexpected error: the next round starts the entry."""
    settings = _ten_to_eleven_utc(tmp_path)
    calls = 0

    def clock() -> datetime:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the clock broke once")
        return at("2026-11-25 10:30")

    async def run() -> None:
        backends = await _standin_backends(settings, clock)
        try:
            await _until(lambda: backends.backend_state("small") == "ready", 20)
        finally:
            await backends.close()

    asyncio.run(run())
    assert "the warm-hours check failed; trying again next round" in caplog.text
