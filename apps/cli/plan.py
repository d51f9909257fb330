"""What `fleet plan` prints about the fleet itself: the entries table and the warm hours with their cost."""

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
