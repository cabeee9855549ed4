"""Which sealed segments merge next: a size-tiered policy, as in LSM stores.

Segments are grouped into tiers by their live bytes: tier t holds the segments of
``fanout**t`` up to ``fanout**(t + 1)`` bytes. Once a tier holds ``fanout`` segments,
they merge into one, which lands at least one tier higher (its size is at least
``fanout * fanout**t``). So, once merges settle,

- a tier holds fewer than ``fanout`` segments: a collection whose segments span sizes
  from s to S bytes has at most ``(fanout - 1) * (log_fanout(S / s) + 2)`` segments below
  the full size;
- a row is rewritten at most once per tier it climbs: from a flush of s bytes to the full
  size S, write amplification is at most ``2 + log_fanout(S / s)``, whatever the pattern
  of flushes.

Segments at or above ``max_bytes`` (the collection's ``segment_bytes``) are full and
never merged here; ``compact()`` rewrites those with deleted rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vecstore.errors import InvalidArgument


@dataclass(frozen=True)
class TieredMergePolicy:
    """Size-tiered merges of sealed segments.

    fanout : int
        Segments of one tier that merge into one (>= 2). Larger means fewer rewrites of
        each row and more segments for a search to visit.
    """

    fanout: int = 3

    def __post_init__(self):
        if isinstance(self.fanout, bool) or not isinstance(self.fanout, int) \
                or self.fanout < 2:
            raise InvalidArgument(f"fanout must be an integer >= 2, got {self.fanout!r}")

    def tier(self, nbytes: int) -> int:
        """The tier of a segment of ``nbytes`` live bytes."""
        tier = int(math.log(max(nbytes, 1), self.fanout))
        # Float rounding of the logarithm at exact powers of the fanout.
        while self.fanout ** (tier + 1) <= nbytes:
            tier += 1
        while tier and self.fanout ** tier > nbytes:
            tier -= 1
        return tier

    def plan(self, sizes: Sequence[int], max_bytes: int) -> list[int]:
        """Indexes into ``sizes`` (live bytes of each segment) of the segments to merge
        next, or [] when no tier is full: the ``fanout`` smallest segments of the lowest
        full tier, among those below ``max_bytes``, when they merge into at most
        ``max_bytes``."""
        tiers: dict[int, list[int]] = {}
        for index, size in enumerate(sizes):
            if size < max_bytes:
                tiers.setdefault(self.tier(size), []).append(index)
        for tier in sorted(tiers):
            members = sorted(tiers[tier], key=lambda index: sizes[index])
            if len(members) >= self.fanout:
                chosen = members[: self.fanout]
                if sum(sizes[index] for index in chosen) <= max_bytes:
                    return sorted(chosen)
        return []
