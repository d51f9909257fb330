"""The fleet's own state on disk: append-only segments, one writer per file, every reader merging all.

A router appends records (JSON objects, one per line) to its own segment, ``<directory>/<writer>.jsonl``.
No two processes ever write one file, so neither several local routers sharing a data directory nor
several Modal containers sharing a Volume (where the last commit of a file wins) lose each other's
writes. A reader reads every segment: all of it at start, then what the others appended since
(:meth:`SegmentStore.read_new`). A complete line that does not parse (a damaged file) is skipped, counted
and its segment named in :meth:`SegmentStore.health`: one bad line never fails a read. An incomplete last
line (a writer killed mid-write) is left unread until it is completed, which it never is.

Files are opened for one operation and closed after it: a Modal Volume cannot ``reload()`` while files on
it are open. ``on_commit`` and ``on_reload`` are that Volume's ``commit`` and ``reload`` on Modal, and
nothing locally. Every method blocks on the disk: the router calls them in a thread.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

SEGMENT_SUFFIX = ".jsonl"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def writer_id() -> str:
    """A name for this process's segment, new at every start: host, process id and start time. (On Modal the
    container's task id serves, passed in by the Modal runtime.) A restarted router never appends to the
    segment of the process before it, whose end may be torn."""
    return f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"


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
    ) -> None:
        self.directory = directory
        self.writer = _UNSAFE.sub("-", writer).strip("-.") or "writer"
        self.segment = directory / f"{self.writer}{SEGMENT_SUFFIX}"
        self._on_commit = on_commit
        self._on_reload = on_reload
        self._written = 0  # bytes of our segment known whole: a failed write is cut back to here
        self._offsets: dict[Path, int] = {}  # bytes of each segment already read
        self.skipped_lines = 0
        self.damaged: dict[str, int] = {}  # segment name -> lines skipped in it
        self.error: str | None = None  # the last failure, until an operation succeeds again

    # --- writing: our own segment only --------------------------------------------------------------

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append ``records`` to this writer's segment, as whole lines, on disk before returning."""
        if not records:
            return
        data = b"".join(json.dumps(record, separators=(",", ":")).encode() + b"\n" for record in records)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.segment, "ab") as file:
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
            self.error = f"cannot write {self.segment}: {exc.strerror or exc}"
            raise StoreError(self.error) from exc
        except Exception as exc:  # a Volume commit that failed
            self.error = f"cannot commit {self.segment}: {type(exc).__name__}: {exc}"
            raise StoreError(self.error) from exc
        self.error = None

    # --- reading: every segment -----------------------------------------------------------------------

    def read_new(self, *, include_own: bool = False) -> list[dict[str, Any]]:
        """The records appended to every segment since the last call (all of them at the first call).

        This writer's own records are left out unless ``include_own`` (at start, a new writer has none).
        """
        if self._on_reload is not None:
            try:
                self._on_reload()
            except Exception as exc:  # the records already seen stay; the next call tries again
                self.error = f"cannot reload {self.directory}: {type(exc).__name__}: {exc}"
                raise StoreError(self.error) from exc
        records: list[dict[str, Any]] = []
        for segment in self._segments():
            if segment == self.segment and not include_own:
                continue
            records += self._read_segment(segment)
        return records

    def _segments(self) -> list[Path]:
        try:
            return sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"))
        except OSError as exc:
            self.error = f"cannot list {self.directory}: {exc.strerror or exc}"
            raise StoreError(self.error) from exc

    def _read_segment(self, segment: Path) -> list[dict[str, Any]]:
        offset = self._offsets.get(segment, 0)
        try:
            with open(segment, "rb") as file:
                file.seek(offset)
                data = file.read()
        except FileNotFoundError:
            return []  # removed since it was listed
        except OSError as exc:
            self.error = f"cannot read {segment}: {exc.strerror or exc}"
            raise StoreError(self.error) from exc
        whole = data.rfind(b"\n") + 1  # an incomplete last line waits
        self._offsets[segment] = offset + whole
        records = []
        for line in data[:whole].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif line.strip():
                self.skipped_lines += 1
                self.damaged[segment.name] = self.damaged.get(segment.name, 0) + 1
        return records

    # --- what /fleet/health says ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Where the store is, whether it works, how big it is, and what was skipped in it."""
        size = segments = 0
        try:
            for segment in self.directory.glob(f"*{SEGMENT_SUFFIX}"):
                size += segment.stat().st_size
                segments += 1
        except OSError:
            pass  # the error of the operation that failed is reported below
        return {
            "ok": self.error is None,
            "error": self.error,
            "path": str(self.directory),
            "segments": segments,
            "bytes": size,
            "skipped_lines": self.skipped_lines,
            "damaged_segments": sorted(self.damaged),
        }
