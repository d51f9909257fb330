"""Loading settings: which file, the environment, and every problem reported in one pass.

:func:`load_settings` reads the TOML file (``--config PATH``, ``$FLEET_CONFIG``, ``./fleet.toml``,
else the packaged example) and the environment, validates once, and turns pydantic's errors and the
cross-field rules of :mod:`fleet.rules` into one :class:`SettingsError` whose problems name
entries and teams by name and say where a value came from (the file, a ``FLEET_*`` variable,
``.env``). Unknown ``FLEET_*`` variables are warnings with "did you mean" (:func:`env_warnings`).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource
from pydantic_settings import SettingsError as SourceParseError

from fleet.prices import PriceTable
from fleet.rules import cross_problems
from fleet.settings import (
    ENV_DELIMITER,
    ENV_PREFIX,
    KNOWN_OTHER_ENV,
    PACKAGED_EXAMPLE,
    Entry,
    FleetSettings,
    ModalOptions,
    RouterOptions,
    StandInOptions,
    StoreOptions,
    Team,
)
from fleet.tokens import TokenRef

# The file load_settings reads, below the environment and .env; and the box it keeps the merged input
# of every source in (so problems can name entries and teams, and the cross-field rules can run on the
# parts that validated). Set by load_settings for the one validation it makes.
_config_path: ContextVar[Path | None] = ContextVar("fleet_config_path", default=None)
_raw_capture: ContextVar[list[Any] | None] = ContextVar("fleet_raw_capture", default=None)


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


def load_settings(config: Path | str | None = None, *, check_auth: bool = True, **overrides: Any) -> FleetSettings:
    """Load settings from every source; raise SettingsError listing every problem found, in one pass.

    Field errors and the cross-field rules come out together: the rules run on whatever validated
    (an entry with a bad GPU still counts as an entry for the teams that name it). ``check_auth=False``
    leaves out the auth-mode rules, for the token commands, which must work while a fleet is being
    moved to tokens one team at a time.
    """
    path = resolve_config_path(config)
    source = str(path)
    if not path.is_file():
        where = path.absolute()  # the folder a relative path was looked for in is the question
        raise SettingsError(
            source,
            [
                f"config file {str(where)!r} does not exist (working directory: {Path.cwd()}); pass --config "
                f"with the path of your fleet.toml, or copy the example there: cp {PACKAGED_EXAMPLE} {where}"
            ],
        )
    try:
        raw_file = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(source, [f"{source} is not valid TOML: {exc}"]) from None
    problems = _unknown_top_level_keys(raw_file, source)
    env = fleet_environment()
    box: list[Any] = []
    settings: FleetSettings | None = None
    errors: list[Any] = []
    path_token, capture_token = _config_path.set(path), _raw_capture.set(box)
    try:
        settings = _as_fleet_settings(_FileSettings(**overrides))
    except ValidationError as exc:
        errors = exc.errors()
    except SourceParseError as exc:  # a FLEET_* variable that should hold JSON does not
        raise SettingsError(source, problems + _env_parse_problems(exc, env)) from None
    finally:
        _raw_capture.reset(capture_token)
        _config_path.reset(path_token)
    raw = box[0] if box and isinstance(box[0], Mapping) else {}
    namer = _Namer(raw, env, set(overrides))
    problems += [namer.describe(error) for error in errors if not _counted_after_failures(error, errors)]
    checked = settings if settings is not None else _salvage_settings(raw)
    if checked is not None and checked.entries:
        problems += [namer.tag(problem) for problem in cross_problems(checked, check_auth=check_auth)]
    if problems or settings is None:
        raise SettingsError(source, problems or ["the settings did not validate; run `fleet check`"])
    return settings


class _FileSettings(FleetSettings):
    """FleetSettings as load_settings reads them: the TOML file as the lowest source, the merged input kept."""

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

    @model_validator(mode="before")
    @classmethod
    def _capture_raw(cls, data: Any) -> Any:
        box = _raw_capture.get()
        if box is not None:  # keep the merged input of every source for the report
            box.append(data)
        return data


def _as_fleet_settings(loaded: FleetSettings) -> FleetSettings:
    """The same values as a plain FleetSettings (already validated: nothing is checked again)."""
    values = {name: getattr(loaded, name) for name in FleetSettings.model_fields}
    return FleetSettings.model_construct(_fields_set=set(loaded.model_fields_set), **values)


def _unknown_top_level_keys(raw_file: dict[str, Any], source: str) -> list[str]:
    fields = list(FleetSettings.model_fields)
    problems = []
    for key in sorted(set(raw_file) - set(fields)):
        near = get_close_matches(key, fields, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(fields)}"
        problems.append(f"{key}: unknown top-level key in {source}; {hint}")
    return problems


# -- where a value came from, and what to call it ------------------------------------------------

# The model each table name holds, to suggest a field name for a misspelt one.
_TABLE_MODELS: dict[str, type[BaseModel]] = {
    "entries": Entry,
    "teams": Team,
    "router": RouterOptions,
    "modal": ModalOptions,
    "store": StoreOptions,
    "standin": StandInOptions,
    "tokens": TokenRef,
    "admin_tokens": TokenRef,
    "prices": PriceTable,
}
_LEADING_PATH = re.compile(r'^([a-z_]+)(?:\[(?:"[^"]*"|\d+)\])?(?:\.([a-z_]+))?')
_JSON_EXAMPLE = """FLEET_ENTRIES='[{"name": "solo", "model": "TabbyML/StarCoder-1B"}]'"""


def fleet_environment(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = None
) -> dict[str, tuple[str, str]]:
    """Every FLEET_* variable (upper-cased name) -> (value, where): "" for the environment, " in .env"
    for the .env file in the working directory. The environment wins, as in pydantic-settings."""
    from dotenv import dotenv_values

    found: dict[str, tuple[str, str]] = {}
    dotenv = Path(".env") if dotenv is None else dotenv
    if dotenv.is_file():
        for name, value in dotenv_values(dotenv).items():
            if name.upper().startswith(ENV_PREFIX) and value is not None:
                found[name.upper()] = (value, " in .env")
    for name, value in (os.environ if environ is None else environ).items():
        if name.upper().startswith(ENV_PREFIX):
            found[name.upper()] = (value, "")
    return found


def known_env_names() -> list[str]:
    """FLEET_<key> for every top-level key, FLEET_<table>__<key> for the keys of [router] and [modal]."""
    names = list(KNOWN_OTHER_ENV)
    for key, info in FleetSettings.model_fields.items():
        names.append(f"{ENV_PREFIX}{key.upper()}")
        kind, model = _model_field(info.annotation)
        if kind == "one" and model is not None:
            names += [f"{ENV_PREFIX}{key.upper()}{ENV_DELIMITER}{sub.upper()}" for sub in model.model_fields]
    return names


def env_warnings(environ: Mapping[str, str] | None = None, dotenv: Path | None = None) -> list[str]:
    """FLEET_* variables that set nothing (a typo, usually): each with the likely name meant."""
    known = known_env_names()
    warnings = []
    for name, (_, where) in sorted(fleet_environment(environ, dotenv).items()):
        if name in known or _read_into_a_table(name):
            continue
        near = get_close_matches(name, known, n=1, cutoff=0.6)
        hint = (
            f"did you mean {near[0]}?"
            if near
            else f"settings are FLEET_<key>, or FLEET_<table>{ENV_DELIMITER}<key> for [router] and [modal] keys"
        )
        warnings.append(f"{name}{where} is not a fleet setting and is ignored; {hint}")
    return warnings


def _read_into_a_table(name: str) -> bool:
    """Whether pydantic-settings reads ``name`` into a table or list of the settings (FLEET_ROUTER__X,
    FLEET_ENTRIES__0__X): then load_settings reports a wrong key as an error naming the variable, and a
    warning that it "is ignored" would say the opposite of what happens."""
    parts = name.removeprefix(ENV_PREFIX).lower().split(ENV_DELIMITER)
    info = FleetSettings.model_fields.get(parts[0])
    if len(parts) < 2 or info is None:
        return False
    kind, _ = _model_field(info.annotation)
    return kind is not None or get_origin(info.annotation) in (tuple, list, dict)


def _env_parse_problems(exc: Exception, env: dict[str, tuple[str, str]]) -> list[str]:
    """pydantic-settings could not decode a FLEET_* variable as JSON: name the variable and the fix."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1).upper() if match else ""
    problems = []
    for name, (value, where) in sorted(env.items()):
        if field and name != f"{ENV_PREFIX}{field}" and not name.startswith(f"{ENV_PREFIX}{field}{ENV_DELIMITER}"):
            continue
        if not _takes_json(name):
            continue
        try:
            json.loads(value)
        except ValueError as error:
            problems.append(
                f"{name}{where}: not valid JSON ({error}); lists and tables in FLEET_* variables are JSON, e.g. "
                f"{_JSON_EXAMPLE}"
            )
    return problems or [
        f"FLEET_{field or '*'} variables: {exc}; lists and tables in FLEET_* variables are JSON, e.g. {_JSON_EXAMPLE}"
    ]


