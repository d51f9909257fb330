"""The proxy benchmark: direct vs the router vs asgi-proxy-lib vs nginx, interleaved, in one run.

    ./dev bench                 # about 6 minutes; needs wrk (apt-get install wrk), nginx optional
    ./dev bench --quick         # one short round, for a smoke check

Every number is reported next to the direct connection measured in the same round, because these
machines are shared and noisy: ratios and differences, not absolute figures, are what carries over.
Results go to stdout (one table) and bench/results/<time>.json. Method: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import probes, servers

CONNECTIONS = (1, 16, 64)
BACKENDS = {"fast": 0.0, "slow20": 0.020}  # completion_delay in seconds: the "0 ms" and "20 ms" backends


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--seconds", type=float, default=4.0, help="wrk duration per measurement")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, fewer probes")
    parser.add_argument("--memory-requests", type=int, default=100_000, help="requests for the RSS probe")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.memory_requests = 1, 2.0, 20_000
    if shutil.which("wrk") is None:
        print("bench: wrk is needed (Debian: apt-get install wrk; nginx too for its column)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    started: list[servers.Server] = []
    try:
        backends = {name: servers.fast_backend(name, workdir, completion_delay=d) for name, d in BACKENDS.items()}
        backends["sse"] = servers.fast_backend("sse", workdir, chunk_delay=0.010)
        backends["hang"] = servers.fast_backend("hang", workdir, completion_delay=30.0, chunk_delay=0.5)
        started += backends.values()
        targets: dict[str, servers.Server] = {}
        targets["router"] = servers.router(backends, workdir, local_entry=True)
        targets["asgi-proxy-lib"] = servers.asgi_proxy_lib(backends, workdir)
        nginx = servers.nginx(backends, workdir)
        if nginx is not None:
            targets["nginx"] = nginx
        started += targets.values()
        results = run(args, workdir, backends, targets)
    finally:
        for server in reversed(started):
            server.stop()
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / time.strftime("%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nraw results: {path}")
    return 0


def run(
    args: argparse.Namespace, workdir: Path, backends: dict[str, servers.Server], targets: dict[str, servers.Server]
) -> dict[str, Any]:
    scripts = {name: probes.wrk_script(workdir, name) for name in BACKENDS}
    everyone = {"direct": None, **targets}
    load: dict[str, dict[str, list[dict[str, float]]]] = {}
    for round_index in range(args.rounds):
        for backend in BACKENDS:
            for connections in CONNECTIONS:
                key = f"{backend}/c{connections}"
                for name, target in everyone.items():
                    url = (backends[backend] if target is None else target).url + "/v1/completions"
                    measured = probes.run_wrk(url, connections, args.seconds, scripts[backend])
                    load.setdefault(key, {}).setdefault(name, []).append(measured)
                    print(f"round {round_index + 1} {key:10} {name:15} {measured['rps']:9.0f} rps "
                          f"p50 {measured['p50_ms']:.3f} ms", flush=True)  # fmt: skip

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
    return {"load": summarise(load), "sse": sse, "cancel": cancel, "memory": memory, "cold_start_s": cold}


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


def summarise(load: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per scenario and target: medians over rounds, and ratios to direct from the same round."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for key, by_target in load.items():
        direct = by_target["direct"]
        summary[key] = {}
        for name, rounds in by_target.items():
            ratios = [r["rps"] / d["rps"] for r, d in zip(rounds, direct, strict=True)]
            added = [r["p50_ms"] - d["p50_ms"] for r, d in zip(rounds, direct, strict=True)]
            summary[key][name] = {
                "rps": statistics.median(r["rps"] for r in rounds),
                "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
                "rps_ratio": statistics.median(ratios),
                "added_p50_ms": statistics.median(added),
                "non_2xx": sum(r["non_2xx"] for r in rounds),
                "socket_errors": sum(r["socket_errors"] for r in rounds),
            }
    return summary


def render(results: dict[str, Any]) -> str:
    load, sse, cancel = results["load"], results["sse"], results["cancel"]
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
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    direct = load["fast/c64"]["direct"]
    memory = results["memory"]
    lines += [
        "",
        f"direct: {direct['rps']:.0f} rps at 64 conns (0 ms backend), p50 {load['fast/c1']['direct']['p50_ms']:.3f} ms "
        f"at 1 conn; {load['slow20/c64']['direct']['rps']:.0f} rps with the 20 ms backend",
        f"router memory: RSS {memory['rss_before_mib']:.1f} -> {memory['rss_after_mib']:.1f} MiB "
        f"({memory['rss_growth_mib']:+.1f}) over {memory['requests']} requests; "
        f"fds {memory['fds_before']} -> {memory['fds_after']}",
        "local cold start (stand-in), first completion: "
        + ", ".join(f"{seconds:.2f} s" for seconds in results["cold_start_s"]),
    ]
    errors = {f"{k}/{n}": v["non_2xx"] + v["socket_errors"] for k, t in load.items() for n, v in t.items()}
    bad = {k: v for k, v in errors.items() if v}
    if bad:
        lines.append(f"non-2xx or socket errors: {bad}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
