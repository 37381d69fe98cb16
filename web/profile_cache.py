"""The last few queried profiles, so one page view queries the store once.

The page resolves its time range to absolute milliseconds once per refresh
and asks for the flamegraph, the table and the sandwich of that same range;
they share one store query through this cache. Entries expire after a few
seconds so live mode sees new windows. Profiles are never mutated by the
views, so sharing them between requests is safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from profiler.store.api import Filters
from symbolizer.profile import Profile

Key = tuple[int, int, Filters]


class ProfileCache:
    def __init__(
        self, clock_ns: Callable[[], int], entries: int = 4, ttl_ns: int = 15 * 10**9
    ) -> None:
        self._clock = clock_ns
        self._entries = entries
        self._ttl = ttl_ns
        self._items: OrderedDict[Key, tuple[int, Profile]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key, load: Callable[[], Profile]) -> Profile:
        now = self._clock()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and now - hit[0] < self._ttl:
                self._items.move_to_end(key)
                return hit[1]
        # Loaded outside the lock: two concurrent misses query twice rather
        # than one slow query blocking every other request.
        profile = load()
        with self._lock:
            self._items[key] = (now, profile)
            self._items.move_to_end(key)
            while len(self._items) > self._entries:
                self._items.popitem(last=False)
        return profile