def _takes_json(name: str) -> bool:
    """Whether the setting a FLEET_* variable names is a list or a table (given as JSON)."""
    parts = name.removeprefix(ENV_PREFIX).lower().split(ENV_DELIMITER)
    model: type[BaseModel] = FleetSettings
    annotation: Any = None
    for part in parts:
        info = model.model_fields.get(part)
        if info is None:
            return False
        annotation = info.annotation
        kind, sub = _model_field(annotation)
        if kind == "one" and sub is not None:
            model = sub
    kind, _ = _model_field(annotation)
    return kind is not None or get_origin(annotation) in (tuple, list, dict)


class _Namer:
    """Turns a pydantic error location into the path an admin reads (entries["large"].gpu) and
    names the source of the value when it is not the file: a FLEET_* variable, or arguments."""

    def __init__(self, raw: Mapping[str, Any], env: dict[str, tuple[str, str]], overrides: set[str]) -> None:
        self.raw = raw
        self.env = env
        self.overrides = overrides

    def path(self, loc: tuple[Any, ...]) -> str:
        text = ""
        node: Any = self.raw
        for part in loc:
            if isinstance(part, int):
                text += self._item(node, part)
                node = node[part] if isinstance(node, list | tuple) and part < len(node) else None
            else:
                text += f".{part}" if text else str(part)
                node = node.get(part) if isinstance(node, Mapping) else None
        return text

    @staticmethod
    def _item(items: Any, index: int) -> str:
        """["large"] for an item with a unique name (or label), else [index]."""
        if not isinstance(items, list | tuple) or index >= len(items) or not isinstance(items[index], Mapping):
            return f"[{index}]"
        for key in ("name", "label"):
            value = items[index].get(key)
            if isinstance(value, str) and value:
                same = [i for i in items if isinstance(i, Mapping) and i.get(key) == value]
                return f'["{value}"]' if len(same) == 1 else f"[{index}]"
        return f"[{index}]"

    def source(self, keys: list[str]) -> str:
        """' (from FLEET_X)' when that variable set the value at keys, ' (from arguments)', or ''."""
        for length in range(len(keys), 0, -1):
            name = ENV_PREFIX + ENV_DELIMITER.join(keys[:length]).upper()
            if name in self.env:
                return f" (from {name}{self.env[name][1]})"
        if keys and keys[0] in self.overrides:
            return " (from arguments)"
        return ""

    def describe(self, error: Mapping[str, Any]) -> str:
        loc = tuple(error["loc"])
        keys = [part for part in loc if isinstance(part, str)]
        where = self.path(loc)
        source = self.source(keys[: _first_int(loc)])
        message = _message(error, loc)
        return f"{where}{source}: {message}" if where else f"{message}{source}"

    def tag(self, problem: str) -> str:
        """Name the source in a cross-field problem, which starts with its path."""
        match = _LEADING_PATH.match(problem)
        if match is None:
            return problem
        keys = [key for key in match.groups() if key]
        source = self.source(keys)
        return problem[: match.end()] + source + problem[match.end() :] if source else problem


