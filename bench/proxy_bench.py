"""The proxy benchmark: direct vs the router vs asgi-proxy-lib vs nginx, interleaved, in one run.

    ./dev bench                 # about 10 minutes; needs wrk (apt-get install wrk), nginx optional
    ./dev bench --quick         # one short round, for a smoke check
    ./dev bench --baseline-ref 82314b0 --profile    # also the router as it was at 82314b0; a py-spy profile

Every number is reported next to the direct connection measured in the same round, because these
machines are shared and noisy: ratios and differences, not absolute figures, are what carries over.
Each proxy's CPU per request (utime + stime from /proc over each wrk run, divided by the requests
wrk completed) is absolute, but comparable between proxies measured in the same run.

Core placement (two cores): "alone", the proxy on the second core and wrk and the backends on the
first; "shared", the proxy and the backends on the second core and wrk on the first. The first
placement asked for gets every measurement, the second the 64-connection ones. The probes after the
load (SSE, cancellation, memory, cold start) run unpinned.

Results go to stdout (tables) and bench/results/<time>.json (and <time>-profile.txt). Method:
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import probes, profile, servers

BACKENDS = {"fast": 0.0, "slow20": 0.020}  # completion_delay in seconds: the "0 ms" and "20 ms" backends
# (backend, connections) measured in the first placement, and in the second; the tables show these.
SCENARIOS = (("fast", 1), ("fast", 16), ("fast", 64), ("slow20", 64))
SECOND_PLACEMENT_SCENARIOS = (("fast", 64), ("slow20", 64))
FIRST_PLACEMENT_ONLY = ("asgi-proxy-lib",)  # errors and ~0 requests/s: not worth a second placement
PROFILE_SECONDS = 5


@dataclass(frozen=True)
class Placement:
    """Which of the two cores (0 or 1: the first or second core this process may use) runs what."""

    wrk: int
    backends: int
    targets: int
    text: str


PLACEMENTS = {
    "alone": Placement(wrk=0, backends=0, targets=1, text="proxy alone on a core; wrk and backends on the other"),
    "shared": Placement(wrk=0, backends=1, targets=1, text="proxy and backends share a core; wrk on the other"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--seconds", type=float, default=4.0, help="wrk duration per measurement")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, fewer probes")
    parser.add_argument("--memory-requests", type=int, default=100_000, help="requests for the RSS probe")
    parser.add_argument("--baseline-ref", metavar="REV", help="also run the router as it was at this git revision")
    parser.add_argument("--hub", action="store_true", help="run this tree's router with [hub] on (the baseline as is)")
    parser.add_argument("--placement", choices=["alone", "shared", "both"], default="both",
                        help="core placement of the proxy (see above); 'both': alone first, then shared")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="py-spy the router under 0 ms / 64-connection load")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.memory_requests = 1, 2.0, 20_000
    if shutil.which("wrk") is None:
        print("bench: wrk is needed (Debian: apt-get install wrk; nginx too for its column)", file=sys.stderr)
        return 2
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        print("bench: core placement needs two cores", file=sys.stderr)
        return 2

    started_at = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    started: list[servers.Server] = []
    with contextlib.ExitStack() as cleanup:  # on the way out: servers stopped, then the worktree removed
        baseline = cleanup.enter_context(servers.worktree(args.baseline_ref)) if args.baseline_ref else None
        cleanup.callback(stop_all, started)
        backends = {name: servers.fast_backend(name, workdir, completion_delay=d) for name, d in BACKENDS.items()}
        backends["sse"] = servers.fast_backend("sse", workdir, chunk_delay=0.010)
        backends["hang"] = servers.fast_backend("hang", workdir, completion_delay=30.0, chunk_delay=0.5)
        started += backends.values()
        targets: dict[str, servers.Server] = {}
        targets["router"] = servers.router(backends, workdir, local_entry=True, hub=args.hub)
        if baseline is not None:
            tree, short = baseline
            name = f"router@{short}"
            targets[name] = servers.router(backends, workdir, local_entry=True, source=tree, name=name)
        targets["asgi-proxy-lib"] = servers.asgi_proxy_lib(backends, workdir)
        nginx = servers.nginx(backends, workdir)
        if nginx is not None:
            targets["nginx"] = nginx
        started += targets.values()
        results = run(args, workdir, cores, backends, targets, stamp)
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
    results["elapsed_s"] = time.monotonic() - started_at
    path = args.out / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nraw results: {path} ({results['elapsed_s'] / 60:.1f} minutes)")
    return 0


def stop_all(started: list[servers.Server]) -> None:
    for server in reversed(started):
        server.stop()


def run(
    args: argparse.Namespace,
    workdir: Path,
    cores: list[int],
    backends: dict[str, servers.Server],
    targets: dict[str, servers.Server],
    stamp: str,
) -> dict[str, Any]:
    scripts = {name: probes.wrk_script(workdir, name) for name in BACKENDS}
    everyone = {"direct": None, **targets}
    placements = ["alone", "shared"] if args.placement == "both" else [args.placement]

    def place(placement: Placement | None) -> None:
        """Pin backends and proxies per ``placement``; None: back onto both cores."""
        for server in backends.values():
            servers.pin(server.process.pid, cores if placement is None else [cores[placement.backends]])
        for server in targets.values():
            servers.pin(server.process.pid, cores if placement is None else [cores[placement.targets]])

    load: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {p: {} for p in placements}
    for round_index in range(args.rounds):
        current: Placement | None = None
        for placement_name, backend, connections, name in plan(placements, list(everyone)):
            placement = PLACEMENTS[placement_name]
            if placement is not current:
                place(placement)
                current = placement
            key, target = f"{backend}/c{connections}", everyone[name]
            url = (backends[backend] if target is None else target).url + "/v1/completions"
            measured = measure(url, target, connections, args.seconds, scripts[backend], [cores[placement.wrk]])
            load[placement_name].setdefault(key, {}).setdefault(name, []).append(measured)
            cpu = measured.get("cpu_us_per_req")
            print(f"round {round_index + 1} {placement_name:6} {key:10} {name:17} {measured['rps']:9.0f} rps "
                  f"p50 {measured['p50_ms']:.3f} ms" + (f"  {cpu:5.0f} us CPU/req" if cpu else ""),
                  flush=True)  # fmt: skip

    profiled: dict[str, Any] | None = None
    if args.profile:
        placement = PLACEMENTS["alone"]
        place(placement)
        profiled = profile_router(targets["router"], scripts["fast"], args.out / f"{stamp}-profile", cores, placement)
    place(None)  # the probes below ran unpinned before placement existed, and still do
    runs = 10 if args.quick else 40
    sse = {
        name: probes.sse_timing((backends["sse"] if t is None else t).url, "sse", runs) for name, t in everyone.items()
    }
    cancel: dict[str, dict[str, Any]] = {}
    for name, target in targets.items():
        for stream in (False, True):
            label = f"{name}/{'stream' if stream else 'completion'}"
            cancel[label] = probes.disconnect_latency(
                target.url, "hang", backends["hang"].url, 5 if args.quick else 20, stream
            )
    memory = memory_probe(args, workdir, targets["router"], scripts["fast"])
    cold = [cold_start_seconds(backends, workdir) for _ in range(1 if args.quick else 3)]
    return {
        "placements": {p: asdict(PLACEMENTS[p]) | {"cores": cores} for p in placements},
        "load": {p: summarise(by_key) for p, by_key in load.items()},
        "sse": sse,
        "cancel": cancel,
        "memory": memory,
        "cold_start_s": cold,
        "profile": profiled,
    }


def plan(placements: list[str], names: list[str]) -> Iterator[tuple[str, str, int, str]]:
    """One round's measurements, in order: (placement, backend, connections, target)."""
    for placement in placements:
        first = placement == placements[0]
        for backend, connections in SCENARIOS if first else SECOND_PLACEMENT_SCENARIOS:
            for name in names:
                if first or name not in FIRST_PLACEMENT_ONLY:
                    yield placement, backend, connections, name


