"""The fleet's own state on disk: append-only segments in day folders, one writer per file, every reader merging all.

A router appends records (JSON objects, one per line) to its own segment of the day,
``<directory>/<YYYY-MM-DD>/<writer>.jsonl`` (the UTC day of the write). No two processes ever write one file,
so neither several local routers sharing a data directory nor several Modal containers sharing a Volume
(where the last commit of a file wins) lose each other's writes. A reader reads every segment: all of it at
start, then what the others appended since (:meth:`SegmentStore.read_new`). A complete line that does not
parse (a damaged file) is skipped, counted and its segment named in :meth:`SegmentStore.health`: one bad
line never fails a read. An incomplete last line (a writer killed mid-write) is left unread until it is
completed, which it never is.

A day is *closed* once it is ``CLOSED_AFTER_DAYS`` old: nobody writes to it any more. :meth:`SegmentStore.compact`
folds a closed day into one file, ``<day>/day.compacted``, whose bytes depend only on the day's segments
(sorted by name, read whole, folded by the caller's deterministic functions), written aside and renamed into
place; then the segments are deleted. Two routers compacting at once write the same bytes, and one that finds
an input gone (another finished first) gives up. Readers prefer the compacted file of a day they have not read
yet, and skip it for a day whose segments they read already (it holds the same records). A day past retention
loses the kinds that expire (usage), keeps the rest (a revoked token), and its folder goes when nothing is left.

Files are opened for one operation and closed after it: a Modal Volume cannot ``reload()`` while files on
it are open. ``on_commit`` and ``on_reload`` are that Volume's ``commit`` and ``reload`` on Modal, and
nothing locally. Every method blocks on the disk: the router calls them in a thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

SEGMENT_SUFFIX = ".jsonl"
COMPACTED = "day.compacted"  # not a segment (no .jsonl): a writer's name can never clash with it
# Days a day folder stays open to writers: a record of 23:59 flushed after midnight lands in the next day's
# folder, and the in-memory history keeps minutes for 2 days (router/usage.py, COMPACT_AFTER), so a folder
# is compacted (to hours) at the age its minutes are folded in memory.
CLOSED_AFTER_DAYS = 2
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

Record = dict[str, Any]
Fold = Callable[[list[Record]], list[Record]]


def writer_id() -> str:
    """A name for this process's segment, new at every start: host, process id and start time. (On Modal the
    container's task id serves, passed in by the Modal runtime.) A restarted router never appends to the
    segment of the process before it, whose end may be torn."""
    return f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"


def day_of(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


class StoreError(Exception):
    """The store could not be written or read; the message says which file and why."""


class SegmentStore:
    def __init__(
        self,
        directory: Path,
        writer: str,
        *,
        on_commit: Callable[[], None] | None = None,
        on_reload: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.writer = _UNSAFE.sub("-", writer).strip("-.") or "writer"
        self.segment_name = f"{self.writer}{SEGMENT_SUFFIX}"
        self._clock = clock
        self._on_commit = on_commit
        self._on_reload = on_reload
        self._segment: Path | None = None  # today's segment of this writer, once written
        self._written = 0  # bytes of it known whole: a failed write is cut back to here
        self._offsets: dict[Path, int] = {}  # bytes of each segment already read
        self._read_days: dict[str, str] = {}  # day -> "segments" or "compacted": how this reader read it
        self.skipped_lines = 0
        self.damaged: dict[str, int] = {}  # "<day>/<segment>" -> lines skipped in it
        self.error: str | None = None  # the last failure, until an operation succeeds again

    @property
    def segment(self) -> Path:
        """This writer's segment of today (where the next append goes)."""
        return self.directory / day_of(self._clock()) / self.segment_name

    # --- writing: our own segment only --------------------------------------------------------------

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append ``records`` to this writer's segment of today, as whole lines, on disk before returning."""
        if not records:
            return
        data = b"".join(json.dumps(record, separators=(",", ":")).encode() + b"\n" for record in records)
        segment = self.segment
        if segment != self._segment:  # a new day: a new file
            self._segment, self._written = segment, 0
        try:
            segment.parent.mkdir(parents=True, exist_ok=True)
            with open(segment, "ab") as file:
                if file.tell() != self._written:  # a write that failed half-way: cut it off
                    file.truncate(self._written)
                    file.seek(self._written)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            self._written += len(data)
            if self._on_commit is not None:
                self._on_commit()
        except OSError as exc:
            self.error = f"cannot write {segment}: {exc.strerror or exc}"
            raise StoreError(self.error) from exc
        except Exception as exc:  # a Volume commit that failed
            self.error = f"cannot commit {segment}: {type(exc).__name__}: {exc}"
            raise StoreError(self.error) from exc
        self.error = None

    # --- reading: every segment -----------------------------------------------------------------------

    def read_new(self, *, include_own: bool = False) -> list[dict[str, Any]]:
        """The records appended to every segment since the last call (all of them at the first call).

        This writer's own records are left out unless ``include_own`` (at start, a new writer has none).
        """
        self._reload()
        records: list[dict[str, Any]] = []
        for day in self._days():
            folder = self.directory / day
            how = self._read_days.get(day)
            if how == "compacted":
                continue  # read whole already; its segments are gone or folded into it
            compacted = folder / COMPACTED
            if how is None and compacted.exists():
                records += self._read_whole(compacted)
                self._read_days[day] = "compacted"
                continue
            segments = self._segments(folder)
            if segments:  # this day's records are ours segment by segment: a compacted file later repeats them
                self._read_days[day] = "segments"
            for segment in segments:
                if segment.name == self.segment_name and not include_own:
                    continue
                records += self._read_segment(segment)
        self.error = None
        return records

    def _reload(self) -> None:
        if self._on_reload is not None:
            try:
                self._on_reload()
            except Exception as exc:  # the records already seen stay; the next call tries again
                self.error = f"cannot reload {self.directory}: {type(exc).__name__}: {exc}"
                raise StoreError(self.error) from exc

    def _days(self) -> list[str]:
        try:
            if not self.directory.exists():
                return []  # nothing written yet
            return sorted(p.name for p in self.directory.iterdir() if _DAY.match(p.name) and p.is_dir())
        except OSError as exc:
            self.error = f"cannot list {self.directory}: {exc.strerror or exc}"
            raise StoreError(self.error) from exc

    def _segments(self, folder: Path) -> list[Path]:
        try:
            return sorted(folder.glob(f"*{SEGMENT_SUFFIX}"))
        except OSError as exc:
            self.error = f"cannot list {folder}: {exc.strerror or exc}"
            raise StoreError(self.error) from exc

    def _read_segment(self, segment: Path) -> list[dict[str, Any]]:
        offset = self._offsets.get(segment, 0)
        try:
            with open(segment, "rb") as file:
                file.seek(offset)
                data = file.read()
        except FileNotFoundError:
            return []  # removed since it was listed (compacted: its day was read whole already)
        except OSError as exc:
            self.error = f"cannot read {segment}: {exc.strerror or exc}"
            raise StoreError(self.error) from exc
        whole = data.rfind(b"\n") + 1  # an incomplete last line waits
        self._offsets[segment] = offset + whole
        return self._parse(data[:whole], segment)

    def _read_whole(self, path: Path) -> list[dict[str, Any]]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            self.error = f"cannot read {path}: {exc.strerror or exc}"
            raise StoreError(self.error) from exc
        return self._parse(data[: data.rfind(b"\n") + 1], path)

    def _parse(self, data: bytes, path: Path) -> list[dict[str, Any]]:
        records = []
        for line in data.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif line.strip():
                self.skipped_lines += 1
                name = f"{path.parent.name}/{path.name}"
                self.damaged[name] = self.damaged.get(name, 0) + 1
        return records

    # --- compaction and retention: closed days ------------------------------------------------------

    def maintain(self, folds: Mapping[str, Fold], expiring: frozenset[str], retention_days: int) -> None:
        """Compact every closed day, and drop the ``expiring`` kinds from days past ``retention_days``."""
        self._reload()
        today = date.fromisoformat(day_of(self._clock()))
        for day in self._days():
            age = (today - date.fromisoformat(day)).days
            if age > CLOSED_AFTER_DAYS:
                self.compact(day, folds)
            if age > retention_days:
                self.expire(day, expiring)

    def compact(self, day: str, folds: Mapping[str, Fold]) -> bool:
        """Fold the closed ``day``'s segments into its compacted file (records of a kind in ``folds`` through
        its fold, the others as they were, in segment order), then delete the segments. False when another
        compactor got there first (its file stands)."""
        folder = self.directory / day
        compacted = folder / COMPACTED
        segments = self._segments(folder)
        if not compacted.exists():
            records: list[Record] = []
            for segment in segments:
                try:
                    data = segment.read_bytes()
                except FileNotFoundError:
                    return False  # another compactor deleted its inputs: its file is (being) written
                except OSError as exc:
                    self.error = f"cannot compact {folder}: {exc.strerror or exc}"
                    raise StoreError(self.error) from exc
                records += _parse_quietly(data)
            if not self._write_compacted(folder, _folded(records, folds)):
                return False
        self._delete(segments)
        return True

    def expire(self, day: str, expiring: frozenset[str]) -> None:
        """Drop the ``expiring`` kinds from the (compacted) ``day``; remove its folder if nothing is left."""
        folder = self.directory / day
        compacted = folder / COMPACTED
        try:
            data = compacted.read_bytes()
        except FileNotFoundError:
            return  # not compacted yet (compact runs first in maintain)
        except OSError as exc:
            self.error = f"cannot expire {folder}: {exc.strerror or exc}"
            raise StoreError(self.error) from exc
        records = _parse_quietly(data)
        kept = [record for record in records if record.get("t") not in expiring]
        try:
            if not kept:
                shutil.rmtree(folder, ignore_errors=True)
            elif len(kept) < len(records):
                compacted.unlink()
                self._write_compacted(folder, kept)
            self._commit()
        except OSError as exc:
            self.error = f"cannot expire {folder}: {exc.strerror or exc}"
            raise StoreError(self.error) from exc

    def _write_compacted(self, folder: Path, records: list[Record]) -> bool:
        data = b"".join(json.dumps(r, separators=(",", ":"), sort_keys=True).encode() + b"\n" for r in records)
        aside = folder / f".{COMPACTED}.{self.writer}"
        try:
            with open(aside, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            if (folder / COMPACTED).exists():  # another compactor finished first: same bytes, keep its file
                aside.unlink()
                return False
            os.replace(aside, folder / COMPACTED)
            self._commit()
        except OSError as exc:
            self.error = f"cannot compact {folder}: {exc.strerror or exc}"
            aside.unlink(missing_ok=True)
            raise StoreError(self.error) from exc
        return True

    def _delete(self, segments: list[Path]) -> None:
        for segment in segments:
            segment.unlink(missing_ok=True)
            self._offsets.pop(segment, None)
        if segments:
            self._commit()

    def _commit(self) -> None:
        if self._on_commit is not None:
            try:
                self._on_commit()
            except Exception as exc:
                raise OSError(f"Volume commit failed: {type(exc).__name__}: {exc}") from exc

    # --- what /fleet/health says ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Where the store is, whether it works, how big it is, and what was skipped in it."""
        size = files = days = 0
        error = self.error  # listing may fail too: the error reported is the operation's that failed
        try:
            for day in self._days():
                days += 1
                for path in (self.directory / day).iterdir():
                    size += path.stat().st_size
                    files += 1
        except (OSError, StoreError):
            pass  # the error of the operation that failed is reported below
        self.error = error
        return {
            "ok": error is None,
            "error": error,
            "path": str(self.directory),
            "days": days,
            "segments": files,
            "bytes": size,
            "skipped_lines": self.skipped_lines,
            "damaged_segments": sorted(self.damaged),
        }


def _parse_quietly(data: bytes) -> list[Record]:
    """A segment's whole, parseable lines (a compactor skips what every reader skipped, and counts nothing)."""
    records = []
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _folded(records: list[Record], folds: Mapping[str, Fold]) -> list[Record]:
    """The records of kinds without a fold as they were (in order), then each folded kind, by kind's name."""
    by_kind: dict[str, list[Record]] = {}
    kept = []
    for record in records:
        kind = record.get("t")
        if isinstance(kind, str) and kind in folds:
            by_kind.setdefault(kind, []).append(record)
        else:
            kept.append(record)
    seen: set[int] = set()
    for kind in sorted(by_kind):
        fold = folds[kind]
        if id(fold) in seen:
            continue  # one fold for several kinds (usage and usage-entry): fold them together, once
        seen.add(id(fold))
        kept += fold([r for k in sorted(by_kind) if folds[k] is fold for r in by_kind[k]])
    return kept
