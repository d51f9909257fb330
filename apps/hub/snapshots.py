"""STUB on branch hub-modal, replaced by hub-local's apps/hub/snapshots.py: the same signatures, the least
that works (a copy of TABBY_ROOT's files, no sqlite3 backup, no index ordering).

A snapshot is ``<into>/<unix time>-<name>/`` with the copy in ``root/`` and a ``DONE`` file written last;
only snapshots with ``DONE`` are restored, the newest first; ``keep`` are kept.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

DONE = "DONE"


def take(root: Path, into: Path, *, keep: int, name: str = "snapshot") -> Path | None:
    """Copy ``root`` into a new snapshot below ``into``; None when ``root`` does not exist."""
    if not root.is_dir():
        return None
    folder = into / f"{time.time_ns()}-{name}"
    shutil.copytree(root, folder / "root")
    (folder / DONE).write_text("")
    done = sorted((p for p in into.iterdir() if (p / DONE).exists()), key=lambda p: p.name)
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def newest(into: Path) -> Path | None:
    """The newest complete snapshot below ``into``, or None."""
    if not into.is_dir():
        return None
    done = sorted((p for p in into.iterdir() if (p / DONE).exists()), key=lambda p: p.name)
    return done[-1] if done else None


def restore(into: Path, root: Path) -> Path | None:
    """Copy the newest complete snapshot below ``into`` to ``root``; the snapshot restored, or None."""
    snapshot = newest(into)
    if snapshot is None:
        return None
    shutil.copytree(snapshot / "root", root, dirs_exist_ok=True)
    return snapshot


class Snapshotter:
    """A thread taking a snapshot every ``interval`` seconds, ``after(snapshot)`` called after each."""

    def __init__(
        self,
        root: Path,
        into: Path,
        *,
        interval: float,
        keep: int,
        name: str,
        after: Callable[[Path], None] | None = None,
    ) -> None:
        self.root, self.into, self.interval, self.keep, self.name, self.after = root, into, interval, keep, name, after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-snapshots", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _snapshot(self) -> Path | None:
        taken = take(self.root, self.into, keep=self.keep, name=self.name)
        if self.after is not None and taken is not None:
            self.after(taken)
        return taken

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._snapshot()

    def stop(self, *, final: bool = True) -> Path | None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self._snapshot() if final else None
