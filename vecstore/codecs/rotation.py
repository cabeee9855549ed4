"""Seeded random rotations: dense Haar-random orthogonal matrices and randomized Hadamard.

Random numbers come from the PCG64 bit stream through a Box-Muller transform written
here, so a seed gives the same rotation on every numpy version (numpy does not promise
stable ``Generator.standard_normal`` streams across releases).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np

RotationKind = Literal["dense", "hadamard"]

# Above this dimension the dense d x d matrix costs more than padding to a power of two.
DENSE_MAX_DIM = 4096
# Power-of-two dimensions from here on use the O(d log d) Hadamard transform.
HADAMARD_MIN_POW2 = 1024
HADAMARD_ROUNDS = 3
FWHT_CHUNK = 1024


def _bit_generator(seed: int, stream: int) -> np.random.PCG64:
    return np.random.PCG64(np.random.SeedSequence([seed, stream]))


def stable_uniform(seed: int, n: int, stream: int = 0) -> np.ndarray:
    """n uniform float64 samples in the open interval (0, 1) from PCG64 seeded by (seed, stream).

    Each value is the top 53 bits of one raw 64-bit draw, shifted half a step off zero.
    """
    raw = _bit_generator(seed, stream).random_raw(n)
    return ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def stable_normal(seed: int, shape: tuple[int, ...], stream: int = 0) -> np.ndarray:
    """Standard normal float64 samples from PCG64 seeded by (seed, stream).

    Streams separate independent matrices drawn from one user seed.
    """
    n = int(np.prod(shape))
    pairs = (n + 1) // 2
    u = stable_uniform(seed, 2 * pairs, stream)
    u1, u2 = u[:pairs], u[pairs:]
    radius = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    return z[:n].reshape(shape)


def stable_signs(seed: int, n: int, stream: int = 0) -> np.ndarray:
    """n random ±1.0 float64 values from PCG64 seeded by (seed, stream)."""
    raw = _bit_generator(seed, stream).random_raw(n)
    return np.where(raw >> np.uint64(63), -1.0, 1.0)


def choose_kind(dim: int) -> RotationKind:
    """The rotation ``"auto"`` picks for ``dim``.

    Dense QR is an exactly Haar-random rotation and keeps the rotated dimension equal to
    d, so it is used up to DENSE_MAX_DIM. Hadamard is used for large powers of two (no
    padding, O(d log d)) and for very large d, where a dense matrix is too costly.
    """
    is_pow2 = dim & (dim - 1) == 0
    if (is_pow2 and dim >= HADAMARD_MIN_POW2) or dim > DENSE_MAX_DIM:
        return "hadamard"
    return "dense"


class DenseRotation:
    """y = x @ matrix.T with a Haar-random orthogonal (d, d) matrix from QR of a Gaussian."""

    kind: RotationKind = "dense"

    def __init__(self, dim: int, seed: int):
        self.dim = dim
        self.out_dim = dim
        gaussian = stable_normal(seed, (dim, dim))
        q, r = np.linalg.qr(gaussian)
        # Fix the signs so that the distribution is exactly Haar.
        q *= np.where(np.diag(r) < 0, -1.0, 1.0)
        self.matrix = np.ascontiguousarray(q, dtype=np.float32)
        self._matrix_t = np.ascontiguousarray(self.matrix.T)
        self.matrix_t64 = self._matrix_t.astype(np.float64)
        self.matrix64 = self.matrix.astype(np.float64)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Rotate (n, d) float32 -> (n, d) float32."""
        return x @ self._matrix_t

    def forward_exact(self, x: np.ndarray, xp=np) -> np.ndarray:
        """Rotate in float64 and round once to float32: (n, d) float32 -> (n, d) float32.
        ``xp`` is the array module of ``x`` (numpy, or CuPy on the GPU).

        Encoding uses this so that codes do not depend on the summation order of a
        float32 matrix product (which differs between BLAS builds, batch shapes and the
        GPU): any correct float64 product rounds to the same float32 values, except in
        the astronomically rare case of a value within 1e-16 of a rounding midpoint.
        """
        return (x.astype(xp.float64) @ xp.asarray(self.matrix_t64)).astype(xp.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Undo the rotation: (n, d) float32 -> (n, d) float32."""
        return y @ self.matrix


@lru_cache(maxsize=16)
def _hadamard_factors(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal Hadamard matrices H_a (a, a) and H_b (b, b), float32, with a * b = size."""
    bits = size.bit_length() - 1
    a = 1 << (bits // 2)
    b = size // a

    def sylvester(m: int) -> np.ndarray:
        h = np.ones((1, 1))
        while h.shape[0] < m:
            h = np.block([[h, h], [h, -h]])
        return (h / np.sqrt(m)).astype(np.float32)

    return sylvester(a), sylvester(b)


def fwht(x: np.ndarray, xp=np, chunk: int = FWHT_CHUNK) -> np.ndarray:
    """Orthonormal Walsh-Hadamard transform of each row of ``x`` (n, D), D a power of two.

    Uses H_D = H_a ⊗ H_b, so the transform is two small matrix products per block of
    ``chunk`` rows. ``xp`` is the array module of ``x`` (numpy, or CuPy on the GPU).
    """
    n, size = x.shape
    h_a, h_b = (xp.asarray(h) for h in _hadamard_factors(size))
    a, b = h_a.shape[0], h_b.shape[0]
    out = xp.empty_like(x)
    for start in range(0, n, chunk):
        block = x[start : start + chunk]
        m = block.shape[0]
        y = (block.reshape(m * a, b) @ h_b).reshape(m, a, b)
        y = xp.ascontiguousarray(y.transpose(0, 2, 1)).reshape(m * b, a) @ h_a
        out[start : start + m] = y.reshape(m, b, a).transpose(0, 2, 1).reshape(m, size)
    return out


class HadamardRotation:
    """Randomized Hadamard transform: pad d to a power of two D, then HADAMARD_ROUNDS
    rounds of random signs followed by the orthonormal Walsh-Hadamard transform."""

    kind: RotationKind = "hadamard"

    def __init__(self, dim: int, seed: int):
        self.dim = dim
        self.out_dim = 1 << (dim - 1).bit_length()
        signs = stable_signs(seed, HADAMARD_ROUNDS * self.out_dim)
        self.signs = signs.reshape(HADAMARD_ROUNDS, self.out_dim).astype(np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Rotate (n, d) float32 -> (n, D) float32."""
        y = np.zeros((x.shape[0], self.out_dim), dtype=np.float32)
        y[:, : self.dim] = x
        for signs in self.signs:
            y = fwht(y * signs)
        return y

    def forward_exact(self, x: np.ndarray, xp=np) -> np.ndarray:
        """``forward`` computed in float64 and rounded once to float32 (see
        ``DenseRotation.forward_exact``); ``xp`` is the array module of ``x``."""
        y = xp.zeros((x.shape[0], self.out_dim), dtype=xp.float64)
        y[:, : self.dim] = x
        # The GPU transforms a whole encoding pass at once; the CPU bounds its working set.
        chunk = FWHT_CHUNK if xp is np else max(1, y.shape[0])
        for signs in self.signs:
            y = fwht(y * xp.asarray(signs), xp, chunk)
        return y.astype(xp.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Undo the rotation: (n, D) float32 -> (n, d) float32."""
        x = np.asarray(y, dtype=np.float32)
        for signs in self.signs[::-1]:
            x = fwht(x) * signs
        return np.ascontiguousarray(x[:, : self.dim])


def make_rotation(kind: str, dim: int, seed: int) -> DenseRotation | HadamardRotation:
    """Build the rotation ``kind`` ("auto", "dense" or "hadamard") for ``dim``."""
    if kind == "auto":
        kind = choose_kind(dim)
    if kind == "dense":
        return DenseRotation(dim, seed)
    if kind == "hadamard":
        return HadamardRotation(dim, seed)
    raise ValueError(f"unknown rotation {kind!r}; expected 'auto', 'dense' or 'hadamard'")