def _counted_after_failures(error: Mapping[str, Any], errors: list[Any]) -> bool:
    """pydantic's "at least 1 item after validation" for a list whose items failed: noise, as the
    failing items are reported themselves."""
    loc = tuple(error["loc"])
    return error["type"] == "too_short" and any(
        len(other["loc"]) > len(loc) and tuple(other["loc"][: len(loc)]) == loc for other in errors
    )


def _first_int(loc: tuple[Any, ...]) -> int:
    for index, part in enumerate(loc):
        if isinstance(part, int):
            return index
    return len(loc)


def _message(error: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    """pydantic's message, as advice: what is wrong and what to write instead."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    given = error.get("input")
    message = str(error["msg"]).removeprefix("Value error, ")
    if loc == ("entries",) and kind in ("missing", "too_short"):
        return (
            'the fleet has no entries; add at least one [[entries]] table with a name and a model, e.g. name = "small" '
            'and model = "TabbyML/StarCoder-1B"'
        )
    if kind == "missing":
        return f"required field {loc[-1]!r} is missing; add it" if loc else "a required field is missing; add it"
    if kind == "extra_forbidden":
        model = next((_TABLE_MODELS[p] for p in reversed(loc[:-1]) if isinstance(p, str) and p in _TABLE_MODELS), None)
        near = get_close_matches(str(loc[-1]), list(model.model_fields), n=1) if model else []
        hint = f"did you mean {near[0]!r}?" if near else "remove it or check its spelling"
        return f"unknown field {loc[-1]!r}; {hint}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} item(s); got none"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list, e.g. [...] (got {given!r})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table of keys and values (got {given!r})"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', message)} (got {given!r})"
    if kind == "value_error":
        return message
    return f"{message.replace('Input should be', 'must be')} (got {given!r})"


# -- running the cross-field rules on what did validate --------------------------------------------


def _model_field(annotation: Any) -> tuple[Literal["one", "many"] | None, type[BaseModel] | None]:
    """("one", M) for a field holding a model M, ("many", M) for a list of them, else (None, None)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "one", annotation
    if get_origin(annotation) in (tuple, list):
        args = [arg for arg in get_args(annotation) if arg is not Ellipsis]
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return "many", args[0]
    return None, None


def _salvage(cls: type[BaseModel], raw: Any) -> BaseModel | None:
    """``raw`` validated as far as it goes: bad optional fields fall back to their defaults, bad items of
    a list are left out, a required string that breaks a rule (a name that is not a slug) is kept as
    given. None when a required field is missing. Only for running the cross-field rules."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        return None
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        bad = {error["loc"][0] for error in exc.errors() if error["loc"]}
    data: dict[str, Any] = {}
    for key, value in raw.items():
        info = cls.model_fields.get(key)
        if info is None:
            continue
        kind, model = _model_field(info.annotation)
        if key not in bad and kind is None:
            data[key] = value
        elif kind == "one" and model is not None:
            item = _salvage(model, value)
            if item is not None:
                data[key] = item
        elif kind == "many" and model is not None and isinstance(value, list | tuple):
            data[key] = tuple(item for item in (_salvage(model, v) for v in value) if item is not None)
        elif info.is_required() and isinstance(value, str):
            data[key] = value
    for key, info in cls.model_fields.items():
        if info.is_required() and key not in data:
            if key in ("name", "label") or info.annotation is not str:
                return None  # nothing to refer to it by
            data[key] = ""  # e.g. an entry without a model: still an entry its teams may name
    try:
        return cls.model_validate(data)
    except ValidationError:
        return cls.model_construct(**data)


def _salvage_settings(raw: Mapping[str, Any]) -> FleetSettings | None:
    salvaged = _salvage(FleetSettings, raw)
    return salvaged if isinstance(salvaged, FleetSettings) else None
