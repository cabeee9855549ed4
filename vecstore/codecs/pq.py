"""Product quantization, ``pq{M}x{nbits}``: the classic trained baseline (Jégou et al., 2011).

The d coordinates are cut into M consecutive sub-vectors of d/M dimensions. Each sub-space
has its own codebook of 2**nbits centroids, learned by k-means (``kmeans.py``) on up to
``max_train`` training rows drawn with the seed. A vector is stored as the index of the
nearest centroid in every sub-space, bit-packed per ``bitpack``.

Code layout, per vector: [M indices, nbits bits each], ceil(M nbits / 8) bytes and nothing
else. Like ``faiss.IndexPQ`` no norm is stored: ``norms`` returns ||x_hat||, the norm of the
reconstruction, so the l2 key ||q||^2 - 2 <q, x_hat> + ||x_hat||^2 is exactly faiss's
asymmetric distance ||q - x_hat||^2 and both spend the same bytes per vector.

Scoring is asymmetric: a float query against the coded base. A few queries use distance
tables, (M, 2**nbits) inner products <q_m, c_mj> per query, summed by lookups over the
code bytes of ``scan_format`` (pairs of 3- and 4-bit indices a byte, larger ones a byte
each), as the compiled scan sums them; larger batches decode each block of codes once and
take a matrix product.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from vecstore.codecs import bitpack
from vecstore.codecs.base import (
    BLOCK_ENTRIES,
    floats_from_text,
    floats_to_text,
    input_matrix,
    require_trained,
    training_matrix,
)
from vecstore.codecs.device_format import DeviceFormat
from vecstore.codecs.kmeans import DEFAULT_NITER, Backend, kmeans, sample_rows
from vecstore.codecs.tables import (
    ScanFormat,
    bytes_from_nibbles,
    code_bytes,
    padded_tables,
    table_sums,
    table_width,
)
from vecstore.errors import InvalidArgument

DEFAULT_MAX_TRAIN = 65536
# Up to this many queries score through distance tables; more decode and multiply.
TABLE_MAX_QUERIES = 8
SAMPLE_STREAM = 0


@dataclass(frozen=True)
class PQQueries:
    """Query state: the queries (nq, d) float32 and, for small batches, their distance
    tables (nq, M, 2**nbits) float32 of sub-vector inner products <q_m, c_mj>."""

    queries: np.ndarray
    tables: np.ndarray | None


class ProductQuantizer:
    """M sub-quantizers of 2**nbits k-means centroids each; code_size = ceil(M nbits / 8).

    Parameters
    ----------
    dim : int
        Vector dimension d, a multiple of ``m``.
    m : int
        Number of sub-spaces M.
    nbits : int
        Bits per sub-space index, 1..8.
    seed : int
        Fixes the training sample and the k-means seeding.
    max_train : int
        Training rows used at most; larger inputs are subsampled with the seed.
    niter : int
        Lloyd iterations per sub-space.
    kmeans_backend : {"auto", "numpy", "faiss"}
        See ``kmeans.kmeans``. Not part of the config: trained centroids are.
    centroids : (M, 2**nbits, d/M) float32 or None
        Trained codebooks; None leaves the codec untrained.
    """

    data_oblivious = False

    def __init__(self, dim: int, m: int, nbits: int, seed: int = 0, *,
                 max_train: int = DEFAULT_MAX_TRAIN, niter: int = DEFAULT_NITER,
                 kmeans_backend: Backend = "auto", centroids: np.ndarray | None = None):
        if not 1 <= nbits <= 8:
            raise InvalidArgument(f"pq nbits must be in 1..8, got {nbits}")
        if m < 1:
            raise InvalidArgument(f"pq needs at least one sub-space, got M={m}")
        if dim < 1 or dim % m:
            raise InvalidArgument(
                f"pq{m}x{nbits} needs a dimension divisible by M={m}, got d={dim}"
            )
        if max_train < 1 << nbits:
            raise InvalidArgument(f"max_train must be at least {1 << nbits}, got {max_train}")
        self.dim = int(dim)
        self.m = int(m)
        self.nbits = int(nbits)
        self.seed = int(seed)
        self.max_train = int(max_train)
        self.niter = int(niter)
        self.kmeans_backend = kmeans_backend
        self.ksub = 1 << self.nbits
        self.dsub = self.dim // self.m
        self.spec = f"pq{self.m}x{self.nbits}"
        self.code_size = bitpack.packed_size(self.m, self.nbits)
        self.centroids: np.ndarray | None = None
        if centroids is not None:
            self._set_centroids(np.asarray(centroids, dtype=np.float32))

    @property
    def is_trained(self) -> bool:
        return self.centroids is not None

    def _set_centroids(self, centroids: np.ndarray) -> None:
        shape = (self.m, self.ksub, self.dsub)
        if centroids.shape != shape:
            raise InvalidArgument(f"{self.spec} needs centroids of shape {shape}, "
                                  f"got {centroids.shape}")
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._centroids_t = np.ascontiguousarray(self.centroids.transpose(0, 2, 1))
        self._half_sq_norms = 0.5 * np.einsum("mkd,mkd->mk", self.centroids, self.centroids)
        self._sq_norms = 2 * self._half_sq_norms

    # --- training and coding ---------------------------------------------------------------

    def train(self, x: np.ndarray) -> None:
        """Learn the M codebooks from ``x`` (n, d) float32, n >= 2**nbits."""
        x = training_matrix(x, self.dim, self.ksub, self.spec)
        sample = x[sample_rows(x.shape[0], self.max_train, self.seed, SAMPLE_STREAM)]
        centroids = np.empty((self.m, self.ksub, self.dsub), dtype=np.float32)
        for sub in range(self.m):
            columns = np.ascontiguousarray(sample[:, sub * self.dsub : (sub + 1) * self.dsub])
            centroids[sub] = kmeans(columns, self.ksub, niter=self.niter, seed=self.seed,
                                    stream=sub, backend=self.kmeans_backend)
        self._set_centroids(centroids)

    def _block_rows(self, per_row: int) -> int:
        """Rows per block when each row needs ``per_row`` working values."""
        return max(1, BLOCK_ENTRIES // max(1, per_row))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> (n, code_size) uint8: the nearest centroid in each sub-space."""
        require_trained(self)
        x = input_matrix(x, self.dim, self.spec)
        n = x.shape[0]
        indices = np.empty((n, self.m), dtype=np.uint8)
        step = self._block_rows(self.m * self.ksub)
        for start in range(0, n, step):
            block = x[start : start + step]
            subvectors = block.reshape(-1, self.m, self.dsub).transpose(1, 0, 2)
            # (M, rows, K): argmin of ||c||^2/2 - <x_m, c> is the nearest centroid.
            keys = self._half_sq_norms[:, None, :] - subvectors @ self._centroids_t
            indices[start : start + step] = np.argmin(keys, axis=2).T
        return bitpack.pack(indices, self.nbits)

    def _indices(self, codes: np.ndarray) -> np.ndarray:
        """(n, code_size) uint8 -> centroid indices (n, M) int64."""
        return bitpack.unpack(np.asarray(codes, dtype=np.uint8), self.m, self.nbits).astype(
            np.int64
        )

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, code_size) uint8 -> reconstructions (n, d) float32."""
        require_trained(self)
        out = np.empty((codes.shape[0], self.dim), dtype=np.float32)
        step = self._block_rows(self.dim)
        for start in range(0, codes.shape[0], step):
            indices = self._indices(codes[start : start + step])
            out[start : start + step] = self.centroids[np.arange(self.m), indices].reshape(
                -1, self.dim
            )
        return out

    def norms(self, codes: np.ndarray) -> np.ndarray:
        """||x_hat|| of each reconstruction, (n,) float32, from per-centroid squared norms."""
        require_trained(self)
        out = np.empty(codes.shape[0], dtype=np.float32)
        step = self._block_rows(self.m)
        for start in range(0, codes.shape[0], step):
            indices = self._indices(codes[start : start + step])
            sq = self._sq_norms[np.arange(self.m), indices].sum(axis=1, dtype=np.float64)
            out[start : start + step] = np.sqrt(sq)
        return out

    # --- scoring -------------------------------------------------------------------------

    def prepare_query(self, q: np.ndarray) -> PQQueries:
        """Queries (nq, d) float32 -> state; distance tables only for up to
        TABLE_MAX_QUERIES queries."""
        require_trained(self)
        q = input_matrix(q, self.dim, self.spec)
        if q.shape[0] > TABLE_MAX_QUERIES:
            return PQQueries(q, None)
        return PQQueries(q, self._distance_tables(q))

    def _distance_tables(self, q: np.ndarray) -> np.ndarray:
        """<q_m, c_mj> of queries (nq, d) float32: (nq, M, 2**nbits) float32."""
        subvectors = q.reshape(-1, self.m, self.dsub).transpose(1, 0, 2)
        return np.ascontiguousarray((subvectors @ self._centroids_t).transpose(1, 0, 2))

    @property
    def device_format(self) -> DeviceFormat | None:
        """How the GPU kernels read these codes once trained (codecs/device_format.py):
        scored by per-query tables (``query_tables``)."""
        if not self.is_trained:
            return None
        return DeviceFormat("table", self.code_size, self.nbits, self.m)

    def query_tables(self, q: np.ndarray) -> np.ndarray:
        """The device kernel's score tables (nq, M, 2**nbits) float32 for queries (nq, d)
        float32: <q_m, c_mj>."""
        return self._distance_tables(q)

    @functools.cached_property
    def scan_format(self) -> ScanFormat | None:
        """The code bytes a table scan reads: 3- and 4-bit indices a nibble each, 5- to
        8-bit ones a byte each; None for 1 and 2 bits."""
        if self.nbits < 3:
            return None
        width = table_width(self.nbits)
        n_bytes = bitpack.packed_size(self.m, width)
        values = (0, 0, 0, 0) if width == self.nbits else (self.nbits, self.m, n_bytes, 0)
        return ScanFormat(n_bytes, values, n_bytes, width)

    def _tables(self, state: PQQueries, width: int) -> np.ndarray:
        """The distance tables of ``state`` as nibble (width 4) or byte (8) tables over the
        code bytes."""
        tables = state.tables if state.tables is not None else self._distance_tables(
            state.queries)
        n_bytes = self.scan_format.n_bytes
        if width == 4:
            return padded_tables(tables, 2 * n_bytes, 16)
        return padded_tables(tables, n_bytes, 256)

    def score_nibble_tables(self, state: PQQueries) -> np.ndarray | None:
        """Nibble tables (nq, 2 * scan_format.n_bytes, 16) float32 for indices of 3 and 4
        bits, None otherwise."""
        fmt = self.scan_format
        return self._tables(state, 4) if fmt is not None and fmt.table_bits == 4 else None

    def score_tables(self, state: PQQueries) -> np.ndarray:
        """Byte tables (nq, scan_format.n_bytes, 256) float32: a code's score is the sum, in
        byte order, of the tables at its code bytes (what ``score`` computes for up to
        TABLE_MAX_QUERIES queries)."""
        if self.scan_format.table_bits == 4:
            return bytes_from_nibbles(self._tables(state, 4))
        return self._tables(state, 8)

    def score_scales(self, codes: np.ndarray) -> np.ndarray:
        """What a code's table sum is multiplied by, (n,) float32: one."""
        return np.ones(codes.shape[0], dtype=np.float32)

    def score(self, state: PQQueries, codes: np.ndarray) -> np.ndarray:
        """Asymmetric inner products <q, x_hat>, (nq, n) float32."""
        require_trained(self)
        nq, n = state.queries.shape[0], codes.shape[0]
        out = np.zeros((nq, n), dtype=np.float32)
        fmt = self.scan_format
        if state.tables is None:
            step = self._block_rows(self.dim)
            for start in range(0, n, step):
                decoded = self.decode(codes[start : start + step])
                out[:, start : start + step] = state.queries @ decoded.T
            return out
        if fmt is not None:
            tables = self.score_tables(state)
            step = self._block_rows(fmt.n_bytes)
            for start in range(0, n, step):
                out[:, start : start + step] = table_sums(
                    tables, code_bytes(codes[start : start + step], fmt))
            return out
        step = self._block_rows(self.m)
        for start in range(0, n, step):
            indices = self._indices(codes[start : start + step])
            block = out[:, start : start + step]
            for sub in range(self.m):
                block += state.tables[:, sub, :][:, indices[:, sub]]
        return out

    # --- config --------------------------------------------------------------------------

    def to_config(self) -> dict:
        return {
            "codec": "pq",
            "spec": self.spec,
            "dim": self.dim,
            "m": self.m,
            "nbits": self.nbits,
            "seed": self.seed,
            "max_train": self.max_train,
            "niter": self.niter,
            "centroids": None if self.centroids is None else floats_to_text(self.centroids),
        }

    @classmethod
    def from_config(cls, config: dict) -> ProductQuantizer:
        codec = cls(config["dim"], config["m"], config["nbits"], config["seed"],
                    max_train=config["max_train"], niter=config["niter"])
        if config["centroids"] is not None:
            codec._set_centroids(floats_from_text(
                config["centroids"], (codec.m, codec.ksub, codec.dsub)
            ))
        return codec
