"""Baseline codecs (pq, mib, fp16/fp8, fp8-pca): protocol properties over random dimensions and
data, and reference checks against faiss, numpy and ml_dtypes on the bundled wordnet set."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from bench.metrics import recall_at
from vecstore.codecs import available_specs, codec_from_config, make_codec
from vecstore.codecs.base import Codec
from vecstore.codecs.fp8 import E4M3_MAX, from_e4m3, to_e4m3
from vecstore.codecs.kmeans import assign, kmeans, sample_rows
from vecstore.codecs.mib import MIBCodec, hamming_distances
from vecstore.codecs.pq import ProductQuantizer
from vecstore.errors import InvalidArgument

HAS_FAISS = importlib.util.find_spec("faiss") is not None
EXAMPLES = settings(max_examples=6, deadline=None, derandomize=True)
RECALL_TOLERANCE = 0.01
# Largest relative error of E4M3 rounding in the normal range: half a unit in the last of
# 3 mantissa bits.
E4M3_RELATIVE_ERROR = 2.0**-4
# Half the smallest E4M3 subnormal, 2^-9, in units of the per-vector scale.
E4M3_ABSOLUTE_ERROR = 2.0**-10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One BLAS and OpenMP thread: on shared cores, idle worker threads slow the small
    products of these tests many times over. faiss is imported first so that its OpenMP
    runtime is limited too."""
    if HAS_FAISS:
        import faiss  # noqa: F401
    with threadpool_limits(limits=1):
        yield


# --- drawing codecs and data -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One drawn codec: its spec and dimension, training and test data, queries."""

    spec: str
    rotation: str
    seed: int
    train: np.ndarray
    x: np.ndarray
    queries: np.ndarray

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def codec(self) -> Codec:
        return make_codec(self.spec, dim=self.dim, seed=self.seed, rotation=self.rotation)

    def trained(self) -> Codec:
        codec = self.codec()
        codec.train(self.train)
        return codec


