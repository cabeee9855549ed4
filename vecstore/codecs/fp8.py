"""Minifloat codecs: ``fp16`` (IEEE half per dimension) and ``fp8`` (E4M3 per dimension).

Both are data-oblivious. ``fp8`` uses the E4M3 "fn" format of ``ml_dtypes.float8_e4m3fn``
(4 exponent bits, bias 7, 3 mantissa bits, no infinities, largest finite value 448): each
vector is divided by one float32 scale, max |x_i| / 448, so that its largest coordinate
lands on the top of the E4M3 range, and then rounded to the nearest E4M3 value (ties to
even). ``fp16`` rounds to the nearest half-precision value and saturates at ±65504.

The payload helpers here are shared with the PCA codecs (``pca.py``), which store their
projected coordinates the same way.

Code layout, per vector (little-endian):
    fp16:  [d float16]                 2 d bytes
    fp8:   [d E4M3 bytes][scale f32]   d + 4 bytes
No norm is stored: ``norms`` returns ||x_hat||, the norm of the decoded vector.
"""

from __future__ import annotations

import functools
from typing import Literal

import ml_dtypes
import numpy as np

from vecstore.codecs.base import BLOCK_ENTRIES, blockwise_row_norms, input_matrix
from vecstore.codecs.tables import ScanFormat, byte_tables, table_sums, use_lookup_tables
from vecstore.errors import InvalidArgument

Minifloat = Literal["fp16", "fp8"]
FORMATS = ("fp16", "fp8")
E4M3_MAX = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)
FP16_MAX = float(np.finfo(np.float16).max)
SCALE_BYTES = 4


def minifloat_size(count: int, fmt: Minifloat) -> int:
    """Bytes that ``count`` coordinates take in format ``fmt``, per-vector scale included."""
    return 2 * count if fmt == "fp16" else count + SCALE_BYTES


def e4m3_levels() -> np.ndarray:
    """The value of every E4M3 byte, (256,) float32; the two NaN patterns, which
    ``to_e4m3`` never writes, read as 0."""
    levels = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return np.where(np.isnan(levels), np.float32(0), levels).astype(np.float32)


E4M3_LEVELS = e4m3_levels()


def minifloat_scales(codes: np.ndarray, count: int) -> np.ndarray:
    """The per-vector scales (n,) float32 of fp8 codes of ``count`` coordinates."""
    return np.ascontiguousarray(codes[:, count : count + SCALE_BYTES]).view("<f4")[:, 0].astype(
        np.float32)


def e4m3_scan_format(count: int) -> ScanFormat:
    """fp8 codes of ``count`` coordinates as a table scan reads them: one E4M3 byte a
    coordinate, byte tables of the shared ``E4M3_LEVELS``."""
    return ScanFormat(count, (0, 0, 0, 0), count, 8)


def e4m3_table_scores(queries: np.ndarray, codes: np.ndarray, count: int) -> np.ndarray:
    """<q, x_hat> (nq, n) float32 of queries (nq, count) float32 and fp8 codes by byte
    tables: each code's table sum times its scale, as the compiled scan computes it."""
    tables = byte_tables(queries, E4M3_LEVELS, 8, count)
    return table_sums(tables, codes[:, :count]) * minifloat_scales(codes, count)[None, :]


