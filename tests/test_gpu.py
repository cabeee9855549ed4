"""GPU search agrees with the CPU scan. Skipped without CuPy and a CUDA device."""

from __future__ import annotations

import numpy as np
import pytest

import vecstore
from vecstore.search import gpu
from vecstore.search.gpu import batch_scan, kernels, launches, layouts
from vecstore.search.gpu.scanner import (
    BATCH_MIN_QUERIES,
    MAX_BATCH_PLANS,
    GpuScanner,
    plan_batch_size,
)

needs_gpu = pytest.mark.skipif(gpu.unavailable_reason() is not None,
                               reason=f"no GPU: {gpu.unavailable_reason()}")


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_same_results(cpu, gpu_result, tolerance):
    """Scores within tolerance; ids equal wherever the CPU scores are not tied. ``cpu`` may
    hold more columns than ``gpu_result`` (search it with k + 1), so that a tie between the
    k-th row and the first row left out counts as a tie too."""
    k = gpu_result.ids.shape[1]
    np.testing.assert_allclose(gpu_result.distances, cpu.distances[:, :k], rtol=0,
                               atol=tolerance)
    distinct = np.ones(cpu.ids.shape, dtype=bool)
    gaps = np.abs(np.diff(cpu.distances, axis=1)) > tolerance
    distinct[:, 1:] &= gaps
    distinct[:, :-1] &= gaps
    distinct = distinct[:, :k]
    np.testing.assert_array_equal(gpu_result.ids[distinct], cpu.ids[:, :k][distinct])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", ["tq1", "tq2", "tq3", "tq4", "tq5", "tq8", "tq2c", "tq4c",
                                  "tq2-prod", "tq3-prod", "tq4-prod", "tq5-prod",
                                  "pq24x8", "pq48x4", "mib", "mib2", "mib4", "mib-hamming"])
@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_gpu_scan_matches_the_cpu(tmp_path, spec, metric):
    x = unit_rows(6000, 96, 1) * np.random.default_rng(2).uniform(0.5, 2, (6000, 1))
    q = unit_rows(17, 96, 3)
    with vecstore.open(tmp_path / "db") as db:
        c = db.create_collection("c", dim=96, metric=metric, codec=spec, seed=5)
        for start, stop in ((0, 3000), (3000, 5000), (5000, 6000)):
            c.add(x[start:stop], metadata={"tag": np.arange(start, stop) % 5})
            if stop < 6000:
                c.flush()
        c.delete(np.arange(0, 6000, 7))
        assert c.stats()["segments"] >= 2 and c.stats()["memtable_rows"] > 0
        batch = unit_rows(BATCH_MIN_QUERIES + 9, 96, 11)
        for queries, k in ((q[:1], 10), (q[:3], 1), (q, 100), (q[:5], 1000), (batch, 10),
                           (batch, 300)):
            cpu = c.search(queries, k + 1, device="cpu")
            found = c.search(queries, k, device="gpu")
            scale = float(np.abs(cpu.distances[np.isfinite(cpu.distances)]).max())
            assert_same_results(cpu, found, 1e-4 * scale)
        cpu = c.search(q, 21, filter={"tag": 3}, device="cpu")
        assert_same_results(cpu, c.search(q, 20, filter={"tag": 3}, device="gpu"),
                            1e-4 * float(np.abs(cpu.distances).max()))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", ["tq2", "tq3", "tq4", "pq25x4", "mib4"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_gpu_scan_matches_the_cpu_when_the_last_word_is_partly_padding(tmp_path, spec, metric):
    """d = 100: the last 32-bit word of a row holds padding values past the dimension,
    which the table lookups must score as zero (single queries through the plan, with
    and without deleted rows, and a few queries at once)."""
    x = unit_rows(5000, 100, 60) * np.random.default_rng(61).uniform(0.5, 2, (5000, 1))
    q = unit_rows(5, 100, 62)
    with vecstore.open(tmp_path / "db") as db:
        c = db.create_collection("c", dim=100, metric=metric, codec=spec, seed=3)
        c.add(x)
        c.flush()
        for deleted in (None, np.arange(0, 5000, 3)):
            if deleted is not None:
                c.delete(deleted)
            for queries in (q[:1], q[1:2], q[1:2], q):
                cpu = c.search(queries, 11, device="cpu")
                scale = float(np.abs(cpu.distances[np.isfinite(cpu.distances)]).max())
                assert_same_results(cpu, c.search(queries, 10, device="gpu"), 1e-4 * scale)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", ["tq1", "tq2", "tq3", "tq4", "tq5", "tq7", "tq8", "tq2c",
                                  "tq4c"])
