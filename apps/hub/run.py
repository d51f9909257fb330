"""The hub as one supervised process: restore, run, snapshot, and a last snapshot at a clean stop.

``python -m apps.hub.run --root R --snapshots S --interval N --keep K [--config FILE] -- <argv...>``

1. The newest complete snapshot under S is restored into R. R is scratch, as a Modal container's local
   disk is: the same code path runs locally and on Modal. (With no snapshot yet, R is left as it is.)
2. ``--config FILE`` is copied to ``R/config.toml`` after the restore: today's settings (the router's
   URL, the chat entry) win over the snapshot's.
3. The child (``tabby serve`` with its webserver on, or the stand-in hub) starts with ``TABBY_ROOT=R``
   and dies with this process (``PR_SET_PDEATHSIG``); a snapshot is taken every N seconds.
4. SIGTERM or SIGINT: the child is stopped, a final snapshot taken, and this process exits 0. When the
   child exits by itself, a final snapshot is taken and this process exits with the child's code (1 if
   that was 0: a hub that ends by itself has failed).

So a ``kill -9`` of this process loses at most one interval of the hub's data; a clean stop loses nothing
(tests/test_hub_run.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

from apps.hub.snapshots import Snapshotter, restore
from apps.tabby import die_with_parent

log = logging.getLogger("tabby_fleet.hub.run")

STOP_GRACE_SECONDS = 20.0  # SIGTERM to the child, then SIGKILL after this long


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__name__}", description="Run the hub: restore its newest snapshot, supervise it, snapshot it."
    )
    parser.add_argument("--root", type=Path, required=True, help="TABBY_ROOT: scratch, restored at every start")
    parser.add_argument("--snapshots", type=Path, required=True, help="where snapshots are kept (survives restarts)")
    parser.add_argument("--interval", type=float, required=True, help="seconds between snapshots")
    parser.add_argument("--keep", type=int, default=3, help="complete snapshots kept")
    parser.add_argument("--name", default="hub", help="the snapshots' name (on Modal: the task id)")
    parser.add_argument("--config", type=Path, default=None, help="copied to ROOT/config.toml after the restore")
    parser.add_argument("child", nargs=argparse.REMAINDER, help="-- then the hub's argv")
    args = parser.parse_args(argv)
    if args.child[:1] == ["--"]:
        args.child = args.child[1:]
    if not args.child:
        parser.error("give the hub's command after --, e.g. -- tabby serve --port 8080 --device cpu")
    if args.interval <= 0 or args.keep < 1:
        parser.error("--interval must be above 0 and --keep at least 1")
    return args


def prepare_root(root: Path, snapshots: Path, config_toml: str | None) -> Path | None:
    """The hub's TABBY_ROOT before Tabby starts, locally and on Modal (apps/modal/hub_server.py): the newest
    complete snapshot restored into ``root`` (none on a first start), then today's ``config.toml`` written over
    the restored one (mode 0600: it holds the router token). Returns the snapshot restored, or None."""
    restored = restore(snapshots, root)
    root.mkdir(parents=True, exist_ok=True)
    if config_toml is not None:
        config = root / "config.toml"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(config_toml)
        os.chmod(config, 0o600)  # a restored copy kept its own mode
    return restored


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s hub %(levelname)s %(message)s")
    root: Path = args.root.resolve()
    snapshots: Path = args.snapshots.resolve()
    restored = prepare_root(root, snapshots, args.config.read_text() if args.config is not None else None)
    if restored is not None:
        log.info("restored %s into %s", restored, root)
    else:
        log.info("no snapshot under %s yet: %s is used as it is", snapshots, root)

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env = {**os.environ, "TABBY_ROOT": str(root)}
    # From the main thread: PR_SET_PDEATHSIG follows the thread that started the child.
    child = subprocess.Popen(args.child, env=env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    log.info("started %s (pid %d), TABBY_ROOT=%s", args.child[0], child.pid, root)
    snapshotter = Snapshotter(root, snapshots, interval=args.interval, keep=args.keep, name=args.name)
    snapshotter.start()

    while not stopping.is_set() and child.poll() is None:
        stopping.wait(0.2)
    code = 0
    if child.poll() is None:
        log.info("stopping pid %d", child.pid)
        child.terminate()
        try:
            child.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %ss; killing it", child.pid, STOP_GRACE_SECONDS)
            child.kill()
            child.wait()
    else:
        code = child.returncode or 1
        log.error("the hub (pid %d) exited with code %d; taking a last snapshot", child.pid, child.returncode)
    final = snapshotter.stop(final=True)
    log.info("last snapshot: %s", final)
    return code


if __name__ == "__main__":
    sys.exit(main())
