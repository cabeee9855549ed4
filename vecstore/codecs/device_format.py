"""How the GPU kernels read a codec's codes.

A codec with a device kernel says so with a ``device_format`` property (None while it
cannot be scored there, as before training), so that the search layer picks its kernel
and layout from this description rather than from the codec's type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The kernel families (vecstore/_cuda/): TurboQuant MSE codes (tq{b}, tq{b}c) scored as
# <q_rot, centroids[index]> times the row's score scale; tq{b}-prod, which adds the QJL
# signs' term; codes scored by sums of per-query table entries (PQ, asymmetric MIB); and
# 1-bit codes scored by popcount (Hamming MIB).
FAMILIES = ("tq", "prod", "table", "hamming")


@dataclass(frozen=True, eq=False)
class DeviceFormat:
    """The leading ``index_bytes`` of a code hold ``values`` packed ``bits``-bit values,
    scored by the kernel ``family``.

    centroids : (2**bits,) float32, the values an index stands for ("tq", "prod")
    sign_bytes : (start, stop), the bytes of the QJL signs ("prod")
    """

    family: str
    index_bytes: int
    bits: int
    values: int
    centroids: np.ndarray | None = None
    sign_bytes: tuple[int, int] | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"device format family must be one of {FAMILIES}, "
                             f"got {self.family!r}")


def device_format(codec) -> DeviceFormat | None:
    """``codec``'s device format, or None for a codec no GPU kernel scores."""
    return getattr(codec, "device_format", None)
