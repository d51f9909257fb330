"""Where `fleet up` listens: the address checked, and taken, before anything is printed.

:func:`exposure` says whether a listen address may serve these settings (an open fleet on a
non-loopback address needs ``--public``, as `fleet deploy` does) and what to warn about (plain HTTP
off this machine). :func:`bind_router` binds the router's socket itself, so a taken port is one line
of advice (the port to pass, or the fleet already there) instead of a banner followed by uvicorn's
``[Errno 98]``; the bound socket is what uvicorn then serves on, so nothing can take it in between.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import urllib.request

from apps.cli.common import CliError
from fleet.settings import FleetSettings

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
PROBE_SECONDS = 2.0  # how long the fleet already on a taken port may take to answer /fleet/health


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def exposure(settings: FleetSettings, host: str, *, public: bool) -> tuple[list[str], list[str]]:
    """(refusals, warnings) for serving ``settings`` on ``host``; both empty on loopback."""
    if is_loopback(host):
        return [], []
    shown = host or "every interface"
    refusals = []
    if settings.auth_mode == "open" and not public:
        refusals.append(
            f"not listening on {shown}: the fleet is open (no team tokens), so anyone on the network who reaches "
            f"it can use every entry a team may use, by naming the team. Give every team a token (fleet token "
            f"new --team TEAM --label LABEL --write), or pass --public if an open fleet on the network is what "
            f"you want (or keep the default --host 127.0.0.1)"
        )
    warnings = [
        f"listening on {shown} over plain HTTP: team and admin tokens, prompts and completions cross the network "
        f"in clear. Put TLS in front (a reverse proxy such as Caddy or nginx terminating https:// and forwarding "
        f"to this port on 127.0.0.1, or an SSH tunnel), and give the IDEs the https:// URL"
    ]
    return refusals, warnings


def bind_router(host: str, port: int, connect_url: str) -> socket.socket:
    """A socket bound to host:port (not yet listening: uvicorn listens on it), or a CliError with the fix;
    ``connect_url`` is how a client here reaches that address, to see what already answers there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses the port
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(*_taken(host, port, connect_url)) from None
        if exc.errno == errno.EACCES:
            raise CliError(
                f"cannot listen on {host}:{port}: {exc.strerror} (ports below 1024 need root).",
                "Fix: pass --port with a port of 1024 or above, e.g. --port 8080.",
            ) from None
        raise CliError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}.",
            "Fix: pass --host with an address of this machine (127.0.0.1, 0.0.0.0 for every interface).",
        ) from None
    sock.set_inheritable(True)
    return sock


def _taken(host: str, port: int, connect_url: str) -> list[str]:
    if answers_like_a_fleet(connect_url):
        return [
            f"port {port} on {host} is taken: another fleet is probably running: see {connect_url}/fleet/health.",
            f"Fix: stop that one (Ctrl-C in its terminal), use it, or start this one on another port: "
            f"--port {port + 1}.",
        ]
    return [
        f"port {port} on {host} is already in use by another program.",
        f"Fix: start the router on another port (--port {port + 1}), or stop what listens there "
        f"(`ss -ltnp 'sport = :{port}'` names it).",
    ]


def answers_like_a_fleet(base_url: str) -> bool:
    """Whether ``base_url``/fleet/health answers as a tabby-fleet router does (JSON with an entries table)."""
    try:
        with urllib.request.urlopen(f"{base_url}/fleet/health", timeout=PROBE_SECONDS) as answer:
            body = json.loads(answer.read(1024 * 1024))
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and isinstance(body.get("entries"), dict)
