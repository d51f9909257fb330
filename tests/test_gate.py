"""EntryGate: capacity, the bounded queue, and limits changed by a reload."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from fleet.errors import FleetError
from router.gate import EntryGate, GateLimits

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


def test_over_capacity_waits_then_gets_503() -> None:
    async def main() -> None:
        gate = EntryGate("small", GateLimits(capacity=1, max_queue=1, queue_timeout=0.2))
        await gate.acquire()
        with pytest.raises(FleetError) as caught:
            await gate.acquire()
        assert (caught.value.status, caught.value.code, caught.value.retry_after) == (503, "entry-busy", 1)
        assert (gate.in_flight, gate.queued) == (1, 0)

    run(main())


def test_release_hands_the_slot_to_the_first_waiter() -> None:
    async def main() -> None:
        gate = EntryGate("small", GateLimits(capacity=1, max_queue=4, queue_timeout=5))
        await gate.acquire()
        order: list[int] = []

        async def wait(n: int) -> None:
            await gate.acquire()
            order.append(n)

        waiters = [asyncio.create_task(wait(n)) for n in range(3)]
        await asyncio.sleep(0.01)
        assert gate.queued == 3
        for _ in range(3):
            gate.release()
            await asyncio.sleep(0.01)
        assert order == [0, 1, 2] and gate.in_flight == 1
        await asyncio.gather(*waiters)

    run(main())


def test_raised_capacity_admits_queued_requests_at_once() -> None:
    async def main() -> None:
        gate = EntryGate("small", GateLimits(capacity=1, max_queue=4, queue_timeout=5))
        await gate.acquire()
        waiters = [asyncio.create_task(gate.acquire()) for _ in range(3)]
        await asyncio.sleep(0.01)
        gate.adopt(GateLimits(capacity=3, max_queue=4, queue_timeout=5))
        await asyncio.sleep(0.01)
        assert [w.done() for w in waiters] == [True, True, False]  # two fit now; the third still waits
        assert (gate.in_flight, gate.queued) == (3, 1)
        gate.release()
        await asyncio.wait_for(waiters[2], 1)
        assert (gate.in_flight, gate.queued) == (3, 0)

    run(main())


def test_lowered_capacity_lets_the_surplus_finish_before_admitting() -> None:
    async def main() -> None:
        gate = EntryGate("small", GateLimits(capacity=3, max_queue=4, queue_timeout=5))
        for _ in range(3):
            await gate.acquire()
        gate.adopt(GateLimits(capacity=1, max_queue=4, queue_timeout=5))
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0.01)
        gate.release()  # 3 -> 2 in flight, still over the new capacity: nobody is admitted
        gate.release()  # 2 -> 1
        await asyncio.sleep(0.01)
        assert not waiter.done() and gate.in_flight == 1
        gate.release()  # the last surplus slot passes to the waiter
        await asyncio.wait_for(waiter, 1)
        assert (gate.in_flight, gate.queued) == (1, 0)

    run(main())
