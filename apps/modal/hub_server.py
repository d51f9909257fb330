"""The hub's container on Modal: what ``TabbyHub`` (apps/modal/deploy.py) does at start, while it serves,
and at exit. The spec it runs from is :mod:`apps.modal.hub`; the snapshots are apps/hub/snapshots.py.

At start (``@modal.enter``): the JWT secret and the router token are checked (a missing or bad one
fails the start with advice naming the Secret and the key), the newest snapshot on the hub's Volume is
restored into a TABBY_ROOT on local disk, ``config.toml`` is written with the chat pointed at the
router (``<router URL>/models/<chat_entry>/v1``, the router's URL looked up in the app), and a
snapshot thread starts, committing the Volume after each snapshot. Serving (``@modal.web_server``):
``tabby serve`` with its webserver on, supervised. At exit (``@modal.exit``): a last snapshot, committed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from apps.hub.run import prepare_root
from apps.hub.snapshots import Snapshotter
from apps.modal.app import ROUTER_FUNCTION
from apps.modal.hub import HUB_ROOT, HUB_SNAPSHOTS, HubSpec
from apps.tabby import hub_chat_url, hub_config_toml, hub_env, supervise
from fleet.hub import JWT_SECRET_ENV, ROUTER_TOKEN_ENV, TEAM_TOKENS_ENV, HubOptions

NEW_UUID = "python -c 'import uuid;print(uuid.uuid4())'"


class HubSetupError(RuntimeError):
    """The hub cannot start as configured; the message says what to change."""


def jwt_secret(environ: Mapping[str, str], hub: HubOptions) -> str:
    """The JWT secret from the hub's Secret: a UUID, or Tabby exits (W/jwt.rs:41-55); without a fixed one,
    every login would end at each restart."""
    value = environ.get(JWT_SECRET_ENV, "").strip()
    fix = (
        f"put {JWT_SECRET_ENV}=<a UUID: {NEW_UUID}> in the Modal Secret {hub.secret!r} ([hub] secret; "
        f"`modal secret create --force {hub.secret} {JWT_SECRET_ENV}=... {ROUTER_TOKEN_ENV}=... "
        f"{TEAM_TOKENS_ENV}=...`, docs/DEPLOY.md, The hub), then `fleet deploy`"
    )
    if not value:
        raise HubSetupError(f"the hub has no JWT secret: {JWT_SECRET_ENV} is not set; {fix}")
    try:
        uuid.UUID(value)
    except ValueError:
        raise HubSetupError(f"the hub's {JWT_SECRET_ENV} is not a UUID (Tabby refuses it); {fix}") from None
    return value


def router_token(environ: Mapping[str, str], hub: HubOptions) -> str:
    """The fleet token the hub's chat calls the router with (team ``hub.router_team``); "" for an open
    fleet (no router_team: the router asks for no token)."""
    value = environ.get(ROUTER_TOKEN_ENV, "").strip()
    if not value and hub.router_team is not None:
        raise HubSetupError(
            f"the hub has no router token: {ROUTER_TOKEN_ENV} is not set; put a token of team {hub.router_team!r} "
            f"(`fleet token new --team {hub.router_team} --label hub --write`) in the Modal Secret {hub.secret!r} "
            f"as {ROUTER_TOKEN_ENV} (`modal secret create --force {hub.secret} ...`, docs/DEPLOY.md, The hub), "
            "then `fleet deploy`"
        )
    return value


def lookup_router_url(app_name: str) -> str:
    """The router's URL, from Modal (its label may be Modal's default or router_label: Modal knows which)."""
    import modal

    url = modal.Function.from_name(app_name, ROUTER_FUNCTION).get_web_url()
    if not url:
        raise HubSetupError(f"the router of app {app_name!r} has no web URL; deploy the fleet with `fleet deploy`")
    return str(url)


def tabby_process_env(environ: Mapping[str, str], root: Path, secret: str) -> dict[str, str]:
    """Tabby's environment: the container's (the image's TABBY_MODEL_CACHE_ROOT included) without the
    fleet's tokens (the router token is in config.toml; the team tokens are the router's), then the hub's."""
    kept = {name: value for name, value in environ.items() if name not in (ROUTER_TOKEN_ENV, TEAM_TOKENS_ENV)}
    return kept | hub_env(root, secret)


class HubServer:
    """Tabby's webserver as the fleet's hub. ``TabbyHub`` in apps/modal/deploy.py is this class with its
    spec and Modal's decorators: ``prepare`` at ``@modal.enter``, ``run`` as the ``@modal.web_server``,
    ``save`` at ``@modal.exit``."""

    spec: ClassVar[HubSpec]
    snapshotter: Snapshotter | None = None
    secret: str = ""

    def prepare(self) -> None:
        """Check the Secret, restore the newest snapshot, write config.toml, start the snapshot thread."""
        spec, hub = self.spec, self.spec.hub
        self.secret = jwt_secret(os.environ, hub)  # first: a bad Secret fails before anything is restored
        api_key = router_token(os.environ, hub)
        url = hub_chat_url(lookup_router_url(spec.app_name), spec.chat_entry)
        root, snapshots = Path(HUB_ROOT), Path(HUB_SNAPSHOTS)
        config = hub_config_toml(chat_url=url, chat_model=spec.chat_model, api_key=api_key)
        restored = prepare_root(root, snapshots, config)
        print(f"tabby-fleet hub: restored {restored or 'no snapshot (a first start)'}; chat: {url}", flush=True)
        self.snapshotter = Snapshotter(
            root, snapshots, interval=hub.snapshot_interval, keep=hub.snapshots_kept,
            name=os.environ.get("MODAL_TASK_ID") or "hub", after=self.committed,
        )  # fmt: skip
        self.snapshotter.start()

    def committed(self, snapshot: Path) -> None:
        """After each snapshot: the Volume committed, so the snapshot outlives this container at once."""
        self.spec.volume.commit()

    def run(self) -> None:
        """Start ``tabby serve`` and return; Modal then waits for its port (the container ends if Tabby does)."""
        env = tabby_process_env(os.environ, Path(HUB_ROOT), self.secret)
        supervise(list(self.spec.argv), env, name="the hub")

    def save(self) -> None:
        """A last snapshot, and the Volume committed: at most the writes since it are lost."""
        if self.snapshotter is not None:
            self.snapshotter.stop(final=True)
        self.spec.volume.commit()