@pytest.mark.parametrize("dim", [96, 384, 1024])
def test_gpu_encoding_gives_the_cpu_codes_bit_for_bit(spec, dim, wordnet):
    from vecstore.codecs.turboquant_gpu import encode_on_gpu

    rng = np.random.default_rng(dim)
    if dim == 384:
        x = wordnet["base"][:20000]
    else:
        x = rng.standard_normal((20000, dim)).astype(np.float32) * rng.uniform(0.1, 10, (20000, 1))
    x = np.ascontiguousarray(x, dtype=np.float32)
    codec = vecstore.make_codec(spec, dim=dim, seed=3)
    np.testing.assert_array_equal(encode_on_gpu(codec, x), codec.encode(x))


@pytest.mark.gpu
@needs_gpu
def test_gpu_search_with_rescoring_and_padding():
    with vecstore.open() as db:
        c = db.create_collection("c", dim=64, metric="ip", codec="tq2", store_vectors="float16")
        x = unit_rows(50, 64, 4)
        c.add(x)
        cpu = c.search(x[:4], 60, rescore=2, device="cpu")
        found = c.search(x[:4], 60, rescore=2, device="gpu")
        np.testing.assert_array_equal(found.ids, cpu.ids)
        assert (found.ids[:, 50:] == -1).all()


@pytest.mark.gpu
@needs_gpu
def test_resident_codes_are_freed_when_segments_go():
    with vecstore.open(device="gpu", segment_bytes=20_000) as db:
        c = db.create_collection("c", dim=32, metric="ip", codec="tq4")
        c.add(unit_rows(3000, 32, 6))
        c.flush()
        c.search(unit_rows(1, 32, 7), 5)
        scanner = c._executor.gpu_scanner.get()
        before = scanner.resident_bytes
        c.delete(np.arange(0, 3000, 2))
        c.compact()
        c.search(unit_rows(1, 32, 7), 5)
        assert c._executor.arena.rebuilds == 1
        assert 0 < scanner.resident_bytes < before
        db.drop_collection("c")
        assert scanner.resident_bytes == 0 and not scanner._plans


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", ["tq4", "tq3-prod", "mib-hamming"])
def test_memtable_rows_are_uploaded_once(spec):
    """Searching after each write uploads only the memtable's new rows; the live rows go
    up once more as a segment at the flush."""
    x, q = unit_rows(3000, 64, 20), unit_rows(5, 64, 21)
    with vecstore.open() as db:
        c = db.create_collection("c", dim=64, metric="l2", codec=spec)
        for start in range(0, 3000, 500):
            c.add(x[start : start + 500])
            if start == 1000:
                c.delete(np.arange(0, 1000, 3))
            cpu = c.search(q, 11, device="cpu")
            assert_same_results(cpu, c.search(q, 10, device="gpu"),
                                1e-4 * float(np.abs(cpu.distances).max()))
        assert c._executor.arena.uploaded_rows == 3000
        c.flush()
        c.search(q, 10, device="gpu")
        assert c._executor.arena.uploaded_rows == 3000 + len(c)


@pytest.mark.gpu
@needs_gpu
def test_the_budget_is_enforced():

    with vecstore.open() as db:
        c = db.create_collection("c", dim=32, metric="ip", codec="tq4")
        c.add(unit_rows(1000, 32, 8))
        c._executor.gpu_scanner._scanner = GpuScanner(budget_bytes=1000)
        with pytest.raises(vecstore.OutOfDeviceMemory, match="budget"):
            c.search(unit_rows(1, 32, 9), 5, device="gpu")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", ["tq1", "tq3", "tq4", "tq8", "tq4c"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("batch_kernel,cap_factor", [("gemm", 4), ("mma", 4), ("mma", 0)],
                         ids=["gemm", "mma", "mma-overflowing"])
