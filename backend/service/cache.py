"""A bounded in-memory LRU of prediction results.

Why: "Retrieve predictions" is often run twice on the same tasks, an annotator who opens a
task that was just predicted calls ``/predict`` again, and the same image often appears in
several tasks. A result depends only on the image content and on how the model ran, so it is
keyed by (image sha256, model version, engine, input size, threshold) and costs a hash
instead of seconds of inference. The bound is in bytes, because one 3000x2000 mask's RLE is
a list of up to a few hundred thousand integers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, NamedTuple


class CacheKey(NamedTuple):
    image_sha256: str
    model_version: str
    engine: str
    input_size: int
    threshold: float


class ResultCache:
    """LRU mapping :class:`CacheKey` -> value, evicting the oldest entries above ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._lock = threading.Lock()
        self._items: OrderedDict[CacheKey, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: CacheKey) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: CacheKey, value: Any, size: int) -> None:
        """Store ``value`` accounted as ``size`` bytes; a value larger than the whole cache is not kept."""
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes
