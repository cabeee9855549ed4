"""GPU benchmark: vecstore's fused TurboQuant scan against exact flat search by cuBLAS GEMM
plus top-k (PyTorch), in one process, with the device's copy bandwidth measured in the
same run.

Timing needs no realism, so codes and vectors are random (recall on real data is checked
by tests/test_gpu.py): codes are uniformly random packed indices with random norms, flat
vectors are random normals.

    python -m bench gpu [--n 1000000] [--dims 384,1536] [--batches 1,256,4096] [--big 10000000]
"""

from __future__ import annotations

import json
import statistics
import sys

import numpy as np

import vecstore
from bench.gpu_timing import flat_search, median_seconds
from vecstore.search import gpu
from vecstore.search.gpu import batch_scan, kernels
from vecstore.search.gpu.context import BLOCK_THREADS
from vecstore.search.gpu.layouts import DeviceCodes
from vecstore.search.gpu.scanner import BATCH_MIN_QUERIES, GpuScanner


def copy_bandwidth(cp, gib: float = 4.0) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus written."""
    n = int(gib * 2**30) // 4
    src = cp.random.random(n, dtype=cp.float32)
    dst = cp.empty_like(src)
    start, stop = cp.cuda.Event(), cp.cuda.Event()

    def once():
        start.record()
        cp.copyto(dst, src)
        stop.record()
        stop.synchronize()
        return cp.cuda.get_elapsed_time(start, stop) / 1e3

    for _ in range(3):
        once()
    seconds = statistics.median(once() for _ in range(20))
    return 2 * src.nbytes / seconds


def random_device_codes(cp, codec, n: int, seed: int) -> DeviceCodes:
    """Resident codes of n random rows, built on the device."""
    cp.random.seed(seed)
    n_words = -(-codec.index_bytes // 4)
    n_pad = -(-n // 32) * 32
    words = (cp.random.random((n_words, n_pad)) * 4294967296.0).astype(cp.uint32)
    norms = cp.random.uniform(0.5, 2.0, n).astype(cp.float32)
    return DeviceCodes(words, norms, norms * norms, n)


def time_case(torch, scanner, codec, codes, base16, base32, rotated: np.ndarray, k: int,
              repeat: int, batch_kernels: list[str]) -> tuple[dict, float, float]:
    """Median seconds of our scan (per batch kernel when the batch path runs; for batches
    also with the queries already on the device, as the flat searches get them), fp16
    flat and fp32 flat (nan without a float32 base)."""
    import cupy as cp

    q16 = torch.from_numpy(rotated[:, : codec.dim]).to("cuda", torch.float16)
    batched = rotated.shape[0] >= BATCH_MIN_QUERIES
    ours = {}
    for kernel in batch_kernels if batched else [scanner.batch_kernel]:
        scanner.batch_kernel = kernel
        ours[kernel if batched else "fused"] = median_seconds(
            lambda: scanner.scan(codec, codes, rotated, "ip", k, None), repeat)
    if batched:
        scanner.batch_kernel = "auto"
        on_device = cp.asarray(rotated)
        ours["auto, device queries"] = median_seconds(
            lambda: scanner.scan(codec, codes, on_device, "ip", k, None), repeat)
    fp16 = median_seconds(lambda: flat_search(torch, base16, q16, k), repeat)
    fp32 = float("nan")
    if base32 is not None:
        fp32 = median_seconds(lambda: flat_search(torch, base32, q16.float(), k), repeat)
    return ours, fp16, fp32


def run(n: int, dims: list[int], batches: list[int], big: int | None, k: int,
        repeat: int, batch_kernels: list[str]) -> list[dict]:
    import cupy as cp
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    bandwidth = copy_bandwidth(cp)
    device_name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"{device_name}: device copy {bandwidth / 1e12:.2f} TB/s (read + write)", flush=True)
    scanner = GpuScanner()
    rows = [time_encoding(cp, n, dims[0], repeat)]
    for dim in dims:
        codec = vecstore.make_codec("tq4", dim=dim, seed=0)
        sizes = [(n, batches)] + ([(big, [1, 256])] if big and dim == dims[0] else [])
        for count, batch_sizes in sizes:
            codes = random_device_codes(cp, codec, count, seed=dim)
            code_bytes = codes.words.nbytes + codes.scale.nbytes
            base16 = torch.randn(count, dim, device="cuda", dtype=torch.float16)
            base32 = base16.float() if count * dim * 4 < 16 * 2**30 else None
            rng = np.random.default_rng(dim)
            for nq in batch_sizes:
                rotated = rng.standard_normal((nq, codec.rot_dim)).astype(np.float32)
                timed, fp16, fp32 = time_case(torch, scanner, codec, codes, base16, base32,
                                              rotated, k, repeat, batch_kernels)
                floor = code_bytes / bandwidth
                for kernel, ours in timed.items():
                    rows.append({
                        "kind": "gpu-search", "device": device_name, "codec": "tq4",
                        "kernel": kernel, "n": count, "dim": dim, "nq": nq, "k": k,
                        "ours_s": ours, "fp16_flat_s": fp16, "fp32_flat_s": fp32,
                        "ours_qps": nq / ours, "fp16_qps": nq / fp16, "fp32_qps": nq / fp32,
                        "code_bytes": code_bytes, "copy_bandwidth_Bps": bandwidth,
                        "byte_floor_s": floor, "ours_over_floor": ours / floor,
                        "speedup_vs_fp16": fp16 / ours,
                    })
                    print(f"n={count:>10,} d={dim:>4} nq={nq:>4}: tq4 ({kernel}) "
                          f"{ours * 1e3:8.3f} ms ({nq / ours:12,.0f} QPS, "
                          f"{ours / floor:5.2f}x floor {floor * 1e3:.3f} ms) | fp16 flat "
                          f"{fp16 * 1e3:8.3f} ms ({fp16 / ours:5.2f}x ours) | fp32 flat "
                          f"{fp32 * 1e3:8.3f} ms", flush=True)
            scanner.retain(())
            torch.cuda.empty_cache()
            cp.get_default_memory_pool().free_all_blocks()
    return rows


def time_encoding(cp, n: int, dim: int, repeat: int) -> dict:
    """GPU and one-pass CPU-equivalent encoding of n rows at ``dim`` with ``tq4``."""
    from vecstore.codecs.turboquant_gpu import encode_on_gpu

    codec = vecstore.make_codec("tq4", dim=dim, seed=0)
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    on_device = cp.asarray(x)
    from_host = median_seconds(lambda: encode_on_gpu(codec, x), repeat)
    from_device = median_seconds(lambda: encode_on_gpu(codec, on_device), repeat)
    sample = slice(0, 50_000)
    same = bool((encode_on_gpu(codec, x[sample]) == codec.encode(x[sample])).all())
    print(f"encode {n:,} x {dim} tq4 on the GPU: {from_device:.3f} s from device memory, "
          f"{from_host:.3f} s from host memory; equal to the CPU codes on 50,000 rows: {same}",
          flush=True)
    return {"kind": "gpu-encode", "codec": "tq4", "n": n, "dim": dim,
            "from_device_s": from_device, "from_host_s": from_host, "cpu_equal": same}


def stage_times(n: int, dim: int, nq: int) -> dict:
    """GPU time of each stage of the tensor-core path for one tile of rows (random tq4
    codes): dequantize, GEMM, per-slice top-k; ``cupyx.profiler.benchmark``, 20 runs."""
    import cupy as cp
    from cupyx.profiler import benchmark

    codec = vecstore.make_codec("tq4", dim=dim, seed=0)
    codes = random_device_codes(cp, codec, n, seed=1)
    n_words, n_pad = codes.words.shape
    dim_pad = -(-dim // 8) * 8
    slice_rows = batch_scan.SLICE_ROWS
    rows = max(1, batch_scan.TILE_BYTES // (2 * dim_pad * slice_rows)) * slice_rows
    kc, size = 42, 1024
    tile = cp.empty((rows, dim_pad), dtype=cp.float16)
    queries = cp.random.standard_normal((nq, dim_pad)).astype(cp.float16)
    scores = cp.empty((nq, rows), dtype=cp.float16)
    halves = cp.asarray(codec._centroids32.astype(np.float16).view(np.uint16))
    n_slots = -(-n // batch_scan.SLICE_ROWS)
    candidates = cp.empty((nq, n_slots, kc), dtype=cp.uint64)
    bounds = cp.full(nq, kernels.EMPTY_SLOT, dtype=cp.uint64)
    zeros, ones = cp.zeros(n, dtype=cp.float32), cp.ones(nq, dtype=cp.float32)
    dequantize = kernels.kernel("tq_batch.cu", "tq_dequantize<4>")
    tile_topk = kernels.kernel("tq_batch.cu", "tile_topk")
    stages = {
        "dequantize": lambda: dequantize(
            (-(-rows // batch_scan.DEQUANT_ROWS),), (BLOCK_THREADS,),
            (codes.words, np.int32(n_words), np.int32(n_pad), np.int32(0), np.int32(rows),
             np.int32(dim), np.int32(dim_pad), halves, tile),
            shared_mem=n_words * (batch_scan.DEQUANT_ROWS + 1) * 4 + 32),
        "gemm": lambda: kernels.gemm(cp, tile, rows, queries, nq, dim_pad, scores, rows),
        "tile_topk": lambda: tile_topk(
            (-(-rows // batch_scan.SLICE_ROWS), nq), (BLOCK_THREADS,),
            (scores, np.int32(rows), np.int32(rows), np.int32(0), np.int32(0), np.int32(nq),
             np.int32(batch_scan.SLICE_ROWS), np.int32(n_slots), codes.scale, zeros, ones,
             zeros, np.float32(-1), np.int32(kc), np.int32(size), bounds, candidates),
            shared_mem=size * 8 + 8),
    }
    out = {"kind": "gpu-stages", "n": n, "dim": dim, "nq": nq, "tile_rows": rows}
    for name, stage in stages.items():
        result = benchmark(stage, (), n_repeat=20, n_warmup=2)
        out[f"{name}_us"] = float(result.gpu_times.mean() * 1e6)
        print(f"d={dim} nq={nq} tile of {rows:,} rows: {name} {out[f'{name}_us']:.1f} us "
              f"(GPU), {result.cpu_times.mean() * 1e6:.1f} us (host)", flush=True)
    return out


def check() -> int:
    """A small GPU search per kernel path, compared with the CPU; for compute-sanitizer.
    Tiles shrink to 1,024 rows so that 3,000 rows span several (the fused mma kernel runs
    only past the first tile)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    failures = 0
    batch_scan.SLICE_ROWS, batch_scan.TILE_BYTES = 1024, 1024 * 64 * 2
    with vecstore.open(segment_bytes=100_000) as db:
        for spec, metric in (("tq4", "ip"), ("tq3", "l2"), ("tq8", "cosine"), ("tq1", "ip"),
                             ("mib-hamming", "l2"), ("pq16x4", "ip"), ("tq3-prod", "ip")):
            c = db.create_collection(spec, dim=64, metric=metric, codec=spec)
            c.add(x[:2000])
            c.flush()
            c.add(x[2000:])
            # Before any delete: single queries run as captured plans (no row mask).
            cases = [(1, 10, "plan"), (1, 10, "masked"), (5, 100, "masked"), (9, 7, "masked"),
                     (BATCH_MIN_QUERIES + 3, 10, "masked")]
            for nq, k, case in cases:
                if case == "masked" and len(c) == 3000:
                    c.delete(np.arange(0, 3000, 5))
                cpu = c.search(x[:nq], k, device="cpu")
                found = c.search(x[:nq], k, device="gpu")
                agree = float(np.mean(found.ids == cpu.ids))
                error = float(np.abs(found.distances - cpu.distances).max())
                print(f"{spec} {metric} nq={nq} k={k} ({case}): ids agree {agree:.4f}, "
                      f"max |distance error| {error:.2e}")
                failures += agree < 0.99
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dims", default="384,1536")
    parser.add_argument("--batches", default=None,
                        help="batch sizes (default 1,256,4096; 1,16,256,4096 end to end)")
    parser.add_argument("--big", type=int, default=10_000_000,
                        help="also time this many rows at the first dimension (0: skip)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", default=None, help="write JSON lines here")
    parser.add_argument("--batch-kernels", default="mma,gemm",
                        help="tensor-core kernels to time on batches (GpuScanner.batch_kernel)")
    parser.add_argument("--check", action="store_true",
                        help="only run small searches against the CPU (for compute-sanitizer)")
    parser.add_argument("--stages", action="store_true",
                        help="only time the stages of the tensor-core path on one tile")
    parser.add_argument("--end-to-end", action="store_true",
                        help="time Collection.search on an on-disk collection laid out as in "
                             "use (bench/gpu_e2e.py)")
    parser.add_argument("--codec", default="tq4", help="the end-to-end collection's codec")
    parser.add_argument("--layouts", default="64MiB,16 segments",
                        help="end-to-end layouts: 64MiB segments, or 'N segments'")
    args = parser.parse_args(argv)
    reason = gpu.unavailable_reason()
    if reason is not None:
        print(f"bench gpu needs a GPU: {reason}", file=sys.stderr)
        return 2
    if args.check:
        return check()
    if args.end_to_end:
        from bench import gpu_e2e

        args.batches = args.batches or "1,16,256,4096"
        write_rows(gpu_e2e.main(args), args.out)
        return 0
    args.batches = args.batches or "1,256,4096"
    if args.stages:
        for dim in (int(d) for d in args.dims.split(",")):
            for nq in (256, 4096):
                stage_times(args.n, dim, nq)
        return 0
    rows = run(args.n, [int(d) for d in args.dims.split(",")],
               [int(b) for b in args.batches.split(",")], args.big or None, args.k, args.repeat,
               args.batch_kernels.split(","))
    write_rows(rows, args.out)
    return 0


def write_rows(rows: list[dict], out: str | None) -> None:
    """Write ``rows`` as JSON lines to ``out`` (nothing when None)."""
    if out:
        with open(out, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
