"""FleetSettings: the one source of truth for entries, teams and router options.

Sources, highest first: init arguments, environment (``FLEET_`` prefix, ``__`` nesting), ``.env``,
a TOML file. Everything else in tabby-fleet (the routing table, the local runtime, the Modal app,
the CLI's plan) is derived from a loaded ``FleetSettings``. Here are the shapes and the rules of one
field (or one table) each, with a message that names the field, the bad value and the fix; the rules
across fields are :mod:`fleet.rules`, and :mod:`fleet.loading` reads the sources and reports every
problem of both in one pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, HttpUrl, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.gpus import GpuSpec, checked_gpu
from fleet.hub import ROUTER_TOKEN_ENV, STANDIN_USERS_ENV, TEAM_TOKENS_ENV, HubOptions
from fleet.prices import PriceTable
from fleet.slugs import slug
from fleet.tokens import TokenHolder, TokenRef, legacy_hashes
from fleet.window import WarmWindow, window_problems

# Modal's own bounds for scaledown_window, enforced by its client at decoration time.
SCALEDOWN_MIN, SCALEDOWN_MAX = 2, 3600

PACKAGED_EXAMPLE = Path(__file__).resolve().parent / "fleet.example.toml"

AuthMode = Literal["tokens", "open"]
ENV_PREFIX = "FLEET_"
ENV_DELIMITER = "__"
# Read by resolve_config_path, `fleet status` and the hub (its secrets): not settings.
KNOWN_OTHER_ENV = ("FLEET_CONFIG", "FLEET_ADMIN_TOKEN", TEAM_TOKENS_ENV, ROUTER_TOKEN_ENV, STANDIN_USERS_ENV)


class StandInOptions(BaseModel):
    """Knobs for the built-in stand-in backend (used locally when no tabby binary is found)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_delay: Annotated[float, Field(ge=0, le=600)] = 0.0  # seconds before the port opens
    chunk_delay: Annotated[float, Field(ge=0, le=60)] = 0.0  # seconds between chat SSE events
    completion_delay: Annotated[float, Field(ge=0, le=600)] = 0.0  # seconds per completion


