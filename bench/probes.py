"""Measurements wrk cannot make: throughput/latency via wrk, SSE timing, disconnect propagation."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .servers import BENCH_TOKEN

# A Tabby-shaped completion request, about 4 KB: a prefix and suffix of real-looking code.
_CODE = "def handler(request):\n    data = request.json()\n    return process(data)\n\n"
COMPLETION_BODY = json.dumps({
    "language": "python",
    "segments": {"prefix": _CODE * 30, "suffix": _CODE * 20, "filepath": "app/handlers.py",
                 "git_url": "https://example.invalid/org/repo.git"},
})  # fmt: skip
CHAT_BODY = json.dumps({"messages": [{"role": "user", "content": "explain this code"}], "model": "", "stream": True})


def headers_for(entry: str) -> dict[str, str]:
    """The same headers go to every target; only the router reads them."""
    return {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_TOKEN}", "X-Tabby-Model": entry}


# -- wrk -----------------------------------------------------------------------------------------


def wrk_script(folder: Path, entry: str) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(COMPLETION_BODY)}"]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers_for(entry).items()]
    path = folder / f"post-{entry}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(
    url: str, connections: int, seconds: float, script: Path, cpus: Iterable[int] | None = None
) -> dict[str, float]:
    """wrk's figures; ``cpus``: the cores wrk runs on (``taskset -c``), default any."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    if cpus is not None:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no Requests/sec: {out[-2000:]}")
    rps = float(found.group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)] if p50 else float("nan"),
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else float("nan"),
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
    }


# -- raw HTTP/1.1 over asyncio, so the client's own cost is tiny and the same for every target -----


def _request_bytes(url: str, path: str, entry: str, body: str) -> tuple[str, int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers_for(entry).items()) + "\r\n"
    return host, int(port), head.encode() + body.encode()


async def _sse_once(url: str, entry: str) -> tuple[float, list[float], int]:
    host, port, request = _request_bytes(url, "/v1/chat/completions", entry, CHAT_BODY)
    reader, writer = await asyncio.open_connection(host, port)
    started = time.perf_counter()
    writer.write(request)
    arrivals: list[float] = []
    coalesced = 0
    buffer = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        now = time.perf_counter()
        buffer += data
        events = data.count(b"data: ")
        if events > 1:
            coalesced += events - 1
        arrivals += [now] * events
        if buffer.endswith(b"0\r\n\r\n"):  # end of the chunked body
            break
    writer.close()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return (arrivals[0] - started) * 1000 if arrivals else float("nan"), [g * 1000 for g in gaps], coalesced


def sse_timing(url: str, entry: str, runs: int) -> dict[str, Any]:
    async def all_runs() -> list[tuple[float, list[float], int]]:
        return [await _sse_once(url, entry) for _ in range(runs)]

    results = asyncio.run(all_runs())
    firsts = sorted(r[0] for r in results)
    gaps = sorted(g for r in results for g in r[1])
    return {
        "first_event_p50_ms": firsts[len(firsts) // 2],
        "gap_p50_ms": gaps[len(gaps) // 2] if gaps else float("nan"),
        "coalesced_events": sum(r[2] for r in results),
        "events": sum(len(r[1]) + 1 for r in results),
    }


def _backend_stats(backend_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{backend_url}/_standin/stats", timeout=5) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


async def _abort_once(url: str, entry: str, backend_url: str, stream: bool) -> float | None:
    path, body = ("/v1/chat/completions", CHAT_BODY) if stream else ("/v1/completions", COMPLETION_BODY)
    host, port, request = _request_bytes(url, path, entry, body)
    before = _backend_stats(backend_url)["cancelled"]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    if stream:
        await reader.readuntil(b"data: ")  # the stream has started
    else:
        await asyncio.sleep(0.1)  # the request is with the backend, which takes 30 s to answer
    writer.transport.abort()  # like the IDE agent's AbortController: the TCP connection goes away
    left = time.time()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        stats = _backend_stats(backend_url)
        if stats["cancelled"] > before:
            return (float(stats["last_cancelled_at"]) - left) * 1000
        await asyncio.sleep(0.002)
    return None  # never cancelled within 3 s


def disconnect_latency(url: str, entry: str, backend_url: str, runs: int, stream: bool) -> dict[str, Any]:
    async def all_runs() -> list[float | None]:
        results = []
        for _ in range(runs):
            results.append(await _abort_once(url, entry, backend_url, stream))
            await asyncio.sleep(0.05)
        return results

    results = asyncio.run(all_runs())
    seen = sorted(max(0.0, r) for r in results if r is not None)
    return {
        "p50_ms": seen[len(seen) // 2] if seen else None,
        "cancelled": len(seen),
        "never_cancelled": len(results) - len(seen),
    }


def first_completion_seconds(url: str, entry: str) -> float:
    request = urllib.request.Request(
        f"{url}/v1/completions", data=COMPLETION_BODY.encode(), headers=headers_for(entry), method="POST"
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - started
