"""Reference TurboQuant (arXiv 2504.19874) in plain numpy and scipy, written for clarity.

An independent oracle for the tests: it shares no code with ``vecstore`` and follows the
paper's notation. Vectors are rows; ``Pi`` is a (d, d) orthogonal rotation applied as
y = Pi x, ``S`` a (d, d) matrix of i.i.d. N(0, 1) entries for the QJL sketch.

Rotated-coordinate density: for x uniform on the unit sphere of R^d, each coordinate t of
Pi x has density f(t) ∝ (1 - t^2)^((d-3)/2) on [-1, 1], i.e. (t + 1) / 2 ~ Beta(a, a) with
a = (d - 1) / 2.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import quad
from scipy.optimize import root
from scipy.special import betainc, betaincinv, betaln


def _cell_means(d: int, edges: np.ndarray) -> np.ndarray:
    """E[t | t in cell] for each cell between consecutive edges.

    Parameters
    ----------
    d : int
        Dimension, >= 2.
    edges : (k + 1,) float64
        Ascending cell edges in t, within [-1, 1].

    Returns
    -------
    (k,) float64

    Notes
    -----
    With u = (t + 1) / 2 ~ Beta(a, a): P(u < z) = I_z(a, a) and
    E[u 1{u < z}] = a / (a + a) I_z(a + 1, a) = I_z(a + 1, a) / 2.
    """
    a = (d - 1) / 2
    z = (edges + 1) / 2
    mass = np.diff(betainc(a, a, z))
    partial_mean_u = np.diff(betainc(a + 1, a, z) / 2)
    return 2 * partial_mean_u / mass - 1


def _lloyd_step(d: int, negative: np.ndarray) -> np.ndarray:
    """One Lloyd-Max update of the negative-half centroids (2**(b-1),) float64.

    Every cell edge moves to the midpoint of its two centroids, then every centroid to the
    conditional mean of its cell. The density is symmetric, so the positive half is the
    mirror image of the negative half and the middle edge is exactly 0; working on the
    negative half also keeps the incomplete-beta values away from 1, where their
    differences would lose precision.
    """
    edges = np.concatenate([[-1.0], (negative[1:] + negative[:-1]) / 2, [0.0]])
    return _cell_means(d, edges)


def lloyd_max_codebook(d: int, b: int) -> np.ndarray:
    """Lloyd-Max centroids for one rotated coordinate in dimension ``d`` with ``b`` bits.

    Lloyd iterations start from the quantiles of the density and run until the centroids
    move by less than 1e-4 of their scale. Lloyd's contraction is slow for many levels, so
    the fixed point c = step(c) is then solved to machine precision by a root finder
    started from there, and the result is checked to satisfy both optimality conditions.

    Returns
    -------
    (2**b,) float64
        Ascending centroids.
    """
    a = (d - 1) / 2
    half = 2 ** (b - 1)
    levels = np.arange(half) + 0.5
    negative = 2 * betaincinv(a, a, levels / (2 * half)) - 1
    for _ in range(100_000):
        updated = _lloyd_step(d, negative)
        change = np.max(np.abs(updated - negative))
        negative = updated
        if change <= 1e-4 * np.max(np.abs(negative)):
            break
    solution = root(lambda c: _lloyd_step(d, c) - c, negative, method="hybr", tol=1e-15)
    negative = solution.x
    residual = np.max(np.abs(_lloyd_step(d, negative) - negative))
    if not residual <= 1e-11 * np.max(np.abs(negative)):
        raise RuntimeError(f"Lloyd-Max did not converge for d={d}, b={b}: residual {residual}")
    return np.concatenate([negative, -negative[::-1]])


def coordinate_density(d: int, t: float) -> float:
    """f(t) = (1 - t^2)^((d-3)/2) / (2^(d-2) B(a, a)), a = (d - 1) / 2, on (-1, 1)."""
    a = (d - 1) / 2
    log_norm = -(d - 2) * np.log(2) - betaln(a, a)
    return float(np.exp(log_norm + (d - 3) / 2 * np.log1p(-t * t)))


def expected_coordinate_mse(d: int, centroids: np.ndarray) -> float:
    """E[(t - Q(t))^2] for one rotated coordinate under nearest-centroid quantization Q,
    by numerical integration of the density over each cell."""
    edges = np.concatenate([[-1.0], (centroids[1:] + centroids[:-1]) / 2, [1.0]])
    total = 0.0
    for lo, hi, c in zip(edges[:-1], edges[1:], centroids, strict=True):
        value, _ = quad(lambda t, c=c: (t - c) ** 2 * coordinate_density(d, t), lo, hi)
        total += value
    return total


def haar_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random (d, d) float64 orthogonal matrix: QR of a Gaussian matrix, with the
    signs of R's diagonal moved into Q so that the distribution is exactly Haar."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def gaussian_sketch(d: int, rng: np.random.Generator) -> np.ndarray:
    """The QJL matrix S: (d, d) float64 with i.i.d. N(0, 1) entries."""
    return rng.standard_normal((d, d))


def quant_mse(x_unit: np.ndarray, Pi: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Algorithm 1, Quant_mse: y = Pi x, idx_i = argmin_j |y_i - c_j|.

    Parameters
    ----------
    x_unit : (n, d) float
        Unit-norm rows.
    Pi : (d, d) float
        Orthogonal rotation.
    centroids : (2**b,) float64
        Ascending.

    Returns
    -------
    (n, d) int64
        Centroid index of every rotated coordinate; a coordinate exactly halfway between
        two centroids takes the lower one.
    """
    y = np.asarray(x_unit, dtype=np.float64) @ np.asarray(Pi, dtype=np.float64).T
    idx = np.zeros(y.shape, dtype=np.int64)
    best_distance = np.full(y.shape, np.inf)
    for j, c in enumerate(centroids):
        distance = np.abs(y - c)
        closer = distance < best_distance
        idx[closer] = j
        best_distance[closer] = distance[closer]
    return idx