class Entry(BaseModel):
    """One completion model size: one Modal class, one local backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: Annotated[str, Field(min_length=1)]
    chat_model: str | None = None
    # Modal GPU type, or a list: Modal's ordered fallback (the first type with capacity is used).
    gpu: str | tuple[str, ...] = "L4"
    # Where a local `tabby serve` runs the model (--device); on Modal it is always cuda.
    device: Literal["cpu", "cuda", "rocm", "metal", "vulkan"] = "cpu"
    # Tabby's own limit on one completion, in seconds (its config.toml [server] completion_timeout,
    # written into each TABBY_ROOT at start); Tabby's default is 30.
    completion_timeout: Annotated[int, Field(ge=1, le=600)] = 30
    scaledown_window: int = 300
    max_containers: int = 1
    min_containers: int = 0
    max_inputs: int = 4
    target_inputs: int | None = None
    max_queue: Annotated[int, Field(ge=0, le=10_000)] = 32  # requests waiting for a slot, per entry
    # Seconds a backend may take to start (load the model and open its port) before it counts as
    # failed. A 7B model on a cold GPU container takes minutes; the stand-in half a second.
    startup_timeout: Annotated[int, Field(ge=1, le=3600)] = 600
    # Seconds one request may run on the backend (Modal's per-input timeout).
    timeout: Annotated[int, Field(ge=1, le=86_400)] = 600
    # Seconds the router waits for the first byte of an answer from this entry; unset means
    # router.read_timeout. Raise it for entries whose cold start is slow (a 7B model on Modal).
    first_byte_timeout: Annotated[float, Field(gt=0, le=3600)] | None = None
    # Modal: idle containers kept ready beyond current load (0 = Modal's default behaviour).
    buffer_containers: Annotated[int, Field(ge=0, le=100)] | None = None
    # Tabby's --parallelism (decoding slots per container); unset means max_inputs, so every
    # request a container admits decodes at once.
    parallelism: Annotated[int, Field(ge=1, le=64)] | None = None
    aliases: tuple[str, ...] = ()
    url: HttpUrl | None = None
    standin: StandInOptions = StandInOptions()
    # Cold starts: another entry that serves this one's completions while this one is not ready, after
    # a completion waited cold_wait seconds for it; chat too only with fallback_chat (docs/ARCHITECTURE.md).
    fallback: str | None = None
    cold_wait: Annotated[float, Field(ge=0, le=60)] = 2.0
    fallback_chat: bool = False
    # Warm hours: windows in which containers are kept running (fleet/window.py, fleet/warm.py, docs/CONFIGURATION.md).
    warm: tuple[WarmWindow, ...] = ()

    @field_validator("name")
    @classmethod
    def _slug_name(cls, value: str) -> str:
        return slug(value, "entry name")

    @field_validator("gpu")
    @classmethod
    def _known_gpus(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, str):
            return checked_gpu(value)
        if not value:
            raise ValueError('gpu = [] names no GPU; give one type ("L4") or an ordered list (["L4", "A10G"])')
        gpus = tuple(checked_gpu(gpu) for gpu in value)
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"gpu lists a type twice ({', '.join(gpus)}); list each fallback once")
        return gpus[0] if len(gpus) == 1 else gpus

    @field_validator("scaledown_window")
    @classmethod
    def _modal_scaledown(cls, value: int) -> int:
        if not SCALEDOWN_MIN <= value <= SCALEDOWN_MAX:
            raise ValueError(
                f"scaledown_window must be {SCALEDOWN_MIN}..{SCALEDOWN_MAX} seconds (Modal's limit); got "
                f"{value}. It is how long an idle container is kept before it stops"
            )
        return value

    @field_validator("max_containers", "max_inputs")
    @classmethod
    def _positive(cls, value: int, info: Any) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name} must be at least 1; got {value}")
        return value

    @field_validator("min_containers")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"min_containers must be 0 or more; got {value} (0 lets the entry scale to zero)")
        return value

    @field_validator("aliases")
    @classmethod
    def _lowercase_aliases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for alias in value:
            if not alias.strip() or alias != alias.strip():
                raise ValueError(f"alias {alias!r} is blank or has surrounding spaces; remove it or trim it")
        return tuple(alias.lower() for alias in value)

    @model_validator(mode="after")
    def _consistent_limits(self) -> Entry:
        if self.min_containers > self.max_containers:
            raise ValueError(
                f"min_containers ({self.min_containers}) is greater than max_containers "
                f"({self.max_containers}); raise max_containers or lower min_containers"
            )
        if self.target_inputs is not None and not 1 <= self.target_inputs <= self.max_inputs:
            raise ValueError(f"target_inputs must be 1..max_inputs ({self.max_inputs}); got {self.target_inputs}")
        warm_problems = window_problems(self.warm, self.max_containers, self.url)
        if warm_problems:
            raise ValueError("; ".join(warm_problems))
        return self

    @property
    def gpus(self) -> tuple[str, ...]:
        """The GPU types in order of preference (one, or Modal's fallback list)."""
        return (self.gpu,) if isinstance(self.gpu, str) else self.gpu

    @property
    def gpu_spec(self) -> GpuSpec:
        """The first-choice GPU type and its count per container: what the entry is priced at."""
        return GpuSpec.parse(self.gpus[0])

    @property
    def gpu_count(self) -> int:
        """GPUs in one container of the entry's first-choice type ("H100:2" -> 2)."""
        return self.gpu_spec.count

    @property
    def gpu_text(self) -> str:
        return ", else ".join(self.gpus)

    @property
    def decoding_slots(self) -> int:
        return self.parallelism or self.max_inputs

    @property
    def capacity(self) -> int:
        """Requests this entry serves at once: containers x inputs per container."""
        return self.max_containers * self.max_inputs

    @property
    def class_name(self) -> str:
        """The Modal class name for this entry, e.g. 'starcoder-1b' -> 'TabbyStarcoder1b'."""
        return "Tabby" + "".join(part.capitalize() for part in self.name.split("-"))


class Team(BaseModel, TokenHolder):
    """A group of developers: a default entry, the entries it may use, and its tokens' hashes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    TOKENS_FIELD: ClassVar[str] = "tokens"
    LEGACY_FIELD: ClassVar[str] = "token_sha256"

    name: str
    entry: str | None = None
    allowed_entries: tuple[str, ...] = ()
    # Where the team's chat goes (an entry with a chat_model); unset: fleet.routing.resolve_chat_entry decides.
    chat_entry: str | None = None
    # Legacy form of tokens: bare hashes, labelled token-1, token-2, ... in list order.
    token_sha256: Annotated[tuple[str, ...], legacy_hashes("token_sha256", "fleet token new --team <name>")] = ()
    # The team's tokens, each with a label (`fleet token new --team T --label L`).
    tokens: tuple[TokenRef, ...] = ()
    # Requests the team may have in flight at once, across all entries (429 above); unset: no limit.
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] | None = None
    # Requests the team may start per minute, with a burst of the same size (429 above); unset: no limit.
    requests_per_minute: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @field_validator("name")
    @classmethod
    def _slug_name(cls, value: str) -> str:
        return slug(value, "team name")

    @property
    def labelled_tokens(self) -> tuple[TokenRef, ...]:
        """Every token of the team, legacy hashes included (as token-1, token-2, ...)."""
        return self.held_tokens()

    @property
    def token_digests(self) -> tuple[str, ...]:
        """The sha256 (hex) of every token of the team: what routing compares a bearer token with."""
        return self.held_digests()


class RouterOptions(BaseModel, TokenHolder):
    """How the router behaves, whatever runtime the backends live in."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    TOKENS_FIELD: ClassVar[str] = "admin_tokens"
    LEGACY_FIELD: ClassVar[str] = "admin_token_sha256"

    default_entry: str | None = None
    # Seconds to open a TCP connection to a running backend. Loopback and Modal's edge both answer
    # in milliseconds; a few seconds means the backend is gone, and the client should hear so.
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Seconds the backend may go silent: before its answer starts (unless the entry sets
    # first_byte_timeout) and between two chunks of it. Tabby's own completion timeout is 30 s and its
    # SSE keep-alive comes every 15 s, so 120 s (the IDE agent's own timeout) is slack.
    read_timeout: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # Seconds an idle pooled connection to a backend is kept for reuse. IDE requests come in bursts
    # with pauses between; reusing a connection saves a TCP (on Modal, TLS) handshake. 0: no reuse.
    upstream_keepalive: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # A PEM file of CA certificates trusted for https backends, in addition to the system's store
    # (for entries whose url is served with a certificate from a private CA).
    upstream_ca_bundle: FilePath | None = None
    # Seconds a request waits for its backend to start (local runtime). A CPU tabby loading a 1B
    # model takes tens of seconds; the stand-in about half a second.
    start_timeout: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # Seconds a request waits for a free slot when its entry is at capacity, before a 503.
    queue_timeout: Annotated[float, Field(ge=0, le=600)] = 10.0
    # Seconds a client may take to send the rest of a request body once it started (408 after), so a
    # slow or stalled client cannot hold a connection open forever.
    body_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    # Largest request body accepted. Tabby prompts are a few KB; 1 MiB leaves room for big contexts.
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # Request head limits (431/414 above). The IDE agent sends about ten short headers.
    max_headers: Annotated[int, Field(ge=8, le=1000)] = 100
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 32 * 1024
    max_url_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = 8 * 1024
    # How a request's team is known. "tokens": every team has tokens and every request needs one.
    # "open": the team comes from X-Tabby-Team or /teams/<team>/, and no token is checked (teams may hold
    # some while the fleet is moved to tokens: `fleet token enable`). Unset: inferred when the teams
    # agree (all have tokens, or none has); a mix is refused at load.
    auth: AuthMode | None = None
    # Admin tokens (`fleet token new --admin --label L`). They guard /fleet/* (but the liveness
    # answer of /fleet/health) and /metrics. With none, those answer loopback clients only.
    admin_tokens: tuple[TokenRef, ...] = ()
    # Legacy form of admin_tokens: bare hashes, labelled token-1, token-2, ... in list order.
    admin_token_sha256: Annotated[tuple[str, ...], legacy_hashes("admin_token_sha256", "fleet token new --admin")] = ()
    # Serve /metrics without an admin token (e.g. to a scraper on a private network).
    metrics_public: bool = False
    # Answer GET /v1beta/server_setting with disable_client_side_telemetry = true, so IDEs do not
    # report usage to app.tabbyml.com (Tabby without its webserver answers false).
    disable_client_telemetry: bool = True

    @property
    def labelled_admin_tokens(self) -> tuple[TokenRef, ...]:
        """Every admin token, legacy hashes included (as token-1, token-2, ...)."""
        return self.held_tokens()

    @property
    def admin_token_digests(self) -> tuple[str, ...]:
        """The sha256 (hex) of every admin token: what AdminAuth compares a bearer token with."""
        return self.held_digests()


class ModalOptions(BaseModel):
    """The production runtime on Modal: names and images shared by every entry's class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")] = "tabby-fleet"
    # One shared Volume for Tabby's data; each entry's TABBY_ROOT is its own folder of it.
    volume: Annotated[str, Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")] = "tabby-fleet-data"
    # Tabby's official image, pinned: a new Tabby release is a deliberate change, not a surprise.
    tabby_image: str = "tabbyml/tabby:0.32.0"
    # A Modal Secret with TABBY_FLEET_PROXY_KEY and TABBY_FLEET_PROXY_SECRET (a workspace proxy token):
    # the router sends them to the entries, whose endpoints require Modal proxy auth.
    proxy_auth_secret: str = "tabby-fleet-proxy-auth"
    # The router is a CPU container; one kept warm means the day's first keystroke finds it up.
    router_min_containers: Annotated[int, Field(ge=0, le=10)] = 1
    # One router container enforces each entry's capacity exactly; more would each enforce it.
    router_max_containers: Annotated[int, Field(ge=1, le=100)] = 1
    # Concurrent requests per router container: it only forwards bytes, so hundreds are fine.
    router_max_inputs: Annotated[int, Field(ge=1, le=10_000)] = 500
    router_label: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] | None = None
    # CPU cores and memory (MiB) reserved for each router container; unset: Modal's defaults. The
    # router only moves bytes: its CPU per request is in docs/PERFORMANCE.md.
    router_cpu: Annotated[float, Field(gt=0, le=64)] | None = None
    router_memory: Annotated[int, Field(ge=128, le=65_536)] | None = None


class StoreOptions(BaseModel):
    """``[store]``: the router's own state on disk (usage, router/store.py), under ``data_dir/state`` locally
    and on the fleet's Volume on Modal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Days of usage kept. At least 3: a day is compacted to hourly buckets once it is 2 days old, and
    # 90 days of a busy fleet compacted stay a few MB (docs/OPERATIONS.md, "Usage and cost").
    retention_days: Annotated[
        int, Field(ge=3, le=3650, description="days of usage kept: 3 to 3650 (compaction needs 2)")
    ] = 90


class FleetSettings(BaseSettings):
    """The whole fleet. Load with :func:`fleet.loading.load_settings` to get the file lookup right and every
    rule checked; one built by hand is checked across fields by :func:`fleet.rules.checked`."""

    model_config = SettingsConfigDict(
        env_prefix="FLEET_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",  # unknown top-level keys in the TOML file are refused by load_settings
        frozen=True,
    )

    router: RouterOptions = RouterOptions()
    modal: ModalOptions = ModalOptions()
    entries: Annotated[tuple[Entry, ...], Field(min_length=1)]
    teams: tuple[Team, ...] = ()
    # Where local backends keep their data: one TABBY_ROOT folder per entry below it.
    data_dir: Path = Path(".fleet-data")
    # A tabby binary for local backends; when unset, `tabby` on PATH; when absent, the stand-in.
    tabby_bin: str | None = None
    # USD per GPU-hour for cost figures (fleet/prices.py has the defaults, their date and source).
    prices: PriceTable = PriceTable()
    # How long the router's own state (usage) is kept on disk.
    store: StoreOptions = StoreOptions()
    # The optional Tabby webserver behind the router: chat panel, Answer Engine, users (fleet/hub.py).
    hub: HubOptions = HubOptions()

    def entry(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)

    @property
    def auth_mode(self) -> AuthMode:
        """router.auth, or what the teams agree on: "tokens" when they have tokens, else "open"."""
        if self.router.auth is not None:
            return self.router.auth
        return "tokens" if any(team.token_digests for team in self.teams) else "open"

    @property
    def any_team_has_tokens(self) -> bool:
        """True in token mode (every request needs a team token). Kept for its readers in router/."""
        return self.auth_mode == "tokens"
