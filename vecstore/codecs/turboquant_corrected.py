"""``tq{b}c``: TurboQuant_mse codes with a per-vector correction of the inner-product estimate.

The plain estimate <q, x> ≈ ||x|| <R q, y_mse> shrinks every score by the cosine between
the rotated unit vector y and its reconstruction y_mse, and that cosine differs from
vector to vector, which reorders neighbours. Dividing by the stored <y, y_mse> (the
estimator RaBitQ uses for its codes) removes the shrinkage: on text-minilm384 it lifts
recall@10 of the 2-bit code from 0.80 to 0.83 and of the 4-bit code from 0.93 to 0.95.

Code layout: the ``tq{b}`` code, then <y, y_mse> as uint16 fixed point in units of 2^-15
(resolution 3e-5, range [0, 2): the reconstruction can be slightly longer than the unit
vector, so the product can exceed 1). Two bytes more than ``tq{b}``.
"""

from __future__ import annotations

import numpy as np

from vecstore.codecs.turboquant import RotatedQueries, TurboQuantMSE

CORRECTION_BYTES = 2
CORRECTION_SCALE = 32768.0
CORRECTION_MAX = 65535 / CORRECTION_SCALE


def correction_bits(cosine) -> object:
    """<y, y_mse> (n,) float64 as the stored uint16 fixed point (numpy or CuPy arrays)."""
    return (cosine.clip(0.0, CORRECTION_MAX) * CORRECTION_SCALE).round().astype("<u2")


class TurboQuantCorrected(TurboQuantMSE):
    """TurboQuant_mse with ``bits`` bits per coordinate and a stored <y, y_mse>."""

    def __init__(self, dim: int, bits: int, seed: int = 0, rotation: str = "auto",
                 centroids: list[float] | None = None):
        super().__init__(dim, bits, seed, rotation, centroids)
        self.spec = f"tq{bits}c"
        self.correction_offset = self.code_size
        self.code_size += CORRECTION_BYTES

    def _encode_chunk(self, x: np.ndarray) -> np.ndarray:
        codes, rotated, indices = self._encode_parts(x)
        cosine = np.einsum("ij,ij->i", rotated.astype(np.float64),
                           np.take(self.centroids, indices))
        fraction = correction_bits(cosine)
        codes[:, self.correction_offset :] = fraction.reshape(-1, 1).view(np.uint8)
        return codes

    def corrections(self, codes: np.ndarray) -> np.ndarray:
        """1 / <y, y_mse> per code, (n,) float32 (1 for zero vectors)."""
        raw = np.ascontiguousarray(codes[:, self.correction_offset :]).view("<u2")[:, 0]
        cosine = raw.astype(np.float32) / np.float32(CORRECTION_SCALE)
        return np.where(cosine > 0, 1 / np.maximum(cosine, np.float32(1e-6)), 1).astype(
            np.float32
        )

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruct (n, d) float32, scaled so that <q, decode(x)> is the corrected score."""
        return super().decode(codes) * self.corrections(codes)[:, None]

    def score_scales(self, codes: np.ndarray) -> np.ndarray:
        """What ``score`` multiplies a code's table sum by, (n,) float32:
        ||x|| / <y, y_mse>."""
        return self.norms(codes) * self.corrections(codes)

    def score(self, state: RotatedQueries, codes: np.ndarray) -> np.ndarray:
        """Corrected estimate ||x|| <R q, y_mse> / <y, y_mse>, (nq, n) float32."""
        return self._mse_scores(state.rotated, codes) * self.score_scales(codes)[None, :]

    def to_config(self) -> dict:
        return self._config("tq-corrected")