def test_tensor_core_batches_agree_with_the_fused_kernel(spec, metric, batch_kernel,
                                                          cap_factor):
    """The tensor-core paths (forced on for a few queries, off for many) return the fused
    CUDA-core kernel's rows and keys, with masks and over several tiles and query chunks:
    the GEMM pipeline over every tile, and for 4-bit codes the fused mma kernel, also when
    its candidate buffers overflow (a cap factor of 0) and the pipeline rescans."""
    from unittest import mock

    x = unit_rows(40_000, 200, 12) * np.random.default_rng(13).uniform(0.5, 2, (40_000, 1))
    q = unit_rows(70, 200, 14)
    codec = vecstore.make_codec(spec, dim=200, seed=1)
    scanner = GpuScanner()
    scanner.batch_kernel = batch_kernel
    device = scanner.resident("part", codec, codec.encode(x))
    sq_norms = np.einsum("ij,ij->i", q, q)
    mask = np.random.default_rng(15).random(40_000) < 0.7
    settings = {"TILE_BYTES": 3 << 20, "TILE_SCORE_BYTES": 2 << 20,
                "CANDIDATE_BYTES": 1 << 20, "MMA_CAP_FACTOR": cap_factor}
    with mock.patch.multiple(batch_scan, SLICE_ROWS=4096, **settings):
        for k, rows in ((10, None), (100, mask), (1, None)):
            fused = scanner.scan(codec, device, q, metric, k, sq_norms, rows, batch=False)
            tensor = scanner.scan(codec, device, q, metric, k, sq_norms, rows, batch=True)
            scale = float(np.abs(fused[0]).max())
            np.testing.assert_allclose(tensor[0], fused[0], rtol=0, atol=1e-5 * scale)
            distinct = np.ones(fused[1].shape, dtype=bool)
            gaps = np.diff(fused[0], axis=1) > 1e-5 * scale
            distinct[:, 1:] &= gaps
            distinct[:, :-1] &= gaps
            np.testing.assert_array_equal(tensor[1][distinct], fused[1][distinct])
            if rows is not None:
                assert rows[tensor[1]].all()


@pytest.mark.gpu
@needs_gpu
def test_scans_launched_together_keep_their_own_queries():
    """Scans submitted one after another before any result is read (as a search over
    several parts does) each search their own queries, though the uploads share a
    thread's pinned buffer."""
    x = unit_rows(200_000, 384, 23)
    codec = vecstore.make_codec("tq4", dim=384, seed=4)
    scanner = GpuScanner()
    device = scanner.resident("part", codec, codec.encode(x))
    batches = [unit_rows(5, 384, seed) for seed in range(24, 32)]
    pending = [scanner.submit(codec, device, q, "ip", 10, None) for q in batches]
    for queries, scan in zip(batches, pending, strict=True):
        alone = scanner.scan(codec, device, queries, "ip", 10, None)
        np.testing.assert_array_equal(scan.result()[1], alone[1])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", ["tq4", "tq3", "tq4-prod", "pq16x8", "mib-hamming"])
@pytest.mark.parametrize("order", ["shuffled", "rising", "falling"])
def test_warp_lists_keep_what_block_lists_keep(spec, order):
    """Up to k = WARP_TOP_MAX_K each warp keeps its best rows in registers, above it the
    block keeps one shared list: a search for that k returns exactly the first rows and
    keys of a search for one more, in the scan (single queries, through the plan too)
    and in the merge, with and without a mask. Rows ordered by rising score make every
    step bring a warp a full set of new best rows; falling, almost none."""
    k = launches.WARP_TOP_MAX_K
    rng = np.random.default_rng(70)
    x = unit_rows(300_000, 64, 71) * rng.uniform(0.5, 2, (300_000, 1))
    q = unit_rows(3, 64, 72)
    if order != "shuffled":
        x = x[np.argsort(x @ q[0])[:: 1 if order == "rising" else -1]]
    codec = vecstore.make_codec(spec, dim=64, seed=2)
    if not codec.is_trained:
        codec.train(x[::30])
    scanner = GpuScanner()
    device = scanner.resident("part", codec, codec.encode(x))
    mask = rng.random(300_000) < 0.5
    for rows in (None, mask):
        for queries in (q[:1], q):
            # A mask object seen before sends a single query to a plan, which rotates on
            # the device (last bits differ): copies keep both searches on the general path.
            wide = scanner.scan(codec, device, queries, "ip", k + 1, None,
                                None if rows is None else rows.copy(), batch=False)
            found = scanner.scan(codec, device, queries, "ip", k, None,
                                 None if rows is None else rows.copy(), batch=False)
            np.testing.assert_array_equal(found[1], wide[1][:, :k])
            np.testing.assert_array_equal(found[0], wide[0][:, :k])
    planned = scanner.submit(codec, device, q[:1], "ip", k, None)
    wide = scanner.scan(codec, device, q[:1], "ip", k + 1, None)
    np.testing.assert_array_equal(planned.result()[1], wide[1][:, :k])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("rotation", ["dense", "hadamard"])
