"""GPU search as a user calls it: ``Collection.search`` on an on-disk collection laid out as
in use, beside the scanner on one part of the same rows and fp16/fp32 flat search, in one
run.

The layout: segments of ``--segment-mib`` (or ``--segments`` equal segments), the last 5%
of writes in the memtable and 1% of rows deleted. Queries come from numpy, as a user's
do; the flat searches get theirs already on the device (their best case). Vectors are
random unit rows: this times speed only (tests/test_gpu.py checks results on real data).
It also times the first search after a delete, an upsert and a 1,000-row add, each
against the steady state, and the write itself (which brings the arena up to date).

    python -m bench gpu --end-to-end [--n 1000000] [--dims 384,1536] [--batches 1,16,256,4096]
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import vecstore
from bench.gpu_timing import flat_search, median_seconds
from vecstore import rows as columns
from vecstore.search import gpu

MEMTABLE_FRACTION = 0.05
DELETED_FRACTION = 0.01
ADD_BATCH = 100_000
# Times each change is made, each followed by one timed search.
CHANGE_REPEATS = 8


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build(directory: Path, base: np.ndarray, codec: str, segment_bytes: int):
    """The on-disk collection of ``base`` and the ids deleted."""
    n, dim = base.shape
    sealed = int(n * (1 - MEMTABLE_FRACTION))
    db = vecstore.open(directory, durability="batch", merge_policy=None, device="gpu",
                       segment_bytes=segment_bytes)
    collection = db.create_collection("bench", dim=dim, metric="ip", codec=codec)
    for start in range(0, sealed, ADD_BATCH):
        collection.add(base[start : min(start + ADD_BATCH, sealed)],
                       ids=np.arange(start, min(start + ADD_BATCH, sealed)))
    collection.flush()
    collection.add(base[sealed:], ids=np.arange(sealed, n))
    deleted = np.random.default_rng(0).choice(n, int(n * DELETED_FRACTION), replace=False)
    collection.delete(deleted)
    return db, collection


def first_after(collection, change, queries: np.ndarray, k: int) -> tuple[float, float]:
    """Seconds of ``change()`` (which brings the arena to the new snapshot) and of the
    first search after it."""
    start = time.perf_counter()
    change()
    changed = time.perf_counter()
    collection.search(queries, k)
    return changed - start, time.perf_counter() - changed


def time_layout(torch, base: np.ndarray, queries: np.ndarray, flats: tuple,
                batches: list[int], k: int, repeat: int, codec: str,
                layout: str) -> list[dict]:
    """The rows of one layout of ``base``: each batch size's times, then the first search
    after each change."""
    n, dim = base.shape
    base16, base32 = flats
    device_name = torch.cuda.get_device_name()
    code_size = vecstore.make_codec(codec, dim=dim).code_size
    segment_bytes = (64 << 20 if layout == "64MiB"
                     else -(-n * code_size // int(layout.split()[0])) + code_size)
    directory = Path(tempfile.mkdtemp(prefix="vecstore-gpu-e2e-"))
    out = []
    try:
        start = time.perf_counter()
        db, collection = build(directory, base, codec, segment_bytes)
        built = time.perf_counter() - start
        parts = collection._snapshot().parts
        scanner = collection._executor.gpu_scanner.get()
        one = scanner.resident(("one part", dim, layout), collection.codec,
                               np.concatenate([p.columns[columns.CODE] for p in parts]))
        print(f"d={dim} {layout}: {len(parts)} parts, built in {built:.1f} s", flush=True)
        for nq in batches:
            q = queries[:nq]
            q16 = torch.from_numpy(q).to("cuda", torch.float16)
            ours = median_seconds(lambda q=q: collection.search(q, k), repeat)
            part = median_seconds(
                lambda q=q: scanner.scan(collection.codec, one, q, "ip", k, None), repeat)
            fp16 = median_seconds(lambda q16=q16: flat_search(torch, base16, q16, k), repeat)
            fp32 = median_seconds(
                lambda q16=q16: flat_search(torch, base32, q16.float(), k), repeat)
            out.append({"kind": "gpu-end-to-end", "device": device_name, "codec": codec,
                        "n": n, "dim": dim, "layout": layout, "parts": len(parts), "nq": nq,
                        "k": k, "search_s": ours, "one_part_scan_s": part, "fp16_flat_s": fp16,
                        "fp32_flat_s": fp32, "speedup_vs_fp16": fp16 / ours,
                        "over_one_part": ours / part})
            print(f"  nq={nq:>5}: search {ours * 1e3:8.3f} ms | one-part scan "
                  f"{part * 1e3:8.3f} ms ({ours / part:4.2f}x) | fp16 flat {fp16 * 1e3:8.3f} ms "
                  f"({fp16 / ours:5.2f}x ours) | fp32 flat {fp32 * 1e3:8.3f} ms", flush=True)
        q = queries[:1]
        steady = median_seconds(lambda: collection.search(q, k), repeat)
        fresh = unit_rows(np.random.default_rng(1), 1000 * CHANGE_REPEATS, dim)
        changes = {
            "delete": lambda i: collection.delete(np.array([n - 1 - i])),
            "upsert": lambda i: collection.upsert(fresh[i : i + 1], ids=np.array([i])),
            "add 1000": lambda i: collection.add(fresh[1000 * i : 1000 * (i + 1)],
                                                 ids=np.arange(n + 1000 * i,
                                                               n + 1000 * (i + 1))),
        }
        for name, change in changes.items():
            # The first change in a process also loads the kernels it needs; the later
            # ones are what a running service sees.
            timed = [first_after(collection, lambda i=i, change=change: change(i), q, k)
                     for i in range(CHANGE_REPEATS)]
            writes, firsts = zip(*timed, strict=True)
            later, write = statistics.median(firsts[1:]), statistics.median(writes[1:])
            out.append({"kind": "gpu-first-search-after", "device": device_name,
                        "codec": codec, "n": n, "dim": dim, "layout": layout, "change": name,
                        "first_ever_s": firsts[0], "first_s": later, "steady_s": steady,
                        "ratio": later / steady, "change_s": write})
            print(f"  first search after {name}: {later * 1e3:.3f} ms, median of "
                  f"{CHANGE_REPEATS - 1} ({later / steady:.2f}x steady {steady * 1e3:.3f} ms; "
                  f"the process's first: {firsts[0] * 1e3:.3f} ms); the {name} itself "
                  f"{write * 1e3:.3f} ms", flush=True)
        scanner.retain(())
        db.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return out


def run(n: int, dims: list[int], batches: list[int], k: int, repeat: int, codec: str,
        layouts: list[str]) -> list[dict]:
    import torch

    rows = []
    rng = np.random.default_rng(7)
    for dim in dims:
        base = unit_rows(rng, n, dim)
        queries = unit_rows(rng, max(batches), dim)
        base16 = torch.from_numpy(base).to("cuda", torch.float16)
        flats = (base16, base16.float())
        for layout in layouts:
            rows += time_layout(torch, base, queries, flats, batches, k, repeat, codec, layout)
        del base16, flats
        torch.cuda.empty_cache()
    return rows


def main(args) -> list[dict]:
    if gpu.unavailable_reason() is not None:
        raise SystemExit(f"bench gpu needs a GPU: {gpu.unavailable_reason()}")
    return run(args.n, [int(d) for d in args.dims.split(",")],
               [int(b) for b in args.batches.split(",")], args.k, args.repeat, args.codec,
               args.layouts.split(","))
