"""A content-hash result cache bounded in bytes (least recently used entries evicted first).

Keys come from :func:`serve_app.params.content_key` (image SHA-256 + result parameters +
the checkpoint each model serves), so a hit returns exactly the bytes a recomputation would,
and a hot-swapped model never answers from its predecessor's entries. The cache lives in
one ingress replica's memory and is only touched from its event loop (no locking needed).
The bookkeeping (least-recently-used order, sizes, eviction) is ``cachetools.LRUCache`` with
``getsizeof``; this module adds the entry's cost and the counters the service reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import cachetools

ENTRY_OVERHEAD = 512
"""Bytes charged per entry on top of the body (key, metadata)."""


@dataclass(frozen=True)
class CachedResult:
    """An encoded result and what its response headers say."""

    body: bytes
    media_type: str
    model: str
    brightness: float
    checkpoint: str
    width: int
    height: int
    empty: bool = False
    """The model's matte is essentially empty (:func:`matting_lib.postprocess.is_empty_matte`)."""
    refine: str = ""
    """The refinement mode that ran (``learned``, ``classical`` or ``off``)."""
    prior: bool = False
    """The subject prior stood in for the network's empty alpha."""
    hints: str = "none"
    """The user's hints that were applied: ``none``, ``box``, ``strokes`` or ``box+strokes``."""

    @property
    def cost(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD


class _CountingLRU(cachetools.LRUCache):
    """``cachetools.LRUCache`` sized by :attr:`CachedResult.cost` that counts what it evicts."""

    def __init__(self, max_bytes: int):
        super().__init__(maxsize=max_bytes, getsizeof=lambda item: item.cost)
        self.evictions = 0

    def popitem(self):  # cachetools evicts through popitem (least recently used first)
        self.evictions += 1
        return super().popitem()


class ResultCache:
    """LRU map of key -> :class:`CachedResult`, holding at most ``max_bytes``."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items = _CountingLRU(max_bytes)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """The bytes held (bodies plus :data:`ENTRY_OVERHEAD` each)."""
        return int(self._items.currsize)

    @property
    def evictions(self) -> int:
        return self._items.evictions

    def get(self, key: str) -> CachedResult | None:
        item = self._items.get(key)  # a hit becomes the most recently used
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        return item

    def put(self, key: str, item: CachedResult) -> None:
        """Store ``item``; an item larger than the whole cache is not stored (nothing is evicted for it)."""
        if item.cost > self.max_bytes:
            return
        self._items[key] = item

    def stats(self) -> dict[str, int | float]:
        return {
            "entries": len(self._items),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
