"""The router's OpenAPI document: its own /fleet endpoints plus the Tabby API it forwards.

Tabby's published OpenAPI (``tabby_openapi.json``, a copy of ``clients/tabby-openapi/openapi.json``
from TabbyML/tabby, version 0.17; newer fields pass through unchanged) describes the ``/v1`` paths.
Each is listed three times: as is, under ``/teams/{team}`` and under ``/models/{entry}``, with the
routing headers, so clients (and schemathesis) see every way in.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fleet.routing import MODEL_PREFIX, TEAM_PREFIX

ROUTING_HEADERS = [
    {"name": "X-Tabby-Team", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "the team to act for (ignored when the bearer token names the team)"},
    {"name": "X-Tabby-Model", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "the fleet entry to use: its name, an alias, or its model id"},
]  # fmt: skip
PREFIXES = {
    "": [],
    TEAM_PREFIX + "{team}": [{"name": "team", "in": "path", "required": True, "schema": {"type": "string"}}],
    MODEL_PREFIX + "{entry}": [{"name": "entry", "in": "path", "required": True, "schema": {"type": "string"}}],
}
ROUTER_ANSWERS = {
    "401": {"description": "Team token missing or unknown (JSON error)"},
    "403": {"description": "Entry outside the team's allowed list, or a team the token does not name"},
    "404": {"description": "Unknown team, entry or path"},
    "413": {"description": "Body over router.max_body_bytes"},
    "429": {"description": "Team limit reached (Retry-After)"},
    "502": {"description": "Backend failed or unreachable"},
    "503": {"description": "Entry at capacity or backend starting (Retry-After)"},
    "504": {"description": "Backend timed out"},
}


def tabby_api() -> dict[str, Any]:
    text = resources.files("router").joinpath("tabby_openapi.json").read_text(encoding="utf-8")
    return json.loads(text)


def fleet_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema for the router's own endpoints, with the forwarded Tabby API merged in."""
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    tabby = tabby_api()
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(tabby["components"]["schemas"])
    components.setdefault("securitySchemes", {}).update(tabby["components"].get("securitySchemes", {}))
    for prefix, path_parameters in PREFIXES.items():
        for path, operations in tabby["paths"].items():
            forwarded = {}
            for method, operation in operations.items():
                operation = copy.deepcopy(operation)
                operation["operationId"] = f"{operation.get('operationId', method)}{_suffix(prefix)}"
                operation["tags"] = ["tabby (forwarded)"]
                operation["parameters"] = [*path_parameters, *operation.get("parameters", []), *ROUTING_HEADERS]
                operation["responses"] = {**ROUTER_ANSWERS, **operation.get("responses", {})}
                forwarded[method] = operation
            document["paths"][prefix + path] = forwarded
    return document


def _suffix(prefix: str) -> str:
    if prefix.startswith(TEAM_PREFIX):
        return "_by_team"
    if prefix.startswith(MODEL_PREFIX):
        return "_by_entry"
    return ""