def test_batches_take_queries_already_on_the_device(rotation):
    """A CuPy query array gives the rows and keys of the same queries from the host, on
    the batch path (fused kernel) and on the single-query kernels."""
    from unittest import mock

    import cupy

    x = unit_rows(20_000, 96, 21)
    q = unit_rows(40, 96, 22)
    codec = vecstore.make_codec("tq4", dim=96, seed=3, rotation=rotation)
    scanner = GpuScanner()
    device = scanner.resident("part", codec, codec.encode(x))
    with mock.patch.multiple(batch_scan, SLICE_ROWS=4096, TILE_BYTES=1 << 20):
        for queries, batch in ((q, True), (q[:3], False)):
            host = scanner.scan(codec, device, queries, "ip", 10, None, batch=batch)
            on_device = scanner.scan(codec, device, cupy.asarray(queries), "ip", 10, None,
                                     batch=batch)
            np.testing.assert_array_equal(on_device[1], host[1])
            np.testing.assert_array_equal(on_device[0], host[0])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("rotation", ["dense", "hadamard"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_batch_plans_replay_the_direct_search(rotation, metric):
    """Batches of one shape run as a plan: its first search directly, the next ones as a
    captured graph, with new queries each time (the last from a CuPy array). Each returns
    the rows and keys of the same search without a plan (a new mask object each time
    keeps it off), with and without a mask, also when the candidate buffers overflow and
    the pipeline rescans after the graph."""
    from unittest import mock

    import cupy

    x = unit_rows(40_000, 96, 80) * np.random.default_rng(81).uniform(0.5, 2, (40_000, 1))
    codec = vecstore.make_codec("tq4", dim=96, seed=5, rotation=rotation)
    live = np.random.default_rng(82).random(40_000) < 0.8
    batches = [unit_rows(40, 96, seed) for seed in range(90, 95)]

    def search(scanner, device, q, rows, queries=None):
        sq = np.einsum("ij,ij->i", q, q) if metric == "l2" else None
        return scanner.scan(codec, device, q if queries is None else queries, metric, 10,
                            sq, rows, batch=True)

    for cap_factor in (4, 0):
        with mock.patch.multiple(batch_scan, SLICE_ROWS=4096, TILE_BYTES=1 << 20,
                                 MMA_CAP_FACTOR=cap_factor):
            scanner = GpuScanner()
            device = scanner.resident("part", codec, codec.encode(x))
            for mask in (None, live):
                planned = [search(scanner, device, q, mask) for q in batches[:-1]]
                planned.append(search(scanner, device, batches[-1], mask,
                                      cupy.asarray(batches[-1])))
                plans = list(scanner._batch_plans.values())
                assert any(plan.steps is not None for plan in plans) == scanner.context.hopper
                for q, found in zip(batches, planned, strict=True):
                    direct = search(scanner, device, q, np.ones(40_000, dtype=bool)
                                    if mask is None else mask.copy())
                    np.testing.assert_array_equal(found[1], direct[1])
                    np.testing.assert_array_equal(found[0], direct[0])


def test_plan_batch_sizes_pad_by_at_most_a_third():
    """Every batch size up to 4,096 maps to a plan size of the 8 * 2^i, 12 * 2^i ladder
    that holds it with less than a third of padding; larger batches keep their size."""
    ladder = sorted({8 << i for i in range(10)} | {12 << i for i in range(9)})
    for nq in range(1, 4097):
        size = plan_batch_size(nq)
        assert size in ladder and size >= nq
        assert nq <= 8 or size - nq < size / 3
        assert size == min(s for s in ladder if s >= nq)
    assert plan_batch_size(5000) == 5000


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_batches_of_every_size_share_padded_plans(metric):
    """A server's concurrent calls make batches of 8 to 32 queries: they run on the five
    plans of the padded sizes, not a plan per size, and each returns the rows and keys of
    the same search without a plan (a new mask object each time keeps it off)."""
    x = unit_rows(30_000, 64, 85)
    codec = vecstore.make_codec("tq4", dim=64, seed=5)
    scanner = GpuScanner()
    device = scanner.resident("part", codec, codec.encode(x))
    everything = np.ones(30_000, dtype=bool)
    for nq in (9, 13, 31, 8, 17, 32, 11, 24, 20):
        q = unit_rows(nq, 64, 100 + nq)
        sq = np.einsum("ij,ij->i", q, q) if metric == "l2" else None
        for _ in range(2):
            planned = scanner.scan(codec, device, q, metric, 10, sq, None, batch=True)
            direct = scanner.scan(codec, device, q, metric, 10, sq, everything.copy(),
                                  batch=True)
            assert planned[0].shape == (nq, 10)
            np.testing.assert_array_equal(planned[1], direct[1])
            np.testing.assert_array_equal(planned[0], direct[0])
    sizes = sorted(key[4] for key in scanner._batch_plans)
    assert sizes == [8, 12, 16, 24, 32][-MAX_BATCH_PLANS:]


@pytest.mark.gpu
@needs_gpu
def test_batch_plans_follow_the_batch_kernel():
    """A plan serves one batch kernel: after repeated "mma" searches, "gemm" searches of
    the same shape run the GEMM pipeline (no fused kernel), with the same results."""
    from unittest import mock

    x = unit_rows(40_000, 96, 83)
    codec = vecstore.make_codec("tq4", dim=96, seed=5)
    q = unit_rows(40, 96, 84)
    with mock.patch.multiple(batch_scan, SLICE_ROWS=4096, TILE_BYTES=1 << 20):
        scanner = GpuScanner()
        device = scanner.resident("part", codec, codec.encode(x))
        found = {}
        for kernel in ("mma", "gemm"):
            scanner.batch_kernel = kernel
            found[kernel] = [scanner.scan(codec, device, q, "ip", 10, None, batch=True)
                             for _ in range(2)]
        fused = {key[-1]: plan.scan.fused for key, plan in scanner._batch_plans.items()}
    assert fused == {"mma": scanner.context.hopper, "gemm": False}
    for mma, gemm in zip(found["mma"], found["gemm"], strict=True):
        np.testing.assert_array_equal(mma[0], gemm[0])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("tile_bytes", [None, 3 << 20], ids=["one-tile", "mma-tiles"])
def test_tensor_core_batches_keep_recall_on_real_data(wordnet, tile_bytes):
    """Reduced-precision candidates re-scored in float32: recall@10 of the batch path
    against the CPU's result is at least 0.999 on real embeddings, in one tile (the fp16
    GEMM pipeline) and in 8,192-row tiles (the fused int8 kernel past the first)."""
    from unittest import mock

    x, q = wordnet["base"], wordnet["queries"][:400]
    with vecstore.open() as db, mock.patch.multiple(
            batch_scan, TILE_BYTES=tile_bytes or batch_scan.TILE_BYTES):
        c = db.create_collection("c", dim=x.shape[1], metric="ip", codec="tq4")
        c.add(x)
        cpu = c.search(q, 10, device="cpu")
        found = c.search(q, 10, device="gpu")
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found.ids, cpu.ids, strict=True))
    assert hits / cpu.ids.size >= 0.999


