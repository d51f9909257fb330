"""What `fleet plan` prints about the fleet itself: the entries table, what each entry costs a month, and the warm
hours with their cost."""

from __future__ import annotations

from apps.cli.common import text_table
from fleet.settings import Entry, FleetSettings
from fleet.warm import WARM_LEAD, WEEKS_PER_MONTH, warm_hours_per_month


def plan_table(settings: FleetSettings) -> str:
    header = ("entry", "model", "chat model", "GPU", "idle", "containers", "inputs", "while cold", "teams")
    rows: list[tuple[str, ...]] = [header]
    for entry in settings.entries:
        teams = [t.name for t in settings.teams if t.entry == entry.name]
        allowed = [
            t.name
            for t in settings.teams
            if t.entry != entry.name and (not t.allowed_entries or entry.name in t.allowed_entries)
        ]
        team_text = ", ".join(teams) + (f" (+ may use: {', '.join(allowed)})" if allowed else "")
        name = entry.name + (" *" if entry.name == settings.router.default_entry else "")
        rows.append(
            (
                name,
                entry.model,
                entry.chat_model or "-",
                entry.gpu_text if not entry.url else f"(external {entry.url})",
                f"{entry.scaledown_window}s",
                f"{entry.min_containers}..{entry.max_containers}",
                f"{entry.max_inputs}/container = {entry.capacity}",
                while_cold(entry),
                team_text or "-",
            )
        )
    lines = text_table(rows).splitlines()
    if settings.router.default_entry:
        lines.append("* default entry: used when no team or model header selects one")
    return "\n".join(lines)


def while_cold(entry: Entry) -> str:
    """Where a completion for this entry goes while it starts (docs/OPERATIONS.md, Cold starts)."""
    if entry.fallback is None:
        return "waits"
    chat = ", chat too" if entry.fallback_chat else ""
    return f"{entry.fallback} after {entry.cold_wait:g}s{chat}"


def warm_plan(settings: FleetSettings) -> list[str]:
    """The warm-hours lines: each entry's windows, their GPU-hours and cost per month."""
    prices = settings.prices
    warm = [entry for entry in settings.entries if entry.warm]
    if not warm:
        return []
    lead = int(WARM_LEAD.total_seconds() // 60)
    lines = [
        f"Warm hours (GPU-hours a month above min_containers: {WEEKS_PER_MONTH:.3f} weeks a month, each window "
        f"from {lead} min before its start, DST ignored; prices of {prices.date}, {prices.currency}):"
    ]
    for entry in warm:
        hourly = prices.entry_hourly(entry.gpus)
        lines.append(f"  {entry.name} (GPU {entry.gpus[0]}, min_containers {entry.min_containers}):")
        parts = [(str(window), entry.model_copy(update={"warm": (window,)})) for window in entry.warm]
        if len(parts) > 1:
            parts.append(("all windows together (overlaps counted once)", entry))
        for text, priced in parts:
            hours = warm_hours_per_month(priced)
            cost = (
                f"{prices.currency} {hours * hourly:,.2f} a month ({prices.currency} {hourly:g} per container-hour)"
                if hourly is not None
                else f"cost unknown: no price for {entry.gpus[0]} (set [prices] gpu_hour)"
            )
            lines.append(f"    {text} -> {hours * entry.gpu_count:,.1f} GPU-hours a month, {cost}")
    return lines


def cost_plan(settings: FleetSettings) -> list[str]:
    """What each entry may cost a month on Modal: its price per container-hour, its min_containers kept up all
    month (warm hours come on top: warm_plan), and the worst case, max_containers busy all month."""
    prices = settings.prices
    hours = WEEKS_PER_MONTH * 7 * 24
    money = prices.currency
    lines = [
        f"Cost on Modal (GPU only, a month = {hours:,.0f} hours; prices of {prices.date}, {money}, from "
        f"{prices.source}; set [prices] to use your own):"
    ]
    floors, worsts = [], []
    for entry in settings.entries:
        if entry.url is not None:
            lines.append(f"  {entry.name}: external ({entry.url}): costs nothing of ours")
            continue
        hourly = prices.entry_hourly(entry.gpus)
        if hourly is None:
            lines.append(
                f"  {entry.name} (GPU {entry.gpus[0]}): cost unknown: no price for {entry.gpus[0]} "
                f"(set [prices] gpu_hour)"
            )
            continue
        floor = entry.min_containers * hourly * hours
        kept = (
            f"min_containers {entry.min_containers} kept up: {money} {floor:,.2f} a month"
            if entry.min_containers
            else "min_containers 0: nothing while unused"
        )
        warm = " (+ warm hours, below)" if entry.warm else ""
        worst = entry.max_containers * hourly * hours
        floors.append(floor)
        worsts.append(worst)
        lines.append(
            f"  {entry.name} (GPU {entry.gpus[0]}): {money} {hourly:g} per container-hour; {kept}{warm}; "
            f"at most {money} {worst:,.2f} a month (max_containers {entry.max_containers} busy all month)"
        )
    if len(floors) > 1:
        lines.append(
            f"  all priced entries: {money} {sum(floors):,.2f} a month kept up, at most {money} {sum(worsts):,.2f}"
        )
    return lines


def hub_plan(settings: FleetSettings) -> list[str]:
    """The hub's lines (none when [hub] is off): what it runs on and what it may cost a month on Modal, at its
    min_containers and in the worst case, its one container up all month."""
    hub = settings.hub
    if not hub.enabled:
        return []
    prices = settings.prices
    money = prices.currency
    teams = ", ".join(hub.teams) if hub.teams else "every team"
    lines = [
        "Hub (Tabby's webserver: chat panel, Answer Engine, users; docs/DEPLOY.md, The hub):",
        f"  panel for: {teams}; identity {hub.identity}; chat: entry {hub.chat_entry} through the router"
        + (f" as team {hub.router_team}" if hub.router_team else "")
        + f"; licence seats {hub.licence_seats} (Tabby's community licence: 5, the owner included)",
    ]
    if hub.url is not None:
        return [*lines, f"  external ({hub.url}): nothing deployed, costs nothing of ours"]
    lines.append(
        f"  on Modal: GPU {hub.gpu or 'none (CPU)'}, containers {hub.min_containers}..1, idle {hub.scaledown_window}s; "
        f"volume {hub.volume!r} (a snapshot every {hub.snapshot_interval}s, {hub.snapshots_kept} kept); "
        f"secret {hub.secret!r}"
    )
    hours = WEEKS_PER_MONTH * 7 * 24
    hourly = prices.per_gpu_hour(hub.gpu) if hub.gpu else 0.0
    if hourly is None:
        lines.append(f"  cost unknown: no price for {hub.gpu} (set [prices] gpu_hour)")
        return lines
    floor = hub.min_containers * hourly * hours
    kept = (
        f"min_containers 1 kept up: {money} {floor:,.2f} a month"
        if hub.min_containers
        else "min_containers 0: nothing while unused"
    )
    priced = f"{money} {hourly:g} per container-hour" if hub.gpu else "a CPU container: no GPU to price"
    lines.append(f"  cost (GPU only): {priced}; {kept}; at most {money} {hourly * hours:,.2f} a month (up all month)")
    return lines
