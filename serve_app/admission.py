"""Admission control by cost: a per-replica budget of decoded megapixels in flight.

Memory in a replica grows with the pixels it holds, not with the number of requests: one
6000x6000 photo costs about 0.9 GB while it is decoded, worked on and encoded (issue 27), a
phone snapshot a few MB. :class:`PixelBudget` is a weighted semaphore: a request takes its
image's megapixels (read from the header, before decoding) and gives them back when its result
is encoded. Past the budget it waits up to ``wait_s`` for others to finish, then is refused
with 503 ``overloaded`` and ``Retry-After``. Waiters are served first come, first served, so a
large image is not starved by a stream of small ones. An image larger than the whole budget
takes all of it (it runs alone) rather than never running.
"""

from __future__ import annotations

import asyncio
import collections
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from serve_app.errors import ApiError


class PixelBudget:
    """A weighted semaphore of ``capacity_mp`` megapixels, for one event loop (one replica)."""

    def __init__(self, capacity_mp: float, wait_s: float, retry_after_s: int):
        self.capacity = float(capacity_mp)
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.in_flight = 0.0
        """Megapixels held now."""
        self.peak = 0.0
        self.admitted = 0
        self.refused = 0
        self._waiters: collections.deque[tuple[float, asyncio.Future]] = collections.deque()

    def cost(self, pixels: int) -> float:
        """Megapixels a request of ``pixels`` takes: its size, capped at the whole budget."""
        return min(pixels / 1e6, self.capacity)

    def _fits(self, mp: float) -> bool:
        return self.in_flight + mp <= self.capacity + 1e-9

    def _wake(self) -> None:
        """Admit waiters in order while the first one fits."""
        while self._waiters:
            mp, fut = self._waiters[0]
            if fut.done():  # timed out or cancelled
                self._waiters.popleft()
                continue
            if not self._fits(mp):
                return
            self._waiters.popleft()
            self.in_flight += mp
            fut.set_result(None)

    async def acquire(self, pixels: int) -> float:
        """Take the cost of ``pixels``; returns the megapixels taken. 503 with Retry-After after ``wait_s``."""
        mp = self.cost(pixels)
        if not self._waiters and self._fits(mp):
            self.in_flight += mp
        else:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((mp, fut))
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.wait_s)
            except (asyncio.TimeoutError, asyncio.CancelledError) as e:
                if fut.done() and not fut.cancelled():  # admitted just as the wait ended: give it back
                    self.in_flight -= mp
                fut.cancel()
                self._wake()
                if isinstance(e, asyncio.CancelledError):
                    raise
                self.refused += 1
                raise ApiError(
                    503, f"the server is busy: {self.in_flight:.0f} of its {self.capacity:g} megapixels in flight; "
                         f"this image needs {mp:.1f} (retry after {self.retry_after_s} s)",
                    "overloaded", headers={"Retry-After": str(self.retry_after_s)},
                ) from None
        self.admitted += 1
        self.peak = max(self.peak, self.in_flight)
        return mp

    def release(self, mp: float) -> None:
        self.in_flight = max(0.0, self.in_flight - mp)
        self._wake()

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[float]:
        mp = await self.acquire(pixels)
        try:
            yield mp
        finally:
            self.release(mp)

    def stats(self) -> dict[str, Any]:
        return {
            "capacity_mp": self.capacity, "in_flight_mp": round(self.in_flight, 3), "peak_mp": round(self.peak, 3),
            "waiting": sum(not f.done() for _, f in self._waiters), "admitted": self.admitted, "refused": self.refused,
            "wait_s": self.wait_s, "retry_after_s": self.retry_after_s,
        }
