"""The router's OpenAPI document: its own /fleet endpoints plus the Tabby API it forwards.

Tabby's published OpenAPI (``tabby_openapi.json``, a copy of ``clients/tabby-openapi/openapi.json``
from TabbyML/tabby, version 0.17; newer fields pass through unchanged) describes the ``/v1`` paths.
Each is listed three times: as is, under ``/teams/{team}`` and under ``/models/{entry}``, with the
routing headers, so clients (and schemathesis) see every way in; so is ``/fleet/whoami``.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fleet.routing import MODEL_PREFIX, TEAM_PREFIX, WHOAMI_PATH

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
    "400": {"description": "No entry selected, conflicting team, ambiguous model, bad path (JSON error)"},
    "401": {"description": "Team token missing or unknown (JSON error)"},
    "404": {"description": "Unknown team, entry or path; an entry outside the team's allowed list; a team the "
            "token does not name"},
    "413": {"description": "Body over router.max_body_bytes"},
    "429": {"description": "Team limit reached (Retry-After)"},
    "501": {"description": "Chat on an entry without a chat model (no-chat-model)"},
    "502": {"description": "Backend failed or unreachable"},
    "503": {"description": "Entry at capacity or backend starting (Retry-After)"},
    "504": {"description": "Backend timed out"},
}  # fmt: skip
WHOAMI = {
    "get": {
        "summary": "What your token, headers and path select, and why",
        "description": "The team, the entry completions go to, the entries the team may use and where chat "
        "goes, each with how it was chosen (and `explain`, the same as sentences). Refusals are those a "
        "completion with the same token, headers and path prefix gets. Only your own team is described.",
        "tags": ["fleet"],
        "parameters": ROUTING_HEADERS,
        "responses": {
            "200": {"description": "The routing of your requests", "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {
                    "team": {"type": ["string", "null"]}, "team_from": {"type": ["string", "null"]},
                    "entry": {"type": "string"}, "model": {"type": "string"}, "entry_from": {"type": "string"},
                    "allowed_entries": {"type": "array", "items": {"type": "string"}},
                    "allowed_from": {"type": "string"},
                    "chat_entry": {"type": ["string", "null"]}, "chat_model": {"type": ["string", "null"]},
                    "chat_from": {"type": "string"}, "chat_error": {"type": ["object", "null"]},
                    "explain": {"type": "array", "items": {"type": "string"}},
                },
            }}}},
            **{k: v for k, v in ROUTER_ANSWERS.items() if k in ("400", "401", "404")},
        },
    }
}  # fmt: skip


def tabby_api() -> dict[str, Any]:
    text = resources.files("router").joinpath("tabby_openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


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
        whoami = copy.deepcopy(WHOAMI)
        whoami["get"]["operationId"] = f"fleet_whoami{_suffix(prefix)}"
        whoami["get"]["parameters"] = [*path_parameters, *ROUTING_HEADERS]
        document["paths"][prefix + WHOAMI_PATH] = whoami
    return document


def _suffix(prefix: str) -> str:
    if prefix.startswith(TEAM_PREFIX):
        return "_by_team"
    if prefix.startswith(MODEL_PREFIX):
        return "_by_entry"
    return ""