def dequant_mse(idx: np.ndarray, Pi: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Algorithm 1, DeQuant_mse: x~ = Pi^T y~ with y~_i = c[idx_i]. Returns (n, d) float64."""
    return centroids[idx] @ np.asarray(Pi, dtype=np.float64)


def quant_prod(
    x_unit: np.ndarray, Pi: np.ndarray, S: np.ndarray, centroids_b_minus_1: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Algorithm 2, Quant_prod: b-1 bit Quant_mse, then QJL on the residual.

    Parameters
    ----------
    x_unit : (n, d) float
        Unit-norm rows.
    Pi : (d, d) float
        Orthogonal rotation.
    S : (d, d) float
        QJL sketch with i.i.d. N(0, 1) entries.
    centroids_b_minus_1 : (2**(b-1),) float64

    Returns
    -------
    idx : (n, d) int64
        MSE centroid indices.
    qjl : (n, d) float64
        sign(S r) as ±1, with r = x - DeQuant_mse(idx).
    gamma : (n,) float64
        ||r||.
    """
    idx = quant_mse(x_unit, Pi, centroids_b_minus_1)
    residual = np.asarray(x_unit, dtype=np.float64) - dequant_mse(idx, Pi, centroids_b_minus_1)
    qjl = np.where(residual @ np.asarray(S, dtype=np.float64).T >= 0, 1.0, -1.0)
    return idx, qjl, np.linalg.norm(residual, axis=1)


def dequant_prod(
    idx: np.ndarray,
    qjl: np.ndarray,
    gamma: np.ndarray,
    Pi: np.ndarray,
    S: np.ndarray,
    centroids_b_minus_1: np.ndarray,
) -> np.ndarray:
    """Algorithm 2, DeQuant_prod: x~_mse + sqrt(pi/2)/d * gamma * S^T qjl. Returns (n, d)."""
    d = S.shape[1]
    x_mse = dequant_mse(idx, Pi, centroids_b_minus_1)
    x_qjl = np.sqrt(np.pi / 2) / d * gamma[:, None] * (qjl @ np.asarray(S, dtype=np.float64))
    return x_mse + x_qjl


def estimate_ip_prod(
    q: np.ndarray,
    idx: np.ndarray,
    qjl: np.ndarray,
    gamma: np.ndarray,
    Pi: np.ndarray,
    S: np.ndarray,
    centroids_b_minus_1: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased estimate of <q_i, x_j> for unit x_j, split into its two terms.

    The estimate is <q, x~_mse> + sqrt(pi/2)/d * gamma * <S q, qjl>.

    Parameters
    ----------
    q : (nq, d) float
        Queries.
    idx, qjl, gamma
        The output of ``quant_prod`` for n vectors.

    Returns
    -------
    mse_term : (nq, n) float64
        <q, x~_mse>.
    qjl_term : (nq, n) float64
        sqrt(pi/2)/d * gamma * <S q, qjl>, the unbiased estimate of <q, r>.
    """
    q = np.asarray(q, dtype=np.float64)
    d = S.shape[1]
    mse_term = q @ dequant_mse(idx, Pi, centroids_b_minus_1).T
    sketched_q = q @ np.asarray(S, dtype=np.float64).T
    qjl_term = np.sqrt(np.pi / 2) / d * gamma[None, :] * (sketched_q @ qjl.T)
    return mse_term, qjl_term
