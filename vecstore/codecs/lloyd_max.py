"""Lloyd-Max scalar codebooks for one coordinate of a randomly rotated unit vector.

After a uniform random rotation of a unit vector in R^d, each coordinate t has density
f(t) ∝ (1 - t^2)^((d-3)/2) on [-1, 1]. Substituting t = sin(u), u ∈ (-π/2, π/2), turns
f(t) dt into a weight ∝ cos(u)^(d-2) du that is finite for every d >= 2, so the mass and
first moment of t are tabulated on a fine uniform grid in u with no endpoint singularity.
Cell statistics between arbitrary edges come from those tables by linear interpolation,
so the Lloyd iteration moves continuously and converges to the true fixed point.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

GRID_POINTS = 1 << 20
# The grid spans this many standard deviations (1/sqrt(d)) each side; the mass beyond is
# below 1e-22.
GRID_SIGMAS = 10.0
LLOYD_WARMUP = 50
MAX_NEWTON_STEPS = 50
TOLERANCE = 1e-14


@lru_cache(maxsize=4)
def _moment_tables(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid edges t (G+1,) and cumulative mass and first moment of t at each edge, float64."""
    half_width = float(np.arcsin(min(1.0, GRID_SIGMAS / np.sqrt(dim))))
    edges_u = np.linspace(-half_width, half_width, GRID_POINTS + 1)
    mid_u = (edges_u[1:] + edges_u[:-1]) / 2
    log_w = (dim - 2) * np.log(np.cos(mid_u))
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    cum_mass = np.concatenate([[0.0], np.cumsum(w)])
    cum_moment = np.concatenate([[0.0], np.cumsum(w * np.sin(mid_u))])
    return np.sin(edges_u), cum_mass, cum_moment


def _conditional_means(dim: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mass (K,) and E[t | cell] (K,) of the cells between ascending ``edges`` (K+1,)."""
    t, cum_mass, cum_moment = _moment_tables(dim)
    mass = np.diff(np.interp(edges, t, cum_mass))
    moment = np.diff(np.interp(edges, t, cum_moment))
    return mass, moment / np.maximum(mass, 1e-300)


def _density(dim: int, points: np.ndarray) -> np.ndarray:
    """The density of t at ``points``, from the slope of the cumulative mass table."""
    t, cum_mass, _ = _moment_tables(dim)
    slope = np.diff(cum_mass) / np.diff(t)
    cell = np.clip(np.searchsorted(t, points) - 1, 0, slope.size - 1)
    return slope[cell]


def _lloyd_map(dim: int, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Lloyd update of the negative-half centroids (K,) and its Jacobian (K, K).

    Cell i spans [e_i, e_{i+1}] with e_i the midpoint of centroids i-1 and i, the first
    edge the grid's end and the last edge 0 (the density is symmetric). Moving an edge e
    changes the conditional mean m of a cell of mass P by f(e) (e - m) / P.
    """
    t = _moment_tables(dim)[0]
    edges = np.concatenate([[t[0]], (negative[1:] + negative[:-1]) / 2, [0.0]])
    mass, means = _conditional_means(dim, edges)
    f = _density(dim, edges)
    safe_mass = np.maximum(mass, 1e-300)
    upper = 0.5 * f[1:] * (edges[1:] - means) / safe_mass
    lower = 0.5 * f[:-1] * (means - edges[:-1]) / safe_mass
    upper[-1] = 0.0
    lower[0] = 0.0
    jacobian = np.diag(upper + lower) + np.diag(upper[:-1], 1) + np.diag(lower[1:], -1)
    return means, jacobian


@lru_cache(maxsize=64)
def _codebook(dim: int, bits: int) -> tuple[float, ...]:
    t, cum_mass, _ = _moment_tables(dim)
    half = 1 << (bits - 1)
    # Start from the quantiles of f^(1/3), the high-resolution optimum's point density.
    root_density = np.concatenate([[0.0], np.cumsum(np.diff(cum_mass) ** (1 / 3))])
    quantiles = (np.arange(half) + 0.5) / (2 * half)
    negative = np.interp(quantiles, root_density / root_density[-1], t)
    for _ in range(LLOYD_WARMUP):
        negative, _ = _lloyd_map(dim, negative)
    # Newton's method on the fixed point m(c) = c: quadratic convergence, where plain
    # Lloyd steps need tens of thousands of iterations at 8 bits.
    for _ in range(MAX_NEWTON_STEPS):
        means, jacobian = _lloyd_map(dim, negative)
        residual = means - negative
        step = np.linalg.solve(jacobian - np.eye(half), -residual)
        candidate = negative + step
        if not np.all(np.diff(candidate) > 0) or candidate[-1] >= 0:
            candidate = means
        negative = candidate
        if np.abs(residual).max() < TOLERANCE * np.abs(negative).max():
            break
    return tuple(float(c) for c in np.concatenate([negative, -negative[::-1]]))


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
    t, cum_mass, cum_moment = _moment_tables(dim)
    c = np.asarray(centroids, dtype=np.float64)
    edges = np.concatenate([[t[0]], (c[1:] + c[:-1]) / 2, [t[-1]]])
    mass, means = _conditional_means(dim, edges)
    # E[(t - c)^2] = E[t^2] - 2 c E[t] + c^2 over each cell; E[t^2] over all is 1/d.
    return float(1.0 / dim - np.sum(mass * (2 * c * means - c**2)))
