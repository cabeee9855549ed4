"""The codec protocol shared by every vector compressor."""

from __future__ import annotations

import base64
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vecstore.errors import InvalidArgument

# Values in a codec's per-block working arrays (decoded rows and the like): 16 MiB of float32.
BLOCK_ENTRIES = 1 << 22


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
    is_trained : bool
        True once the codec can encode and score: always for data-oblivious codecs, after
        ``train`` for the others (their ``encode`` and ``score`` raise InvalidArgument before).
    """

    spec: str
    dim: int
    code_size: int
    data_oblivious: bool
    is_trained: bool

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


def training_matrix(x: Any, dim: int, min_rows: int, spec: str) -> np.ndarray:
    """``x`` as a C-contiguous (n, dim) float32 array fit to train the codec ``spec``.

    Raises InvalidArgument unless ``x`` is a real 2-D array of ``dim`` columns with at least
    ``min_rows`` rows and only finite values.
    """
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise InvalidArgument(f"{spec} training data must be real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InvalidArgument(
            f"{spec} training data must have shape (n, {dim}), got {arr.shape}"
        )
    if arr.shape[0] < min_rows:
        raise InvalidArgument(
            f"{spec} needs at least {min_rows} training rows, got {arr.shape[0]}"
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InvalidArgument(f"{spec} training data contain NaN or Inf")
    return out


def input_matrix(x: Any, dim: int, spec: str) -> np.ndarray:
    """``x`` as a C-contiguous (n, dim) float32 array, n >= 0, for ``encode`` or a query.

    Raises InvalidArgument for any other shape.
    """
    out = np.ascontiguousarray(x, dtype=np.float32)
    if out.ndim != 2 or out.shape[1] != dim:
        raise InvalidArgument(f"{spec} expects vectors of shape (n, {dim}), got {out.shape}")
    return out


def require_trained(codec: Codec) -> None:
    """Raise InvalidArgument unless ``codec`` has been trained."""
    if not codec.is_trained:
        raise InvalidArgument(
            f"codec {codec.spec} must be trained before use: call train(x) on sample vectors"
        )


def floats_to_text(array: np.ndarray) -> str:
    """Base64 text of ``array``'s values as little-endian float32, for JSON configs."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def floats_from_text(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``floats_to_text``: a new float32 array of ``shape``."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
    except (ValueError, AttributeError) as exc:
        raise InvalidArgument(f"codec config holds no float32 array of shape {shape}") from exc


def blockwise_row_norms(rows_of, codes: np.ndarray, width: int) -> np.ndarray:
    """Euclidean norm of each row that ``rows_of`` makes from codes, (n,) float32.

    ``rows_of`` maps a block of codes (m, code_size) uint8 to rows (m, width) float32; it
    runs on blocks of about BLOCK_ENTRIES values so memory stays bounded.
    """
    out = np.empty(codes.shape[0], dtype=np.float32)
    step = max(1, BLOCK_ENTRIES // width)
    for start in range(0, codes.shape[0], step):
        rows = rows_of(codes[start : start + step])
        out[start : start + step] = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))
    return out