def test_gpu_requests_fail_clearly_without_a_device(monkeypatch):
    monkeypatch.setattr(gpu, "unavailable_reason", lambda: "no CUDA device here")
    with vecstore.open() as db:
        c = db.create_collection("c", dim=8, codec="tq4")
        c.add(np.ones((3, 8)))
        with pytest.raises(vecstore.GpuUnavailable, match="no CUDA device here"):
            c.search(np.ones(8), 2, device="gpu")
        assert c.search(np.ones(8), 2).ids.shape == (1, 2)
        with pytest.raises(vecstore.InvalidArgument, match="device"):
            c.search(np.ones(8), 2, device="tpu")


def test_codecs_without_a_kernel_fall_back_under_auto(monkeypatch):
    monkeypatch.setattr(gpu, "unavailable_reason", lambda: None)
    assert gpu.supports(vecstore.make_codec("tq3", dim=8))
    assert not gpu.supports(vecstore.make_codec("mib-hamming", dim=8))  # untrained
    assert not gpu.supports(vecstore.make_codec("pq4x8", dim=8))  # untrained
    assert gpu.supports(vecstore.make_codec("tq4-prod", dim=8))
    assert not gpu.supports(vecstore.make_codec("fp8-pca4", dim=8))
    with vecstore.open(device="auto") as db:
        c = db.create_collection("c", dim=8, codec="flat")
        c.add(np.eye(8))
        assert c.search(np.eye(8)[0], 1).ids[0, 0] == 0
        with pytest.raises(vecstore.GpuUnavailable, match="no GPU kernel"):
            c.search(np.eye(8)[0], 1, device="gpu")


