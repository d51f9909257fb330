"""apps/hub/snapshots.py: consistent snapshots of a Tabby webserver's TABBY_ROOT, and what is restored.

The database is written by another process in WAL mode while snapshots are taken (a bounded writer: a
fixed number of rows, and a deadline), as Tabby writes while the hub's snapshot thread copies.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from apps.hub import snapshots
from apps.hub.snapshots import Snapshotter, newest, restore, take

WRITER_ROWS = 4000
WRITER_SECONDS = 30


def _make_root(root: Path, rows: int = 3) -> None:
    (root / "ee").mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root / "ee" / "db.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO t (body) VALUES (?)", [(f"row {i}",) for i in range(rows)])
    db.commit()
    db.close()
    segment = "0f0e0d0c0b0a09080706050403020100"
    (root / "index").mkdir(exist_ok=True)
    meta = {"segments": [{"segment_id": "0f0e0d0c-0b0a-0908-0706-050403020100", "max_doc": 1}], "opstamp": 1}
    (root / "index" / "meta.json").write_text(json.dumps(meta))
    (root / "index" / f"{segment}.idx").write_text("segment")
    (root / "index" / "deadbeefdeadbeefdeadbeefdeadbeef.idx").write_text("merged away, not in meta.json")
    (root / "index" / ".tantivy-writer.lock").write_text("")
    (root / "config.toml").write_text('[model.chat.http]\nkind = "openai/chat"\n')


def _rows(db: Path) -> int:
    connection = sqlite3.connect(db)
    try:
        return int(connection.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        connection.close()


def _integrity(db: Path) -> str:
    connection = sqlite3.connect(db)
    try:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        connection.close()


def test_snapshots_taken_while_another_process_writes_in_wal_mode_are_each_consistent(tmp_path: Path) -> None:
    root, into = tmp_path / "root", tmp_path / "snapshots"
    _make_root(root, rows=0)
    writer = textwrap.dedent(f"""
        import sqlite3, time
        db = sqlite3.connect({str(root / "ee" / "db.sqlite")!r}, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        deadline = time.monotonic() + {WRITER_SECONDS}
        for i in range({WRITER_ROWS}):
            db.execute("INSERT INTO t (body) VALUES (?)", ("x" * (i % 700),))
            if i % 3 == 0:
                db.execute("UPDATE t SET body = body || 'y' WHERE id = ?", (i // 2 + 1,))
            db.commit()
            if time.monotonic() > deadline:
                break
    """)
    process = subprocess.Popen([sys.executable, "-c", writer])
    counts: list[int] = []
    try:
        while process.poll() is None and len(counts) < 40:
            snapshot = take(root, into, keep=100, name="under-load")
            assert snapshot is not None
            db = snapshot / "ee" / "db.sqlite"
            assert _integrity(db) == "ok", snapshot
            counts.append(_rows(db))
    finally:
        process.wait(timeout=WRITER_SECONDS + 10)
    assert process.returncode == 0
    assert len(counts) >= 3, f"only {len(counts)} snapshots were taken while the writer ran"
    assert counts == sorted(counts) and counts[-1] > counts[0], counts  # each one a later instant
    assert any(0 < count < WRITER_ROWS for count in counts), counts  # some taken mid-write


def test_a_snapshot_holds_the_db_the_listed_index_segments_and_config(tmp_path: Path) -> None:
    root, into = tmp_path / "root", tmp_path / "snapshots"
    _make_root(root)
    snapshot = take(root, into, keep=3, name="task/1")
    assert snapshot is not None and snapshot.parent == into and snapshot.name.endswith("-task-1")
    assert sorted(p.name for p in (snapshot / "index").iterdir()) == [
        "0f0e0d0c0b0a09080706050403020100.idx",
        "meta.json",
    ]
    assert (snapshot / "config.toml").read_text() == (root / "config.toml").read_text()
    assert _rows(snapshot / "ee" / "db.sqlite") == 3
    assert not (snapshot / "ee" / "db.sqlite-wal").exists()  # one file, rollback journal mode
    assert json.loads((snapshot / "DONE").read_text())["name"] == "task/1"


def test_restore_brings_the_newest_complete_snapshot_back_into_an_emptied_root(tmp_path: Path) -> None:
    root, into = tmp_path / "root", tmp_path / "snapshots"
    _make_root(root, rows=2)
    take(root, into, keep=3)
    _make_root(root, rows=5)  # 7 rows now
    second = take(root, into, keep=3)
    scratch = tmp_path / "scratch"
    (scratch / "stale").mkdir(parents=True)
    (scratch / "leftover.txt").write_text("from an earlier run")
    assert restore(into, scratch) == second
    assert _rows(scratch / "ee" / "db.sqlite") == 7 and _integrity(scratch / "ee" / "db.sqlite") == "ok"
    assert not (scratch / "stale").exists() and not (scratch / "leftover.txt").exists()
    assert not (scratch / "DONE").exists() and (scratch / "config.toml").is_file()


def test_a_partial_or_done_less_snapshot_is_never_restored(tmp_path: Path) -> None:
    root, into = tmp_path / "root", tmp_path / "snapshots"
    _make_root(root, rows=1)
    good = take(root, into, keep=3)
    assert good is not None
    cut_short = into / f"{int(time.time() * 1000) + 60_000}-crashed.partial"
    no_done = into / f"{int(time.time() * 1000) + 120_000}-crashed"
    for folder in (cut_short, no_done):
        (folder / "ee").mkdir(parents=True)
        (folder / "ee" / "db.sqlite").write_bytes(b"half a page")
    (cut_short / "DONE").write_text("{}")  # DONE inside a .partial folder: the rename never happened
    assert newest(into) == good
    scratch = tmp_path / "scratch"
    assert restore(into, scratch) == good
    assert _rows(scratch / "ee" / "db.sqlite") == 1


def test_pruning_keeps_the_newest_keep_and_drops_stale_partials(tmp_path: Path) -> None:
    root, into = tmp_path / "root", tmp_path / "snapshots"
    _make_root(root)
    (into / "1-old.partial").mkdir(parents=True)
    taken = [take(root, into, keep=2) for _ in range(5)]
    assert snapshots.complete(into) == taken[-2:]
    assert sorted(p.name for p in into.iterdir()) == sorted(p.name for p in taken[-2:] if p)


def test_a_root_without_a_database_has_nothing_to_keep(tmp_path: Path) -> None:
    root, into = tmp_path / "root", tmp_path / "snapshots"
    root.mkdir()
    (root / "config.toml").write_text("")
    assert take(root, into, keep=3) is None
    assert not into.exists() or not list(into.iterdir())
    assert restore(into, root) is None and (root / "config.toml").exists()  # nothing to restore: root untouched


def test_an_unwritable_target_is_logged_with_advice_and_the_snapshotter_keeps_going(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    _make_root(root)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the snapshots folder should be")
    taken: list[Path] = []
    snapshotter = Snapshotter(root, blocker / "snapshots", interval=0.2, keep=3, name="t", after=taken.append)
    with caplog.at_level(logging.ERROR, logger="tabby_fleet.hub.snapshots"):
        snapshotter.start()
        deadline = time.monotonic() + 10
        while snapshotter.failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert snapshotter.stop(final=True) is None
    assert snapshotter.failures >= 3 and not taken  # it kept trying, and the final one failed too
    message = caplog.records[0].getMessage()
    assert "the hub keeps running" in message and "Check that" in message and "writable" in message, message
    # the same snapshotter, pointed at a writable folder, works: nothing was left broken
    snapshotter.into = tmp_path / "snapshots"
    assert snapshotter.once() is not None and taken


def test_the_snapshotter_takes_one_every_interval_and_a_final_one_at_stop(tmp_path: Path) -> None:
    root, into = tmp_path / "root", tmp_path / "snapshots"
    _make_root(root)
    committed: list[Path] = []
    snapshotter = Snapshotter(root, into, interval=0.3, keep=10, name="t", after=committed.append)
    snapshotter.start()
    deadline = time.monotonic() + 10
    while len(committed) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(committed) >= 2
    _make_root(root, rows=4)  # written after the last periodic snapshot
    final = snapshotter.stop(final=True)
    assert final is not None and committed[-1] == final and newest(into) == final
    assert _rows(final / "ee" / "db.sqlite") == 7