def to_e4m3(values: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest E4M3 value, saturating at ±448: same-shape uint8
    bit patterns (sign, 4 exponent bits, 3 mantissa bits)."""
    clipped = np.clip(values, -E4M3_MAX, E4M3_MAX)
    return clipped.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


def from_e4m3(patterns: np.ndarray) -> np.ndarray:
    """Inverse of ``to_e4m3``: uint8 bit patterns -> float32 values of the same shape."""
    return np.ascontiguousarray(patterns, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(
        np.float32
    )


def e4m3_scales(x: np.ndarray) -> np.ndarray:
    """Per-row scale max |x_i| / 448, (n,) float32; 0 for an all-zero row."""
    if x.shape[1] == 0:
        return np.zeros(x.shape[0], dtype=np.float32)
    return (np.abs(x).max(axis=1) / np.float32(E4M3_MAX)).astype(np.float32)


def encode_minifloats(x: np.ndarray, fmt: Minifloat) -> np.ndarray:
    """(n, r) float32 -> (n, minifloat_size(r, fmt)) uint8 per the module's code layout."""
    n, count = x.shape
    if fmt == "fp16":
        halves = np.clip(x, -FP16_MAX, FP16_MAX).astype("<f2")
        return np.ascontiguousarray(halves).view(np.uint8).reshape(n, 2 * count)
    scales = e4m3_scales(x)
    safe = np.where(scales > 0, scales, np.float32(1))
    codes = np.empty((n, count + SCALE_BYTES), dtype=np.uint8)
    codes[:, :count] = to_e4m3(x / safe[:, None])
    codes[:, count:] = scales.astype("<f4").reshape(n, 1).view(np.uint8)
    return codes


def decode_minifloats(codes: np.ndarray, count: int, fmt: Minifloat) -> np.ndarray:
    """Inverse of ``encode_minifloats``: (n, minifloat_size(count, fmt)) uint8 -> (n, count)
    float32."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if fmt == "fp16":
        return codes.view("<f2").astype(np.float32)
    return from_e4m3(codes[:, :count]) * minifloat_scales(codes, count)[:, None]


def check_format(fmt: str) -> None:
    """Raise InvalidArgument unless ``fmt`` is a known minifloat format."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown minifloat format {fmt!r}; expected one of {FORMATS}")


class MinifloatCodec:
    """Every coordinate as a float16 (``fp16``) or a scaled E4M3 byte (``fp8``)."""

    data_oblivious = True
    is_trained = True

    def __init__(self, dim: int, fmt: Minifloat = "fp8"):
        check_format(fmt)
        if dim < 1:
            raise InvalidArgument(f"{fmt} needs dim >= 1, got {dim}")
        self.dim = int(dim)
        self.fmt = fmt
        self.spec = fmt
        self.code_size = minifloat_size(self.dim, fmt)

    def train(self, x: np.ndarray) -> None:
        """Nothing to learn."""

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> (n, code_size) uint8, a new array."""
        x = input_matrix(x, self.dim, self.spec)
        codes = np.empty((x.shape[0], self.code_size), dtype=np.uint8)
        step = max(1, BLOCK_ENTRIES // self.dim)
        for start in range(0, x.shape[0], step):
            codes[start : start + step] = encode_minifloats(x[start : start + step], self.fmt)
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, code_size) uint8 -> (n, d) float32."""
        return decode_minifloats(codes, self.dim, self.fmt)

    def prepare_query(self, q: np.ndarray) -> np.ndarray:
        return input_matrix(q, self.dim, self.spec)

    def score(self, state: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """<q, x_hat>, (nq, n) float32: for one or two fp8 queries by byte tables (as the
        compiled scan sums them), else blocks of codes are decoded and multiplied."""
        out = np.empty((state.shape[0], codes.shape[0]), dtype=np.float32)
        step = max(1, BLOCK_ENTRIES // self.dim)
        tables = self.fmt == "fp8" and use_lookup_tables(state.shape[0])
        for start in range(0, codes.shape[0], step):
            block = codes[start : start + step]
            out[:, start : start + step] = (e4m3_table_scores(state, block, self.dim) if tables
                                            else state @ self.decode(block).T)
        return out

    @functools.cached_property
    def scan_format(self) -> ScanFormat | None:
        """fp8 codes as a table scan reads them (``e4m3_scan_format``); None for fp16."""
        return e4m3_scan_format(self.dim) if self.fmt == "fp8" else None

    def score_tables(self, state: np.ndarray) -> np.ndarray:
        """Byte tables (nq, d, 256) float32: q_j times the value of each E4M3 byte."""
        return byte_tables(state, E4M3_LEVELS, 8, self.dim)

    @property
    def score_levels(self) -> np.ndarray:
        """The value of every E4M3 byte (256,) float32, shared by all coordinates."""
        return E4M3_LEVELS

    def score_scales(self, codes: np.ndarray) -> np.ndarray:
        """What a code's table sum is multiplied by, (n,) float32: its stored scale."""
        return minifloat_scales(codes, self.dim)

    def norms(self, codes: np.ndarray) -> np.ndarray:
        """||x_hat|| of each decoded vector, (n,) float32."""
        return blockwise_row_norms(self.decode, codes, self.dim)

    def to_config(self) -> dict:
        return {"codec": "minifloat", "spec": self.spec, "dim": self.dim, "format": self.fmt}

    @classmethod
    def from_config(cls, config: dict) -> MinifloatCodec:
        return cls(config["dim"], config["format"])
