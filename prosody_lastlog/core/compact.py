"""Memory-compact containers for millions of entries (sorted times, a table of names); no domain knowledge."""

from __future__ import annotations

import secrets
from array import array
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator
from hashlib import blake2b
from itertools import islice

_NAME_END = b"\xff"  # ends each stored name: never a byte of UTF-8
_HASH_MASK = 0xFFFFFFFF  # the table keys on 32 bits of the name's hash; names are compared in full
_MAX_LOAD = 0.75  # the table grows past this many slots per position
_BLOCK = 2048  # times per block of a SortedTimes once built; a block splits at twice this


class SortedTimes:
    """A sorted multiset of float64 times, in blocks: add and remove in O(log N + block), counts in
    O(log N + N / block), 8 bytes per time."""

    def __init__(self, times: Iterable[float] = (), *, block: int = _BLOCK) -> None:
        ordered = array("d", sorted(times))
        self._block = block
        self._blocks = [ordered[start : start + block] for start in range(0, len(ordered), block)]
        self._maxes = array("d", (times[-1] for times in self._blocks))
        self._len = len(ordered)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[float]:
        return (time for block in self._blocks for time in block)

    def add(self, time: float) -> None:
        """Adds one time."""
        self._len += 1
        if not self._blocks:
            self._blocks.append(array("d", [time]))
            self._maxes.append(time)
            return
        at = min(bisect_left(self._maxes, time), len(self._blocks) - 1)
        block = self._blocks[at]
        insort(block, time)
        self._maxes[at] = block[-1]
        if len(block) > 2 * self._block:
            half = len(block) // 2
            self._blocks[at : at + 1] = [block[:half], block[half:]]
            self._maxes[at : at + 1] = array("d", [block[half - 1], block[-1]])

    def remove(self, time: float) -> None:
        """Removes one time equal to `time`, which must be there."""
        at = bisect_left(self._maxes, time)
        block = self._blocks[at]
        del block[bisect_left(block, time)]
        self._len -= 1
        if block:
            self._maxes[at] = block[-1]
        else:
            del self._blocks[at], self._maxes[at]

    def count_where(self, holds: Callable[[float], bool]) -> int:
        """How many times `holds` is true of, for a test that, once true of a time, is true of every later one."""
        at = bisect_left(self._maxes, True, key=holds)
        if at == len(self._blocks):
            return 0
        block = self._blocks[at]
        return len(block) - bisect_left(block, True, key=holds) + sum(map(len, islice(self._blocks, at + 1, None)))


class NameTable:
    """Names numbered by slot (0, 1, ... in the order first added, kept for good), found in O(1): each name in UTF-8
    in one shared buffer, found through an open-addressing table of slot numbers (linear probing).

    `hash_name` hashes a stored name (its UTF-8 and _NAME_END) and must be keyed, so names cannot be chosen to
    collide: Python's own hash, keyed per process, or a NameHash for a table built in another process. `capacity`
    makes room for that many names at once.
    """

    def __init__(self, hash_name: Callable[[bytes], int] = hash, *, capacity: int = 0) -> None:
        self._hash_name = hash_name
        self._table = array("i")  # per position: slot + 1, or 0 if free
        self._hashes = array("I")  # per slot: the low 32 bits of the name's hash
        self._name_at = array("q")  # per slot: where its name starts in _names
        self._names = bytearray()  # every slot's name in UTF-8, each followed by _NAME_END
        self._rehash(capacity)

    def __len__(self) -> int:
        return len(self._hashes)

    def find(self, name: str) -> int:
        """The slot of `name`, or -1."""
        key = name.encode("utf-8", "surrogatepass") + _NAME_END
        return self._probe(key, self._hash_name(key) & _HASH_MASK)[1]

    def add(self, name: str) -> int:
        """The slot of `name`, made if it has none (then it is the table's length before)."""
        key = name.encode("utf-8", "surrogatepass") + _NAME_END  # as in find: not a call more in the index's loops
        hashed = self._hash_name(key) & _HASH_MASK
        position, slot = self._probe(key, hashed)
        if slot >= 0:
            return slot
        slot = len(self._hashes)
        self._table[position] = slot + 1
        self._hashes.append(hashed)
        self._name_at.append(len(self._names))
        self._names += key
        if slot + 1 > _MAX_LOAD * len(self._table):
            self._rehash(2 * (slot + 1))
        return slot

    def name(self, slot: int) -> str:
        """The name in a slot."""
        start = self._name_at[slot]
        return self._names[start : self._names.index(_NAME_END, start)].decode("utf-8", "surrogatepass")

    def _probe(self, key: bytes, hashed: int) -> tuple[int, int]:
        """Where `key` is in the table and its slot, or the free position it would take and -1."""
        table, size = self._table, len(self._table)
        position = hashed % size
        while entry := table[position]:
            slot = entry - 1
            if self._hashes[slot] == hashed and self._names.startswith(key, self._name_at[slot]):
                return position, slot
            position = position + 1 if position + 1 < size else 0
        return position, -1

    def _rehash(self, names: int) -> None:
        """Makes the table room for `names` at about 60% load."""
        size = max(8, names * 5 // 3)
        table = array("i", [0]) * size
        for slot, hashed in enumerate(self._hashes):
            position = hashed % size
            while table[position]:
                position = position + 1 if position + 1 < size else 0
            table[position] = slot + 1
        self._table = table


class NameHash:
    """A keyed hash of stored names that every process given the same key computes alike (Python's own hash is
    keyed per process), so a table built in a child process can be used here. The key is random by default."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = secrets.token_bytes(16) if key is None else key
        self._keyed = blake2b(digest_size=4, key=self.key)

    def __call__(self, name: bytes) -> int:
        hasher = self._keyed.copy()  # cheaper than keying anew
        hasher.update(name)
        return int.from_bytes(hasher.digest())

    def __reduce__(self) -> tuple[type[NameHash], tuple[bytes]]:
        return NameHash, (self.key,)
