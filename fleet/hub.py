"""``[hub]``: the optional Tabby webserver behind the router (chat panel, Answer Engine, users).

One ``tabby serve`` with its webserver on, no completion model, its chat through the router
(``<router>/models/<chat_entry>/v1`` as team ``router_team``), its data on local disk with snapshots
on its own Volume (reference: shared/reference/tabby-hub.md; docs/DEPLOY.md, "The hub"). Off by default.

Here are the shape and the rules of its own fields; the rules that read the rest of the settings
(teams, entries, auth mode, image, seats) are :func:`fleet.rules.hub_problems`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from fleet.gpus import checked_gpu

# The hub's key where the router names backends (Backends.lease, status): not a slug, so no entry can take it.
HUB_BACKEND = "@hub"
# The hub's Modal class: the name Modal tags it by and the router looks its URL up by (as Entry.class_name).
HUB_CLASS = "TabbyHub"
# Environment variables the hub's secrets travel in (a Modal Secret, or the shell of `fleet up`): never fleet.toml.
TEAM_TOKENS_ENV = "FLEET_HUB_TEAM_TOKENS"  # {"team": "auth_..."}: each team's hub user token (identity = "team")
ROUTER_TOKEN_ENV = "FLEET_HUB_ROUTER_TOKEN"  # a fleet token of router_team: the hub's chat calls to the router
STANDIN_USERS_ENV = (
    "FLEET_HUB_STANDIN_USERS"  # the stand-in hub's users, {"auth_...": "name"} (apps/local/standin_hub.py)
)
JWT_SECRET_ENV = "TABBY_WEBSERVER_JWT_TOKEN_SECRET"  # a UUID, or Tabby exits (W/jwt.rs:41-55)
# Tabby's webserver paths, GraphQL schema and WebSocket auth were read at this release (reference/tabby-hub.md).
SUPPORTED_TABBY = re.compile(r":(v?0\.32\.\d+)$")
# Active users of Tabby's community licence, the owner included (S/schema/license.rs:43-49).
COMMUNITY_SEATS = 5

Identity = Literal["team", "user"]


class HubOptions(BaseModel):
    """``[hub]``: off by default; each field says what it decides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    # Teams whose IDEs are offered the chat panel (their health says webserver: true); empty: every team.
    teams: tuple[str, ...] = ()
    # "team": one hub user per team, the router rewrites the team's fleet token to that user's hub token
    # (FLEET_HUB_TEAM_TOKENS); "user": a developer's own hub token is registered as their fleet token and
    # passes through (one licence seat per developer).
    identity: Identity = "team"
    # The entry the hub's chat and Answer Engine use: <router>/models/<chat_entry>/v1, its chat_model.
    chat_entry: str | None = None
    # The fleet team the hub calls the router as (its raw token in FLEET_HUB_ROUTER_TOKEN, in the hub's Secret).
    router_team: str | None = None
    # Modal GPU for the embedding model (the hub's only local model); "" for a CPU container.
    gpu: str = "T4"
    cpu: Annotated[float, Field(gt=0, le=64)] | None = None
    memory: Annotated[int, Field(ge=512, le=262_144)] | None = None
    # Idle seconds before the hub's container stops (Modal allows 2..3600). A chat panel open all day
    # calls rarely; half an hour keeps it up through a working session.
    scaledown_window: Annotated[int, Field(ge=2, le=3600)] = 1800
    min_containers: Annotated[int, Field(ge=0, le=1)] = 0
    startup_timeout: Annotated[int, Field(ge=1, le=3600)] = 600
    # Requests and open sockets at once in the hub's one container (each WebSocket is one Modal input).
    max_inputs: Annotated[int, Field(ge=1, le=1000)] = 64
    # The hub's own Volume (snapshots) and Secret (JWT secret, router token, team tokens).
    volume: Annotated[str, Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")] = "tabby-fleet-hub"
    secret: Annotated[str, Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")] = "tabby-fleet-hub"
    # Seconds between snapshots of the hub's data (and one at exit): a crash loses at most this much.
    snapshot_interval: Annotated[int, Field(ge=1, le=86_400)] = 300
    snapshots_kept: Annotated[int, Field(ge=1, le=100)] = 3
    # False until the hub has an owner: only fleet tokens and admin tokens reach its data paths, so the
    # first stranger to register cannot become the owner (`fleet hub bootstrap` creates one).
    ui_open: bool = False
    # Pass POST/DELETE /v1beta/ingestion to the hub (else 404).
    ingestion: bool = False
    # Licence seats (active users, the owner included): 5 on the community licence, 50 on Team.
    licence_seats: Annotated[int, Field(ge=1, le=100_000)] = COMMUNITY_SEATS
    # An existing Tabby webserver to use as the hub instead of one the fleet runs.
    url: HttpUrl | None = None
    # WebSocket relay: seconds a socket may stay silent both ways before it is closed, and the largest frame.
    socket_idle_timeout: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    max_frame_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        return checked_gpu(value) if value else value

    def serves(self, team: str | None) -> bool:
        """Whether ``team``'s IDEs are offered the hub's chat panel."""
        return self.enabled and team is not None and (not self.teams or team in self.teams)
