"""TurboQuant encoding on the GPU (CuPy, imported when called), bit-identical to the CPU.

Both sides sum norms and rotate in float64 and round once to float32, then compare with
the same float32 decision boundaries, so the codes do not depend on summation order.
Covers ``tq{b}`` and ``tq{b}c``; the prod variant's sketch signs are not reproduced.
"""

from __future__ import annotations

import numpy as np

from vecstore.codecs import bitpack
from vecstore.codecs.turboquant import COUNT_QUANTIZE_MAX_BITS, TurboQuantMSE
from vecstore.codecs.turboquant_corrected import TurboQuantCorrected, correction_bits

# Rows encoded per device pass: bounds the float64 working set to about 1.2 GiB at d = 384.
GPU_ENCODE_ROWS = 1 << 18


def supports_gpu_encoding(codec) -> bool:
    """Whether ``encode_on_gpu`` reproduces ``codec.encode``."""
    return isinstance(codec, TurboQuantMSE)


def encode_on_gpu(codec, x) -> np.ndarray:
    """``codec.encode(x)`` computed on the GPU: x (n, d) float32 (numpy or CuPy) ->
    codes (n, code_size) uint8 on the host."""
    import cupy as cp

    if not supports_gpu_encoding(codec):
        raise TypeError(f"codec {codec.spec!r} has no GPU encoder")
    out = np.empty((x.shape[0], codec.code_size), dtype=np.uint8)
    boundaries = cp.asarray(codec._boundaries32)
    levels64 = cp.asarray(codec.centroids)
    for start in range(0, x.shape[0], GPU_ENCODE_ROWS):
        chunk = cp.asarray(x[start : start + GPU_ENCODE_ROWS], dtype=cp.float32)
        x64 = chunk.astype(cp.float64)
        norms = cp.sqrt((x64 * x64).sum(axis=1)).astype(cp.float32)
        unit = chunk / cp.where(norms > 0, norms, cp.float32(1))[:, None]
        rotated = codec.rotation.forward_exact(unit, xp=cp)
        if codec.mse_bits > COUNT_QUANTIZE_MAX_BITS:
            indices = cp.searchsorted(boundaries, rotated).astype(cp.uint8)
        else:
            indices = cp.zeros(rotated.shape, dtype=cp.uint8)
            for boundary in codec._boundaries32:
                indices += rotated > boundary
        codes = cp.empty((chunk.shape[0], codec.code_size), dtype=cp.uint8)
        codes[:, : codec.index_bytes] = bitpack.pack(indices, codec.mse_bits, xp=cp)
        codes[:, codec.norm_offset : codec.norm_offset + 4] = norms.view(cp.uint8).reshape(-1, 4)
        if isinstance(codec, TurboQuantCorrected):
            cosine = (rotated.astype(cp.float64) * levels64[indices]).sum(axis=1)
            fixed_point = correction_bits(cosine).view(cp.uint8).reshape(-1, 2)
            codes[:, codec.correction_offset :] = fixed_point
        out[start : start + chunk.shape[0]] = cp.asnumpy(codes)
    return out