def measure(
    url: str, target: servers.Server | None, connections: int, seconds: float, script: Path, wrk_cpus: list[int]
) -> dict[str, Any]:
    """One wrk run; for a proxy, also its CPU seconds over the run and CPU microseconds per request."""
    before = target.cpu_seconds() if target is not None else 0.0
    measured: dict[str, Any] = dict(probes.run_wrk(url, connections, seconds, script, wrk_cpus))
    if target is not None:
        cpu = target.cpu_seconds() - before
        measured["cpu_s"] = cpu
        measured["cpu_us_per_req"] = cpu / measured["requests"] * 1e6 if measured["requests"] else None
    return measured


def profile_router(
    router: servers.Server, script: Path, out: Path, cores: list[int], placement: Placement
) -> dict[str, Any]:
    """py-spy on the router for PROFILE_SECONDS in the middle of a 0 ms / 64-connection wrk run."""
    wrk_cpus = [cores[placement.wrk]]
    raw, text_file = out.with_suffix(".raw"), out.with_suffix(".txt")
    with ThreadPoolExecutor(1) as pool:
        wrk = pool.submit(probes.run_wrk, router.url + "/v1/completions", 64, PROFILE_SECONDS + 3, script, wrk_cpus)
        time.sleep(1.0)
        cpu_before = router.cpu_seconds()
        error = profile.record(router.process.pid, PROFILE_SECONDS, raw, wrk_cpus)
        cpu = router.cpu_seconds() - cpu_before
        rps = wrk.result()["rps"]
    if error is not None:
        print(f"bench: no profile: {error}", flush=True)
        return {"error": error}
    text = (
        f"router under 0 ms / 64-connection load ({rps:.0f} requests/s over the wrk run), placement alone, "
        f"py-spy at {profile.RATE} Hz for {PROFILE_SECONDS} s; router CPU during the recording: {cpu:.2f} s\n\n"
        f"{profile.summarise(raw.read_text())}\n"
    )
    text_file.write_text(text)
    return {"summary": text, "file": str(text_file), "raw": str(raw), "cpu_s": cpu, "rps": rps}