def random_data(seed: int, rows: int, dim: int, spread: float) -> np.ndarray:
    """(rows, dim) float32 Gaussian rows with norms spread over 10^-spread..10^spread and a
    common offset, so that means and scales matter."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-spread, spread, size=(rows, 1))
    offset = rng.standard_normal(dim)
    return ((rng.standard_normal((rows, dim)) + offset) * scales).astype(np.float32)


@st.composite
def cases(draw, family: str) -> Case:
    """A codec of ``family`` ("pq", "mib", "minifloat", "pca") with data that trains it."""
    if family == "pq":
        m = draw(st.sampled_from([1, 2, 3, 4, 8]))
        dim = m * draw(st.integers(1, 6))
        if dim < 2:
            dim = 2 * m
        nbits = draw(st.sampled_from([1, 2, 3, 4, 5, 8]))
        spec, rotation, min_rows = f"pq{m}x{nbits}", "auto", 1 << nbits
    elif family == "mib":
        dim = draw(st.integers(2, 80))
        bits = draw(st.sampled_from([1, 2, 3, 4]))
        suffix = draw(st.sampled_from(["", "-hamming"])) if bits == 1 else ""
        spec = ("mib" if bits == 1 else f"mib{bits}") + suffix
        rotation = draw(st.sampled_from(["none", "dense", "hadamard"]))
        min_rows = 1 << bits
    elif family == "minifloat":
        dim = draw(st.integers(2, 300))
        spec, rotation, min_rows = draw(st.sampled_from(["fp16", "fp8"])), "auto", 0
    else:
        dim = draw(st.integers(2, 80))
        rank = draw(st.integers(1, dim))
        spec = f"{draw(st.sampled_from(['fp8', 'fp16']))}-pca{rank}"
        rotation, min_rows = "auto", 2
    data_seed = draw(st.integers(0, 2**32 - 1))
    train_rows = draw(st.integers(max(min_rows, 2), max(min_rows, 2) + 300))
    rows = draw(st.integers(1, 40))
    return Case(
        spec=spec,
        rotation=rotation,
        seed=draw(st.integers(0, 2**31 - 1)),
        train=random_data(data_seed, train_rows, dim, 1),
        x=random_data(data_seed + 1, rows, dim, 2),
        queries=random_data(data_seed + 2, 12, dim, 0),
    )


FAMILIES = ["pq", "mib", "minifloat", "pca"]
over_families = pytest.mark.parametrize("family", FAMILIES)


def documented_code_size(spec: str, dim: int, rotation: str) -> int:
    """Bytes per vector from the module docs: no norm is stored by any baseline codec."""
    if spec.startswith("pq"):
        m, nbits = map(int, spec[2:].split("x"))
        return -(-m * nbits // 8)
    if spec.startswith("mib"):
        bits = int(spec[3]) if spec[3:4].isdigit() else 1
        padded = dim if rotation != "hadamard" else 1 << (dim - 1).bit_length()
        return -(-padded * bits // 8)
    kept = int(spec.split("pca")[1]) if "pca" in spec else dim
    return 2 * kept if spec.startswith("fp16") else kept + 4


# --- protocol properties -----------------------------------------------------------------------


@over_families
@EXAMPLES
@given(data=st.data())
def test_shapes_dtypes_and_code_size(family, data):
    case = data.draw(cases(family))
    codec = case.trained()
    assert isinstance(codec, Codec)
    assert codec.is_trained
    assert codec.code_size == documented_code_size(case.spec, case.dim, case.rotation)
    codes = codec.encode(case.x)
    assert codes.dtype == np.uint8
    assert codes.shape == (case.x.shape[0], codec.code_size)
    assert not np.shares_memory(codes, case.x)
    decoded = codec.decode(codes)
    assert decoded.dtype == np.float32
    assert decoded.shape == case.x.shape
    norms = codec.norms(codes)
    assert norms.dtype == np.float32
    assert norms.shape == (case.x.shape[0],)
    # No baseline stores a norm: norms() is the norm of the decoded vector.
    np.testing.assert_allclose(norms, np.linalg.norm(decoded.astype(np.float64), axis=1),
                               rtol=1e-4, atol=1e-6 * float(np.abs(decoded).max(initial=1)))


@over_families
@EXAMPLES
@given(data=st.data())
def test_config_round_trip_gives_identical_codes_and_scores(family, data):
    case = data.draw(cases(family))
    codec = case.trained()
    rebuilt = codec_from_config(json.loads(json.dumps(codec.to_config())))
    assert rebuilt.spec == codec.spec
    assert rebuilt.code_size == codec.code_size
    assert rebuilt.is_trained
    codes = codec.encode(case.x)
    np.testing.assert_array_equal(rebuilt.encode(case.x), codes)
    np.testing.assert_array_equal(rebuilt.decode(codes), codec.decode(codes))
    np.testing.assert_array_equal(rebuilt.norms(codes), codec.norms(codes))
    for count in [1, 12]:
        queries = case.queries[:count]
        np.testing.assert_array_equal(rebuilt.score(rebuilt.prepare_query(queries), codes),
                                      codec.score(codec.prepare_query(queries), codes))
    # The untrained config and the same seed train to the same codes.
    fresh = codec_from_config(json.loads(json.dumps(case.codec().to_config())))
    fresh.train(case.train)
    np.testing.assert_array_equal(fresh.encode(case.x), codes)


@over_families
@EXAMPLES
@given(data=st.data())
def test_scores_estimate_inner_products(family, data):
    case = data.draw(cases(family))
    codec = case.trained()
    codes = codec.encode(case.x)
    decoded = codec.decode(codes).astype(np.float64)
    # Up to 8 queries take the lookup-table paths, more a matrix product.
    for count in [1, 2, 12]:
        queries = case.queries[:count]
        scores = codec.score(codec.prepare_query(queries), codes)
        assert scores.dtype == np.float32
        assert scores.shape == (count, case.x.shape[0])
        q64 = queries.astype(np.float64)
        if case.spec == "mib-hamming":
            expected = hamming_estimate(codec, queries, codes)
            np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
            continue
        # PCA scores add <q, mean> to <P q, z>: both terms round in float32.
        offset = np.linalg.norm(codec.mean) if family == "pca" else 0.0
        scale = np.linalg.norm(q64, axis=1)[:, None] * (
            np.linalg.norm(decoded, axis=1)[None, :] + offset
        )
        assert np.all(np.abs(scores - q64 @ decoded.T) <= 1e-5 * scale + 1e-30)


def hamming_estimate(codec: MIBCodec, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """||q|| * rms * cos(pi h / D) with h counted on unpacked bits, (nq, n) float64."""
    query_bits = codec.rotate(queries) > codec.thresholds[0]
    code_bits = np.unpackbits(codes, axis=1, count=codec.rot_dim, bitorder="little")
    distances = (query_bits[:, None, :] != code_bits[None, :, :].astype(bool)).sum(axis=2)
    cosines = np.cos(np.pi * distances / codec.rot_dim)
    return np.linalg.norm(queries.astype(np.float64), axis=1)[:, None] * codec.rms_norm * cosines


@over_families
@EXAMPLES
@given(data=st.data())
def test_decode_error_is_bounded(family, data):
    case = data.draw(cases(family))
    codec = case.trained()
    x = case.x.astype(np.float64)
    codes = codec.encode(case.x)
    decoded = codec.decode(codes).astype(np.float64)
    error = np.linalg.norm(x - decoded, axis=1)
    if case.spec == "fp16":
        # Normal half floats round with relative error <= 2^-11, subnormal ones (below
        # 2^-14) with absolute error <= 2^-25.
        subnormal_error = np.sqrt(case.dim) * 2.0**-25
        assert np.all(error <= 2.0**-11 * np.linalg.norm(x, axis=1) + subnormal_error)
    elif case.spec == "fp8":
        scales = np.abs(x).max(axis=1, keepdims=True) / E4M3_MAX
        bound = E4M3_RELATIVE_ERROR * np.abs(x) + E4M3_ABSOLUTE_ERROR * scales
        assert np.all(np.abs(x - decoded) <= bound * (1 + 1e-6))
    elif family == "pca":
        # Distance to the PCA subspace plus the minifloat error of the coordinates.
        z = (x - codec.mean) @ codec.components.T.astype(np.float64)
        in_subspace = codec.mean + z @ codec.components.astype(np.float64)
        relative = E4M3_RELATIVE_ERROR if case.spec.startswith("fp8") else 2.0**-11
        bound = np.linalg.norm(x - in_subspace, axis=1) + relative * np.linalg.norm(z, axis=1)
        assert np.all(error <= bound * (1 + 1e-3) + 1e-4 * np.linalg.norm(x, axis=1))
    elif family == "pq":
        # Each sub-vector is coded by its nearest centroid.
        m, dsub = codec.m, codec.dsub
        sub_x = x.reshape(-1, m, dsub)
        distances = ((sub_x[:, :, None, :] - codec.centroids[None].astype(np.float64)) ** 2)
        nearest = distances.sum(axis=3).min(axis=2)
        chosen = ((sub_x - decoded.reshape(-1, m, dsub)) ** 2).sum(axis=2)
        np.testing.assert_allclose(chosen, nearest, rtol=1e-4, atol=1e-6 * x.max() ** 2)
    else:
        # Every rotated coordinate lies in its level's cell, and every cell's reconstruction
        # lies inside the cell: thresholds and levels interleave.
        thresholds, levels = codec.thresholds, codec.levels
        slack = 1e-6 * float(np.abs(thresholds).max())
        assert np.all(np.diff(thresholds, axis=0) >= 0)
        assert np.all(levels[:-1] <= thresholds + slack)
        assert np.all(levels[1:] >= thresholds - slack)
        rotated = codec.rotate(case.x)
        cells = (rotated[None, :, :] > thresholds[:, None, :]).sum(axis=0)
        np.testing.assert_array_equal(decoded_levels(codec, codes), cells)


def decoded_levels(codec: MIBCodec, codes: np.ndarray) -> np.ndarray:
    """The level of every rotated coordinate, read from the packed codes, (n, D) int64:
    level j of a row is stream bits [j b, (j+1) b), least significant first."""
    stream = np.unpackbits(codes, axis=1, bitorder="little")[:, : codec.rot_dim * codec.bits]
    weights = 1 << np.arange(codec.bits)
    return stream.reshape(codes.shape[0], codec.rot_dim, codec.bits).astype(np.int64) @ weights


@pytest.mark.parametrize("bits", [1, 13, 64, 200])
def test_hamming_distances_with_and_without_bitwise_count(monkeypatch, bits):
    rng = np.random.default_rng(bits)
    query_bits = rng.integers(0, 2, size=(3, bits)).astype(bool)
    code_bits = rng.integers(0, 2, size=(20, bits)).astype(bool)
    expected = (query_bits[:, None, :] != code_bits[None, :, :]).sum(axis=2)
    packed_queries = np.packbits(query_bits, axis=1, bitorder="little")
    packed_codes = np.packbits(code_bits, axis=1, bitorder="little")
    np.testing.assert_array_equal(hamming_distances(packed_queries, packed_codes), expected)
    if hasattr(np, "bitwise_count"):
        monkeypatch.delattr(np, "bitwise_count")
    np.testing.assert_array_equal(hamming_distances(packed_queries, packed_codes), expected)


@pytest.mark.parametrize(
    "spec", ["pq4x2", "pq2x8", "mib", "mib-hamming", "mib2", "fp16", "fp8", "fp8-pca3",
             "fp16-pca5"],
)
def test_empty_batches(spec):
    codec = make_codec(spec, dim=8, seed=1)
    codec.train(random_data(3, 300, 8, 1))
    codes = codec.encode(np.zeros((0, 8), dtype=np.float32))
    assert codes.shape == (0, codec.code_size)
    assert codes.dtype == np.uint8
    assert codec.decode(codes).shape == (0, 8)
    assert codec.norms(codes).shape == (0,)
    for count in [1, 12]:
        queries = np.ones((count, 8), dtype=np.float32)
        scores = codec.score(codec.prepare_query(queries), codes)
        assert scores.shape == (count, 0)
        assert scores.dtype == np.float32


@pytest.mark.parametrize("spec", ["pq4x2", "mib", "mib-hamming", "mib4", "fp8-pca3",
                                  "fp16-pca8"])
def test_untrained_codecs_refuse_to_code(spec):
    codec = make_codec(spec, dim=8, seed=1)
    assert not codec.data_oblivious
    assert not codec.is_trained
    x = np.ones((3, 8), dtype=np.float32)
    with pytest.raises(InvalidArgument, match="must be trained"):
        codec.encode(x)
    with pytest.raises(InvalidArgument, match="must be trained"):
        codec.score(codec.prepare_query(x), np.zeros((3, codec.code_size), dtype=np.uint8))
    with pytest.raises(InvalidArgument, match="must be trained"):
        codec.decode(np.zeros((3, codec.code_size), dtype=np.uint8))


@pytest.mark.parametrize("spec", ["fp16", "fp8"])
def test_data_oblivious_minifloats_need_no_training(spec):
    codec = make_codec(spec, dim=8)
    assert codec.data_oblivious and codec.is_trained
    x = random_data(0, 5, 8, 1)
    np.testing.assert_array_equal(codec.decode(codec.encode(x)).shape, x.shape)


@pytest.mark.parametrize(
    ("spec", "train", "message"),
    [
        ("pq4x8", np.ones((255, 8)), "at least 256 training rows"),
        ("pq4x2", np.ones((3, 8)), "at least 4 training rows"),
        ("pq4x2", np.ones(8), r"shape \(n, 8\)"),
        ("mib", np.ones((10, 7)), r"shape \(n, 8\)"),
        ("mib", np.ones((1, 8)), "at least 2 training rows"),
        ("mib4", np.ones((15, 8)), "at least 16 training rows"),
        ("fp8-pca3", np.ones((1, 8)), "at least 2 training rows"),
        ("fp8-pca3", np.full((4, 8), np.nan), "NaN or Inf"),
        ("mib2", np.array([["a"] * 8] * 4), "real numbers"),
        ("pq2x1", np.ones((2, 3, 8)), r"shape \(n, 8\)"),
    ],
)
def test_bad_training_input_is_rejected(spec, train, message):
    codec = make_codec(spec, dim=8, seed=0)
    with pytest.raises(InvalidArgument, match=message):
        codec.train(train)
    assert not codec.is_trained


@pytest.mark.parametrize(
    ("spec", "dim", "message"),
    [
        ("pq48x8", 100, "divisible by M=48"),
        ("pq4x9", 8, "nbits must be in 1..8"),
        ("pq0x8", 8, "at least one sub-space"),
        ("fp8-pca20", 10, "1 <= r <= d"),
        ("fp16-pca0", 10, "1 <= r <= d"),
        ("mib2-hamming", 10, "needs 1 bit per dimension"),
        ("mib9", 10, "bits must be in 1..8"),
        ("fp4", 10, "unknown codec spec"),
    ],
)
def test_bad_specs_are_rejected(spec, dim, message):
    with pytest.raises(InvalidArgument, match=message):
        make_codec(spec, dim=dim)


def test_rotation_none_is_for_mib_only():
    assert make_codec("mib", dim=8, rotation="none").rotation is None
    with pytest.raises(InvalidArgument, match="needs a rotation"):
        make_codec("tq2", dim=8, rotation="none")


@pytest.mark.parametrize(
    ("spec", "dim", "rotation", "code_size"),
    [
        ("pq48x8", 384, "auto", 48),
        ("pq96x4", 384, "auto", 48),
        ("pq192x4", 384, "auto", 96),
        ("pq3x5", 9, "auto", 2),
        ("mib", 384, "auto", 48),
        ("mib-hamming", 384, "auto", 48),
        ("mib-asym", 384, "none", 48),
        ("mib", 384, "hadamard", 64),
        ("mib2", 384, "auto", 96),
        ("mib4", 384, "auto", 192),
        ("mib", 7, "dense", 1),
        ("fp16", 384, "auto", 768),
        ("fp8", 384, "auto", 388),
        ("fp8-pca192", 384, "auto", 196),
        ("fp16-pca192", 384, "auto", 384),
    ],
)
def test_code_size_examples(spec, dim, rotation, code_size):
    assert make_codec(spec, dim=dim, rotation=rotation).code_size == code_size


def test_mib_spec_names():
    assert make_codec("mib-asym", dim=8).spec == "mib"
    assert make_codec("mib1", dim=8).spec == "mib"
    assert make_codec("mib", dim=8).scoring == "asymmetric"
    assert make_codec("mib-hamming", dim=8).scoring == "hamming"
    assert make_codec("mib", dim=384).rotation_kind == "dense"
    assert make_codec("mib", dim=1024).rotation_kind == "hadamard"


def test_available_specs():
    plain = available_specs()
    assert plain == (["flat"] + [f"tq{b}" for b in range(1, 9)]
                     + [f"tq{b}-prod" for b in range(2, 9)] + [f"tq{b}c" for b in range(1, 9)])
    every = available_specs(baselines=True)
    assert {"pq48x8", "pq96x4", "pq192x4", "mib", "mib2", "mib4", "fp16", "fp8",
            "fp8-pca192"} <= set(every)
    at_100 = available_specs(100, baselines=True)
    assert "pq48x8" not in at_100 and "fp8-pca192" not in at_100
    assert {"mib", "fp8", "fp8-pca96", "tq4"} <= set(at_100)
    for dim in [100, 384]:
        for spec in set(available_specs(dim, baselines=True)) - set(plain):
            assert make_codec(spec, dim=dim).spec == spec


# --- k-means -----------------------------------------------------------------------------------


def test_sample_rows():
    rows = sample_rows(1000, 100, seed=3)
    assert rows.shape == (100,)
    assert np.all(np.diff(rows) > 0) and rows[0] >= 0 and rows[-1] < 1000
    np.testing.assert_array_equal(rows, sample_rows(1000, 100, seed=3))
    assert not np.array_equal(rows, sample_rows(1000, 100, seed=4))
    np.testing.assert_array_equal(sample_rows(50, 100, seed=3), np.arange(50))


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_numpy_kmeans_fills_every_cluster(init):
    # 12 distinct points, each repeated: with k = 12 every point must become a centroid.
    rng = np.random.default_rng(5)
    points = rng.standard_normal((12, 3)).astype(np.float32)
    x = np.repeat(points, rng.integers(1, 40, size=12), axis=0)
    centroids = kmeans(x, 12, seed=1, init=init, backend="numpy")
    found = {tuple(np.round(c, 5)) for c in centroids}
    assert found == {tuple(np.round(p, 5)) for p in points}
    np.testing.assert_array_equal(centroids, kmeans(x, 12, seed=1, init=init, backend="numpy"))


def test_kmeans_rejects_too_few_points():
    with pytest.raises(InvalidArgument, match="at least k points"):
        kmeans(np.ones((3, 2), dtype=np.float32), 4)


def test_kmeans_backend_env(monkeypatch):
    monkeypatch.setenv("VECSTORE_KMEANS_BACKEND", "numpy")
    x = random_data(2, 200, 8, 0)
    np.testing.assert_array_equal(kmeans(x, 8, seed=2), kmeans(x, 8, seed=2, backend="numpy"))
    monkeypatch.setenv("VECSTORE_KMEANS_BACKEND", "gpu")
    with pytest.raises(InvalidArgument, match="VECSTORE_KMEANS_BACKEND"):
        kmeans(x, 8)


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")
@pytest.mark.parametrize(("dsub", "k"), [(8, 256), (4, 16)])
def test_numpy_kmeans_matches_faiss_objective(wordnet, dsub, k):
    """On real sub-vectors both backends reach the same mean squared error within 1%."""
    x = np.ascontiguousarray(wordnet["base"][:, 40 : 40 + dsub])
    errors = {}
    for backend in ["numpy", "faiss"]:
        _, distances = assign(x, kmeans(x, k, seed=7, backend=backend))
        errors[backend] = float(distances.mean())
    assert abs(errors["numpy"] / errors["faiss"] - 1) <= 0.01, errors


# --- fp8 -------------------------------------------------------------------------------------


def test_e4m3_known_values():
    values = np.array([0.0, 1.0, -1.0, 0.5, 448.0, -448.0, 2.0**-6, 2.0**-9, 1.125,
                       1.0625, 1.1875, 500.0, 2.0**-11], dtype=np.float32)
    # sign | 4 exponent bits (bias 7) | 3 mantissa bits. 1.0625 and 1.1875 are halfway and
    # round to the even mantissa; 500 saturates at 448; 2^-11 rounds to zero.
    expected = [0x00, 0x38, 0xB8, 0x30, 0x7E, 0xFE, 0x08, 0x01, 0x39, 0x38, 0x3A, 0x7E, 0x00]
    np.testing.assert_array_equal(to_e4m3(values), np.array(expected, dtype=np.uint8))
    np.testing.assert_array_equal(from_e4m3(np.array([0x38, 0x7E, 0x01, 0xC4], np.uint8)),
                                  [1.0, 448.0, 2.0**-9, -3.0])


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(2, 200))
def test_fp8_codes_are_ml_dtypes_casts_of_scaled_values(seed, dim):
    x = random_data(seed, 6, dim, 3)
    codec = make_codec("fp8", dim=dim)
    codes = codec.encode(x)
    scales = (np.abs(x).max(axis=1) / np.float32(448)).astype(np.float32)
    np.testing.assert_array_equal(codes[:, dim:].copy().view("<f4")[:, 0], scales)
    scaled = np.clip(x / scales[:, None], -448, 448)
    cast = scaled.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    np.testing.assert_array_equal(codes[:, :dim], cast)
    # The largest coordinate of each vector sits on the top of the E4M3 range.
    top = np.abs(x).argmax(axis=1)
    assert np.all(codes[np.arange(6), top] & 0x7F == 0x7E)


# --- references on the bundled wordnet set ----------------------------------------------------


def top_ids(scores: np.ndarray, k: int = 10) -> np.ndarray:
    """Ids of the k largest scores per row, best first, (nq, k) int64."""
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def codec_recall(codec: Codec, wordnet: dict, train: bool = True) -> float:
    if train:
        codec.train(wordnet["base"])
    codes = codec.encode(wordnet["base"])
    scores = codec.score(codec.prepare_query(wordnet["queries"]), codes)
    return recall_at(top_ids(scores), wordnet["gt_ip"], 10)


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")
@pytest.mark.parametrize(("m", "nbits", "backend"), [(48, 8, "auto"), (96, 4, "numpy")])
def test_pq_recall_matches_faiss_index_pq(wordnet, m, nbits, backend):
    import faiss

    base, queries = wordnet["base"], wordnet["queries"]
    index = faiss.IndexPQ(base.shape[1], m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.train(base)
    index.add(base)
    _, faiss_ids = index.search(queries, 10)
    faiss_recall = recall_at(faiss_ids, wordnet["gt_ip"], 10)

    codec = ProductQuantizer(base.shape[1], m, nbits, seed=0, kmeans_backend=backend)
    assert codec.code_size == index.code_size
    ours = codec_recall(codec, wordnet)
    print(f"pq{m}x{nbits} ({backend} k-means) recall@10: ours {ours:.4f}, "
          f"faiss IndexPQ {faiss_recall:.4f}")
    assert abs(ours - faiss_recall) <= RECALL_TOLERANCE


@pytest.fixture(scope="module")
def wordnet_mib_hamming(wordnet) -> tuple[MIBCodec, np.ndarray]:
    codec = make_codec("mib-hamming", dim=384, seed=0)
    codec.train(wordnet["base"])
    return codec, codec.encode(wordnet["base"])


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")
def test_mib_hamming_matches_faiss_binary_flat(wordnet, wordnet_mib_hamming):
    import faiss

    codec, codes = wordnet_mib_hamming
    state = codec.prepare_query(wordnet["queries"])
    # faiss binary codes put bit j in bit j % 8 of byte j // 8, as our 1-bit packing does.
    signs = np.where(np.arange(16) % 3 == 0, 1.0, -1.0).astype(np.float32)[None, :]
    faiss_bits = np.zeros((1, 2), dtype=np.uint8)
    faiss.fvecs2bitvecs(faiss.swig_ptr(signs), faiss.swig_ptr(faiss_bits), 16, 1)
    np.testing.assert_array_equal(faiss_bits, np.packbits(signs > 0, axis=1, bitorder="little"))

    index = faiss.IndexBinaryFlat(codec.rot_dim)
    index.add(codes)
    faiss_distances, faiss_ids = index.search(state.bits, 10)
    ours = codec.score(state, codes)
    our_ids = top_ids(ours)
    our_distances = np.take_along_axis(hamming_distances(state.bits, codes), our_ids, axis=1)
    # Equal distance lists, rank by rank: the rankings agree up to ties.
    np.testing.assert_array_equal(our_distances, faiss_distances)
    ours_recall = recall_at(our_ids, wordnet["gt_ip"], 10)
    faiss_recall = recall_at(faiss_ids, wordnet["gt_ip"], 10)
    print(f"mib hamming recall@10: ours {ours_recall:.4f}, faiss IndexBinaryFlat "
          f"{faiss_recall:.4f}")
    assert abs(ours_recall - faiss_recall) <= RECALL_TOLERANCE


def test_mib_asymmetric_scoring_beats_hamming(wordnet, wordnet_mib_hamming):
    """The documented reason ``mib`` defaults to asymmetric scoring."""
    hamming_codec, codes = wordnet_mib_hamming
    asymmetric = codec_from_config({**hamming_codec.to_config(), "scoring": "asymmetric"})
    hamming_recall = codec_recall(hamming_codec, wordnet, train=False)
    asymmetric_recall = codec_recall(asymmetric, wordnet, train=False)
    print(f"mib recall@10: asymmetric {asymmetric_recall:.4f}, hamming {hamming_recall:.4f}")
    assert asymmetric_recall >= hamming_recall + 0.05


@pytest.mark.parametrize(("spec", "rotation"),
                         [("mib", "none"), ("mib", "dense"), ("mib2", "none"), ("mib4", "dense")])
def test_mib_thresholds_are_per_dimension_quantiles(wordnet, spec, rotation):
    base = wordnet["base"][:5000]
    codec = make_codec(spec, dim=384, seed=2, rotation=rotation)
    codec.train(base)
    rotated = codec.rotate(base)
    if rotation == "none":
        np.testing.assert_array_equal(rotated, base)
    if codec.bits == 1:
        expected = np.median(rotated, axis=0)[None, :]
    else:
        count = 1 << codec.bits
        expected = np.quantile(rotated, np.arange(1, count) / count, axis=0)
    np.testing.assert_array_equal(codec.thresholds, expected.astype(np.float32))
    # Each level holds 1 / 2**b of the training values in every dimension, up to the values
    # tied with a threshold (wordnet has 3 constant dimensions, useless without rotation).
    ties = (rotated[:, None, :] == codec.thresholds[None]).mean(axis=0).sum(axis=0)
    levels = decoded_levels(codec, codec.encode(base))
    count = 1 << codec.bits
    for level in range(count):
        share = (levels == level).mean(axis=0)
        assert np.all(np.abs(share - 1 / count) <= 1e-3 + ties)


@pytest.mark.parametrize("rank", [96, 192])
def test_pca_variance_kept_matches_svd(wordnet, rank):
    base = wordnet["base"]
    codec = make_codec(f"fp8-pca{rank}", dim=384)
    codec.train(base)
    centred = base.astype(np.float64) - base.mean(axis=0, dtype=np.float64)
    singular = np.linalg.svd(centred, compute_uv=False)
    expected = float((singular[:rank] ** 2).sum() / (singular**2).sum())
    recall = codec_recall(codec, wordnet, train=False)
    print(f"fp8-pca{rank}: variance kept {codec.explained_variance_ratio:.4f}, "
          f"recall@10 {recall:.4f}")
    assert codec.explained_variance_ratio == pytest.approx(expected, rel=1e-6)
    gram = codec.components.astype(np.float64) @ codec.components.T
    np.testing.assert_allclose(gram, np.eye(rank), atol=1e-5)
