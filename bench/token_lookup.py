"""Token lookup per request at 10 to 10,000 tokens: the former loop over every digest against the dict.

Run on its own: ``python -m bench.token_lookup`` (a few seconds). Each figure is the median of 5 rounds of
the time one lookup of a known token takes (the hash included), as routing's ``_authenticate`` makes it.
The old loop is kept here only, to be measured: it compared the token's sha256 with every known digest
(hmac.compare_digest, no early exit). docs/PERFORMANCE.md, "Token lookup", has the figures.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import statistics
import timeit
from collections.abc import Iterable

from fleet.tokens import find_token

SIZES = (10, 100, 1_000, 10_000)
ROUNDS = 5


def old_loop(token: str, known: Iterable[tuple[bytes, str]]) -> str | None:
    """The lookup before issue 18: every digest compared in constant time, no early exit."""
    digest = hashlib.sha256(token.encode()).digest()
    found = None
    for known_digest, value in known:
        if hmac.compare_digest(digest, known_digest):
            found = value
    return found


def per_lookup_us(run: timeit.Timer, budget: float = 0.2) -> float:
    """Median microseconds per call over ROUNDS rounds of about ``budget`` seconds each."""
    number, _ = run.autorange()
    number = max(1, int(number * budget / 0.2))
    return statistics.median(run.timeit(number) / number for _ in range(ROUNDS)) * 1e6


def measure() -> list[tuple[int, float, float]]:
    rows = []
    for size in SIZES:
        tokens = [f"tft_{secrets.token_urlsafe(32)}" for _ in range(size)]
        pairs = tuple((hashlib.sha256(t.encode()).digest(), f"team/{i}") for i, t in enumerate(tokens))
        table = dict(pairs)
        probe = tokens[size // 2]
        assert old_loop(probe, pairs) == find_token(probe, table) == f"team/{size // 2}"
        old = per_lookup_us(timeit.Timer(functools.partial(old_loop, probe, pairs)))
        new = per_lookup_us(timeit.Timer(functools.partial(find_token, probe, table)))
        rows.append((size, old, new))
    return rows


def main() -> None:
    print("tokens   old loop (us)   dict (us)")
    for size, old, new in measure():
        print(f"{size:>6,}   {old:>13.2f}   {new:>9.2f}")


if __name__ == "__main__":
    main()
