"""`fleet plan`'s Modal section: the specs :mod:`apps.modal.deploy` declares the app from, printed."""

from __future__ import annotations

from apps.modal.app import DATA_MOUNT, EMBEDDING_MODEL, fleet_spec
from apps.modal.hub import HUB_ROOT, HUB_SNAPSHOTS, hub_deployed, hub_spec
from apps.tabby import hub_chat_url
from fleet.hub import JWT_SECRET_ENV, ROUTER_TOKEN_ENV, TEAM_TOKENS_ENV
from fleet.settings import FleetSettings


def modal_plan(settings: FleetSettings) -> str:
    fleet = fleet_spec(settings)
    specs = {spec.entry.name: spec for spec in fleet.entries}
    options = settings.modal
    lines = [
        f"Modal deploy: app {fleet.app_name!r}, volume {options.volume!r} at {DATA_MOUNT}, "
        f"Tabby image {options.tabby_image}",
        f"  shared image layers (built and stored once for every entry): {options.tabby_image}, "
        f"{EMBEDDING_MODEL} (every Tabby 0.32 loads it), the settings packages",
    ]
    for entry in settings.entries:
        if entry.url is not None:
            lines.append(f"  {entry.name}: external {entry.url}, nothing deployed")
            continue
        spec = specs[entry.name]
        cls, web, concurrent = spec.cls, spec.web_server, spec.concurrent
        inputs = f"max_inputs={concurrent['max_inputs']}" + (
            f", target_inputs={concurrent['target_inputs']}" if "target_inputs" in concurrent else ""
        )
        buffer = cls.get("buffer_containers")
        lines += [
            f"  class {spec.class_name} (entry {entry.name}): GPU {', else '.join(modal_gpus(cls['gpu']))}",
            f"    containers {cls['min_containers']}..{cls['max_containers']}"
            + (f" (+{buffer} buffer)" if buffer else "")
            + f", idle {cls['scaledown_window']}s, {inputs}",
            f"    timeouts: request {cls['timeout']}s, container start {cls['startup_timeout']}s, "
            f"port {web['port']} wait {web['startup_timeout']:g}s; proxy auth: "
            f"{'required' if web['requires_proxy_auth'] else 'OFF'}",
            f"    image downloads at build: {', '.join([EMBEDDING_MODEL, *spec.models])}",
            f"    runs: {' '.join(spec.argv)}",
            f"    TABBY_ROOT={DATA_MOUNT}/{entry.name}/<container's task id> (one per container) "
            f"on volume {', '.join(sorted({volume.name for volume in cls['volumes'].values()}))}",
        ]
    lines += hub_modal_plan(settings)
    router = fleet.router.function
    hub_secret = f" and the hub's {settings.hub.secret!r} ({TEAM_TOKENS_ENV})" if settings.hub.enabled else ""
    label = (fleet.router.asgi_app or {}).get("label") or f"{options.app_name}-router (Modal's default)"
    lines += [
        f"  function router (asgi_app, label {label}): containers "
        f"{router['min_containers']}..{router['max_containers']}, "
        f"max_inputs={(fleet.router.concurrent or {}).get('max_inputs')}, "
        f"cpu {router['cpu'] or 'Modal default'}, memory "
        f"{str(router['memory']) + ' MiB' if router['memory'] else 'Modal default'}, "
        f"secret {options.proxy_auth_secret!r}{hub_secret}",
    ]
    if fleet.warm is not None:
        warm = [entry.name for entry in settings.entries if entry.warm and entry.url is None]
        lines.append(
            f"  function warm_hours (schedule Cron('{fleet.warm.cron}', UTC)): sets min_containers of "
            f"{', '.join(warm)} for their warm hours (update_autoscaler; a deploy resets it, the next run re-applies)"
        )
    lines.append(f"  fleet deploy / serve: {deploy_readiness(settings)}")
    return "\n".join(lines)


def hub_modal_plan(settings: FleetSettings) -> list[str]:
    """The hub's lines of the Modal section: its class, or the external hub; none when [hub] is off."""
    hub = settings.hub
    if not hub.enabled:
        return []
    if not hub_deployed(settings):
        return [f"  hub: external {hub.url}, nothing deployed"]
    spec = hub_spec(settings)
    cls, web = spec.cls, spec.web_server
    gpu = ", else ".join(modal_gpus(cls["gpu"])) if cls["gpu"] else "none (a CPU container)"
    return [
        f"  class {spec.class_name} (the hub): GPU {gpu}, containers {cls['min_containers']}..1 (one Tabby owns "
        f"its database), idle {cls['scaledown_window']}s, max_inputs={spec.concurrent['max_inputs']}",
        f"    timeouts: request {cls['timeout']}s, container start {cls['startup_timeout']}s, port {web['port']} wait "
        f"{web['startup_timeout']:g}s; proxy auth: {'required' if web['requires_proxy_auth'] else 'OFF'}",
        f"    image: the shared layers ({EMBEDDING_MODEL}), no model of its own; runs: {' '.join(spec.argv)}",
        f"    TABBY_ROOT={HUB_ROOT} on the container's disk; snapshots to volume {hub.volume!r} (created if missing) "
        f"at {HUB_SNAPSHOTS}, every {hub.snapshot_interval}s and at exit, {hub.snapshots_kept} kept, the newest "
        "restored at start",
        f"    secret {hub.secret!r} (create it first): {JWT_SECRET_ENV}, {ROUTER_TOKEN_ENV}, {TEAM_TOKENS_ENV}",
        f"    chat: {hub_chat_url('<router URL>', spec.chat_entry)}, model {spec.chat_model}"
        + (f", as team {hub.router_team}" if hub.router_team else ""),
    ]


def modal_gpus(gpu: str | list[str]) -> list[str]:
    """The GPUs as Modal reads them: upper case, a count of 1 left out (``l4:1`` -> ``L4``)."""
    shown = []
    for choice in [gpu] if isinstance(gpu, str) else gpu:
        kind, _, count = choice.upper().partition(":")
        shown.append(f"{kind}:{count}" if count and int(count) > 1 else kind)
    return shown


def deploy_readiness(settings: FleetSettings) -> str:
    """What `fleet deploy` will ask for before it exposes this fleet (apps/cli.py deploy_refusals)."""
    needs = []
    if settings.auth_mode == "open":
        needs.append("--public (the fleet is open: no team tokens)")
    if not settings.router.admin_token_digests:
        needs.append("--no-admin (no admin token: /metrics and /fleet/* would answer nobody)")
    if needs:
        return "refused unless given " + " and ".join(needs)
    return "ready (team tokens and an admin token are set)"
