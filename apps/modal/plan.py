"""`fleet plan`'s Modal section: build the app offline and print what it declares."""

from __future__ import annotations

from apps.modal.app import DATA_MOUNT, EMBEDDING_MODEL, build_fleet_app
from apps.modal.inspect import describe_app
from fleet.settings import FleetSettings


def modal_plan(settings: FleetSettings) -> str:
    fleet = build_fleet_app(settings, {"__name__": "apps.modal.deploy"})
    declared = describe_app(fleet.app)
    options = settings.modal
    lines = [
        f"Modal deploy: app {options.app_name!r}, volume {options.volume!r} at {DATA_MOUNT}, "
        f"Tabby image {options.tabby_image}",
        f"  shared image layers (built and stored once for every entry): {options.tabby_image}, "
        f"{EMBEDDING_MODEL} (every Tabby 0.32 loads it), the settings packages",
    ]
    for entry in settings.entries:
        if entry.url is not None:
            lines.append(f"  {entry.name}: external {entry.url}, nothing deployed")
            continue
        cls = declared[entry.class_name]
        web = cls["web"]["serve"]
        downloads = [c.rsplit(" ", 1)[-1] for c in cls["image"] if " download --model " in c]
        inputs = f"max_inputs={cls['max_inputs']}" + (
            f", target_inputs={cls['target_inputs']}" if cls["target_inputs"] else ""
        )
        lines += [
            f"  class {entry.class_name} (entry {entry.name}): GPU {', else '.join(cls['gpu'])}",
            f"    containers {cls['min_containers']}..{cls['max_containers']}"
            + (f" (+{cls['buffer_containers']} buffer)" if cls["buffer_containers"] else "")
            + f", idle {cls['scaledown_window']}s, {inputs}",
            f"    timeouts: request {cls['timeout']}s, container start {cls['startup_timeout']}s, "
            f"port {web['port']} wait {web['startup_timeout']:g}s; proxy auth: "
            f"{'required' if web['requires_proxy_auth'] else 'OFF'}",
            f"    image downloads at build: {', '.join(downloads)}",
            f"    runs: {' '.join(fleet.user_classes[entry.name].SERVE_ARGV)}",  # type: ignore[attr-defined]
            f"    TABBY_ROOT={DATA_MOUNT}/{entry.name}/<container's task id> (one per container) "
            f"on volume {', '.join(sorted(set(cls['volumes'].values())))}",
        ]
    router = declared["router"]
    label = router["web"]["router"]["label"] or f"{options.app_name}-router (Modal's default)"
    lines += [
        f"  function router (asgi_app, label {label}): containers "
        f"{router['min_containers']}..{router['max_containers']}, max_inputs={router['max_inputs']}, "
        f"cpu {router['cpu'] or 'Modal default'}, memory "
        f"{str(router['memory']) + ' MiB' if router['memory'] else 'Modal default'}, "
        f"secret {options.proxy_auth_secret!r}",
    ]
    if "warm_hours" in declared:
        warm = [entry.name for entry in settings.entries if entry.warm and entry.url is None]
        lines.append(
            f"  function warm_hours (schedule {declared['warm_hours']['schedule']}): sets min_containers of "
            f"{', '.join(warm)} for their warm hours (update_autoscaler; a deploy resets it, the next run re-applies)"
        )
    lines.append(f"  fleet deploy / serve: {deploy_readiness(settings)}")
    return "\n".join(lines)


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
