"""The codec protocol shared by every vector compressor."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Codec(Protocol):
    """Compresses float vectors into fixed-size byte codes and scores queries against them.

    Attributes
    ----------
    spec : str
        The factory string that builds this codec, e.g. ``"tq4"``.
    dim : int
        Dimension d of the vectors.
    code_size : int
        Bytes stored per vector, every overhead (norms, scales) included.
    data_oblivious : bool
        True when ``train`` is a no-op.
    """

    spec: str
    dim: int
    code_size: int
    data_oblivious: bool

    def train(self, x: np.ndarray) -> None:
        """Fit data-dependent parameters on ``x`` (n, d) float32."""

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Encode ``x`` (n, d) float32 into codes (n, code_size) uint8."""

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruct (n, d) float32 vectors from codes (n, code_size) uint8."""

    def prepare_query(self, q: np.ndarray) -> Any:
        """Precompute the per-query state used by ``score`` from ``q`` (nq, d) float32."""

    def score(self, state: Any, codes: np.ndarray) -> np.ndarray:
        """Estimated inner products (nq, n) float32 between the queries and coded vectors."""

    def norms(self, codes: np.ndarray) -> np.ndarray:
        """The stored norm ||x|| of each coded vector, (n,) float32."""

    def to_config(self) -> dict:
        """A JSON-safe dict from which ``from_config`` rebuilds an identical codec."""


def bits_per_dim(codec: Codec) -> float:
    """Stored bits per vector dimension, overheads included."""
    return codec.code_size * 8 / codec.dim
