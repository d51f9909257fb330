"""The processes a benchmark run needs: stand-in backends, the router, the baselines."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

BENCH_TOKEN = "tft_bench-token"  # the router runs with team tokens on: auth is part of its cost
REPO = Path(__file__).resolve().parent.parent
# The router's command-line module, by the file that defines it: the package may be renamed, and a
# baseline revision runs whichever layout it has.
CLI_MODULES = {
    "tabby_fleet/cli.py": "tabby_fleet.cli",
    "apps/cli.py": "apps.cli",
    "apps/cli/main.py": "apps.cli.main",
}
TOP_PACKAGES = ("tabby_fleet", "apps", "fleet", "router")  # each one a tree has must import from it


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    cpu_of_children: bool = False  # nginx: the master only waits; its worker does the work

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def cpu_seconds(self) -> float:
        """utime + stime so far: of the process (all its threads), or of its children (nginx)."""
        pids = process_tree(self.process.pid)[1:] if self.cpu_of_children else [self.process.pid]
        return sum(cpu_seconds(pid) for pid in pids)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not open port {port} within {timeout}s")


def _spawn(name: str, argv: list[str], port: int, log_dir: Path, cwd: Path | None = None) -> Server:
    log = (log_dir / f"{name}.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    wait_port(port, process, name)
    return Server(name, f"http://127.0.0.1:{port}", process)


def fast_backend(name: str, log_dir: Path, *, completion_delay: float = 0.0, chunk_delay: float = 0.0) -> Server:
    """A Tabby-shaped backend fast enough that the proxy, not the backend, is what gets measured."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.fast_backend", "--port", str(port),
            "--completion-delay", str(completion_delay), "--chunk-delay", str(chunk_delay)]  # fmt: skip
    return _spawn(f"backend-{name}", argv, port, log_dir, cwd=REPO)


def router(
    backends: dict[str, Server], log_dir: Path, local_entry: bool = False, source: Path = REPO, name: str = "router",
    *, hub: bool = False,
) -> Server:  # fmt: skip
    """`fleet up` with one url entry per backend and one token team (routing and auth on); ``hub``: [hub] on too.

    ``source``: the tree whose code runs (a git worktree of an older revision, or this checkout); it
    goes first on PYTHONPATH, and where the router's packages import from is checked before start.
    """
    digest = hashlib.sha256(BENCH_TOKEN.encode()).hexdigest()
    lines = []
    for name, backend in backends.items():
        lines += ["[[entries]]", f'name = "{name}"', f'model = "bench/{name}"', f'chat_model = "bench/chat-{name}"',
                  f'url = "{backend.url}"', "max_containers = 64", "max_inputs = 64", ""]  # fmt: skip
    if local_entry:  # a stand-in the router starts itself, for the cold-start probe
        lines += ["[[entries]]", 'name = "cold"', 'model = "bench/cold"', ""]
    lines += ["[[teams]]", 'name = "bench"', f'token_sha256 = ["{digest}"]', ""]
    if hub:  # the hub on (a backend stands in for it: completions never reach it), so its cost on them shows
        first = next(iter(backends.values()))
        lines += ["[hub]", "enabled = true", f'url = "{first.url}"', f'chat_entry = "{next(iter(backends))}"',
                  'router_team = "bench"', ""]  # fmt: skip
    workdir = log_dir / f"router-{time.monotonic_ns()}"
    workdir.mkdir()
    (workdir / "fleet.toml").write_text("\n".join(lines))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")} | {"PYTHONPATH": str(source)}
    check_imports_from(source, env, workdir)
    port = free_port()
    argv = [sys.executable, "-m", cli_module(source), "up", "--port", str(port), "--log-level", "warning"]
    log = (log_dir / f"{name.replace('@', '-')}.log").open("ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    wait_port(port, process, name)
    return Server(name, f"http://127.0.0.1:{port}", process)


def cli_module(tree: Path) -> str:
    for path, module in CLI_MODULES.items():
        if (tree / path).is_file():
            return module
    raise RuntimeError(f"no router command-line module in {tree} (looked for {', '.join(CLI_MODULES)})")


def check_imports_from(tree: Path, env: dict[str, str], cwd: Path) -> None:
    """Fail loudly unless the router's packages, imported as the router will, come from ``tree``."""
    packages = [p for p in TOP_PACKAGES if (tree / p / "__init__.py").is_file()]
    code = "import importlib\n" + "".join(f"print(importlib.import_module({p!r}).__file__)\n" for p in packages)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    for package, file in zip(packages, out.stdout.split(), strict=True):
        if not Path(file).resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(
                f"{package} imports from {file}, not from {tree}: the bench would measure the wrong code"
            )
        print(f"bench: {package} from {file}", flush=True)


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[tuple[Path, str]]:
    """A detached git worktree of ``rev`` (and its short hash), removed again on the way out."""
    found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", f"{rev}^{{commit}}"],
                           capture_output=True, text=True)  # fmt: skip
    if found.returncode != 0:
        raise SystemExit(f"bench: --baseline-ref {rev}: not a commit here ({found.stderr.strip()})")
    short = found.stdout.strip()
    path = Path(tempfile.mkdtemp(prefix=f"fleet-bench-{short}-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--quiet", "--detach", str(path), short], check=True)
    try:
        yield path, short
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def asgi_proxy_lib(backends: dict[str, Server], log_dir: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.asgi_proxy_baseline", "--port", str(port)]
    argv += [f"{name}={backend.url}" for name, backend in backends.items()]
    return _spawn("asgi-proxy-lib", argv, port, log_dir, cwd=REPO)


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  {upstreams}
  map $http_x_tabby_model $fleet_backend {{ default {first}; {mapping} }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://$fleet_backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def nginx(backends: dict[str, Server], log_dir: Path) -> Server | None:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        return None
    folder = log_dir / "nginx"
    folder.mkdir(exist_ok=True)
    port = free_port()
    upstreams = " ".join(
        f"upstream {name} {{ server 127.0.0.1:{backend.port}; keepalive 128; }}" for name, backend in backends.items()
    )
    conf = NGINX_CONF.format(
        dir=folder, port=port, upstreams=upstreams, first=next(iter(backends)),
        mapping=" ".join(f"{name} {name};" for name in backends),
    )  # fmt: skip
    (folder / "nginx.conf").write_text(conf)
    server = _spawn("nginx", [binary, "-c", str(folder / "nginx.conf"), "-p", str(folder)], port, log_dir)
    server.cpu_of_children = True
    return server


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces): fields 3 onwards."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, its threads included (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def process_tree(pid: int) -> list[int]:
    """The process and its descendants, parents first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                parents.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    tree = [pid]
    for p in tree:
        tree += parents.get(p, [])
    return tree


def pin(pid: int, cpus: Iterable[int]) -> None:
    """Every thread of the process and of its descendants onto ``cpus`` (like ``taskset -a -p``)."""
    for process in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{process}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task), set(cpus))