def test_device_layout_transposes_packed_words():
    codec = vecstore.make_codec("tq4", dim=16, seed=0)
    x = unit_rows(40, 16, 10)
    codes = codec.encode(x)
    words, scale, sq_norms = layouts.device_layout(codec, codes)
    assert words.shape == (2, 64) and words.dtype == np.uint32
    np.testing.assert_array_equal(words[:, :40].T.copy().view(np.uint8), codes[:, :8])
    np.testing.assert_allclose(scale, np.linalg.norm(x, axis=1), rtol=1e-6)
    np.testing.assert_allclose(sq_norms, scale**2, rtol=1e-6)


def test_prod_layout_holds_the_signs_and_residual_factors():
    codec = vecstore.make_codec("tq3-prod", dim=40, seed=0)
    codes = codec.encode(unit_rows(9, 40, 16))
    signs, residual = layouts.prod_layout(codec, codes)
    assert signs.shape == (2, 32) and signs.dtype == np.uint32
    np.testing.assert_array_equal(signs[:, :9].T.copy().view(np.uint8)[:, :5],
                                  codes[:, codec.index_bytes : codec.norm_offset])
    np.testing.assert_allclose(residual, codec.qjl_scale * codec.residual_norms(codes))


def test_unpack_keys_inverts_the_kernel_packing():
    keys = np.array([[-3.5, 0.0, 2.25, np.inf]], dtype=np.float32)
    bits = keys.view(np.uint32)
    ordered = np.where(bits & 0x80000000, ~bits, bits | 0x80000000).astype(np.uint64)
    packed = (ordered << np.uint64(32)) | np.array([[7, 8, 9, 10]], dtype=np.uint64)
    out_keys, rows = kernels.unpack_keys(packed)
    np.testing.assert_array_equal(out_keys, keys)
    np.testing.assert_array_equal(rows, [[7, 8, 9, -1]])


