"""The compiled CPU scan against the numpy reference: every compiled path, TurboQuant
widths with byte tables, metrics, odd dimensions, masks, ties, k past the rows, threads,
and searches through collections with segments, a memtable, deletes and filters."""

from __future__ import annotations

import numpy as np
import pytest

import vecstore
from vecstore import _native
from vecstore.codecs.registry import make_codec
from vecstore.errors import InvalidArgument
from vecstore.search import cpu

COMPILED = [p for p in _native.available_paths() if p != _native.NUMPY]
pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled scan module is not built")


def sorted_top(top):
    """Keys and rows best first; slots without a finite key (the numpy path keeps masked
    rows there with +inf keys) read as row -1."""
    order = np.lexsort((top.ties, top.keys), axis=-1)
    keys, rows = np.take_along_axis(top.keys, order, 1), np.take_along_axis(top.rows, order, 1)
    return keys, np.where(np.isfinite(keys), rows, -1)


def scan_with(path, monkeypatch, *args, **kwargs):
    monkeypatch.setenv(_native.PATH_VARIABLE, path)
    return sorted_top(cpu.scan(*args, **kwargs))


def assert_numpy_bits(path, monkeypatch, codec, codes, q, k, metric, mask, stable=False):
    """A scan on ``path`` gives the numpy path's keys and rows bit for bit; returns the
    rows."""
    keys, rows = scan_with(path, monkeypatch, codec, codes, q, k, metric, mask, stable=stable)
    want_keys, want_rows = scan_with("numpy", monkeypatch, codec, codes, q, k, metric, mask)
    np.testing.assert_array_equal(keys, want_keys)
    np.testing.assert_array_equal(rows, want_rows)
    return rows


@pytest.fixture(scope="module")
def real(wordnet):
    return wordnet["base"][:6000], wordnet["queries"][:16]


@pytest.mark.parametrize("path", COMPILED)
@pytest.mark.parametrize("spec", ["tq1", "tq2", "tq3", "tq4", "tq5", "tq7", "tq8", "tq4c",
                                  "tq2c", "tq3c", "tq2-prod", "tq4-prod", "tq8-prod"])
@pytest.mark.parametrize("dim", [50, 97, 100, 384])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_one_or_two_queries_equal_the_numpy_path_bit_for_bit(real, monkeypatch, path, spec,
                                                             dim, metric):
    base, queries = real
    x, q = base[:, :dim].copy(), queries[:2, :dim].copy()
    codec = make_codec(spec, dim=dim, seed=3)
    codes = codec.encode(x)
    live = np.random.default_rng(dim).random(x.shape[0]) > 0.3
    for k, mask in ((1, None), (10, live), (100, None)):
        rows = assert_numpy_bits(path, monkeypatch, codec, codes, q, k, metric, mask)
        if mask is not None:
            assert mask[rows[rows >= 0]].all()


@pytest.mark.parametrize("path", COMPILED)
def test_query_blocks_agree_with_the_numpy_matrix_product(real, monkeypatch, path):
    base, queries = real
    codec = make_codec("tq4", dim=384)
    codes = codec.encode(base)
    keys, rows = scan_with(path, monkeypatch, codec, codes, queries, 20, "ip")
    want_keys, want_rows = scan_with("numpy", monkeypatch, codec, codes, queries, 20, "ip")
    np.testing.assert_allclose(keys, want_keys, rtol=1e-5, atol=1e-6)
    assert np.mean(rows == want_rows) > 0.99


@pytest.mark.parametrize("path", COMPILED)
def test_equal_scores_go_to_the_smaller_id_and_missing_rows_pad(monkeypatch, path, real):
    base, queries = real
    codec = make_codec("tq2", dim=384)
    codes = np.repeat(codec.encode(base[:3]), 4, axis=0)      # every code four times
    ids = np.array([90, 12, 55, 7, 31, 2, 64, 18, 40, 3, 71, 26], dtype=np.int64)
    monkeypatch.setenv(_native.PATH_VARIABLE, path)
    top = cpu.scan(codec, codes, queries[:1], 20, "ip", row_ids=ids)
    monkeypatch.setenv(_native.PATH_VARIABLE, "numpy")
    reference = cpu.scan(codec, codes, queries[:1], 20, "ip", row_ids=ids)
    for got in (top, reference):
        keys, found = got.sorted(ids)
        assert (found[0, 12:] == -1).all() and np.isinf(keys[0, 12:]).all()
        for group in np.unique(keys[0, :12]):
            same = found[0, :12][keys[0, :12] == group]
            np.testing.assert_array_equal(same, np.sort(same))
    np.testing.assert_array_equal(top.sorted(ids)[1], reference.sorted(ids)[1])


