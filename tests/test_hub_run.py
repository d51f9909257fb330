"""apps/hub/run.py: the hub as one supervised process survives a ``kill -9`` with at most one snapshot
interval lost, and a clean stop with nothing lost. Real processes: ``python -m apps.hub.run`` with the
stand-in hub as its child, threads created over ``/subscriptions``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from apps.hub import run
from apps.hub.snapshots import newest, taken_at
from tests.support.fleetproc import free_port
from tests.support.hub_client import ask, hub_argv, hub_env, my_threads

START_SECONDS = 20.0


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _until(predicate: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        time.sleep(0.05)


@contextmanager
def hub_run(tmp_path: Path, interval: float) -> Iterator[tuple[subprocess.Popen[bytes], str, int]]:
    """``apps.hub.run`` with the stand-in hub on a free port; yields the process, the hub's URL, its port."""
    port = free_port()
    argv = [sys.executable, "-m", run.__name__, "--root", str(tmp_path / "root"), "--snapshots"]
    argv += [str(tmp_path / "snapshots"), "--interval", str(interval), "--keep", "3", "--", *hub_argv(port)]
    with (tmp_path / "run.log").open("ab") as log:
        process = subprocess.Popen(argv, env={**os.environ, **hub_env()}, stdout=log, stderr=log)
    try:
        _until(lambda: _port_open(port) or process.poll() is not None, START_SECONDS, "the hub's port opens")
        assert process.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
        yield process, f"http://127.0.0.1:{port}", port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _until(lambda: not _port_open(port), 10, "the stand-in hub ends with its supervisor")


def _ask_all(url: str, questions: list[str]) -> None:
    async def go() -> None:
        for question in questions:
            messages, _ = await ask(url, "auth_frontend", question)
            assert messages[-1]["type"] == "complete", messages

    asyncio.run(go())


def test_a_kill_9_loses_at_most_the_last_interval_and_takes_the_hub_down_with_it(tmp_path: Path) -> None:
    with hub_run(tmp_path, interval=1.0) as (process, url, port):
        _ask_all(url, ["first?", "second?", "third?"])
        created = time.time()
        _until(
            lambda: (snap := newest(tmp_path / "snapshots")) is not None and taken_at(snap) > created + 0.01,
            15,
            "a snapshot taken after the three threads",
        )
        _ask_all(url, ["fourth?"])  # after the last snapshot we waited for: may be lost
        process.send_signal(signal.SIGKILL)
        process.wait()
        _until(lambda: not _port_open(port), 10, "the child dies with the killed supervisor (PR_SET_PDEATHSIG)")
    shutil.rmtree(tmp_path / "root")  # as a container's local disk: only the snapshots survive
    with hub_run(tmp_path, interval=1.0) as (_, url, _port):
        questions = my_threads(url, "auth_frontend")
    assert questions[:3] == ["first?", "second?", "third?"], questions
    assert questions in (["first?", "second?", "third?"], ["first?", "second?", "third?", "fourth?"])


def test_a_clean_stop_takes_a_last_snapshot_and_loses_nothing(tmp_path: Path) -> None:
    with hub_run(tmp_path, interval=3600) as (process, url, port):  # no periodic snapshot in this test
        _ask_all(url, ["one?", "two?"])
        assert newest(tmp_path / "snapshots") is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not _port_open(port)
    assert newest(tmp_path / "snapshots") is not None
    (tmp_path / "root" / "ee" / "db.sqlite").unlink()  # the scratch root is gone: only the snapshot remains
    with hub_run(tmp_path, interval=3600) as (process, url, _port):
        assert my_threads(url, "auth_frontend") == ["one?", "two?"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0


def test_the_command_line_says_what_is_missing(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        run.__name__,
        "--root",
        str(tmp_path),
        "--snapshots",
        str(tmp_path),
        "--interval",
        "5",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "give the hub's command after --" in result.stderr
