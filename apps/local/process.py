"""One local backend's process and its lifecycle: cold -> starting -> ready -> (idle) cold; or failed.

A process on a free loopback port (``tabby serve`` when a tabby binary is found, else the stand-in),
ready once the port accepts and the listener there is the process started (apps/local/listener.py),
started again on another port when another process took it, stopped with SIGTERM then SIGKILL. The
runtime around it (which entries, when to start and stop) is apps/local/backends.py; the hub's process
(apps/local/hub_backend.py) is one of these with its own command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apps.local import standin
from apps.local.listener import listener_is_ours
from apps.tabby import die_with_parent, tabby_env, tabby_serve_argv, write_tabby_config
from fleet.errors import FleetError
from fleet.settings import Entry, FleetSettings

log = logging.getLogger("tabby_fleet.local")

HOST = "127.0.0.1"  # backends accept only this machine: the router is their only client
STOP_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL after this long
READY_POLL_SECONDS = 0.02  # how often a starting backend's port is tried
START_RETRY_AFTER = 5  # Retry-After while a backend is still starting
LOG_TAIL_BYTES = 2000
PORT_ATTEMPTS = 3  # ports tried when another process takes the chosen one before the backend listens


def standin_argv(entry: Entry, *, port: int, host: str = "127.0.0.1") -> list[str]:
    """The built-in stand-in (apps/local/standin.py), for machines without a tabby binary (and for tests)."""
    argv = [sys.executable, "-m", standin.__name__, "--model", entry.model]
    if entry.chat_model:
        argv += ["--chat-model", entry.chat_model]
    options = entry.standin
    argv += ["--host", host, "--port", str(port)]
    argv += ["--start-delay", str(options.start_delay), "--chunk-delay", str(options.chunk_delay)]
    argv += ["--completion-delay", str(options.completion_delay)]
    return argv


class LocalBackend:
    """One entry's process and its lifecycle: cold -> starting -> ready -> (idle) cold; or failed."""

    # Where its next process listens; a seam for the tests, which race another process for the port.
    free_port: Callable[[], int] = staticmethod(lambda: _free_port())
    stop_grace = STOP_GRACE_SECONDS  # seconds between SIGTERM and SIGKILL

    def __init__(self, entry: Entry, settings: FleetSettings, tabby_bin: str | None) -> None:
        self.entry = entry
        self.tabby_bin = tabby_bin
        self.root = (settings.data_dir / entry.name).resolve()
        self.log_path = self.root / "backend.log"
        self.state = "cold"
        self.last_error: str | None = None
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.starts = 0
        self.stops = 0
        self.start_seconds = 0.0  # total time spent starting, for /metrics
        self.port: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.kept_warm = False  # in a warm window: started without a request, not stopped when idle
        # Process lifetime for GPU-seconds: of the processes that ended, and when the current one began.
        self._lived_seconds = 0.0
        self._spawned_at: float | None = None
        self._lifetimes: set[asyncio.Task[None]] = set()
        self.previous: LocalBackend | None = None  # the one this replaced on a reload, counted until it ends

    @property
    def kind(self) -> str:
        return "tabby" if self.tabby_bin else "stand-in"

    @property
    def url(self) -> str | None:
        return f"http://{HOST}:{self.port}" if self.state == "ready" and self.port else None

    def warm(self) -> str:
        """Start in the background unless ready or already starting; never waits. The state afterwards."""
        if self.state == "ready" and self.url:
            return "ready"
        self._start_once()
        return "starting"

    async def wait_ready(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the start under way (if any); True when ready. Never raises."""
        starting = self._starting
        if starting is not None and not starting.done():
            try:
                async with asyncio.timeout(seconds):
                    await asyncio.shield(starting)  # giving up does not stop the start
            except (TimeoutError, FleetError):
                pass
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not starting.cancelled() or (task is not None and task.cancelling()):
                    raise  # this waiter was cancelled; a start stopped (by a reload) is just not ready
        return self.state == "ready" and self.url is not None

    def _start_once(self) -> asyncio.Task[None]:
        """The start under way, or a new one: at most one start at a time."""
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._start(), name=f"start-{self.entry.name}")
            self._starting.add_done_callback(_retrieve)  # a failed start nobody awaits is logged by _start
        return self._starting

    async def ensure_running(self, wait: float) -> str:
        """The backend's URL, starting it if needed; waits at most ``wait`` seconds."""
        if self.state == "ready" and self.url:
            return self.url
        starting = self._start_once()
        try:
            async with asyncio.timeout(wait):
                await asyncio.shield(starting)  # a request giving up does not stop the start
        except TimeoutError:
            raise FleetError(
                503,
                "backend-starting",
                f"entry {self.entry.name!r} is still starting ({self.kind}, up to "
                f"{self.entry.startup_timeout}s); retry in a few seconds",
                retry_after=START_RETRY_AFTER,
            ) from None
        except FleetError:
            raise
        if self.url is None:  # pragma: no cover - _start either sets ready or raises
            raise FleetError(502, "backend-failed", f"entry {self.entry.name!r} did not start")
        return self.url

    async def _spawn(self) -> tuple[asyncio.subprocess.Process, int]:
        """Make the entry's folder and run its process (self.process, listening on self.port), and return
        both; raises OSError if either fails."""
        self.root.mkdir(parents=True, exist_ok=True)
        port = self.port = self.free_port()
        argv, env = self.command(port)
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n--- starting: {' '.join(argv)}\n".encode())
            log_file.flush()
            process = self.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=env,
                preexec_fn=die_with_parent,  # it dies with the router
            )
        return process, port

    def command(self, port: int) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of this backend's process on ``port`` (its folder exists by then)."""
        if self.tabby_bin:
            argv = tabby_serve_argv(self.entry, binary=self.tabby_bin, port=port, device=self.entry.device, host=HOST)
            write_tabby_config(self.root, self.entry)
        else:
            argv = standin_argv(self.entry, port=port, host=HOST)
        return argv, {**os.environ, **tabby_env(self.root)}

    async def _start(self) -> None:
        self.state = "starting"
        started = time.monotonic()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                process, port = await self._spawn()
            except OSError as exc:  # no process at all (data_dir not writable, binary not runnable): failed
                reason = f"could not start {self.kind}: {exc}"
                raise self._failed(reason, reason, "Fix data_dir or tabby_bin") from None
            self.starts += 1
            self._stopping = False
            self._count_lifetime(process)
            log.info("entry %s: starting %s (pid %d, port %d)", self.entry.name, self.kind, process.pid, port)
            try:
                async with asyncio.timeout(self.entry.startup_timeout):
                    await _until_listening(process, port)
            except _PortTaken as exc:
                await self._terminate(process)
                log.warning("entry %s: %s (attempt %d of %d)", self.entry.name, exc, attempt, PORT_ATTEMPTS)
                if attempt < PORT_ATTEMPTS:
                    continue  # on another free port
                raise self._failed(str(exc), str(exc), "Find what takes this machine's free ports") from None
            except (TimeoutError, _StartFailed) as exc:
                reason = str(exc) or f"did not open its port within startup_timeout={self.entry.startup_timeout}s"
                await self._terminate(process)
                detail = f"{reason}; log: {self.log_path}\n{_tail(self.log_path)}"
                raise self._failed(reason, detail, f"See {self.log_path}") from None
            except asyncio.CancelledError:
                await self._terminate(process)
                self.state = "cold"
                raise
            break
        self.state = "ready"
        self.last_error = None
        self.last_used = time.monotonic()
        self.start_seconds += self.last_used - started
        self._watcher = asyncio.create_task(self._watch(process), name=f"watch-{self.entry.name}")
        log.info("entry %s: ready in %.2fs at %s", self.entry.name, time.monotonic() - started, self.url)

    def _failed(self, reason: str, detail: str, advice: str) -> FleetError:
        """Mark the start failed (``detail`` becomes last_error, and is logged); the 502 a request gets."""
        self.state = "failed"
        self.last_error = detail
        log.error("entry %s: start failed: %s", self.entry.name, detail)
        return FleetError(
            502,
            "backend-failed",
            f"entry {self.entry.name!r} failed to start: {reason}. {advice}; the next request tries again",
            retry_after=START_RETRY_AFTER,
        )

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self._stopping or process is not self.process:
            return
        self.state = "failed"
        self.last_error = f"exited unexpectedly with code {code}; it restarts on the next request"
        log.warning("entry %s: backend pid %d %s", self.entry.name, process.pid, self.last_error)

    async def stop(self, reason: str) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, FleetError):
                await self._starting
        process = self.process
        if process is None or process.returncode is not None:
            if self.state == "ready":
                self.state = "cold"
            return
        self._stopping = True
        log.info("entry %s: stopping pid %d (%s)", self.entry.name, process.pid, reason)
        await self._terminate(process)
        self.stops += 1
        self.state = "cold"

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(self.stop_grace):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def is_idle(self, now: float) -> bool:
        if self.kept_warm:
            return False
        return self.state == "ready" and self.in_flight == 0 and now - self.last_used >= self.entry.scaledown_window

    def _count_lifetime(self, process: asyncio.subprocess.Process) -> None:
        """Add the process's lifetime to container_seconds when it ends, however it ends."""
        spawned = self._spawned_at = time.monotonic()

        async def wait() -> None:
            await process.wait()
            self._lived_seconds += time.monotonic() - spawned
            if self._spawned_at == spawned:
                self._spawned_at = None

        task = asyncio.create_task(wait(), name=f"lifetime-{self.entry.name}")
        self._lifetimes.add(task)
        task.add_done_callback(self._lifetimes.discard)

    @property
    def alive(self) -> bool:
        """A process exists (starting, ready or stopping)."""
        return self.process is not None and self.process.returncode is None

    def containers(self) -> int:
        """Processes of this entry that exist now: 0 or 1, plus one a reload replaced that still runs."""
        return int(self.alive) + (self.previous.containers() if self.previous is not None else 0)

    def container_seconds(self) -> float:
        """Cumulative process lifetime since the router started, the current process included."""
        previous = self.previous
        if previous is not None and not previous.alive:  # it ended: keep its total, drop the object
            self._lived_seconds += previous.container_seconds()
            self.previous = previous = None
        current = time.monotonic() - self._spawned_at if self._spawned_at is not None else 0.0
        return self._lived_seconds + current + (previous.container_seconds() if previous is not None else 0.0)

    def status(self) -> dict[str, Any]:
        process = self.process
        alive = process is not None and process.returncode is None
        return {
            "state": self.state,
            "containers": self.containers(),
            "container_seconds": round(self.container_seconds(), 3),
            "kept_warm": self.kept_warm,
            "backend": self.kind,
            "in_flight": self.in_flight,
            "starts": self.starts,
            "stops": self.stops,
            "start_seconds": round(self.start_seconds, 3),
            "pid": process.pid if alive and process else None,
            "url": self.url,
            "last_error": self.last_error,
        }


class _StartFailed(Exception):
    pass


class _PortTaken(Exception):
    """Another process listens on the port the backend was started on."""


async def _until_listening(process: asyncio.subprocess.Process, port: int) -> None:
    """Return once ``process`` (or its child) listens on ``port``; _StartFailed if it exits first,
    _PortTaken if another process answers there (it took the port between our choice and the start)."""
    while True:
        if await _port_open(port):
            if listener_is_ours(port, process.pid) is not False:
                return
            raise _PortTaken(f"another process listens on port {port}, not the backend (pid {process.pid})")
        if process.returncode is not None:
            raise _StartFailed(f"exited with code {process.returncode} before opening its port")
        await asyncio.sleep(READY_POLL_SECONDS)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a start's outcome as seen (its failure is logged and kept in last_error by _start)."""
    if not task.cancelled():
        task.exception()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def _port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - LOG_TAIL_BYTES))
            return file.read().decode(errors="replace")
    except OSError:
        return ""
