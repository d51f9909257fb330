"""Cold starts: what the router does for an entry that is not ready (docs/ARCHITECTURE.md, Cold starts).

- Its health check is answered from settings, in Tabby's health shape (:func:`cold_health`), while
  the entry starts in the background (:meth:`ColdStarts.warm`, which warms its fallback too): the IDE
  stays connected. A failed entry's health is a 502 naming the failure (:meth:`ColdStarts.failed`).
- A completion for an entry with a ``fallback`` (a :class:`ColdPlan`) waits up to ``cold_wait``,
  then goes to the fallback if that is ready and the team may use it (:meth:`ColdStarts.route`); the
  wait ends at once when the client leaves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable, Container, Coroutine, Mapping, MutableMapping
from typing import Any, NamedTuple

from fleet.errors import FleetError
from fleet.routing import CHAT, ChatAdvert, Route, RoutingTable
from fleet.settings import Entry
from router.backends import Backends
from router.observe import CLIENT_LEFT, RequestRecord

log = logging.getLogger("tabby_fleet.proxy")

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ColdPlan(NamedTuple):
    """What a completion for a not-ready entry does: wait ``cold_wait`` s, then go to ``fallback``."""

    fallback: str
    cold_wait: float
    chat: bool  # chat falls back too (the entry's fallback_chat)


def cold_plans(entries: tuple[Entry, ...]) -> dict[str, ColdPlan]:
    """Only entries with a fallback: a request for any other entry pays one dict miss."""
    return {e.name: ColdPlan(e.fallback, e.cold_wait, e.fallback_chat) for e in entries if e.fallback is not None}


class ColdStarts:
    """Starts entries in the background and routes around the ones that are not ready yet."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    def warm(self, plans: Mapping[str, ColdPlan], entry: str) -> str:
        """Start ``entry`` in the background, and its fallback (which serves it meanwhile); entry's state."""
        plan = plans.get(entry)
        if plan is not None:
            self.backends.warm(plan.fallback)
        return self.backends.warm(entry)

    def failed(self, entry: str) -> FleetError:
        detail = self.backends.status().get(entry, {}).get("last_error") or "its last start failed"
        return FleetError(
            502, "backend-failed",
            f"the backend of entry {entry!r} failed ({detail.splitlines()[0]}); it is being started again; "
            f"ask your fleet admin if this lasts",
            retry_after=5,
        )  # fmt: skip

    async def route(
        self, plans: Mapping[str, ColdPlan], table: RoutingTable, route: Route, record: RequestRecord,
        receive: Receive, current_entries: Callable[[], Container[str]],
    ) -> Route | None:  # fmt: skip
        """The route to serve: the asked-for entry once ready (waiting up to its cold_wait), else its
        fallback when that is ready and the team may use it. The asked-for entry keeps starting.
        None when the client disconnects during the wait (noticed at once: nothing is sent for it).
        ``current_entries()``: the entries of the settings after the wait (a reload may have removed one)."""
        plan = plans[route.entry]
        backends = self.backends
        if backends.backend_state(route.entry) == "ready" or (route.kind is CHAT and not plan.chat):
            return route
        if not _team_may_use(table, route.team, plan.fallback):
            return route  # waits for its own entry, as without a fallback
        self.warm(plans, route.entry)
        waiting = time.perf_counter()
        ready = await _unless_client_leaves(receive, backends.wait_ready(route.entry, plan.cold_wait))
        record.start_seconds = time.perf_counter() - waiting
        if ready is None:
            record.status = CLIENT_LEFT
            return None
        if ready or backends.backend_state(plan.fallback) != "ready" or plan.fallback not in current_entries():
            return route
        log.info("entry %s not ready after %gs: served by %s (id %s)", route.entry, plan.cold_wait, plan.fallback,
                 record.request_id)  # fmt: skip
        record.fallback_from = route.entry
        record.entry = plan.fallback
        return route._replace(entry=plan.fallback)


def cold_health(entry: Entry, version: str) -> dict[str, Any]:
    """Tabby's health answer for ``entry`` (protocol reference 1.3), from settings: what the entry's
    backend will say once it is up. The IDE agent needs ``model``, ``device`` and ``version``."""
    device = entry.device
    models: dict[str, Any] = {
        "completion": {"local": {"model_id": entry.model, "device": device}},
        "embedding": {"local": {"model_id": "Nomic-Embed-Text", "device": device}},
    }
    health: dict[str, Any] = {"model": entry.model}
    if entry.chat_model:
        health["chat_model"] = entry.chat_model
        health["chat_device"] = device
        models["chat"] = {"local": {"model_id": entry.chat_model, "device": device}}
    return health | {
        "device": device,
        "cuda_devices": [],
        "models": models,
        "arch": platform.machine(),
        "cpu_info": f"tabby-fleet router: entry {entry.name!r} is starting",
        "cpu_count": os.cpu_count() or 1,
        "version": {"build_date": "", "build_timestamp": "", "git_sha": "", "git_describe": version},
        "webserver": False,
    }


def with_chat_advert(health: dict[str, Any], advert: ChatAdvert | None) -> dict[str, Any]:
    """A cold health answer naming the team's chat entry's model (the IDE enables chat only then)."""
    if advert is None:
        return health
    health = {**health, "chat_model": advert.chat_model}
    if advert.webserver:
        health["webserver"] = True
    health.pop("chat_device", None)
    health["models"] = {k: v for k, v in health["models"].items() if k != "chat"}
    return health


async def _unless_client_leaves(receive: Receive, waiting: Coroutine[Any, Any, bool]) -> bool | None:
    """``waiting``'s answer, or None as soon as the client disconnects (``waiting`` is then cancelled)."""

    async def client_left() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    wait, watch = asyncio.ensure_future(waiting), asyncio.ensure_future(client_left())
    try:
        await asyncio.wait((wait, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        wait.cancel()
        watch.cancel()
    if watch.done() and not watch.cancelled():
        return None
    return wait.result()


def _team_may_use(table: RoutingTable, team: str | None, entry: str) -> bool:
    allowed = table.teams[team].allowed_entries if team in table.teams else ()
    return not allowed or entry in allowed


def advertise_chat(body: bytes, advert: ChatAdvert) -> bytes:
    """The health JSON with ``chat_model`` set to the chat entry's (its chat device and nested chat
    model described the answering entry's own chat, so they go); unchanged if it is not a JSON object."""
    try:
        health = json.loads(body)
    except ValueError:
        return body
    if not isinstance(health, dict):
        return body
    health["chat_model"] = advert.chat_model
    if advert.webserver:
        health["webserver"] = True
    health.pop("chat_device", None)
    models = health.get("models")
    if isinstance(models, dict):
        models.pop("chat", None)
    return json.dumps(health).encode()
