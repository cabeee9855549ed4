"""``flat``: exact float32 vectors, the ground truth every other codec is measured against."""

from __future__ import annotations

import numpy as np


def _as_floats(codes: np.ndarray) -> np.ndarray:
    """A float32 (n, d) view of contiguous codes (n, 4 d) uint8; a copy only if needed."""
    return np.ascontiguousarray(codes).view("<f4")


class FlatCodec:
    """Stores each vector as d little-endian float32 values (code_size = 4 d)."""

    data_oblivious = True
    is_trained = True
    spec = "flat"

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"flat needs dim >= 1, got {dim}")
        self.dim = int(dim)
        self.code_size = 4 * self.dim

    def train(self, x: np.ndarray) -> None:
        """Nothing to learn."""

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> (n, 4 d) uint8, a new array."""
        return np.array(x, dtype="<f4", order="C").view(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, 4 d) uint8 -> (n, d) float32, a new array."""
        return np.array(codes, dtype=np.uint8, order="C").view("<f4").astype(np.float32)

    def prepare_query(self, q: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(q, dtype=np.float32)

    def score(self, state: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Exact <q, x>, (nq, n) float32."""
        return state @ _as_floats(codes).T

    def norms(self, codes: np.ndarray) -> np.ndarray:
        """Exact ||x||, (n,) float32."""
        return np.linalg.norm(_as_floats(codes), axis=1).astype(np.float32)

    def to_config(self) -> dict:
        return {"codec": "flat", "spec": "flat", "dim": self.dim}

    @classmethod
    def from_config(cls, config: dict) -> FlatCodec:
        return cls(config["dim"])
