"""Per-team limits from settings: requests in flight (``max_concurrent``) and requests per minute.

Over either limit the router answers 429 with ``Retry-After`` (the IDE agent shows "rate limit
exceeded" on 429). The rate is a token bucket holding ``requests_per_minute`` tokens (so a team may
burst that many at once) refilled at ``requests_per_minute / 60`` per second.
"""

from __future__ import annotations

import math
import time

from fleet.errors import FleetError
from fleet.settings import Team


class TeamLimiter:
    def __init__(self, team: Team) -> None:
        self.team = team.name
        self.max_concurrent = team.max_concurrent
        self.per_minute = team.requests_per_minute
        self.in_flight = 0
        self._tokens = float(team.requests_per_minute or 0)
        self._refilled = time.monotonic()

    def adopt(self, team: Team) -> None:
        """Adopt reloaded limits; requests in flight and the tokens left stay counted."""
        self.max_concurrent, self.per_minute = team.max_concurrent, team.requests_per_minute

    def acquire(self) -> None:
        """Count one request in, or raise 429. Pair every successful call with release()."""
        if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
            raise FleetError(
                429,
                "team-concurrency-limit",
                f"team {self.team!r} already has {self.in_flight} requests in flight (max_concurrent = "
                f"{self.max_concurrent}); retry when one finishes",
                retry_after=1,
            )
        if self.per_minute is not None:
            now = time.monotonic()
            rate = self.per_minute / 60.0
            self._tokens = min(float(self.per_minute), self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            if self._tokens < 1.0:
                wait = math.ceil((1.0 - self._tokens) / rate)
                raise FleetError(
                    429,
                    "team-rate-limit",
                    f"team {self.team!r} sent more than {self.per_minute} requests in a minute "
                    f"(requests_per_minute); retry in {wait}s",
                    retry_after=wait,
                )
            self._tokens -= 1.0
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
