"""Run a real fleet for tests: `fleet up` in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

STARTUP_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningFleet:
    base_url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kwargs.pop("timeout", 30.0), **kwargs)

    def entries(self) -> dict[str, Any]:
        table = httpx.get(f"{self.base_url}/fleet/entries", timeout=10).json()
        return {entry["name"]: entry for entry in table["entries"]}

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/fleet/health", timeout=10).json()

    def backend_url(self, entry: str) -> str:
        url = self.entries()[entry]["runtime"]["url"]
        assert url, f"entry {entry} has no running backend"
        return str(url)

    def backend_stats(self, entry: str) -> dict[str, Any]:
        return httpx.get(f"{self.backend_url(entry)}/_standin/stats", timeout=10).json()

    def start(self, *entries: str, timeout: float = STARTUP_SECONDS) -> None:
        """Start entries' backends and wait until they are ready. A health check starts a cold entry in
        the background and answers at once (docs/ARCHITECTURE.md, Cold starts); it does not wait."""
        for entry in entries:
            httpx.get(f"{self.base_url}/models/{entry}/v1/health", timeout=10)
        for entry in entries:
            self.wait_for(lambda e=entry: self.health()["entries"][e]["state"] == "ready", timeout, f"{entry} ready")

    def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""


@contextmanager
def run_fleet(workdir: Path, config: str, env: dict[str, str] | None = None) -> Iterator[RunningFleet]:
    """Write config to workdir/fleet.toml and run `fleet up` there until the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "fleet.toml"
    config_path.write_text(textwrap.dedent(config))
    port = free_port()
    log_path = workdir / "router.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    child_env["PATH"] = _path_without_tabby(child_env.get("PATH", ""))
    child_env.update(env or {})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "apps.cli", "up", "--config", str(config_path), "--port", str(port)],
            cwd=workdir,
            env=child_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    fleet = RunningFleet(f"http://127.0.0.1:{port}", process, workdir, log_path)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"fleet up exited with {process.returncode}\n{fleet.log_tail()}")
            try:
                if httpx.get(f"{fleet.base_url}/fleet/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"router did not come up in {STARTUP_SECONDS}s\n{fleet.log_tail()}")
            time.sleep(0.05)
        yield fleet
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serve_process(argv: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run a server process until the block ends; yields its base URL once its port accepts."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None  # stderr=PIPE
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{argv[:4]} exited: {process.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{argv[:4]} did not open port {port}") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def standin_argv(port: int, *extra: str, model: str = "TabbyML/StarCoder-1B") -> list[str]:
    return [sys.executable, "-m", "apps.local.standin", "--model", model, "--port", str(port), *extra]


def _path_without_tabby(path: str) -> str:
    """Tests run the stand-in even where a tabby binary is installed."""
    keep = [p for p in path.split(os.pathsep) if p and not (Path(p) / "tabby").exists()]
    return os.pathsep.join(keep)


COMPLETION = {"language": "python", "segments": {"prefix": "def add(a, b):\n    ", "suffix": "\n"}}
