"""PCA then minifloats: ``fp8-pca{r}`` and ``fp16-pca{r}``.

``train`` fits a PCA on up to ``max_train`` training rows drawn with the seed: the mean m,
and the top r eigenvectors P (r, d) of the covariance (accumulated in float64 over row
blocks, decomposed by ``numpy.linalg.eigh``; each eigenvector's sign is fixed so that its
largest-magnitude entry is positive). ``explained_variance_ratio`` is the share of the
sample's total variance that the r kept directions carry.

A vector is stored as its projected coordinates z = P (x - m), r values in the ``fp8`` layout
(E4M3 bytes with one float32 scale per vector) or the ``fp16`` layout of ``fp8.py``. It decodes
to x_hat = m + P^T z, and a query scores as <q, x_hat> = <q, m> + <P q, z>, so the query is
projected once and each block of codes is decoded and multiplied in r dimensions.

Code layout, per vector: fp8-pca{r}: [r E4M3 bytes][scale f32], r + 4 bytes;
fp16-pca{r}: [r float16], 2 r bytes. No norm is stored: ``norms`` returns ||x_hat||.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from vecstore.codecs.base import (
    BLOCK_ENTRIES,
    floats_from_text,
    floats_to_text,
    input_matrix,
    require_trained,
    training_matrix,
)
from vecstore.codecs.fp8 import (
    E4M3_LEVELS,
    Minifloat,
    check_format,
    decode_minifloats,
    e4m3_scan_format,
    e4m3_table_scores,
    encode_minifloats,
    minifloat_scales,
    minifloat_size,
)
from vecstore.codecs.kmeans import sample_rows
from vecstore.codecs.tables import ScanFormat, byte_tables, use_lookup_tables
from vecstore.errors import InvalidArgument

DEFAULT_MAX_TRAIN = 65536
SAMPLE_STREAM = 0


@dataclass(frozen=True)
class ProjectedQueries:
    """Query state: <q, m> (nq,) float32 and the projected queries P q (nq, r) float32."""

    offsets: np.ndarray
    projected: np.ndarray


class PCACodec:
    """Top-r principal components of the training sample, stored as fp8 or fp16.

    Parameters
    ----------
    dim : int
        Vector dimension d.
    rank : int
        Kept components r, 1 <= r <= d.
    fmt : {"fp8", "fp16"}
        Storage of the projected coordinates.
    seed : int
        Fixes the training sample.
    max_train : int
        Training rows used at most; larger inputs are subsampled with the seed.
    mean : (d,) float32, components : (r, d) float32, or None
        A fitted PCA; None leaves the codec untrained.
    explained_variance_ratio : float or None
        Variance share kept by the fitted components.
    """

    data_oblivious = False

    def __init__(self, dim: int, rank: int, fmt: Minifloat = "fp8", seed: int = 0, *,
                 max_train: int = DEFAULT_MAX_TRAIN, mean: np.ndarray | None = None,
                 components: np.ndarray | None = None,
                 explained_variance_ratio: float | None = None):
        check_format(fmt)
        if not 1 <= rank <= dim:
            raise InvalidArgument(f"{fmt}-pca{rank} needs 1 <= r <= d, got r={rank}, d={dim}")
        if max_train < 2:
            raise InvalidArgument(f"max_train must be at least 2, got {max_train}")
        self.dim = int(dim)
        self.rank = int(rank)
        self.fmt = fmt
        self.seed = int(seed)
        self.max_train = int(max_train)
        self.spec = f"{fmt}-pca{self.rank}"
        self.code_size = minifloat_size(self.rank, fmt)
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None
        self.explained_variance_ratio = explained_variance_ratio
        if mean is not None or components is not None:
            self._set_pca(mean, components)

    @property
    def is_trained(self) -> bool:
        return self.components is not None

    def _set_pca(self, mean: np.ndarray | None, components: np.ndarray | None) -> None:
        if np.shape(mean) != (self.dim,) or np.shape(components) != (self.rank, self.dim):
            raise InvalidArgument(
                f"{self.spec} needs a mean of shape ({self.dim},) and components of shape "
                f"({self.rank}, {self.dim}), got {np.shape(mean)} and {np.shape(components)}"
            )
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        self._components_t = np.ascontiguousarray(self.components.T)
        self._projected_mean = self.components.astype(np.float64) @ self.mean
        self._mean_sq_norm = float(self.mean.astype(np.float64) @ self.mean)

    # --- training ------------------------------------------------------------------------

    def train(self, x: np.ndarray) -> None:
        """Fit the mean and top-r components on ``x`` (n, d) float32, n >= 2."""
        x = training_matrix(x, self.dim, 2, self.spec)
        sample = x[sample_rows(x.shape[0], self.max_train, self.seed, SAMPLE_STREAM)]
        mean = sample.mean(axis=0, dtype=np.float64)
        covariance = np.zeros((self.dim, self.dim), dtype=np.float64)
        step = max(1, BLOCK_ENTRIES // self.dim)
        for start in range(0, sample.shape[0], step):
            centred = sample[start : start + step] - mean
            covariance += centred.T @ centred
        covariance /= sample.shape[0]
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1][: self.rank]
        components = eigenvectors[:, order].T
        largest = np.argmax(np.abs(components), axis=1)
        components *= np.sign(components[np.arange(self.rank), largest])[:, None]
        total = float(np.clip(eigenvalues, 0, None).sum())
        kept = float(np.clip(eigenvalues[order], 0, None).sum())
        self.explained_variance_ratio = kept / total if total > 0 else 1.0
        self._set_pca(mean, components)

    # --- coding --------------------------------------------------------------------------

    def project(self, x: np.ndarray) -> np.ndarray:
        """Principal coordinates P (x - m): (n, d) float32 -> (n, r) float32."""
        require_trained(self)
        x = input_matrix(x, self.dim, self.spec)
        return (x - self.mean) @ self._components_t

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> (n, code_size) uint8: projected coordinates as minifloats."""
        require_trained(self)
        x = input_matrix(x, self.dim, self.spec)
        codes = np.empty((x.shape[0], self.code_size), dtype=np.uint8)
        step = max(1, BLOCK_ENTRIES // self.dim)
        for start in range(0, x.shape[0], step):
            codes[start : start + step] = encode_minifloats(
                self.project(x[start : start + step]), self.fmt
            )
        return codes

    def coordinates(self, codes: np.ndarray) -> np.ndarray:
        """The stored principal coordinates z_hat, (n, r) float32."""
        return decode_minifloats(codes, self.rank, self.fmt)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, code_size) uint8 -> x_hat = m + P^T z_hat, (n, d) float32."""
        require_trained(self)
        out = np.empty((codes.shape[0], self.dim), dtype=np.float32)
        step = max(1, BLOCK_ENTRIES // self.dim)
        for start in range(0, codes.shape[0], step):
            block = self.coordinates(codes[start : start + step])
            out[start : start + step] = block @ self.components + self.mean
        return out

    def norms(self, codes: np.ndarray) -> np.ndarray:
        """||x_hat||, (n,) float32, as sqrt(||m||^2 + 2 <P m, z_hat> + ||z_hat||^2), which
        holds because P has orthonormal rows."""
        require_trained(self)
        out = np.empty(codes.shape[0], dtype=np.float32)
        step = max(1, BLOCK_ENTRIES // self.rank)
        for start in range(0, codes.shape[0], step):
            z = self.coordinates(codes[start : start + step]).astype(np.float64)
            sq = self._mean_sq_norm + 2 * (z @ self._projected_mean)
            sq += np.einsum("ij,ij->i", z, z)
            out[start : start + step] = np.sqrt(np.maximum(sq, 0))
        return out

    # --- scoring -------------------------------------------------------------------------

    def prepare_query(self, q: np.ndarray) -> ProjectedQueries:
        """Project queries (nq, d) float32 once."""
        require_trained(self)
        q = input_matrix(q, self.dim, self.spec)
        return ProjectedQueries(q @ self.mean, q @ self._components_t)

    def score(self, state: ProjectedQueries, codes: np.ndarray) -> np.ndarray:
        """<q, x_hat> = <q, m> + <P q, z_hat>, (nq, n) float32; <P q, z_hat> by byte tables
        for one or two fp8 queries (as the compiled scan sums them)."""
        require_trained(self)
        out = np.empty((state.projected.shape[0], codes.shape[0]), dtype=np.float32)
        step = max(1, BLOCK_ENTRIES // self.rank)
        tables = self.fmt == "fp8" and use_lookup_tables(state.projected.shape[0])
        for start in range(0, codes.shape[0], step):
            block = codes[start : start + step]
            out[:, start : start + step] = (
                e4m3_table_scores(state.projected, block, self.rank) if tables
                else state.projected @ self.coordinates(block).T)
        out += state.offsets[:, None]
        return out

    @functools.cached_property
    def scan_format(self) -> ScanFormat | None:
        """fp8 coordinates as a table scan reads them (``e4m3_scan_format``); None for
        fp16."""
        return e4m3_scan_format(self.rank) if self.fmt == "fp8" else None

    def score_tables(self, state: ProjectedQueries) -> np.ndarray:
        """Byte tables (nq, r, 256) float32: (P q)_j times the value of each E4M3 byte."""
        return byte_tables(state.projected, E4M3_LEVELS, 8, self.rank)

    @property
    def score_levels(self) -> np.ndarray:
        """The value of every E4M3 byte (256,) float32, shared by all coordinates."""
        return E4M3_LEVELS

    def score_scales(self, codes: np.ndarray) -> np.ndarray:
        """What a code's table sum is multiplied by, (n,) float32: its stored scale."""
        return minifloat_scales(codes, self.rank)

    def score_offsets(self, state: ProjectedQueries) -> np.ndarray:
        """What every score of a query adds, (nq,) float32: <q, m>."""
        return state.offsets

    # --- config --------------------------------------------------------------------------

    def to_config(self) -> dict:
        trained = self.is_trained
        return {
            "codec": "pca",
            "spec": self.spec,
            "dim": self.dim,
            "rank": self.rank,
            "format": self.fmt,
            "seed": self.seed,
            "max_train": self.max_train,
            "explained_variance_ratio": self.explained_variance_ratio,
            "mean": floats_to_text(self.mean) if trained else None,
            "components": floats_to_text(self.components) if trained else None,
        }

    @classmethod
    def from_config(cls, config: dict) -> PCACodec:
        codec = cls(config["dim"], config["rank"], config["format"], config["seed"],
                    max_train=config["max_train"],
                    explained_variance_ratio=config["explained_variance_ratio"])
        if config["components"] is not None:
            codec._set_pca(
                floats_from_text(config["mean"], (codec.dim,)),
                floats_from_text(config["components"], (codec.rank, codec.dim)),
            )
        return codec