def cold_start_seconds(backends: dict[str, servers.Server], workdir: Path) -> float:
    """A new router whose 'cold' entry never ran: its first completion includes starting the stand-in."""
    router = servers.router(backends, workdir, local_entry=True)
    try:
        return probes.first_completion_seconds(router.url, "cold")
    finally:
        router.stop()


def memory_probe(args: argparse.Namespace, workdir: Path, router: servers.Server, script: Path) -> dict[str, Any]:
    """RSS and open descriptors of the router before and after N more requests."""
    url = router.url + "/v1/completions"
    probes.run_wrk(url, 64, 2, script)  # warm up: pools, caches, lazy imports
    before_rss, before_fds = servers.rss_kib(router.process.pid), servers.open_fds(router.process.pid)
    done = 0
    while done < args.memory_requests:
        done += int(probes.run_wrk(url, 64, 5, script)["requests"])
    time.sleep(1.0)  # let keep-alive connections from wrk close
    after_rss, after_fds = servers.rss_kib(router.process.pid), servers.open_fds(router.process.pid)
    return {
        "requests": done,
        "rss_before_mib": before_rss / 1024,
        "rss_after_mib": after_rss / 1024,
        "rss_growth_mib": (after_rss - before_rss) / 1024,
        "fds_before": before_fds,
        "fds_after": after_fds,
    }


