"""The stand-in hub's ``POST /graphql``: the operations it answers, recognised by name; no GraphQL parser.

Queries: ``me`` (the fields selected, of ``UserSecured``), ``serverInfo``, ``myThreads``, ``users``,
``invitations`` and ``license`` (whole objects, whatever was selected). Mutations, one per request, those of
`fleet hub bootstrap`: ``register``, ``tokenAuth`` and ``createInvitation``, their arguments taken by the names
of Tabby 0.32's schema (ee/tabby-schema/graphql/schema.graphql:847-852) from ``$variables`` or string literals.
Anything else is a GraphQL error saying what it answers. Refusals carry Tabby's messages
(:mod:`apps.local.standin_accounts`); ``me`` without a token is ``UNAUTHORIZED`` as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from apps.local.standin_accounts import Account, AccountError, Accounts

QUERIES = ("me", "serverInfo", "myThreads", "users", "invitations", "license")
MUTATIONS = ("register", "tokenAuth", "createInvitation")
UNAUTHORIZED = {"message": "Unauthorized", "extensions": {"code": "UNAUTHORIZED"}}
_OPERATION = re.compile(r"\b(" + "|".join((*QUERIES, *MUTATIONS, "createThreadAndRun")) + r")\b")
_ARGUMENT = re.compile(r'(\w+)\s*:\s*(\$\w+|"(?:[^"\\]|\\.)*")')
_SELECTION = re.compile(r"\bme\s*\{([^{}]*)\}")


def answer_graphql(
    query: str,
    variables: dict[str, Any],
    caller: Account | None,
    accounts: Accounts,
    threads: Callable[[str], list[dict[str, Any]]],
    notice: str,
) -> dict[str, Any]:
    """The JSON body answering one ``POST /graphql`` from ``caller`` (None: no or an unknown token)."""
    asked = set(_OPERATION.findall(query))
    if "createThreadAndRun" in asked:
        return _error("createThreadAndRun is a subscription: run it over the WebSocket /subscriptions")
    mutations = [name for name in MUTATIONS if name in asked]
    if query.lstrip().startswith("mutation"):
        if len(mutations) != 1:
            return _error(f"the {notice} runs one mutation a request, of {', '.join(MUTATIONS)}; got: {_short(query)}")
        return _mutation(mutations[0], _arguments(query, mutations[0], variables), caller, accounts)
    queries = [name for name in QUERIES if name in asked]
    if not queries:
        return _error(
            f"the {notice} answers only {', '.join(QUERIES)} over /graphql queries, the mutations "
            f"{', '.join(MUTATIONS)}, and createThreadAndRun over /subscriptions; it got: {_short(query)}"
        )
    data: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for name in queries:
        try:
            data[name] = _query(name, query, caller, accounts, threads)
        except AccountError as exc:
            data[name] = None
            errors.append({"message": str(exc), "path": [name]})
        except PermissionError:
            data[name] = None
            errors.append({**UNAUTHORIZED, "path": [name]})
    if errors and all(value is None for value in data.values()):
        return {"data": None, "errors": errors}
    return {"data": data, "errors": errors} if errors else {"data": data}


def _query(
    name: str, query: str, caller: Account | None, accounts: Accounts, threads: Callable[[str], list[dict[str, Any]]]
) -> Any:
    if name == "serverInfo":
        return {
            "isAdminInitialized": accounts.is_admin_initialized(), "isChatEnabled": True, "isEmailConfigured": False,
            "allowSelfSignup": False, "disablePasswordLogin": False, "isDemoMode": False,
        }  # fmt: skip
    if name == "license":
        return accounts.license()
    if name == "users":
        return _connection(accounts.users(caller))
    if name == "invitations":
        return _connection(accounts.invitations(caller))
    if caller is None:
        raise PermissionError(name)
    if name == "me":
        user = caller.graphql()
        found = _SELECTION.search(query)
        fields = found.group(1).split() if found else []
        return {field: user[field] for field in fields if field in user} if fields else user
    found_threads = threads(caller.name)
    return {"totalCount": len(found_threads), "edges": [{"node": thread} for thread in found_threads]}


def _mutation(name: str, args: dict[str, str | None], caller: Account | None, accounts: Accounts) -> dict[str, Any]:
    try:
        if name == "register":
            value: Any = accounts.register(
                _arg(args, "email"), _arg(args, "password1"), _arg(args, "password2"), args.get("invitationCode"),
                _arg(args, "name"),
            )  # fmt: skip
        elif name == "tokenAuth":
            value = accounts.token_auth(_arg(args, "email"), _arg(args, "password"))
        else:
            value = accounts.create_invitation(caller, _arg(args, "email"))
    except AccountError as exc:
        return {"data": None, "errors": [{"message": str(exc), "path": [name]}]}
    return {"data": {name: value}}


def _arguments(query: str, operation: str, variables: dict[str, Any]) -> dict[str, str | None]:
    """The arguments of ``operation(...)`` in ``query``: each a ``$variable`` (from ``variables``) or a string."""
    start = query.find("(", query.find(operation))
    end = query.find(")", start)
    args: dict[str, str | None] = {}
    for name, value in _ARGUMENT.findall(query[start + 1 : end] if start >= 0 else ""):
        raw = variables.get(value[1:]) if value.startswith("$") else json.loads(value)
        args[name] = raw if isinstance(raw, str) else None
    return args


def _arg(args: dict[str, str | None], name: str) -> str:
    value = args.get(name)
    if value is None:
        raise AccountError(f'Field "{name}" of type "String!" must be provided')
    return value


def _connection(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "edges": [{"node": node, "cursor": node["id"]} for node in nodes],
        "pageInfo": {"hasNextPage": False, "hasPreviousPage": False},
    }


def _error(message: str) -> dict[str, Any]:
    return {"data": None, "errors": [{"message": message}]}


def _short(query: str) -> str:
    return " ".join(query.split())[:120]
