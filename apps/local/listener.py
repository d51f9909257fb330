"""Who answers on a backend's port: the process the local runtime started, or another one.

The local runtime picks a free port, then starts the backend on it; in between another local process can
take the port, and the runtime would take its answers for the backend's. A real `tabby serve` cannot be
handed a bound socket, so the runtime checks instead, once the port accepts: :func:`listener_is_ours`
reads the sockets listening on the port from ``/proc/net/tcp`` and ``tcp6`` and looks for them among
the open files of the process it started and its children (``/proc/<pid>/fd``). Linux only; elsewhere
it cannot tell (None), and the backend is used as before.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def listener_is_ours(port: int, pid: int) -> bool | None:
    """True when the sockets listening on ``port`` belong to ``pid`` or its descendants; False when one
    belongs to another process (or none is ours); None when this system has no /proc to tell by."""
    tables = [PROC / "net" / "tcp", PROC / "net" / "tcp6"]
    if not tables[0].is_file():
        return None
    listening: set[str] = set()
    for table in tables:
        listening |= _listening_inodes(table, port)
    if not listening:
        return False
    ours: set[str] = set()
    for member in _process_tree(pid):
        ours |= _socket_inodes(member)
    return listening <= ours


def _listening_inodes(table: Path, port: int) -> set[str]:
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return set()
    inodes: set[str] = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets ``pid`` has open (their links read ``socket:[inode]``)."""
    inodes: set[str] = set()
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a backend may serve from a child), read from /proc/<pid>/task/*/children."""
    tree: list[int] = []
    pending = [pid]
    while pending and len(tree) < 1000:  # bounded: a fork bomb is not a backend
        current = pending.pop()
        tree.append(current)
        try:
            tasks = list((PROC / str(current) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                pending += [int(child) for child in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
    return tree
