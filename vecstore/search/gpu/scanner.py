"""The GPU scanner: parts' codes resident in device memory within a byte budget, and
their searches, dispatched to the single-query plans, the batch plans and the general
launches."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from vecstore.errors import InvalidArgument, OutOfDeviceMemory
from vecstore.search.gpu import launches
from vecstore.search.gpu.batch_plan import BatchPlan
from vecstore.search.gpu.batch_scan import BatchScan, StridedSamples
from vecstore.search.gpu.context import DeviceContext
from vecstore.search.gpu.kernels import MAX_K, unpack_keys
from vecstore.search.gpu.layouts import DeviceCodes, family, host_layout, metric_terms
from vecstore.search.gpu.single_query import SingleQueryPlan

DEFAULT_BUDGET_FRACTION = 0.8
# TurboQuant batches of at least this many queries run on the tensor cores (at 1M rows,
# d = 384, on an H200: 0.41 ms for 8 queries against 0.63 ms on the CUDA cores, 0.39
# against 1.07 for 16).
BATCH_MIN_QUERIES = 8
# Single-query plans kept (one per part, codec, metric and k; single_query.py).
MAX_PLANS = 64
# Batch plans kept (one per part, codec, metric, k and batch size; batch_plan.py). Each
# holds its search's buffers (tens to hundreds of MB), so few are kept: enough for the
# batch sizes a server's concurrent single queries make (8 to 32 queries: 5 sizes).
MAX_BATCH_PLANS = 6
# Batches up to this many queries are padded to a plan size (``plan_batch_size``).
MAX_PADDED_BATCH = 4096


def plan_batch_size(nq: int) -> int:
    """The batch size whose plan serves ``nq`` queries: the least 8 * 2^i or 12 * 2^i at
    least ``nq`` (so at most a third of a plan's queries are padding), or ``nq`` past
    MAX_PADDED_BATCH. Batches of every size then share a few plans, where a plan per size
    would be rebuilt, and its graph recorded again, whenever the size changes."""
    if nq > MAX_PADDED_BATCH:
        return nq
    size = 8
    while size < nq:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


class GpuScanner:
    """Keeps parts' codes resident on the GPU within a byte budget and scans them.

    ``budget_bytes`` caps the device memory held by resident codes (default: 80% of the
    GPU's memory when first used); uploading past it raises OutOfDeviceMemory.
    ``uploaded_rows`` counts the rows copied to the device so far.
    """

    def __init__(self, budget_bytes: int | None = None):
        self.context = DeviceContext()
        self.cupy = self.context.cupy
        if budget_bytes is None:
            _, total = self.cupy.cuda.runtime.memGetInfo()
            budget_bytes = int(total * DEFAULT_BUDGET_FRACTION)
        self.budget_bytes = budget_bytes
        self._resident: dict[object, DeviceCodes] = {}
        # Other holders of device codes on this scanner's budget (a collection's arena,
        # arena.py): each has ``nbytes`` and ``device``, its current DeviceCodes.
        self._holders = weakref.WeakSet()
        self._plans: dict[tuple, object] = {}
        self._batch_plans: dict[tuple, object] = {}
        self._samples = StridedSamples(self.context)
        self._masked: dict[tuple, tuple] = {}
        # "mma" or "auto": 4-bit batches use the fused tensor-core kernel where it runs
        # (Hopper; faster at every batch size measured, bench/GPU_NOTES.md); "gemm": the
        # GEMM pipeline.
        self.batch_kernel = "auto"
        self.uploaded_rows = 0
        self._lock = threading.Lock()

    @property
    def resident_bytes(self) -> int:
        """Device bytes held by resident codes and by every holder on this scanner."""
        held = sum(codes.nbytes for codes in self._resident.values())
        return held + sum(holder.nbytes for holder in list(self._holders))

    def hold(self, holder) -> None:
        """Count ``holder``'s device bytes (``holder.nbytes``) against the budget while it
        lives, and keep the plans of its current codes (``holder.device``)."""
        with self._lock:
            self._holders.add(holder)

    def forget(self, holder) -> None:
        """Stop counting ``holder`` and drop the plans built on its codes."""
        with self._lock:
            self._holders.discard(holder)
        self.prune()

    def check_budget(self, needed: int, rows: int) -> None:
        """OutOfDeviceMemory unless ``needed`` more bytes (for ``rows`` rows) fit."""
        if self.resident_bytes + needed > self.budget_bytes:
            raise OutOfDeviceMemory(
                f"{rows:,} more codes need {needed / 2**20:,.1f} MiB of GPU "
                f"memory; {self.resident_bytes / 2**20:,.1f} of the "
                f"{self.budget_bytes / 2**20:,.1f} MiB budget are in use"
            )

    def resident(self, key, codec, codes: np.ndarray) -> DeviceCodes:
        """The device copy of ``codes`` stored under ``key``, uploaded on first use."""
        with self._lock:
            found = self._resident.get(key)
            if found is not None:
                return found
            arrays = host_layout(codec, codes)
            self.check_budget(sum(a.nbytes for a in arrays if a is not None)
                               + arrays[1].nbytes, codes.shape[0])
            words, scale, sq_norms, signs, residual = (
                None if a is None else self.cupy.asarray(a) for a in arrays)
            device = DeviceCodes(words, scale, sq_norms, codes.shape[0], signs=signs,
                                 residual=residual)
            self._resident[key] = device
            self.uploaded_rows += codes.shape[0]
            return device

    def retain(self, keys) -> None:
        """Free resident codes whose key is not in ``keys``, and the plans of codes no
        longer held."""
        keep = set(keys)
        with self._lock:
            for key in [k for k in self._resident if k not in keep]:
                del self._resident[key]
        self.prune()

    def prune(self) -> None:
        """Drop the plans, samples and masks of device codes that neither the resident
        codes nor a holder holds now (a holder's codes are replaced as it grows; a plan of
        old codes would keep their buffers)."""
        with self._lock:
            live = {id(codes) for codes in self._resident.values()}
            live |= {id(holder.device) for holder in list(self._holders)}
            self._plans = {key: plan for key, plan in self._plans.items()
                           if id(plan.device) in live}
            self._batch_plans = {key: plan for key, plan in self._batch_plans.items()
                                 if id(plan.device) in live}
            self._masked = {key: held for key, held in self._masked.items()
                            if id(held[0]) in live}

    def place_rows(self, layout: list, start: int, device: DeviceCodes, base_sq_norms) -> None:
        """Write new live rows of ``layout`` (a host layout cut to its m rows) at row
        ``start`` of ``device`` (``launches.place_rows``)."""
        launches.place_rows(self.context, layout, start, device, base_sq_norms)

    def set_row_biases(self, changes: np.ndarray, base_sq_norms, device: DeviceCodes) -> None:
        """Write the row biases of ``device`` for the rows named by ``changes`` (c,) int64:
        a live row as itself, a deleted one as ~row (``launches.set_row_biases``)."""
        launches.set_row_biases(self.context, changes, base_sq_norms, device)

    def scan(self, codec, device: DeviceCodes, queries: np.ndarray, metric: str, k: int,
             query_sq_norms: np.ndarray | None, mask: np.ndarray | None = None,
             batch: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Keys (nq, k) float32 (smaller is better, +inf when empty) and rows (nq, k) int64
        (-1 when empty) of the best k rows of one part for queries (nq, d) float32: a
        numpy array, or a CuPy array already on the device (the TurboQuant batch path then
        skips the upload).

        ``mask`` (n,) bool marks the rows that may be returned (None: all). ``batch``
        picks the tensor-core path for TurboQuant codes (default: from
        ``BATCH_MIN_QUERIES`` queries on).
        """
        return self.submit(codec, device, queries, metric, k, query_sq_norms, mask,
                           batch).result()

    def submit(self, codec, device: DeviceCodes, queries: np.ndarray, metric: str, k: int,
               query_sq_norms: np.ndarray | None, mask: np.ndarray | None = None,
               batch: bool | None = None) -> PendingScan:
        """Launch ``scan``'s kernels and return without waiting for them, so the scans of
        several parts overlap with the host work of launching the next."""
        cp = self.cupy
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"the GPU kernels keep at most {MAX_K} results per query")
        k = min(k, device.n)
        nq = queries.shape[0]
        kind = family(codec)
        batched = kind == "tq" and (nq >= BATCH_MIN_QUERIES if batch is None else batch)
        if isinstance(queries, cp.ndarray) and not batched:
            queries = cp.asnumpy(queries)
        key_scale, row_bias, repeated = self._row_terms(metric, device, mask)
        if nq == 1 and kind == "tq" and not batch and repeated:
            pending = self._plan(codec, device, metric, k, mask, row_bias).submit(
                queries[0], None if query_sq_norms is None else float(query_sq_norms[0]))
            if pending is not None:
                return pending
        if batched and repeated:
            size = plan_batch_size(nq)
            best = self._batch_plan(codec, device, metric, k, size, mask, row_bias).submit(
                *_padded(cp, queries, query_sq_norms, size))
            if best is not None:
                return PendingScan(self.cupy, best[:nq])
        if metric == "l2":
            query_bias = cp.asarray(query_sq_norms, dtype=cp.float32)
        else:
            query_bias = self.context.zeros(nq)
        if batched:
            best = self._scan_batch(codec, device, queries, k, key_scale, row_bias, query_bias)
        else:
            scan = launches.scan_hamming if kind == "hamming" else launches.scan_fused
            candidates = scan(self.context, codec, device, queries, k, key_scale, row_bias,
                              query_bias)
            best = launches.merge(self.context, candidates, k)
        return PendingScan(self.cupy, best)

    def _row_terms(self, metric: str, device: DeviceCodes, mask: np.ndarray | None):
        """``metric_terms`` with the rows outside ``mask`` given a bias of +inf, and
        whether that bias was already on the device: the bias of the last mask seen per
        part and metric is kept, so a mask that stays the same object between searches
        (a segment's live rows; live masks are replaced, never modified) goes up once."""
        key_scale, row_bias = metric_terms(metric, device)
        if mask is None:
            return key_scale, row_bias, True
        key = (id(device), metric)
        with self._lock:
            held = self._masked.get(key)
        if held is not None and held[0] is device and held[1] is mask:
            return key_scale, held[2], True
        # The mask goes up as bytes (n, not 4n) and becomes the +inf bias on the device.
        cp = self.cupy
        masked = cp.where(cp.asarray(mask), row_bias[: device.n], cp.float32(np.inf))
        with self._lock:
            self._masked[key] = (device, mask, masked)
        return key_scale, masked, False

    def _plan(self, codec, device: DeviceCodes, metric: str, k: int,
              mask: np.ndarray | None, row_bias):
        """The ``SingleQueryPlan`` of (device, codec, metric, k) and ``mask`` (whose row
        bias is ``row_bias``), built on first use."""
        key = (id(device), id(codec), metric, k)
        with self._lock:
            plan = self._plans.get(key)
            if plan is None or not plan.serves(device, mask) or plan.codec is not codec:
                while len(self._plans) >= MAX_PLANS:
                    del self._plans[next(iter(self._plans))]
                plan = self._plans[key] = SingleQueryPlan(self.context, codec, device, metric, k,
                                                          mask, row_bias)
        return plan

    def _batch_plan(self, codec, device: DeviceCodes, metric: str, k: int, nq: int,
                    mask: np.ndarray | None, row_bias):
        """The ``BatchPlan`` of (device, codec, metric, k, plan size nq, ``batch_kernel``) and
        ``mask`` (whose row bias is ``row_bias``), built on first use; the oldest goes
        past MAX_BATCH_PLANS."""
        key = (id(device), id(codec), metric, k, nq, self.batch_kernel)
        with self._lock:
            plan = self._batch_plans.pop(key, None)
            if plan is None or not plan.serves(codec, device, mask, row_bias):
                while len(self._batch_plans) >= MAX_BATCH_PLANS:
                    del self._batch_plans[next(iter(self._batch_plans))]
                plan = BatchPlan(self.context, self._samples, codec, device, metric, k, nq, mask,
                                 row_bias, self._fused_batches)
            self._batch_plans[key] = plan
        return plan

    @property
    def _fused_batches(self) -> bool:
        """Whether batches may take the fused tensor-core kernel (``batch_kernel``)."""
        return self.batch_kernel in ("auto", "mma")

    def _scan_batch(self, codec, device: DeviceCodes, queries: np.ndarray, k: int,
                    key_scale, row_bias, query_bias):
        """Tensor-core path for TurboQuant codes: the best k packed keys (nq, k) uint64 on
        the device, re-scored in float32 (see ``BatchScan``)."""
        return BatchScan(self.context, self._samples, codec, device, queries, k, key_scale,
                         row_bias, query_bias, self._fused_batches).run()


@dataclass
class PendingScan:
    """A launched scan: ``best`` (nq, k) uint64, each query's packed keys sorted, on the
    device (or already in host memory)."""

    cupy: object
    best: object

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Wait for the kernels; keys (nq, k) float32 and rows (nq, k) int64, as ``scan``."""
        return unpack_keys(self.cupy.asnumpy(self.best))


def _padded(cp, queries, query_sq_norms, size: int):
    """Queries (nq, d) (numpy or CuPy) and their squared norms (nq,) or None, padded to
    ``size`` rows with copies of the last query: a copy is searched like any query (a zero
    query would tie every row and overflow the candidate lists) and its results dropped."""
    extra = size - queries.shape[0]
    if extra == 0:
        return queries, query_sq_norms
    xp = cp.get_array_module(queries)
    queries = xp.concatenate([queries, xp.repeat(queries[-1:], extra, axis=0)])
    if query_sq_norms is not None:
        query_sq_norms = np.concatenate([query_sq_norms, np.repeat(query_sq_norms[-1:], extra)])
    return queries, query_sq_norms
