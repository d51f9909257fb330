"""The processes a benchmark run needs: stand-in backends, the router, the baselines."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_TOKEN = "tft_bench-token"  # the router runs with team tokens on: auth is part of its cost


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

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
    return _spawn(f"backend-{name}", argv, port, log_dir, cwd=Path(__file__).resolve().parent.parent)


def router(backends: dict[str, Server], log_dir: Path, local_entry: bool = False) -> Server:
    """`fleet up` with one url entry per backend and one token team (routing and auth on)."""
    digest = hashlib.sha256(BENCH_TOKEN.encode()).hexdigest()
    lines = []
    for name, backend in backends.items():
        lines += ["[[entries]]", f'name = "{name}"', f'model = "bench/{name}"', f'url = "{backend.url}"',
                  "max_containers = 64", "max_inputs = 64", ""]  # fmt: skip
    if local_entry:  # a stand-in the router starts itself, for the cold-start probe
        lines += ["[[entries]]", 'name = "cold"', 'model = "bench/cold"', ""]
    lines += ["[[teams]]", 'name = "bench"', f'token_sha256 = ["{digest}"]', ""]
    workdir = log_dir / f"router-{time.monotonic_ns()}"
    workdir.mkdir()
    (workdir / "fleet.toml").write_text("\n".join(lines))
    port = free_port()
    argv = [sys.executable, "-m", "tabby_fleet.cli", "up", "--port", str(port), "--log-level", "warning"]
    env_free = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    log = (log_dir / "router.log").open("ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env_free)
    wait_port(port, process, "router")
    return Server("router", f"http://127.0.0.1:{port}", process)


def asgi_proxy_lib(backends: dict[str, Server], log_dir: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.asgi_proxy_baseline", "--port", str(port)]
    argv += [f"{name}={backend.url}" for name, backend in backends.items()]
    return _spawn("asgi-proxy-lib", argv, port, log_dir, cwd=Path(__file__).resolve().parent.parent)


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
    return _spawn("nginx", [binary, "-c", str(folder / "nginx.conf"), "-p", str(folder)], port, log_dir)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
