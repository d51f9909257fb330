"""Consistent snapshots of a Tabby webserver's ``TABBY_ROOT`` (reference/tabby-hub.md section 5).

The hub keeps its data on local disk (SQLite must not live on a network filesystem) and copies it,
every ``snapshot_interval`` seconds and at a clean stop, into a folder that survives the process (a
Modal Volume, or ``data_dir/hub/snapshots`` locally). At the next start the newest complete snapshot is
copied back. What a snapshot holds:

- ``ee/db.sqlite``, copied with SQLite's online backup API: one read transaction, so the copy is the
  database at one instant even while Tabby writes in WAL mode (the copy itself is left in rollback
  journal mode: one file; Tabby turns WAL on again when it opens it);
- ``index/``, tantivy's folder: ``meta.json`` first, then the segment files it lists (segments are
  immutable; a merge may delete one mid-copy, and then the index copy starts again, a few times);
- ``config.toml`` when present.

Not kept: ``repositories/`` (the next git job clones them again), ``events/`` and ``ee/jobs/`` logs.

A snapshot is written into ``<unix-ms>-<name>.partial/``, fsynced, marked with ``DONE``, then renamed
to ``<unix-ms>-<name>/``: a snapshot cut short (a crash, a full disk) has no ``DONE`` or keeps its
``.partial`` name, and is never restored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("tabby_fleet.hub.snapshots")

DONE = "DONE"
PARTIAL = ".partial"
DB = Path("ee") / "db.sqlite"
INDEX = Path("index")
CONFIG = Path("config.toml")
INDEX_ATTEMPTS = 4  # copies of index/ tried when a segment vanishes under a merge
BUSY_TIMEOUT = 30.0  # seconds SQLite waits for a lock while opening the database to back it up
_LOCKS = (".tantivy-meta.lock", ".tantivy-writer.lock")


class SnapshotError(Exception):
    """A snapshot could not be taken; the message says why and what to do. The earlier ones are intact."""


def take(root: Path, into: Path, *, keep: int, name: str = "snapshot") -> Path | None:
    """Copy ``root``'s database, index and config.toml into a new complete snapshot under ``into``,
    and prune complete snapshots beyond the newest ``keep`` (and stale ``.partial`` folders).

    Returns the snapshot's folder, or None when ``root`` has no database yet (nothing to keep).
    Raises SnapshotError (with advice) when it cannot; nothing half-written is left to be restored.
    """
    db = root / DB
    if not db.is_file():
        return None
    stamp = int(time.time() * 1000)
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "snapshot"
    while (into / f"{stamp}-{label}").exists() or (into / f"{stamp}-{label}{PARTIAL}").exists():
        stamp += 1  # two in one millisecond: names stay unique and ordered
    partial = into / f"{stamp}-{label}{PARTIAL}"
    final = into / f"{stamp}-{label}"
    try:
        partial.mkdir(parents=True)
        _backup_db(db, partial / DB)
        if (root / INDEX).is_dir():
            _copy_index(root / INDEX, partial / INDEX)
        if (root / CONFIG).is_file():
            shutil.copy2(root / CONFIG, partial / CONFIG)
        _fsync_tree(partial)
        done = {"taken_at": stamp / 1000, "name": name, "root": str(root)}
        (partial / DONE).write_text(json.dumps(done) + "\n")
        _fsync_file(partial / DONE)
        _fsync_dir(partial)
        partial.rename(final)
        _fsync_dir(into)
    except (OSError, sqlite3.Error, SnapshotError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(
            f"snapshot of {root} into {into} failed: {exc}. Check that {into} is writable and has free space "
            f"and that {db} is a readable SQLite database; the earlier snapshots are intact"
        ) from exc
    _prune(into, keep=keep, current=final)
    return final


def complete(into: Path) -> list[Path]:
    """The complete snapshots under ``into`` (a ``DONE`` file, no ``.partial`` name), oldest first."""
    try:
        folders = [p for p in into.iterdir() if p.is_dir() and not p.name.endswith(PARTIAL)]
    except OSError:
        return []
    return sorted((p for p in folders if (p / DONE).is_file()), key=_order)


def newest(into: Path) -> Path | None:
    """The newest complete snapshot under ``into``; a ``.partial`` or ``DONE``-less folder never counts."""
    found = complete(into)
    return found[-1] if found else None


def taken_at(snapshot: Path) -> float:
    """When a snapshot was taken (unix seconds), from its folder's name."""
    return _order(snapshot)[0] / 1000


