"""FleetError: every refusal the router makes, as one JSON shape.

``{"error": {"code": "...", "message": "...", "choices": [...]}}``: ``code`` is stable and
machine-readable, ``message`` is advice for a person, ``choices`` lists valid values where that helps.
docs/ERRORS.md has every code with what the IDE shows for it.

``team`` and ``entry`` are context for the router's logs and metrics, never sent: the team the refusal
identified (a name from the settings, never the client's unchecked words) and, where one was named
and exists, the entry.
"""

from __future__ import annotations

import json


class FleetError(Exception):
    """A refusal with an HTTP status. Raised by routing, limits and backends; sent as JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        choices: tuple[str, ...] | list[str] = (),
        retry_after: int | None = None,
        *,
        team: str | None = None,
        entry: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.choices = tuple(choices)
        self.retry_after = retry_after
        self.team = team
        self.entry = entry

    def payload(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.choices:
            error["choices"] = list(self.choices)
        return {"error": error}

    def body(self) -> bytes:
        return json.dumps(self.payload()).encode()

    def headers(self) -> list[tuple[bytes, bytes]]:
        body_length = str(len(self.body())).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", body_length)]
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        if self.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="tabby-fleet"'))
        return headers

    def __repr__(self) -> str:
        return f"FleetError({self.status}, {self.code!r}, {self.message!r})"
