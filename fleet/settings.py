"""FleetSettings: the one source of truth for entries, teams and router options.

Sources, highest first: init arguments, environment (``FLEET_`` prefix, ``__`` nesting), ``.env``,
a TOML file. Everything else in tabby-fleet (the routing table, the local runtime, the Modal app,
the CLI's plan) is derived from a loaded ``FleetSettings``. Every rule that can be checked without
I/O is checked here, at load, with a message that names the field, the bad value and the fix.
"""

from __future__ import annotations

import re
import tomllib
from contextvars import ContextVar
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, FilePath, HttpUrl, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

# Modal's GPU type names (https://modal.com/docs/guide/gpu). Modal upper-cases the string and only
# its servers reject an unknown type, so we check here, where the admin can still fix it cheaply.
MODAL_GPU_TYPES = (
    "T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB",
    "RTX-PRO-6000", "H100", "H100!", "H200", "B200", "B200+",
)  # fmt: skip
MAX_GPUS_PER_CONTAINER = 8  # Modal's limit (A10: 4)

# Modal's own bounds for scaledown_window, enforced by its client at decoration time.
SCALEDOWN_MIN, SCALEDOWN_MAX = 2, 3600

PACKAGED_EXAMPLE = Path(__file__).resolve().parent / "fleet.example.toml"

_config_path: ContextVar[Path | None] = ContextVar("fleet_config_path", default=None)


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
    gpu: str = "L4"
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

    @field_validator("name")
    @classmethod
    def _slug_name(cls, value: str) -> str:
        return _slug(value, "entry name")

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        kind, _, count = value.upper().partition(":")
        if kind not in MODAL_GPU_TYPES:
            suggestion = get_close_matches(kind, MODAL_GPU_TYPES, n=1)
            hint = f" Did you mean {suggestion[0]!r}?" if suggestion else ""
            raise ValueError(
                f"unknown GPU type {value!r}.{hint} Valid types: {', '.join(MODAL_GPU_TYPES)}; "
                f"add ':N' for N GPUs, e.g. 'H100:2'"
            )
        if count and not (count.isdigit() and 1 <= int(count) <= MAX_GPUS_PER_CONTAINER):
            raise ValueError(
                f"GPU count in {value!r} must be a whole number from 1 to {MAX_GPUS_PER_CONTAINER}, e.g. '{kind}:2'"
            )
        return value.upper()

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
        return self

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


class Team(BaseModel):
    """A group of developers: a default entry, the entries it may use, and its tokens' hashes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    entry: str | None = None
    allowed_entries: tuple[str, ...] = ()
    token_sha256: tuple[str, ...] = ()
    # Requests the team may have in flight at once, across all entries (429 above); unset: no limit.
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] | None = None
    # Requests the team may start per minute, with a burst of the same size (429 above); unset: no limit.
    requests_per_minute: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @field_validator("name")
    @classmethod
    def _slug_name(cls, value: str) -> str:
        return _slug(value, "team name")

    @field_validator("token_sha256")
    @classmethod
    def _hex_hashes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _sha256_hexes(value, "token_sha256", "fleet token new --team <name>")


def _sha256_hexes(value: tuple[str, ...], field: str, command: str) -> tuple[str, ...]:
    hashes = tuple(h.strip().lower() for h in value)
    for digest in hashes:
        if not SHA256_PATTERN.match(digest):
            shown = digest if len(digest) <= 20 else digest[:17] + "..."
            raise ValueError(
                f"{field} entry {shown!r} is not a sha256 hex digest (64 characters 0-9a-f). "
                f"Paste the line printed by `{command}`; never the token itself"
            )
    return hashes


class RouterOptions(BaseModel):
    """How the router behaves, whatever runtime the backends live in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    # sha256 of admin tokens (`fleet token new --admin`). They guard /fleet/* (but the liveness
    # answer of /fleet/health) and /metrics. With none, those answer loopback clients only.
    admin_token_sha256: tuple[str, ...] = ()
    # Serve /metrics without an admin token (e.g. to a scraper on a private network).
    metrics_public: bool = False

    @field_validator("admin_token_sha256")
    @classmethod
    def _admin_hexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _sha256_hexes(value, "admin_token_sha256", "fleet token new --admin")


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


class FleetSettings(BaseSettings):
    """The whole fleet. Load with :func:`load_settings` to get the file lookup right."""

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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        path = _config_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @model_validator(mode="after")
    def _cross_references(self) -> FleetSettings:
        problems = _fleet_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def entry(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)

    @property
    def any_team_has_tokens(self) -> bool:
        return any(team.token_sha256 for team in self.teams)


