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
tables, (M, 2**nbits) inner products <q_m, c_mj> per query, summed by M lookups per code;
larger batches decode each block of codes once and take a matrix product.
"""

from __future__ import annotations

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
from vecstore.codecs.kmeans import DEFAULT_NITER, Backend, kmeans, sample_rows
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
        subvectors = q.reshape(-1, self.m, self.dsub).transpose(1, 0, 2)
        tables = (subvectors @ self._centroids_t).transpose(1, 0, 2)
        return PQQueries(q, np.ascontiguousarray(tables))

    def score(self, state: PQQueries, codes: np.ndarray) -> np.ndarray:
        """Asymmetric inner products <q, x_hat>, (nq, n) float32."""
        require_trained(self)
        nq, n = state.queries.shape[0], codes.shape[0]
        out = np.zeros((nq, n), dtype=np.float32)
        if state.tables is None:
            step = self._block_rows(self.dim)
            for start in range(0, n, step):
                decoded = self.decode(codes[start : start + step])
                out[:, start : start + step] = state.queries @ decoded.T
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