def restore(into: Path, root: Path) -> Path | None:
    """Empty ``root`` and copy the newest complete snapshot under ``into`` into it; the snapshot, or None
    (and ``root`` left as it is) when there is none."""
    snapshot = newest(into)
    if snapshot is None:
        return None
    root.mkdir(parents=True, exist_ok=True)
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    shutil.copytree(
        snapshot, root, dirs_exist_ok=True, ignore=lambda folder, names: [DONE] if folder == str(snapshot) else []
    )
    return snapshot


class Snapshotter:
    """A daemon thread taking a snapshot every ``interval`` seconds; ``after(snapshot)`` runs after each
    one (Modal passes ``volume.commit``). Errors are logged with their advice and never end the thread."""

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
        self.root = root
        self.into = into
        self.interval = interval
        self.keep = keep
        self.name = name
        self.after = after
        self.taken = 0  # snapshots taken by this object
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hub-snapshots", daemon=True)
        self._thread.start()

    def stop(self, *, final: bool = True) -> Path | None:
        """Stop the thread (a snapshot under way finishes first); then take the last one if ``final``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.once() if final else None

    def once(self) -> Path | None:
        """One snapshot now, then ``after``; errors logged, never raised."""
        try:
            snapshot = take(self.root, self.into, keep=self.keep, name=self.name)
            if snapshot is not None:
                self.taken += 1
                if self.after is not None:
                    self.after(snapshot)
                log.info("hub snapshot %s", snapshot)
            return snapshot
        except Exception as exc:  # a full disk or a broken Volume must not end the hub
            self.failures += 1
            advice = str(exc) if isinstance(exc, SnapshotError) else f"{type(exc).__name__}: {exc}"
            log.error("hub snapshot failed (the hub keeps running; the next try is in %ss): %s", self.interval, advice)
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.once()


def _order(path: Path) -> tuple[int, str]:
    head = path.name.split("-", 1)[0]
    return (int(head) if head.isdigit() else -1, path.name)


def _backup_db(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(source, timeout=BUSY_TIMEOUT)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # all pages in one step: one read transaction, consistent under WAL
            dst.execute("PRAGMA journal_mode=DELETE")  # the copy is one file
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()


def _copy_index(source: Path, target: Path) -> None:
    """Copy tantivy's folder: meta.json, then the files of the segments it names; start again when a
    segment vanished under a merge."""
    for attempt in range(1, INDEX_ATTEMPTS + 1):
        shutil.rmtree(target, ignore_errors=True)
        try:
            _copy_index_once(source, target)
            return
        except FileNotFoundError as exc:
            log.info("hub snapshot: %s vanished while copying the index (attempt %d); again", exc.filename, attempt)
    raise SnapshotError(
        f"the index under {source} changed under {INDEX_ATTEMPTS} copies in a row (segments merged away); "
        "the next snapshot tries again"
    )


def _copy_index_once(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    meta_path = source / "meta.json"
    if meta_path.is_file():
        meta = meta_path.read_bytes()  # first: the files it lists are immutable while it holds them
        (target / "meta.json").write_bytes(meta)
        segments = _segment_ids(meta)
        for child in source.iterdir():
            if child.is_file() and (child.name == ".managed.json" or child.name.split(".", 1)[0] in segments):
                shutil.copy2(child, target / child.name)
    else:
        for child in source.iterdir():
            if child.is_file() and child.name not in _LOCKS:
                shutil.copy2(child, target / child.name)
    for child in source.iterdir():
        if child.is_dir() and not child.is_symlink():
            _copy_index_once(child, target / child.name)


def _segment_ids(meta: bytes) -> set[str]:
    """The segment ids tantivy's meta.json lists, as its file names spell them (hex, no dashes)."""
    try:
        segments = json.loads(meta).get("segments", [])
        return {str(s["segment_id"]).replace("-", "") for s in segments}
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise SnapshotError(f"index/meta.json is not tantivy's meta ({exc}); the next snapshot tries again") from None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            _fsync_file(Path(folder) / name)
        _fsync_dir(Path(folder))


def _prune(into: Path, *, keep: int, current: Path) -> None:
    """Remove complete snapshots beyond the newest ``keep``, and ``.partial`` folders (a crashed take)."""
    for old in complete(into)[:-keep]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in into.glob(f"*{PARTIAL}"):
        shutil.rmtree(stale, ignore_errors=True)