def test_the_kernel_sources_ship_with_the_package():
    for name, kernel in (("tq_scan.cu", "tq_scan"), ("tq_batch.cu", "tile_topk"),
                         ("hamming_scan.cu", "hamming_scan"), ("merge_topk.cu", "merge_topk"),
                         ("merge_topk.cu", "merge_topk_warps"), ("tq_mma.cu", "tq_mma_scan")):
        source = kernels.kernel_source(name)
        assert "__global__" in source and f" {kernel}(" in source.replace("\n", " ")
        assert "struct BlockTopK" in source and "struct WarpTopK" in source
        assert "#include" not in source


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("rotation", ["dense", "hadamard"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_single_queries_replay_a_plan_with_the_general_kernels_results(rotation, metric):
    """One-query searches of a part run as a captured plan (pinned buffers, rotation on
    the device for dense rotations, on the host for Hadamard ones): they return the
    general path's rows and keys, reuse the plan, keep one per part, and a plan held by
    a pending search sends the next search down the general path. A mask gets a plan
    from its second search as the same object (a segment's live rows); a new mask object
    each time (a filter) keeps the general path."""
    from vecstore.search.gpu.single_query import PendingQuery

    x = unit_rows(6000, 100, 30) * np.random.default_rng(31).uniform(0.5, 2, (6000, 1))
    codec = vecstore.make_codec("tq4", dim=100, seed=1, rotation=rotation)
    codes = codec.encode(x)
    scanner = GpuScanner()

    def search(device, q, mask=None):
        sq_norms = np.einsum("ij,ij->i", q, q) if metric == "l2" else None
        return scanner.submit(codec, device, q, metric, 10, sq_norms, mask)

    def general(device, q, rows):  # a new mask object: never a plan
        return search(device, q, np.ones(rows, dtype=bool)).result()

    def assert_same(found, reference):
        scale = float(np.abs(reference[0]).max())
        np.testing.assert_allclose(found[0], reference[0], rtol=0, atol=1e-5 * scale)
        np.testing.assert_array_equal(found[1], reference[1])

    device = scanner.resident("part", codec, codes)
    for seed in range(3):
        q = unit_rows(1, 100, 40 + seed)
        pending = search(device, q)
        assert isinstance(pending, PendingQuery)
        assert_same(pending.result(), general(device, q, 6000))
    assert len(scanner._plans) == 1

    q, other = unit_rows(1, 100, 50), unit_rows(1, 100, 51)
    held = search(device, q)
    bypass = search(device, other)
    assert isinstance(held, PendingQuery) and not isinstance(bypass, PendingQuery)
    assert_same(bypass.result(), general(device, other, 6000))
    assert_same(held.result(), general(device, q, 6000))

    live = np.random.default_rng(52).random(6000) < 0.6
    first, second = search(device, q, live), search(device, q, live)
    assert not isinstance(first, PendingQuery) and isinstance(second, PendingQuery)
    masked = second.result()
    assert_same(masked, first.result())
    assert live[masked[1][0]].all()
    filtered = search(device, q, live.copy())
    assert not isinstance(filtered, PendingQuery)
    assert_same(filtered.result(), masked)

    for rows in (3000, 4000):
        part = scanner.resident(f"first {rows}", codec, codes[:rows])
        found = search(part, q)
        assert isinstance(found, PendingQuery)
        assert_same(found.result(), general(part, q, rows))
    assert len(scanner._plans) == 3
    scanner.retain(["part"])
    assert len(scanner._plans) == 1


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", ["tq4", "tq2-prod", "pq16x8", "mib-hamming"])
def test_a_collection_of_many_parts_is_one_device_scan(tmp_path, spec):
    """Segments, a memtable, deletes, upserts and a filter: one arena serves every search
    with the CPU's results; a delete uploads no rows, an add or an upsert only its own; a
    second collection draws on the same scanner and budget. New rows go up in pieces of
    16 KiB, so that a part takes several."""
    from unittest import mock

    import pyarrow.compute as pc

    x, q = unit_rows(6000, 64, 60), unit_rows(8, 64, 61)
    # Segments of 1,000 rows by explicit flushes; the memtable (at most 2,000 rows) stays
    # below the automatic flush's size.
    with vecstore.open(tmp_path, segment_bytes=1 << 20, merge_policy=None) as db, \
            mock.patch.object(launches, "PLACE_ROWS_BYTES", 16 << 10):
        c = db.create_collection("c", dim=64, metric="ip", codec=spec)
        for start in range(0, 5000, 1000):
            c.add(x[start : start + 1000],
                  metadata={"even": np.arange(start, start + 1000) % 2 == 0})
            c.flush()
        c.add(x[5000:], metadata={"even": np.arange(5000, 6000) % 2 == 0})
        c.delete(np.arange(0, 6000, 11))
        parts = c._snapshot().parts
        assert len(parts) >= 6

        def check(**options):
            cpu = c.search(q, 11, device="cpu", **options)
            found = c.search(q, 10, device="gpu", **options)
            assert_same_results(cpu, found, 1e-4 * float(np.abs(cpu.distances).max()))
            return found

        check()
        uploaded = c._executor.arena.uploaded_rows
        assert uploaded == 6000
        c.delete(np.arange(1, 6000, 13))
        assert not np.isin(check().ids, np.arange(1, 6000, 13)).any()
        assert c._executor.arena.uploaded_rows == uploaded
        c.add(unit_rows(1000, 64, 62), metadata={"even": np.ones(1000, dtype=bool)})
        check()
        assert c._executor.arena.uploaded_rows == uploaded + 1000
        c.upsert(unit_rows(3, 64, 63), ids=np.array([2, 5002, 6004]),
                 metadata={"even": np.ones(3, dtype=bool)})
        check()
        assert c._executor.arena.uploaded_rows == uploaded + 1003
        found = check(filter=pc.field("even"))
        kept = found.ids[found.ids >= 0]
        assert ((kept % 2 == 0) | (kept >= 6000)).all()

        d = db.create_collection("d", dim=64, metric="ip", codec=spec)
        d.add(x[:500])
        d.search(q, 10, device="gpu")
        scanner = c._executor.gpu_scanner.get()
        assert d._executor.gpu_scanner.get() is scanner
        assert scanner.resident_bytes == c._executor.arena.nbytes + d._executor.arena.nbytes