def test_threads_change_nothing(real, monkeypatch):
    base, queries = real
    codec = make_codec("tq4", dim=384)
    codes = codec.encode(np.concatenate([base] * 3))
    results = []
    for threads in (1, 2, 3):
        vecstore.set_num_threads(threads)
        results.append(scan_with(COMPILED[0], monkeypatch, codec, codes, queries[:1], 50, "ip"))
    vecstore.set_num_threads(vecstore.cpu_features()["threads"])
    for keys, rows in results[1:]:
        np.testing.assert_array_equal(keys, results[0][0])
        np.testing.assert_array_equal(rows, results[0][1])


def test_paths_and_threads_are_reported_and_checked(monkeypatch):
    features = vecstore.cpu_features()
    assert features["paths"][-1] == "numpy" and features["path"] == features["paths"][0]
    assert features["module"].endswith((".so", ".pyd"))
    monkeypatch.setenv(_native.PATH_VARIABLE, "avx9000")
    with pytest.raises(InvalidArgument, match="avx9000"):
        vecstore.cpu_features()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgument, match="threads"):
            vecstore.set_num_threads(bad)


def test_the_numpy_path_never_calls_the_kernels(real, monkeypatch):
    base, queries = real
    codec = make_codec("tq4", dim=384)

    def refuse(*args, **kwargs):
        raise AssertionError("the compiled kernel ran")

    monkeypatch.setattr(_native, "scan_topk", refuse)
    monkeypatch.setenv(_native.PATH_VARIABLE, "numpy")
    assert cpu.scan(codec, codec.encode(base[:100]), queries[:1], 5, "ip").keys.shape == (1, 5)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_collection_searches_equal_the_numpy_path(tmp_path, wordnet, monkeypatch, metric):
    x, q = wordnet["base"][:8000], wordnet["queries"][:2]
    with vecstore.open(tmp_path / "db", segment_bytes=300_000, merge_policy=None,
                       device="cpu") as db:
        c = db.create_collection("c", dim=384, metric=metric, codec="tq4")
        c.add(x[:7000], metadata={"group": np.arange(7000) % 5})
        c.delete(np.arange(0, 7000, 7))
        c.add(x[7000:], metadata={"group": np.arange(7000, 8000) % 5})
        assert c.stats()["segments"] > 2 and c.stats()["memtable_rows"] > 0
        for kwargs in ({"k": 10}, {"k": 10, "filter": {"group": 3}}, {"k": 9000}):
            monkeypatch.setenv(_native.PATH_VARIABLE, COMPILED[0])
            got = c.search(q, **kwargs)
            monkeypatch.setenv(_native.PATH_VARIABLE, "numpy")
            want = c.search(q, **kwargs)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_array_equal(got.distances, want.distances)


@pytest.mark.parametrize("path", COMPILED)
@pytest.mark.parametrize("spec", ["tq1", "tq2", "tq3", "tq4", "tq6", "tq8", "tq4c", "tq1c",
                                  "tq3c", "tq2-prod", "tq3-prod", "tq4-prod", "tq5-prod"])
@pytest.mark.parametrize("dim", [50, 97, 384])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_the_fastscan_pass_keeps_the_exact_result(real, monkeypatch, path, spec, dim, metric):
    """Stable codes take the FastScan pass on the SIMD paths (byte codes on avx512): keys
    and rows still equal the numpy path's bit for bit, with masks, duplicate codes (ties)
    and k past the rows."""
    base, queries = real
    x = np.concatenate([base[:, :dim], base[:500, :dim]])        # 500 duplicated rows
    codec = make_codec(spec, dim=dim, seed=5)
    codes = codec.encode(x)
    live = np.random.default_rng(dim + 1).random(x.shape[0]) > 0.5
    for q in (queries[:1, :dim], queries[5:7, :dim]):
        for k, mask in ((1, None), (10, None), (64, live), (7000, live)):
            assert_numpy_bits(path, monkeypatch, codec, codes, q, k, metric, mask, stable=True)


