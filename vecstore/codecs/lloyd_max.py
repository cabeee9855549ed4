"""Lloyd-Max scalar codebooks for one coordinate of a randomly rotated unit vector.

After a uniform random rotation of a unit vector in R^d, each coordinate t has density
f(t) ∝ (1 - t^2)^((d-3)/2) on [-1, 1]. Substituting t = sin(u), u ∈ (-π/2, π/2), turns
f(t) dt into a weight ∝ cos(u)^(d-2) du that is finite for every d >= 2, so Lloyd
iterations run on a fine uniform grid in u with no endpoint singularity.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

GRID_POINTS = 1 << 18
MAX_ITERATIONS = 5000
TOLERANCE = 1e-12


def _grid(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid points t (G,) and normalized probability weights w (G,), float64."""
    # Beyond 40 standard deviations the mass is below 1e-300: restrict the grid there.
    half_width = min(np.pi / 2, np.arcsin(min(1.0, 40.0 / np.sqrt(dim))))
    step = 2 * half_width / GRID_POINTS
    u = -half_width + step * (np.arange(GRID_POINTS) + 0.5)
    log_w = (dim - 2) * np.log(np.cos(u))
    w = np.exp(log_w - log_w.max())
    return np.sin(u), w / w.sum()


@lru_cache(maxsize=64)
def _codebook(dim: int, bits: int) -> tuple[float, ...]:
    t, w = _grid(dim)
    cum_w = np.concatenate([[0.0], np.cumsum(w)])
    cum_tw = np.concatenate([[0.0], np.cumsum(w * t)])
    levels = 1 << bits
    # Start from the quantiles of the density, which is symmetric about 0.
    cdf = cum_w[1:]
    centroids = np.interp((np.arange(levels) + 0.5) / levels, cdf, t)
    for _ in range(MAX_ITERATIONS):
        edges = np.searchsorted(t, (centroids[1:] + centroids[:-1]) / 2)
        edges = np.concatenate([[0], edges, [t.size]])
        mass = cum_w[edges[1:]] - cum_w[edges[:-1]]
        new = (cum_tw[edges[1:]] - cum_tw[edges[:-1]]) / np.maximum(mass, 1e-300)
        new = np.where(mass > 0, new, centroids)
        # Enforce exact symmetry, which the density has.
        new = (new - new[::-1]) / 2
        delta = np.abs(new - centroids).max()
        centroids = new
        if delta < TOLERANCE * max(1.0, np.abs(centroids).max()):
            break
    return tuple(float(c) for c in centroids)


def codebook(dim: int, bits: int) -> np.ndarray:
    """The 2**bits Lloyd-Max centroids (ascending, float64) for dimension ``dim``.

    Computed once per (dim, bits) and cached for the life of the process.
    """
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return np.array(_codebook(int(dim), int(bits)))


def expected_mse(dim: int, centroids: np.ndarray) -> float:
    """Expected squared error of one coordinate under the rotated-coordinate density."""
    t, w = _grid(dim)
    c = np.asarray(centroids, dtype=np.float64)
    idx = np.searchsorted((c[1:] + c[:-1]) / 2, t)
    return float(np.sum(w * (t - c[idx]) ** 2))