def _fleet_problems(settings: FleetSettings) -> list[str]:
    """Every cross-field rule, each broken one as advice. Collected, so the admin sees them all."""
    problems: list[str] = []
    entry_names = [e.name for e in settings.entries]
    known = set(entry_names)
    choices = ", ".join(entry_names)

    seen: dict[str, int] = {}
    for index, name in enumerate(entry_names):
        if name in seen:
            problems.append(
                f"entries[{index}].name: duplicate entry name {name!r} (also entries[{seen[name]}]); "
                f"give each entry a unique name"
            )
        seen.setdefault(name, index)

    class_names: dict[str, str] = {}
    for entry in settings.entries:
        key = entry.class_name.lower()  # Modal's web URLs are lower-case, so compare that way
        if key in class_names and class_names[key] != entry.name:
            problems.append(
                f"entries {class_names[key]!r} and {entry.name!r} would get the same Modal class name "
                f"{entry.class_name!r}; rename one of them"
            )
        class_names.setdefault(key, entry.name)

    # Names and aliases select an entry in the X-Tabby-Model header: they must be unambiguous.
    selectors: dict[str, str] = {name: name for name in entry_names}
    for entry in settings.entries:
        for alias in entry.aliases:
            owner = selectors.get(alias)
            if owner is not None and owner != entry.name:
                problems.append(
                    f"entry {entry.name!r}: alias {alias!r} already selects entry {owner!r}; pick another alias"
                )
            elif owner == entry.name and alias != entry.name:
                problems.append(f"entry {entry.name!r}: alias {alias!r} is listed twice; list it once")
            selectors[alias] = entry.name
        for other in settings.entries:
            if other.name != entry.name and other.model.lower() in entry.aliases:
                problems.append(
                    f"entry {entry.name!r}: alias {other.model.lower()!r} is the model id of entry "
                    f"{other.name!r}; pick another alias"
                )

    default = settings.router.default_entry
    if default is not None and default not in known:
        problems.append(f"router.default_entry: unknown entry {default!r}; choose one of: {choices}")

    team_seen: set[str] = set()
    token_owner: dict[str, str] = {}
    for index, team in enumerate(settings.teams):
        where = f"teams[{index}] ({team.name!r})"
        if team.name in team_seen:
            problems.append(f"{where}.name: duplicate team name {team.name!r}; give each team a unique name")
        team_seen.add(team.name)
        for allowed in team.allowed_entries:
            if allowed not in known:
                problems.append(f"{where}.allowed_entries: unknown entry {allowed!r}; choose from: {choices}")
        if team.entry is not None:
            if team.entry not in known:
                problems.append(f"{where}.entry: unknown entry {team.entry!r}; choose one of: {choices}")
            elif team.allowed_entries and team.entry not in team.allowed_entries:
                problems.append(
                    f"{where}.entry: {team.entry!r} is not in its allowed_entries "
                    f"({', '.join(team.allowed_entries)}); add it there or pick one of those"
                )
        elif default is not None and default in known and team.allowed_entries and default not in team.allowed_entries:
            problems.append(
                f"{where}: has no entry and router.default_entry {default!r} is outside its "
                f"allowed_entries ({', '.join(team.allowed_entries)}); set the team's entry"
            )
        for digest in team.token_sha256:
            owner = token_owner.get(digest)
            if owner is not None:
                problems.append(
                    f"{where}.token_sha256: hash {digest[:12]}... is also listed for team {owner!r}; "
                    f"a token belongs to one team, so issue a new one with `fleet token new`"
                )
            token_owner[digest] = team.name
    for digest in settings.router.admin_token_sha256:
        if digest in token_owner:
            problems.append(
                f"router.admin_token_sha256: hash {digest[:12]}... is also a token of team {token_owner[digest]!r}; "
                f"an admin token must be its own (`fleet token new --admin`)"
            )
    return problems


class SettingsError(Exception):
    """Settings could not be loaded; ``problems`` holds one line of advice per broken rule."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid fleet settings ({source}):\n{listing}")


def resolve_config_path(config: Path | str | None, environ: dict[str, str] | None = None) -> Path:
    """--config PATH, else $FLEET_CONFIG, else ./fleet.toml, else the packaged example."""
    import os

    env = os.environ if environ is None else environ
    if config is not None:
        return Path(config)
    if env.get("FLEET_CONFIG"):
        return Path(env["FLEET_CONFIG"])
    local = Path("fleet.toml")
    if local.is_file():
        return local
    return PACKAGED_EXAMPLE


def load_settings(config: Path | str | None = None, **overrides: Any) -> FleetSettings:
    """Load settings from every source; raise SettingsError listing every problem found."""
    from pydantic import ValidationError

    path = resolve_config_path(config)
    source = str(path)
    if not path.is_file():
        raise SettingsError(
            source,
            [f"config file {source!r} does not exist; pass --config PATH or copy fleet.example.toml there"],
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(source, [f"{source} is not valid TOML: {exc}"]) from None
    unknown = sorted(set(raw) - set(FleetSettings.model_fields))
    if unknown:
        fields = list(FleetSettings.model_fields)
        problems = []
        for key in unknown:
            near = get_close_matches(key, fields, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(fields)}"
            problems.append(f"{key}: unknown top-level key in {source}; {hint}")
        raise SettingsError(source, problems)
    token = _config_path.set(path)
    try:
        return FleetSettings(**overrides)
    except ValidationError as exc:
        raise SettingsError(source, format_validation_error(exc)) from None
    finally:
        _config_path.reset(token)


def format_validation_error(exc: Any) -> list[str]:
    """Turn a pydantic ValidationError into lines like 'entries[1].gpu: unknown GPU type ...'."""
    lines = []
    for error in exc.errors():
        where = ""
        for part in error["loc"]:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required field is missing; add it"
        elif error["type"] == "extra_forbidden":
            message = f"unknown field {error['loc'][-1]!r}; remove it or check its spelling"
        elif "value_error" not in error["type"]:
            message = f"{message} (got {error.get('input')!r})"
        lines.append(f"{where}: {message}" if where else message)
    return lines


def _slug(value: str, what: str) -> str:
    if not SLUG_PATTERN.match(value):
        raise ValueError(
            f"{what} {value!r} is not a slug: use 1-32 characters of a-z, 0-9 and '-', "
            f"starting and ending with a letter or digit (e.g. {_slugify(value)!r})"
        )
    return value


def _slugify(value: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    return slug[:32].strip("-") or "my-name"
