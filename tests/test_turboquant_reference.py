"""vecstore's TurboQuant codecs against the paper (arXiv 2504.19874) and the reference oracle.

The oracle in ``tests/reference/turboquant_ref.py`` is an independent float64 translation of
the paper. Monte Carlo checks use fixed seeds, so every run draws the same samples.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from reference import turboquant_ref as ref
from scipy.integrate import quad
from scipy.special import gammaln

from vecstore.codecs import make_codec
from vecstore.codecs.lloyd_max import codebook
from vecstore.codecs.rotation import make_rotation

REPO_ROOT = Path(__file__).resolve().parents[1]

DIM = 384
# Distortion E||x - x~||^2 of unit vectors for b = 1..4 bits per coordinate (paper, Thm. 1).
PAPER_MSE = {1: 0.3634, 2: 0.1175, 3: 0.0345, 4: 0.0095}
MSE_VECTORS = 4000
PROD_SEEDS = 100
PROD_PAIRS_PER_SEED = 100

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) float64 rows uniform on the unit sphere."""
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def code_indices(codes: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The first ``count`` ``bits``-bit values of each code, as the documented layout packs
    them (value j in stream bits [j b, (j+1) b), stream bit s = bit s % 8 of byte s // 8).

    Parameters
    ----------
    codes : (n, code_size) uint8

    Returns
    -------
    (n, count) int64
    """
    stream = np.unpackbits(codes, axis=1, count=count * bits, bitorder="little")
    weights = 1 << np.arange(bits)
    return stream.reshape(codes.shape[0], count, bits).astype(np.int64) @ weights


def mean_and_standard_error(values_by_seed: np.ndarray) -> tuple[float, float]:
    """Mean of (seeds, pairs) float64 values and its standard error, treating seeds as the
    independent units (pairs under one seed share the rotation and sketch)."""
    seed_means = values_by_seed.mean(axis=1)
    return float(seed_means.mean()), float(seed_means.std(ddof=1) / np.sqrt(seed_means.size))


# --- the oracle itself -------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_oracle_codebook_is_uniform_quantizer_at_d3(b):
    # At d = 3 the coordinate density is uniform on [-1, 1].
    levels = 2**b
    expected = -1 + (2 * np.arange(levels) + 1) / levels
    np.testing.assert_allclose(ref.lloyd_max_codebook(3, b), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", [2, 7, 384])
def test_oracle_one_bit_codebook_is_mean_absolute_coordinate(d):
    # E|t| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)) for one coordinate of a uniform unit vector.
    mean_abs = np.exp(gammaln(d / 2) - gammaln((d + 1) / 2)) / np.sqrt(np.pi)
    np.testing.assert_allclose(ref.lloyd_max_codebook(d, 1), [-mean_abs, mean_abs], rtol=1e-12)


def test_oracle_centroids_are_conditional_means_by_quadrature():
    d, b = 7, 3
    centroids = ref.lloyd_max_codebook(d, b)
    edges = np.concatenate([[-1.0], (centroids[1:] + centroids[:-1]) / 2, [1.0]])

    def density(t: float) -> float:
        return (1 - t * t) ** ((d - 3) / 2)

    for lo, hi, c in zip(edges[:-1], edges[1:], centroids, strict=True):
        mass, _ = quad(density, lo, hi)
        first_moment, _ = quad(lambda t: t * density(t), lo, hi)
        assert first_moment / mass == pytest.approx(c, abs=1e-10)


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_oracle_distortion_matches_paper(b):
    centroids = ref.lloyd_max_codebook(DIM, b)
    distortion = DIM * ref.expected_coordinate_mse(DIM, centroids)
    assert distortion == pytest.approx(PAPER_MSE[b], rel=0.01)


# --- Lloyd-Max codebooks ------------------------------------------------------------------


CODEBOOK_CASES = [(d, b) for d in [2, 3, 7, 64, 384, 1000] for b in [1, 2, 3, 4]]
CODEBOOK_CASES += [(64, 8), (384, 8), (3, 6)]


@pytest.mark.parametrize(("d", "b"), CODEBOOK_CASES)
def test_codebook_matches_reference(d, b):
    expected = ref.lloyd_max_codebook(d, b)
    actual = codebook(d, b)
    assert actual.dtype == np.float64
    assert actual.shape == (2**b,)
    assert np.all(np.diff(actual) > 0)
    np.testing.assert_allclose(actual, -actual[::-1], rtol=0, atol=1e-15)
    assert np.max(np.abs(actual - expected)) <= 1e-6 * np.max(np.abs(expected))


@pytest.mark.parametrize(
    ("d", "b"),
    [(d, b) for d in [2, 64, 384, 1000] for b in [1, 2, 3, 4]]
    + [(384, 8), (384, 6)],
)
def test_codebook_distortion_is_near_optimal(d, b):
    optimal = ref.expected_coordinate_mse(d, ref.lloyd_max_codebook(d, b))
    assert ref.expected_coordinate_mse(d, codebook(d, b)) <= optimal * (1 + 1e-4)


# --- TurboQuant_mse ----------------------------------------------------------------------


@cache
def mse_experiment(b: int) -> dict[str, np.ndarray]:
    """Encode MSE_VECTORS fixed unit vectors with tq{b} at d = DIM (dense rotation)."""
    x = unit_rows(np.random.default_rng(1000 + b), MSE_VECTORS, DIM).astype(np.float32)
    codec = make_codec(f"tq{b}", dim=DIM, seed=17, rotation="dense")
    codes = codec.encode(x)
    decoded = codec.decode(codes)
    errors = np.sum((x.astype(np.float64) - decoded) ** 2, axis=1)
    return {"x": x, "codes": codes, "decoded": decoded, "errors": errors, "codec": codec}


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_mse_distortion_matches_paper(b):
    errors = mse_experiment(b)["errors"]
    assert errors.mean() == pytest.approx(PAPER_MSE[b], rel=0.05)


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_mse_distortion_matches_codebook_expectation(b):
    experiment = mse_experiment(b)
    errors, codec = experiment["errors"], experiment["codec"]
    # A Haar rotation of a uniform unit vector is uniform, so each rotated coordinate has
    # exactly the density the codebook was built for.
    expected = DIM * ref.expected_coordinate_mse(DIM, codec.centroids)
    standard_error = errors.std(ddof=1) / np.sqrt(errors.size)
    assert abs(errors.mean() - expected) <= 4 * standard_error


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_mse_codes_and_decode_match_reference(b):
    experiment = mse_experiment(b)
    x, codes, codec = experiment["x"], experiment["codes"], experiment["codec"]
    rotation = codec.rotation.matrix.astype(np.float64)
    centroids = codec.centroids
    indices = code_indices(codes, DIM, b)
    expected_indices = ref.quant_mse(x, rotation, centroids)

    # Indices differ only where the rotated coordinate is a float32 rounding away from the
    # decision boundary between the two neighbouring centroids.
    differ = indices != expected_indices
    assert differ.mean() < 1e-4
    assert np.all(np.abs(indices - expected_indices)[differ] == 1)
    rotated = x.astype(np.float64) @ rotation.T
    boundary = (centroids[indices] + centroids[expected_indices]) / 2
    assert np.all(np.abs(rotated - boundary)[differ] < 1e-5)

    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    expected_decoded = ref.dequant_mse(indices, rotation, centroids) * norms
    np.testing.assert_allclose(experiment["decoded"], expected_decoded, rtol=0, atol=1e-5)


# --- TurboQuant_prod ---------------------------------------------------------------------


def correlated_pairs(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) unit rows x and queries q = x + N(0, I/d) noise, so <q, x> is near 1 and a
    multiplicative bias of the estimator would show."""
    x = unit_rows(rng, n, d)
    return x, x + rng.standard_normal((n, d)) / np.sqrt(d)


@cache
def prod_experiment(b: int) -> dict[str, dict[str, np.ndarray]]:
    """Inner-product estimates of tq{b}-prod and of the oracle over PROD_SEEDS codec seeds.

    Every array is (PROD_SEEDS, PROD_PAIRS_PER_SEED) float64: ``error`` (estimate - <q, x>),
    ``mse_error`` (<q, x~_mse> - <q, x>), ``q_norm_sq`` ||q||^2, ``r_norm_sq`` ||r||^2 and
    ``qjl_variance``, the exact conditional variance (pi/2 ||q||^2 ||r||^2 - <q, r>^2) / d of
    the QJL estimate of <q, r> for one Gaussian sketch.
    """
    ref_centroids = ref.lloyd_max_codebook(DIM, b - 1)
    fields = ["error", "mse_error", "q_norm_sq", "r_norm_sq", "qjl_variance"]
    results = {name: {f: np.empty((PROD_SEEDS, PROD_PAIRS_PER_SEED)) for f in fields}
               for name in ["vecstore", "oracle"]}
    for seed in range(PROD_SEEDS):
        rng = np.random.default_rng([2000 + b, seed])
        x, q = correlated_pairs(rng, PROD_PAIRS_PER_SEED, DIM)
        x32, q32 = x.astype(np.float32), q.astype(np.float32)
        true_ip = np.sum(x32.astype(np.float64) * q32, axis=1)
        q_norm_sq = np.sum(q32.astype(np.float64) ** 2, axis=1)

        codec = make_codec(f"tq{b}-prod", dim=DIM, seed=seed, rotation="dense")
        codes = codec.encode(x32)
        estimate = np.diag(codec.score(codec.prepare_query(q32), codes)).astype(np.float64)
        rotated_q = q32.astype(np.float64) @ codec.rotation.matrix.astype(np.float64).T
        x_mse_rotated = codec.centroids[code_indices(codes, DIM, b - 1)]
        mse_ip = np.sum(rotated_q * x_mse_rotated, axis=1) * codec.norms(codes)
        r_norm_sq = codec.residual_norms(codes).astype(np.float64) ** 2
        row = results["vecstore"]
        row["error"][seed] = estimate - true_ip
        row["mse_error"][seed] = mse_ip - true_ip
        row["q_norm_sq"][seed] = q_norm_sq
        row["r_norm_sq"][seed] = r_norm_sq
        row["qjl_variance"][seed] = (np.pi / 2 * q_norm_sq * r_norm_sq
                                     - (true_ip - mse_ip) ** 2) / DIM

        oracle_rng = np.random.default_rng([3000 + b, seed])
        rotation = ref.haar_rotation(DIM, oracle_rng)
        sketch = ref.gaussian_sketch(DIM, oracle_rng)
        idx, qjl, gamma = ref.quant_prod(x, rotation, sketch, ref_centroids)
        mse_term, qjl_term = ref.estimate_ip_prod(q, idx, qjl, gamma, rotation, sketch,
                                                  ref_centroids)
        true_ip = np.sum(x * q, axis=1)
        mse_ip = np.diag(mse_term)
        q_norm_sq = np.sum(q**2, axis=1)
        row = results["oracle"]
        row["error"][seed] = mse_ip + np.diag(qjl_term) - true_ip
        row["mse_error"][seed] = mse_ip - true_ip
        row["q_norm_sq"][seed] = q_norm_sq
        row["r_norm_sq"][seed] = gamma**2
        row["qjl_variance"][seed] = (np.pi / 2 * q_norm_sq * gamma**2
                                     - (true_ip - mse_ip) ** 2) / DIM
    return results


@pytest.mark.parametrize("implementation", ["vecstore", "oracle"])
@pytest.mark.parametrize("b", [2, 3])
def test_prod_estimate_is_unbiased(b, implementation):
    run = prod_experiment(b)[implementation]
    bias, standard_error = mean_and_standard_error(run["error"])
    assert abs(bias) <= 3 * standard_error
    # The same pairs detect the bias of the MSE term alone, so the check has power.
    mse_bias, mse_standard_error = mean_and_standard_error(run["mse_error"])
    assert abs(mse_bias) >= 10 * mse_standard_error


@pytest.mark.parametrize("implementation", ["vecstore", "oracle"])
@pytest.mark.parametrize("b", [2, 3])
def test_prod_error_within_paper_bounds(b, implementation):
    run = prod_experiment(b)[implementation]
    squared_error = run["error"] ** 2
    mean_squared_error, standard_error = mean_and_standard_error(squared_error)
    # Theorem 2: D_prod <= sqrt(3) pi^2 ||q||^2 / (d 4^b) for unit x.
    prod_bound = np.sqrt(3) * np.pi**2 * run["q_norm_sq"].mean() / (DIM * 4**b)
    assert mean_squared_error <= prod_bound
    # For unit x the MSE term is fixed by the code, so the estimate's error is the QJL
    # estimate's error on <q, r>, whose variance is at most pi/(2d) ||q||^2 ||r||^2.
    qjl_bound = np.pi / (2 * DIM) * np.mean(run["q_norm_sq"] * run["r_norm_sq"])
    assert mean_squared_error <= qjl_bound + 3 * standard_error
    expected = run["qjl_variance"].mean()
    assert abs(mean_squared_error - expected) <= 4 * standard_error


# --- determinism ---------------------------------------------------------------------------

DETERMINISM_CASES = [("tq4", "dense"), ("tq3-prod", "hadamard"), ("tq2", "hadamard")]
DETERMINISM_DIM = 100
DETERMINISM_SEED = 7

ENCODE_SCRIPT = """
import hashlib, sys
import numpy as np
from vecstore.codecs import make_codec
x = np.load(sys.argv[1])
for case in sys.argv[2:]:
    spec, rotation = case.split(":")
    codec = make_codec(spec, dim=x.shape[1], seed={seed}, rotation=rotation)
    print(hashlib.sha256(codec.encode(x).tobytes()).hexdigest())
"""


def code_digest(spec: str, rotation: str, seed: int, x: np.ndarray) -> str:
    codec = make_codec(spec, dim=x.shape[1], seed=seed, rotation=rotation)
    return hashlib.sha256(codec.encode(x).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def determinism_data() -> np.ndarray:
    """(64, DETERMINISM_DIM) float32 fixed vectors."""
    return np.random.default_rng(4242).standard_normal((64, DETERMINISM_DIM)).astype(np.float32)


def test_same_seed_gives_identical_codes_across_processes(tmp_path, determinism_data):
    data_path = tmp_path / "x.npy"
    np.save(data_path, determinism_data)
    cases = [f"{spec}:{rotation}" for spec, rotation in DETERMINISM_CASES]
    completed = subprocess.run(
        [sys.executable, "-c", ENCODE_SCRIPT.format(seed=DETERMINISM_SEED), str(data_path),
         *cases],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120,
    )
    other_process = completed.stdout.split()
    this_process = [code_digest(spec, rotation, DETERMINISM_SEED, determinism_data)
                    for spec, rotation in DETERMINISM_CASES]
    assert other_process == this_process


@pytest.mark.parametrize(("spec", "rotation"), DETERMINISM_CASES)
def test_same_seed_gives_identical_codes_across_codecs(spec, rotation, determinism_data):
    first = make_codec(spec, dim=DETERMINISM_DIM, seed=DETERMINISM_SEED, rotation=rotation)
    second = make_codec(spec, dim=DETERMINISM_DIM, seed=DETERMINISM_SEED, rotation=rotation)
    np.testing.assert_array_equal(first.encode(determinism_data),
                                  second.encode(determinism_data))


@pytest.mark.parametrize(("spec", "rotation"), DETERMINISM_CASES)
def test_different_seeds_give_different_codes(spec, rotation, determinism_data):
    digests = {code_digest(spec, rotation, seed, determinism_data) for seed in range(4)}
    assert len(digests) == 4


# --- rotations -----------------------------------------------------------------------------


@pytest.mark.parametrize("d", [37, 301, 64, 256])
def test_hadamard_rotation_is_orthogonal(d):
    rotation = make_rotation("hadamard", d, seed=5)
    padded = 1 << (d - 1).bit_length()
    assert rotation.out_dim == padded
    # The rotation's matrix, row i the image of basis vector e_i: an isometry R^d -> R^D.
    matrix = rotation.forward(np.eye(d, dtype=np.float32)).astype(np.float64)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(d), rtol=0, atol=1e-5)
    # The inverse is its adjoint.
    adjoint = rotation.inverse(np.eye(padded, dtype=np.float32)).astype(np.float64)
    np.testing.assert_allclose(adjoint, matrix.T, rtol=0, atol=1e-6)

    x = np.random.default_rng(d).standard_normal((50, d)).astype(np.float32)
    y = rotation.forward(x)
    assert y.shape == (50, padded)
    assert y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    np.testing.assert_allclose(y @ y.T, x @ x.T, rtol=0, atol=1e-4 * d)
    np.testing.assert_allclose(rotation.inverse(y), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("d", [5, 64, 300])
def test_dense_rotation_is_orthogonal(d):
    rotation = make_rotation("dense", d, seed=5)
    matrix = rotation.matrix.astype(np.float64)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(d), rtol=0, atol=1e-5)
    x = np.random.default_rng(d).standard_normal((20, d)).astype(np.float32)
    np.testing.assert_allclose(rotation.forward(x), x @ rotation.matrix.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rotation.inverse(rotation.forward(x)), x, rtol=0, atol=1e-5)


def test_hadamard_distortion_matches_dense():
    d = 256
    x = unit_rows(np.random.default_rng(256), MSE_VECTORS, d).astype(np.float32)
    distortion = {}
    for rotation in ["dense", "hadamard"]:
        codec = make_codec("tq4", dim=d, seed=3, rotation=rotation)
        assert codec.rotation.kind == rotation
        decoded = codec.decode(codec.encode(x))
        distortion[rotation] = np.mean(np.sum((x - decoded) ** 2, axis=1))
    assert distortion["hadamard"] == pytest.approx(distortion["dense"], rel=0.10)
