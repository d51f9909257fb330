"""Where a process's CPU goes under load: a py-spy recording, summarised by self and inclusive time.

py-spy samples the process from outside (ptrace; as root that works), pausing it for each sample,
which here cost the router about 10% of its requests/s. Not --nonblocking: reading a running
process's stacks races with it, and about half the stacks came back cut short (no event loop at
their root), which the inclusive figures cannot use. Paused, nearly every sample counts as busy, so
the ~10% the router waits in epoll lands on the event loop's frame (``Runner.run``, where uvloop's C
code counts: a Python function's self time includes the C code it calls); the router's CPU seconds
over the recording are printed beside the profile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

RATE = 500  # samples per second
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"  # the venv's, when it is not on PATH
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, cpus: Iterable[int] | None = None) -> str | None:
    """Record ``pid`` into ``out`` (py-spy's raw, collapsed-stack format); None, or why it failed."""
    binary = py_spy()
    if binary is None:
        return "py-spy is not installed (.venv/bin/pip install py-spy)"
    argv = [binary, "record", "--pid", str(pid), "--rate", str(RATE), "--duration", str(round(seconds)),
            "--format", "raw", "--nolineno", "--output", str(out)]  # fmt: skip
    if cpus is not None:  # py-spy's own CPU stays off the profiled process's core
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    error = ""
    for _ in range(2):  # py-spy sometimes fails to read the interpreter's version on the first attach
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode == 0 and out.exists():
            return None
        error = next(iter((done.stderr or done.stdout).strip().splitlines()), f"exit code {done.returncode}")
        time.sleep(0.5)
    return f"py-spy failed: {error}"


def short(frame: str) -> str:
    """'Class.method (uvicorn/protocols/http/httptools_impl.py)' -> 'uvicorn/…/httptools_impl:Class.method'."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"].split("site-packages/")[-1].removesuffix(".py")
    parts = path.split("/")
    if len(parts) > 3:
        path = f"{parts[0]}/…/{parts[-1]}"
    return f"{path}:{match['function']}"


def summarise(raw: str, top: int = 20) -> str:
    """Top functions by self time and by inclusive time, as percentages of the samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [short(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    if not total:
        return "profile: no samples (was the process busy?)"
    lines = [f"{total} samples", "", f"top {top} by self time (C code counts in its Python caller: uvloop's loop "
             "is Runner.run):"]  # fmt: skip
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    # Frames on (nearly) every sample are the entry points (runpy, uvicorn.run, the event loop): no news.
    entry_points = [name for name, n in inclusive.items() if n >= 0.99 * total]
    left_out = f" (left out, on every sample: {', '.join(entry_points)})" if entry_points else ""
    lines += ["", f"top {top} by inclusive time{left_out}:"]
    ranked = [(name, n) for name, n in inclusive.most_common() if name not in entry_points][:top]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in ranked]
    return "\n".join(lines)
