"""The fleet's Modal app: what ``fleet deploy`` runs ``modal deploy -m`` on (and ``fleet serve``, ``modal serve``).

Read top to bottom: the settings, the app, the GPU class every entry is an instance of, one class per
entry, the hub (when on), the router, the warm_hours schedule. Every value passed to Modal comes from a spec in
:mod:`apps.modal.app` (each with the reason for it; ``fleet plan`` prints the same specs).

Locally the settings come from the usual sources (``fleet deploy`` sets FLEET_CONFIG); in a
container, from the frozen copy the deploy passed along, so the container declares the same app and
finds its class or function in it by name.
"""

from __future__ import annotations

import os
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import modal

from apps.modal.app import DATA_MOUNT, ROUTER_STATE, EntrySpec, current_settings, fleet_spec
from apps.modal.hub import hub_deployed, hub_spec
from apps.modal.hub_server import HubServer
from apps.tabby import container_root, supervise, tabby_env, write_tabby_config
from fleet.settings import Entry
from fleet.warm import apply_warm_hours

settings = current_settings()
fleet = fleet_spec(settings)
app = modal.App(fleet.app_name)


class EntryServer:
    """Tabby serving one fleet entry on a GPU. Each entry has its own subclass (:func:`entry_class`):
    its spec, and ``serve`` as its ``@modal.web_server`` (the port wait is the entry's own)."""

    spec: ClassVar[EntrySpec]

    def serve(self) -> None:
        """Start ``tabby serve`` and return; Modal then waits for its port and proxies requests to it."""
        spec = self.spec
        root = container_root(DATA_MOUNT, spec.entry, os.environ.get("MODAL_TASK_ID"))
        write_tabby_config(root, spec.entry)  # makes the folder too
        # Tabby opens its port only once the model is loaded; Modal waits for the port. If Tabby
        # exits first, the watchdog ends the container so that Modal replaces it at once.
        env = {**os.environ, **spec.env, **tabby_env(root)}
        supervise(list(spec.argv), env, name=f"entry {spec.entry.name!r}")


def entry_class(spec: EntrySpec) -> type[EntryServer]:
    """EntryServer for one entry, named after it (``small`` -> ``TabbySmall``), with its web server.

    Why not a ``class`` statement: Modal names a class, and its container looks the class up, by
    ``__name__``, and these names come from the settings. A class statement's name is written in the
    source (and one inside a function is ``<locals>``, which Modal refuses). So the class is made the
    way a class statement makes one, by calling its metaclass (``types.new_class``), with the body a
    class statement written here would have. This is the fleet's only dynamic class creation.
    """

    def body(namespace: dict[str, Any]) -> None:
        namespace["__module__"] = __name__  # what a class statement here sets; new_class runs in `types`
        namespace["__doc__"] = f"Tabby serving {spec.entry.model} for fleet entry {spec.entry.name!r}."
        namespace["spec"] = spec
        namespace["serve"] = modal.web_server(**spec.web_server)(EntryServer.serve)

    return types.new_class(spec.class_name, (EntryServer,), exec_body=body)


# One class per entry deployed on Modal: its image, GPU, scaling, volume (app.cls), how many requests a
# container takes (modal.concurrent) and its web server, all from its spec.
entry_classes: dict[str, type[EntryServer]] = {
    spec.class_name: app.cls(**spec.cls)(modal.concurrent(**spec.concurrent)(entry_class(spec)))
    for spec in fleet.entries
}


def __getattr__(name: str) -> Any:
    """The entry classes are attributes of this module (PEP 562) without being written into its globals:
    Modal's container imports this module and looks its class up with ``getattr(module, "TabbySmall")``."""
    try:
        return entry_classes[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    """What dir(module) lists: its globals (read, not written) and the entry classes."""
    return sorted({*globals(), *entry_classes})


if hub_deployed(settings):  # [hub] on, and no hub.url: the hub, one container (apps/modal/hub.py)
    hub = hub_spec(settings)

    @app.cls(**hub.cls)
    @modal.concurrent(**hub.concurrent)
    class TabbyHub(HubServer):
        """Tabby's webserver behind the router: chat panel, Answer Engine, users (apps/modal/hub_server.py)."""

        spec = hub

        @modal.enter()
        def start(self) -> None:
            self.prepare()  # the Secret checked, the newest snapshot restored, config.toml, the snapshot thread

        @modal.web_server(**hub.web_server)
        def serve(self) -> None:  # "serve", as the entries' web method: the router looks its URL up by it
            self.run()  # tabby serve with its webserver on, supervised

        @modal.exit()
        def stop(self) -> None:
            self.save()  # a last snapshot, committed


assert fleet.router.concurrent is not None and fleet.router.asgi_app is not None  # router_spec sets both


@app.function(**fleet.router.function)
@modal.concurrent(**fleet.router.concurrent)
@modal.asgi_app(**fleet.router.asgi_app)
def router() -> Any:
    """The fleet's one door: routes each request to an entry's class (router/app.py)."""
    from apps.modal.backends import ModalBackends
    from router.app import create_app
    from router.store import SegmentStore, writer_id

    settings = current_settings()
    # Usage on the shared Volume, one segment per container (its task id); the Volume's commit makes a flush
    # visible to the other containers, its reload shows theirs (router/store.py closes its files between).
    store = SegmentStore(
        Path(ROUTER_STATE),
        os.environ.get("MODAL_TASK_ID") or writer_id(),
        on_commit=fleet.volume.commit,
        on_reload=fleet.volume.reload,
    )
    return create_app(settings, ModalBackends(settings), store=store)


if fleet.warm is not None:  # only when a deployed entry has warm hours

    @app.function(**fleet.warm.function)
    def warm_hours() -> dict[str, int]:
        """Set each warm entry's min_containers for the time of day (fleet/warm.py)."""
        settings = current_settings()

        def autoscale(entry: Entry, min_containers: int) -> None:
            cls = modal.Cls.from_name(settings.modal.app_name, entry.class_name)
            cls().update_autoscaler(min_containers=min_containers)

        now = datetime.now(UTC)
        applied = apply_warm_hours(settings, now, autoscale)
        print(f"warm hours at {now:%Y-%m-%d %H:%M} UTC: min_containers set to {applied}", flush=True)
        return applied