def summarise(load: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per scenario and target: medians over rounds, ratios to direct from the same round, and the rounds."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for key, by_target in load.items():
        direct = by_target["direct"]
        summary[key] = {}
        for name, rounds in by_target.items():
            ratios = [r["rps"] / d["rps"] for r, d in zip(rounds, direct, strict=True)]
            added = [r["p50_ms"] - d["p50_ms"] for r, d in zip(rounds, direct, strict=True)]
            cpu = [r["cpu_us_per_req"] for r in rounds if r.get("cpu_us_per_req") is not None]
            summary[key][name] = {
                "rps": statistics.median(r["rps"] for r in rounds),
                "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
                "rps_ratio": statistics.median(ratios),
                "added_p50_ms": statistics.median(added),
                "cpu_us_per_req": statistics.median(cpu) if cpu else None,
                "non_2xx": sum(r["non_2xx"] for r in rounds),
                "socket_errors": sum(r["socket_errors"] for r in rounds),
                "rps_ratio_rounds": ratios,
                "cpu_us_per_req_rounds": cpu,
                "rounds": rounds,
            }
    return summary


def table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return lines


def spread(values: list[float], digits: int) -> str:
    """The median, and the range over rounds when there is more than one."""
    if not values:
        return "-"
    text = f"{statistics.median(values):.{digits}f}"
    return text + (f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else "")


def render(results: dict[str, Any]) -> str:
    placements, sse, cancel = list(results["load"]), results["sse"], results["cancel"]
    load = results["load"][placements[0]]
    names = [n for n in load["fast/c1"] if n != "direct"]
    header = ("proxy", "+p50 1 conn", "rps 0ms c16", "rps 0ms c64", "rps 20ms c64", "SSE +first event",
              "coalesced", "cancel p50 (completion / stream)")  # fmt: skip
    rows = [header]
    for name in names:

        def cancel_text(kind: str, name: str = name) -> str:
            c = cancel.get(f"{name}/{kind}", {})
            if not c or c["p50_ms"] is None:
                return "never"
            return f"{c['p50_ms']:.1f} ms" + (f" ({c['never_cancelled']} never)" if c["never_cancelled"] else "")

        rows.append(
            (
                name,
                f"+{load['fast/c1'][name]['added_p50_ms']:.3f} ms",
                f"{load['fast/c16'][name]['rps_ratio']:.3f}",
                f"{load['fast/c64'][name]['rps_ratio']:.3f}",
                f"{load['slow20/c64'][name]['rps_ratio']:.3f}",
                f"+{sse[name]['first_event_p50_ms'] - sse['direct']['first_event_p50_ms']:.2f} ms",
                f"{sse[name]['coalesced_events']}/{sse[name]['events']}",
                f"{cancel_text('completion')} / {cancel_text('stream')}",
            )
        )
    lines = [f"load figures: placement {placements[0]} ({PLACEMENTS[placements[0]].text}); ratios to direct", ""]
    lines += table(rows)

    cpu_rows = [("proxy", "placement", "rps 0ms c64", "rps 20ms c64", "CPU us/req 0ms c64", "CPU us/req 20ms c64")]
    for name in names:
        for placement in placements:
            fast, slow = results["load"][placement]["fast/c64"], results["load"][placement]["slow20/c64"]
            if name in fast:
                cpu_rows.append((name, placement, spread(fast[name]["rps_ratio_rounds"], 3),
                                 spread(slow[name]["rps_ratio_rounds"], 3),
                                 spread(fast[name]["cpu_us_per_req_rounds"], 0),
                                 spread(slow[name]["cpu_us_per_req_rounds"], 0)))  # fmt: skip
    lines += ["", "by core placement: ratios to direct and the proxy's CPU per request, median (range over rounds)", ""]
    lines += table(cpu_rows)
    lines.append("")
    for placement in placements:
        by_key = results["load"][placement]
        lines.append(f"direct, {placement}: {by_key['fast/c64']['direct']['rps']:.0f} rps at 64 conns (0 ms backend), "
                     f"{by_key['slow20/c64']['direct']['rps']:.0f} rps with the 20 ms backend")  # fmt: skip
    lines.append(f"direct p50 at 1 conn ({placements[0]}): {load['fast/c1']['direct']['p50_ms']:.3f} ms")
    lines += [compare(results, "router", name) for name in names if name.startswith("router@")]
    memory = results["memory"]
    lines += [
        f"router memory: RSS {memory['rss_before_mib']:.1f} -> {memory['rss_after_mib']:.1f} MiB "
        f"({memory['rss_growth_mib']:+.1f}) over {memory['requests']} requests; "
        f"fds {memory['fds_before']} -> {memory['fds_after']}",
        "local cold start (stand-in), first completion: "
        + ", ".join(f"{seconds:.2f} s" for seconds in results["cold_start_s"]),
    ]
    errors = {
        f"{p}/{k}/{n}": v["non_2xx"] + v["socket_errors"]
        for p, by_key in results["load"].items()
        for k, t in by_key.items()
        for n, v in t.items()
    }
    bad = {k: v for k, v in errors.items() if v}
    if bad:
        lines.append(f"non-2xx or socket errors: {bad}")
    if results.get("profile"):
        lines += ["", results["profile"].get("summary") or f"no profile: {results['profile']['error']}"]
        if "file" in results["profile"]:
            lines.append(f"profile: {results['profile']['file']} (raw stacks: {results['profile']['raw']})")
    return "\n".join(lines)


def compare(results: dict[str, Any], current: str, baseline: str) -> str:
    """The current router against a baseline revision: CPU per request and the 20 ms ratio, per placement."""
    lines = [f"{baseline} -> {current}:"]
    for placement, by_key in results["load"].items():
        cpu = []
        for key, label in (("fast/c64", "0ms c64"), ("slow20/c64", "20ms c64")):
            before, after = by_key[key][baseline]["cpu_us_per_req"], by_key[key][current]["cpu_us_per_req"]
            cpu.append(f"{label} {before:.0f} -> {after:.0f} us ({after / before - 1:+.0%})")
        slow = by_key["slow20/c64"]
        lines.append(f"  {placement}: CPU/req {', '.join(cpu)}; rps ratio 20ms c64 "
                     f"{slow[baseline]['rps_ratio']:.3f} -> {slow[current]['rps_ratio']:.3f}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
