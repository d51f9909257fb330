"""The GPU spec of an entry, ``"TYPE"`` or ``"TYPE:N"``: parsed here, once, for the whole project."""

from __future__ import annotations

from dataclasses import dataclass
from difflib import get_close_matches

# Modal's GPU type names (https://modal.com/docs/guide/gpu). Modal upper-cases the string and only
# its servers reject an unknown type, so we check here, where the admin can still fix it cheaply.
MODAL_GPU_TYPES = (
    "T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB",
    "RTX-PRO-6000", "H100", "H100!", "H200", "B200", "B200+",
)  # fmt: skip
MAX_GPUS_PER_CONTAINER = 8  # Modal's limit (A10: 4)


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU spec: the Modal type (upper case) and how many of it a container gets."""

    kind: str
    count: int

    @classmethod
    def parse(cls, text: str) -> GpuSpec:
        """``"h100:2"`` -> ``GpuSpec("H100", 2)``; without a count (or with one that is no number), 1."""
        kind, count = _split(text)
        return cls(kind, int(count) if count.isdigit() else 1)


def checked_gpu(value: str) -> str:
    """``value`` upper-cased, when it names a Modal GPU type and a count Modal allows; else a ValueError."""
    kind, count = _split(value)
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


def _split(text: str) -> tuple[str, str]:
    """The type (upper case) and the count as written ("" when none)."""
    kind, _, count = text.upper().partition(":")
    return kind, count
