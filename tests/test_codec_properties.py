"""Properties every codec in ``available_specs()`` keeps, over random dimensions and data."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecstore.codecs import available_specs, bitpack, codec_from_config, make_codec
from vecstore.codecs.base import Codec

# Largest ||x - decode(encode(x))||^2 / ||x||^2 allowed for any one vector, by bit width b.
# The expected values for tq1..tq8 are about 0.36, 0.12, 0.035, 0.0095, 0.0027, 6.6e-4,
# 1.7e-4 and 4.2e-5. One vector at small d strays further, most of all when a rotated
# coordinate lands beyond the outermost centroid, so the allowance grows from about 3 times
# the expectation at b = 1 to about 1000 times at b = 8.
MSE_ERROR_BOUND = {1: 1.0, 2: 0.8, 3: 0.4, 4: 0.2, 5: 0.12, 6: 0.1, 7: 0.1, 8: 0.05}
# tq{b}-prod adds a 1-bit sketch of the residual r to the (b-1)-bit reconstruction. It is
# unbiased for inner products but not a good reconstruction: on average it adds
# (pi/2 - 1/d) ||r||^2, and much more for one vector under one sketch at small d.
PROD_ERROR_BOUND = {2: 10.0, 3: 3.0, 4: 1.2, 5: 0.5, 6: 0.2, 7: 0.08, 8: 0.04}

ROTATIONS = ["dense", "hadamard"]
# Every spec with each rotation; flat has no rotation.
SPEC_ROTATIONS = [(spec, rotation) for spec in available_specs() for rotation in ROTATIONS
                  if spec != "flat" or rotation == "dense"]
EXAMPLES_PER_CODEC = settings(max_examples=4, deadline=None, derandomize=True)
over_codecs = pytest.mark.parametrize(("spec", "rotation"), SPEC_ROTATIONS)


pytestmark = pytest.mark.usefixtures("one_blas_thread")


@dataclass(frozen=True)
class Inputs:
    """What hypothesis draws for one codec: dimension, row count and two seeds."""

    dim: int
    rows: int
    codec_seed: int
    data_seed: int


inputs = st.builds(
    Inputs,
    dim=st.one_of(st.sampled_from([2, 3, 7, 64, 127, 300]), st.integers(2, 300)),
    rows=st.integers(1, 50),
    codec_seed=st.integers(0, 2**31 - 1),
    data_seed=st.integers(0, 2**63 - 1),
)


def codec_and_data(
    spec: str, rotation: str, drawn: Inputs
) -> tuple[Codec, np.ndarray, np.ndarray]:
    """The ``spec`` codec for the drawn dimension and seed, data ``x`` (rows, dim) float32
    with row norms spread over 1e-3..1e3, and ``queries`` (5, dim) float32."""
    rng = np.random.default_rng(drawn.data_seed)
    scales = 10.0 ** rng.uniform(-3, 3, size=(drawn.rows, 1))
    x = (rng.standard_normal((drawn.rows, drawn.dim)) * scales).astype(np.float32)
    queries = rng.standard_normal((5, drawn.dim)).astype(np.float32)
    codec = make_codec(spec, dim=drawn.dim, seed=drawn.codec_seed, rotation=rotation)
    return codec, x, queries


def spec_bits(spec: str) -> int:
    """Bits per coordinate b of a ``tq{b}`` or ``tq{b}-prod`` spec."""
    return int(spec[2])


def index_bits(spec: str) -> int:
    """Bits per centroid index: b for ``tq{b}``, b - 1 for ``tq{b}-prod``."""
    return spec_bits(spec) - spec.endswith("-prod")


def rotated_dim(dim: int, rotation: str) -> int:
    """D: d for the dense rotation, d padded to a power of two for the Hadamard one."""
    return dim if rotation == "dense" else 1 << (dim - 1).bit_length()


def documented_layout(spec: str, dim: int, rotation: str) -> tuple[int, list[int]]:
    """Code size in bytes and the byte offsets of the stored float32 values, per the module
    docs: ||x|| for tq{b}; ||x|| then ||r|| for tq{b}-prod; ||x|| then a 2-byte correction
    for tq{b}c; none for flat."""
    if spec == "flat":
        return 4 * dim, []
    padded = rotated_dim(dim, rotation)
    indices = -(-padded * index_bits(spec) // 8)
    if spec.endswith("-prod"):
        signs = -(-padded // 8)
        return indices + signs + 8, [indices + signs, indices + signs + 4]
    if spec.endswith("c"):
        return indices + 4 + 2, [indices]
    return indices + 4, [indices]


@pytest.mark.parametrize(
    ("spec", "dim", "rotation", "code_size"),
    [
        ("tq3", 384, "dense", 144 + 4),
        ("tq4", 384, "dense", 192 + 4),
        ("tq1", 7, "dense", 1 + 4),
        ("tq3", 300, "hadamard", 192 + 4),
        ("tq4-prod", 384, "dense", 144 + 48 + 8),
        ("tq4c", 384, "dense", 192 + 4 + 2),
        ("tq2-prod", 5, "hadamard", 1 + 1 + 8),
        ("flat", 384, "dense", 1536),
    ],
)
def test_code_size_examples(spec, dim, rotation, code_size):
    assert make_codec(spec, dim=dim, rotation=rotation).code_size == code_size


@over_codecs
@EXAMPLES_PER_CODEC
@given(drawn=inputs)
def test_codes_follow_the_documented_layout(spec, rotation, drawn):
    codec, x, _ = codec_and_data(spec, rotation, drawn)
    rows, dim = x.shape
    code_size, norm_offsets = documented_layout(spec, dim, rotation)
    assert codec.code_size == code_size
    if spec != "flat":
        assert codec.rot_dim == rotated_dim(dim, rotation)

    codes = codec.encode(x)
    assert codes.dtype == np.uint8
    assert codes.shape == (rows, code_size)
    decoded = codec.decode(codes)
    assert decoded.dtype == np.float32
    assert decoded.shape == (rows, dim)

    exact_norms = np.linalg.norm(x.astype(np.float64), axis=1)
    np.testing.assert_allclose(codec.norms(codes), exact_norms, rtol=1e-5)
    stored = [codes[:, offset : offset + 4].copy().view("<f4")[:, 0] for offset in norm_offsets]
    if spec != "flat":
        np.testing.assert_array_equal(stored[0], codec.norms(codes))
    if spec.endswith("-prod"):
        np.testing.assert_array_equal(stored[1], codec.residual_norms(codes))


@over_codecs
@EXAMPLES_PER_CODEC
@given(drawn=inputs)
def test_reconstruction_error_is_bounded(spec, rotation, drawn):
    codec, x, _ = codec_and_data(spec, rotation, drawn)
    codes = codec.encode(x)
    decoded = codec.decode(codes)
    if spec == "flat":
        np.testing.assert_array_equal(decoded, x)
        return
    squared_norms = np.sum(x.astype(np.float64) ** 2, axis=1)
    relative_error = np.sum((x - decoded.astype(np.float64)) ** 2, axis=1) / squared_norms
    if spec.endswith("-prod"):
        # ||r||^2 is the (b-1)-bit reconstruction error of the unit vector.
        residual_sq = codec.residual_norms(codes).astype(np.float64) ** 2
        assert np.all(residual_sq <= MSE_ERROR_BOUND[spec_bits(spec) - 1])
        assert np.all(relative_error <= PROD_ERROR_BOUND[spec_bits(spec)])
    else:
        assert np.all(relative_error <= MSE_ERROR_BOUND[spec_bits(spec)])


@over_codecs
@EXAMPLES_PER_CODEC
@given(drawn=inputs)
def test_config_round_trip_gives_identical_codes_and_scores(spec, rotation, drawn):
    codec, x, queries = codec_and_data(spec, rotation, drawn)
    rebuilt = codec_from_config(json.loads(json.dumps(codec.to_config())))
    assert rebuilt.spec == codec.spec
    assert rebuilt.code_size == codec.code_size
    codes = codec.encode(x)
    np.testing.assert_array_equal(rebuilt.encode(x), codes)
    np.testing.assert_array_equal(
        rebuilt.score(rebuilt.prepare_query(queries), codes),
        codec.score(codec.prepare_query(queries), codes),
    )
    np.testing.assert_array_equal(rebuilt.decode(codes), codec.decode(codes))


@over_codecs
@EXAMPLES_PER_CODEC
@given(drawn=inputs)
def test_scores_are_inner_products_with_decoded_vectors(spec, rotation, drawn):
    codec, x, queries = codec_and_data(spec, rotation, drawn)
    codes = codec.encode(x)
    decoded = codec.decode(codes).astype(np.float64)
    query_norms = np.linalg.norm(queries.astype(np.float64), axis=1)
    scale = query_norms[:, None] * np.linalg.norm(x.astype(np.float64), axis=1)[None, :]
    # One and two queries take the per-byte lookup-table path, more a matrix product.
    for count in [1, 2, 5]:
        batch = queries[:count]
        scores = codec.score(codec.prepare_query(batch), codes)
        assert scores.dtype == np.float32
        assert scores.shape == (count, x.shape[0])
        expected = batch.astype(np.float64) @ decoded.T
        assert np.all(np.abs(scores - expected) <= 1e-5 * scale[:count])


@over_codecs
@EXAMPLES_PER_CODEC
@given(drawn=inputs, zero_rows=st.lists(st.integers(0, 49), min_size=1, max_size=5))
def test_zero_vectors_code_to_zero(spec, rotation, drawn, zero_rows):
    codec, x, queries = codec_and_data(spec, rotation, drawn)
    zero_rows = sorted({row % x.shape[0] for row in zero_rows})
    x[zero_rows] = 0
    codes = codec.encode(x)
    decoded = codec.decode(codes)
    np.testing.assert_array_equal(decoded[zero_rows], 0)
    np.testing.assert_array_equal(codec.norms(codes)[zero_rows], 0)
    scores = codec.score(codec.prepare_query(queries), codes)
    np.testing.assert_array_equal(scores[:, zero_rows], 0)
    assert np.all(np.isfinite(decoded))
    assert np.all(np.isfinite(scores))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    bits=st.integers(1, 8),
    rows=st.integers(1, 5),
    count=st.integers(1, 67),
    seed=st.integers(0, 2**63 - 1),
)
def test_bitpack_round_trip(bits, rows, count, seed):
    values = np.random.default_rng(seed).integers(0, 2**bits, size=(rows, count), dtype=np.uint8)
    packed = bitpack.pack(values, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (rows, bitpack.packed_size(count, bits))
    assert bitpack.packed_size(count, bits) == -(-count * bits // 8)
    np.testing.assert_array_equal(bitpack.unpack(packed, count, bits), values)

    # Value j is stream bits [j b, (j+1) b), least significant first; stream bit s is bit
    # s % 8 of byte s // 8; bits past the last value are zero.
    stream = np.unpackbits(packed, axis=1, bitorder="little")
    value_bits = (values[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1
    np.testing.assert_array_equal(stream[:, : count * bits], value_bits.reshape(rows, -1))
    np.testing.assert_array_equal(stream[:, count * bits :], 0)


@pytest.mark.parametrize("spec", available_specs())
def test_empty_batch(spec):
    codec = make_codec(spec, dim=10, seed=1)
    codes = codec.encode(np.zeros((0, 10), dtype=np.float32))
    assert codes.shape == (0, codec.code_size)
    assert codec.decode(codes).shape == (0, 10)
    assert codec.norms(codes).shape == (0,)
    queries = np.ones((3, 10), dtype=np.float32)
    assert codec.score(codec.prepare_query(queries[:1]), codes).shape == (1, 0)
    assert codec.score(codec.prepare_query(queries), codes).shape == (3, 0)


@pytest.mark.parametrize("bits", range(1, 9))
def test_bitpack_empty_batch(bits):
    packed = bitpack.pack(np.zeros((0, 13), dtype=np.uint8), bits)
    assert packed.shape == (0, bitpack.packed_size(13, bits))
    assert bitpack.unpack(packed, 13, bits).shape == (0, 13)


@pytest.mark.parametrize("spec", available_specs())
def test_codes_do_not_share_memory_with_caller_arrays(spec):
    codec = make_codec(spec, dim=12, seed=1)
    x = np.random.default_rng(12).standard_normal((4, 12)).astype(np.float32)
    codes = codec.encode(x)
    assert not np.shares_memory(codes, x)
    assert not np.shares_memory(codec.decode(codes), codes)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("dim", [2, 37, 64, 384])
def test_turboquant_decoding_by_byte_items_equals_unpacking(bits, dim):
    """The rotated reconstruction gathered a byte at a time (widths dividing 8) is the
    centroid of every unpacked index, bit for bit, as a contiguous (n, D) float32 array."""
    codec = make_codec(f"tq{bits}", dim=dim, seed=3)
    x = np.random.default_rng(dim).standard_normal((300, dim)).astype(np.float32)
    codes = codec.encode(x)
    indices = bitpack.unpack(codes[:, : codec.index_bytes], codec.rot_dim, bits)
    decoded = codec._dequantize(codes)
    assert decoded.dtype == np.float32 and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, codec._centroids32[indices])
    assert codec._dequantize(codes[:0]).shape == (0, codec.rot_dim)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dim", [2, 37, 384])
def test_qjl_signs_decoded_by_byte_items_equal_unpacked_bits(bits, dim):
    codec = make_codec(f"tq{bits}-prod", dim=dim, seed=3)
    codes = codec.encode(np.random.default_rng(dim).standard_normal((300, dim)))
    stored = np.unpackbits(codes[:, codec.index_bytes : codec.norm_offset], axis=1,
                           count=codec.rot_dim, bitorder="little")
    signs = codec._signs(codes)
    assert signs.dtype == np.float32 and signs.flags.c_contiguous
    np.testing.assert_array_equal(signs, np.where(stored == 1, 1.0, -1.0))
    assert codec._signs(codes[:0]).shape == (0, codec.rot_dim)