@pytest.mark.parametrize("path", COMPILED)
@pytest.mark.parametrize("template", ["pq{half}x4", "pq{quarter}x8", "pq{quarter}x3", "mib",
                                      "mib3", "mib4", "mib8", "mib-hamming", "fp8",
                                      "fp8-pca{quarter}"])
@pytest.mark.parametrize("dim", [50, 100, 384])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_trained_and_minifloat_codecs_equal_the_numpy_path_bit_for_bit(
        real, monkeypatch, path, template, dim, metric):
    """PQ (3-, 4- and 8-bit indices, odd M), MIB (asymmetric, and Hamming for ip) and fp8
    (plain and after PCA, whose queries add an offset) scan compiled with the numpy path's
    keys and rows, with and without kept layouts."""
    base, queries = real
    calls = []
    scan_topk = _native.scan_topk
    monkeypatch.setattr(_native, "scan_topk",
                        lambda *args, **kw: calls.append(1) or scan_topk(*args, **kw))
    spec = template.format(half=dim // 2, quarter=dim // 4 if dim % 4 == 0 else dim // 2)
    x, q = base[:3000, :dim].copy(), queries[:2, :dim].copy()
    codec = make_codec(spec, dim=dim, seed=1)
    codec.train(x)
    codes = codec.encode(x)
    live = np.random.default_rng(dim + 2).random(x.shape[0]) > 0.4
    for k, mask in ((1, None), (10, live), (50, None)):
        for stable in (False, True):
            assert_numpy_bits(path, monkeypatch, codec, codes, q, k, metric, mask, stable)
    # Hamming distances rank rows but give no l2 key: only that case scans in numpy.
    assert bool(calls) != (spec == "mib-hamming" and metric == "l2")


def test_blocked_layouts_are_kept_per_array_and_dropped_with_it(real, monkeypatch):
    base, queries = real
    codec = make_codec("tq4", dim=384)
    codes = codec.encode(base[:1000])
    if "avx2" not in COMPILED and "avx512" not in COMPILED:
        pytest.skip("no SIMD path on this CPU")
    before = len(cpu._LAYOUTS)
    scan_with(COMPILED[0], monkeypatch, codec, codes, queries[:1], 5, "ip", stable=True)
    scan_with(COMPILED[0], monkeypatch, codec, codes, queries[1:2], 5, "ip", stable=True)
    assert len(cpu._LAYOUTS) == before + 1
    del codes
    assert len(cpu._LAYOUTS) == before


@pytest.mark.parametrize("spec", ["tq4", "tq8"])
def test_exact_scans_keep_row_scales_but_no_blocked_layout(real, monkeypatch, spec):
    """The scalar path (and byte codes off avx512) scores every row: a kept array gets
    its row scales, not a blocked copy of its codes."""
    base, queries = real
    codec = make_codec(spec, dim=384)
    codes = codec.encode(base[:1000])
    scan_with("scalar", monkeypatch, codec, codes, queries[:1], 5, "ip", stable=True)
    blocked, scales = cpu._LAYOUTS[(id(codes), codec.scan_format, False)]
    assert blocked == (None, None)
    np.testing.assert_array_equal(scales[0], codec.score_scales(codes))


@pytest.mark.parametrize("path", [p for p in COMPILED if p != "scalar"])
def test_large_batches_take_the_fastscan_pass_in_blocks(real, monkeypatch, path):
    base, queries = real
    codec = make_codec("tq4", dim=384)
    codes = codec.encode(base)
    many = np.concatenate([queries] * 3)                       # 48 queries, three blocks
    keys, rows = scan_with(path, monkeypatch, codec, codes, many, 10, "l2", stable=True)
    one = [scan_with(path, monkeypatch, codec, codes, q[None], 10, "l2", stable=True)
           for q in many]
    # The rotation of a block of queries rounds as a matrix product, not per query.
    np.testing.assert_allclose(keys, np.concatenate([k for k, _ in one]), rtol=1e-6,
                               atol=1e-6)
    assert np.mean(rows == np.concatenate([r for _, r in one])) > 0.99
    want_keys, want_rows = scan_with("numpy", monkeypatch, codec, codes, many, 10, "l2")
    np.testing.assert_allclose(keys, want_keys, rtol=1e-5, atol=1e-5)
    assert np.mean(rows == want_rows) > 0.99


@pytest.mark.parametrize("path", COMPILED)
def test_one_scan_serves_every_part_of_a_collection(tmp_path, wordnet, monkeypatch, path):
    """Segments, the memtable, deleted rows and a selective filter (a gathered part) go to
    the compiled kernels in one call a query block, with the numpy path's results."""
    calls = []
    original = _native.scan_topk

    def counted(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(_native, "scan_topk", counted)
    x, q = wordnet["base"][:9000], wordnet["queries"][:3]
    with vecstore.open(tmp_path / "db", segment_bytes=400_000, merge_policy=None,
                       device="cpu") as db:
        c = db.create_collection("c", dim=384, metric="cosine", codec="tq2")
        c.add(x[:8000], metadata={"group": np.arange(8000) % 50})
        c.delete(np.arange(3, 8000, 11))
        c.add(x[8000:], metadata={"group": np.arange(8000, 9000) % 50})
        parts = c.stats()["segments"] + 1
        for kwargs in ({"k": 10}, {"k": 25, "filter": {"group": 7}}):
            monkeypatch.setenv(_native.PATH_VARIABLE, path)
            calls.clear()
            got = c.search(q, **kwargs)
            assert calls == [parts]
            monkeypatch.setenv(_native.PATH_VARIABLE, "numpy")
            want = c.search(q, **kwargs)
            np.testing.assert_allclose(got.distances, want.distances, rtol=1e-5, atol=1e-6)
            assert np.mean(got.ids == want.ids) > 0.99


@pytest.mark.parametrize("path", [p for p in COMPILED if p != "scalar"])
def test_the_memtable_layout_grows_with_its_rows(wordnet, monkeypatch, path):
    """The memtable's blocked layout is extended as rows arrive (partial blocks laid out
    again), and every search still equals the numpy path's, deletes included."""
    x, q = wordnet["base"], wordnet["queries"][:2]
    c = vecstore.open(device="cpu").create_collection("grow", dim=384, metric="ip",
                                                      codec="tq4")
    start = 0
    for size in (5, 27, 32, 1, 200, 3000):
        c.add(x[start : start + size])
        start += size
        if size == 200:
            c.delete(np.arange(0, start, 3))
        assert c.stats()["segments"] == 0
        monkeypatch.setenv(_native.PATH_VARIABLE, path)
        got = c.search(q, k=20)
        monkeypatch.setenv(_native.PATH_VARIABLE, "numpy")
        want = c.search(q, k=20)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.distances, want.distances)
    assert c._executor._memtable_layout[1]._rows == start


@pytest.mark.parametrize("spec", ["tq2", "tq3", "tq4-prod"])
def test_a_stream_layout_serves_older_snapshots(real, spec):
    base, _ = real
    codec = make_codec(spec, dim=384)
    fmt = codec.scan_format
    codes = codec.encode(base[:100])
    layout = cpu.StreamLayout()
    full = layout.view(codec, codes, fmt)
    early = layout.view(codec, codes[:40], fmt)
    again = cpu.StreamLayout().view(codec, codes[:40], fmt)
    fresh = cpu._blocked(codes[:40], fmt), cpu._row_scales(codec, codes[:40], fmt)
    widths = (fmt.split, fmt.n_bytes - fmt.split)
    for i, width in enumerate(widths):
        if width == 0:
            assert full[0][i] is None and early[0][i] is None
            continue
        np.testing.assert_array_equal(early[0][i][: 32 * width], again[0][i][: 32 * width])
        np.testing.assert_array_equal(early[0][i][: 32 * width], fresh[0][i][: 32 * width])
        assert full[0][i].size == 4 * 32 * width
        assert early[0][i].size == 2 * 32 * width
    for got, want in zip(early[1], fresh[1], strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("dim", [50, 97, 384])
def test_compiled_nibble_tables_are_the_numpy_ones(real, bits, dim):
    """The compiled module's nibble tables of shared levels, with coordinates past the
    queries' padded to zero, are ``value_tables``' bits."""
    from vecstore.codecs import tables

    _, queries = real
    levels = np.linspace(-1.3, 1.7, 1 << bits).astype(np.float32)
    n_bytes = -(-dim * bits // 8) + 1
    q = np.ascontiguousarray(queries[:5, :dim])
    np.testing.assert_array_equal(_native.nibble_tables(q, levels, bits, n_bytes),
                                  tables.value_tables(q, levels, bits, n_bytes))


def test_code_bytes_give_each_value_its_table_width(real):
    """3-bit indices are read a nibble each and 6-bit ones a byte each, with the same
    values; the prod codec's sign bytes follow its padded MSE part."""
    from vecstore.codecs import bitpack, turboquant

    base, _ = real
    for spec, width in (("tq3", 4), ("tq6", 8), ("tq4-prod", 4)):
        codec = make_codec(spec, dim=97)
        codes = codec.encode(base[:50, :97])
        fmt = codec.scan_format
        got = turboquant.code_bytes(codes, fmt)
        assert got.shape == (50, fmt.n_bytes) and fmt.table_bits == (4 if width == 4 else 8)
        indices = bitpack.unpack(codes[:, : codec.index_bytes], 97, codec.mse_bits)
        np.testing.assert_array_equal(bitpack.unpack(got[:, : fmt.split], 97, width), indices)
        if fmt.split < fmt.n_bytes:
            assert fmt.split % 4 == 0
            np.testing.assert_array_equal(got[:, fmt.split :],
                                          codes[:, codec.index_bytes : codec.norm_offset])
        blocked = _native.block_codes(codes, fmt.split, fmt.values)
        np.testing.assert_array_equal(blocked, _native.block_codes(got, fmt.split))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("dim", [50, 97, 384])
def test_compiled_encoding_writes_the_numpy_encoders_bits(wordnet, monkeypatch, bits, dim):
    """The compiled encoder (float32 rotation, float64 again near decision boundaries)
    gives every TurboQuant width the numpy encoder's codes, zero rows included; the
    numpy path encodes without the kernels."""
    x = np.concatenate([wordnet["base"][:3000, :dim], np.zeros((2, dim), np.float32),
                        1e-3 * wordnet["base"][3000:4000, :dim]])
    codec = make_codec(f"tq{bits}", dim=dim, seed=7)
    calls = []
    original = _native.quantize_pack
    monkeypatch.setattr(_native, "quantize_pack", lambda *a: calls.append(1) or original(*a))
    got = codec.encode(x)
    assert calls
    monkeypatch.setenv(_native.PATH_VARIABLE, "numpy")
    calls.clear()
    want = codec.encode(x)
    assert not calls
    np.testing.assert_array_equal(got, want)


def test_near_boundary_coordinates_are_computed_again_exactly(monkeypatch):
    """Unit rows whose rotated coordinates sit on decision boundaries (built by rotating
    such rows back) still get the numpy encoder's indices."""
    codec = make_codec("tq4", dim=64, seed=1)
    rng = np.random.default_rng(0)
    small = codec._boundaries32[np.argsort(np.abs(codec._boundaries32))[:8]]
    rotated = rng.choice(small, size=(300, 64)).astype(np.float64)
    rotated[:, -1] = np.sqrt(1 - np.sum(rotated[:, :-1] ** 2, axis=1))
    x = (rotated @ codec.rotation.matrix.astype(np.float64)).astype(np.float32)
    _, unit = codec._normalize(x)
    y = codec.rotation.forward_exact(unit)
    gaps = np.abs(y[..., None] - codec._boundaries32).min(axis=-1)
    assert np.mean(gaps < 1e-5) > 0.5          # most coordinates need the float64 check
    got = codec.encode(x)
    monkeypatch.setenv(_native.PATH_VARIABLE, "numpy")
    np.testing.assert_array_equal(got, codec.encode(x))
