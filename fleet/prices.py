"""What a GPU-hour costs: the price table `fleet plan`, `/fleet/usage` and `/fleet/status` price with.

The defaults are Modal's list prices per GPU-hour as read on ``DEFAULT_PRICES_DATE`` from
``DEFAULT_PRICES_SOURCE``; an admin overrides any of them (or adds a type) in ``[prices]``:

    [prices]
    date = "2026-11-01"
    source = "our Modal invoice"
    gpu_hour = { L4 = 0.80, A10G = 1.10 }

An entry is priced at its first-choice GPU times the count (``"H100:2"`` costs two H100-hours an
hour). Only the GPU is priced: Modal also bills the container's CPU and memory, a few percent more.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.gpus import GpuSpec

DEFAULT_PRICES_DATE = "2026-05-07"
DEFAULT_PRICES_SOURCE = (
    "modal.com/pricing, as reported by techbytes.app 'Serverless GPU Pricing Matrix' on 2026-05-07; "
    "A10G is Modal's long-standing rate (not in that source): check the page before you budget"
)
# USD per GPU-hour. A10 and A10G are one GPU under two names at Modal. Types not listed (A100-40GB,
# H200, B200, ...) have no default: `fleet check` warns, and their cost shows as unknown until set.
DEFAULT_GPU_HOUR = {
    "T4": 0.5904,
    "L4": 0.7992,
    "A10": 1.10,
    "A10G": 1.10,
    "L40S": 1.9512,
    "A100-80GB": 2.4984,
    "H100": 3.9492,
    "H100!": 3.9492,
}


class PriceTable(BaseModel):
    """USD per GPU-hour by Modal GPU type, with where and when the numbers were read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    date: str = DEFAULT_PRICES_DATE
    source: str = DEFAULT_PRICES_SOURCE
    # Merged over the defaults: name only the types whose price differs.
    gpu_hour: dict[str, Annotated[float, Field(ge=0, le=1000)]] = {}

    @field_validator("gpu_hour")
    @classmethod
    def _upper_case_types(cls, value: dict[str, float]) -> dict[str, float]:
        return {gpu.upper(): price for gpu, price in value.items()}

    def per_gpu_hour(self, gpu: str) -> float | None:
        """The price of one hour of ``gpu`` (a Modal type, optionally ``:N``), None when unknown."""
        spec = GpuSpec.parse(gpu)
        price = self.gpu_hour.get(spec.kind, DEFAULT_GPU_HOUR.get(spec.kind))
        if price is None:
            return None
        return price * spec.count

    def entry_hourly(self, gpus: tuple[str, ...]) -> float | None:
        """What an hour of one of an entry's containers costs: its first-choice GPU(s)."""
        return self.per_gpu_hour(gpus[0]) if gpus else None
