"""A content-hash result cache bounded in bytes (least recently used entries evicted first).

Keys come from :func:`serve_app.params.content_key` (image SHA-256 + result parameters +
the checkpoint each model serves), so a hit returns exactly the bytes a recomputation would,
and a hot-swapped model never answers from its predecessor's entries. The cache lives in
one ingress replica's memory and is only touched from its event loop (no locking needed).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

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


class ResultCache:
    """LRU map of key -> :class:`CachedResult`, holding at most ``max_bytes``."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, CachedResult] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> CachedResult | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: str, item: CachedResult) -> None:
        """Store ``item``; an item larger than the whole cache is not stored."""
        if item.cost > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.cost
        self._items[key] = item
        self.bytes += item.cost
        while self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.cost
            self.evictions += 1

    def stats(self) -> dict[str, int | float]:
        return {
            "entries": len(self._items),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
