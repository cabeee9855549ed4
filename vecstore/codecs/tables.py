"""Lookup tables of table scans: how a codec's stored codes read as code bytes
(``ScanFormat``, ``code_bytes``), the nibble and byte tables of queries whose values stand
for levels (``value_tables``), and their sums over code bytes (``lut_inner_products``). The
compiled scan sums the same tables in the same order, so both give the same bits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vecstore.codecs import bitpack

# Up to this many queries, scores come from lookup tables; larger batches decode the codes
# once and use a matrix product.
LUT_MAX_QUERIES = 2


def use_lookup_tables(nq: int) -> bool:
    """Whether scores come from ``lut_inner_products`` (the compiled scan's sums, bit for
    bit) rather than decoding plus a matrix product."""
    return nq <= LUT_MAX_QUERIES


def table_width(bits: int) -> int:
    """The width a table scan reads b-bit values at: b where it divides 8, else 4 (b = 3)
    or 8 (b = 5 to 7)."""
    return bits if 8 % bits == 0 else (4 if bits < 4 else 8)


@dataclass(frozen=True)
class ScanFormat:
    """How a table scan reads a codec's codes (the compiled module's ``fastscan.h``).

    A row has ``n_bytes`` code bytes, made from the stored row as ``values`` = (bits,
    count, head, tail_from) say: bits 0 takes the first n_bytes stored bytes as they are;
    otherwise the first ``count`` packed values of ``bits`` bits are written at
    ``table_width(bits)``, zero-padded to ``head`` bytes, and the stored bytes from
    ``tail_from`` follow. Tables are nibble tables (``table_bits`` 4) or byte tables (8).
    A row's table sum is that of bytes [0, split) plus, where ``split < n_bytes``, that of
    the rest times the row's tail scale.
    """

    n_bytes: int
    values: tuple[int, int, int, int]
    split: int
    table_bits: int


def code_bytes(codes: np.ndarray, fmt: ScanFormat) -> np.ndarray:
    """The code bytes (n, fmt.n_bytes) uint8 of stored codes (n, code_size) uint8."""
    bits, count, head, tail_from = fmt.values
    if bits == 0:
        return codes[:, : fmt.n_bytes]
    values = bitpack.unpack(codes[:, : bitpack.packed_size(count, bits)], count, bits)
    out = np.zeros((codes.shape[0], fmt.n_bytes), dtype=np.uint8)
    packed = bitpack.pack(values, table_width(bits))
    out[:, : packed.shape[1]] = packed
    out[:, head:] = codes[:, tail_from : tail_from + fmt.n_bytes - head]
    return out


def padded_levels(levels: np.ndarray, bits: int) -> np.ndarray:
    """``levels`` (2**b,) float32 padded with zeros to the 2**table_width(b) values a table
    of that width has."""
    out = np.zeros(1 << table_width(bits), dtype=np.float32)
    out[: levels.shape[0]] = levels
    return out


def quad_bytes(n: int) -> int:
    """n rounded up to a multiple of 4 (the FastScan layout's groups of code bytes)."""
    return -(-n // 4) * 4


def byte_tables(queries: np.ndarray, levels: np.ndarray, bits: int, n_bytes: int
                ) -> np.ndarray:
    """Per query, the partial sum each byte value contributes at each byte position:
    (nq, n_bytes, 256) float32 for queries (nq, D) float32 and ``levels`` (2**bits,) or
    (2**bits, D) float32 as ``value_tables`` takes them (bits divides 8). For widths
    dividing 4 an entry is the float32 sum of its two nibble table entries
    (``bytes_from_nibbles``)."""
    tables = value_tables(queries, levels, bits, n_bytes)
    return bytes_from_nibbles(tables) if 4 % bits == 0 else tables


def bytes_from_nibbles(nibbles: np.ndarray) -> np.ndarray:
    """Byte tables (nq, P, 256) float32 of nibble tables (nq, 2 P, 16) float32: entry
    [b, v] is nibbles[2b, v & 15] + nibbles[2b + 1, v >> 4], which the compiled kernels
    rebuild from the nibble tables alone."""
    values = np.arange(256)
    return nibbles[:, 0::2, :][:, :, values & 15] + nibbles[:, 1::2, :][:, :, values >> 4]


def value_tables(queries: np.ndarray, levels: np.ndarray, bits: int, n_bytes: int
                 ) -> np.ndarray:
    """Tables of b-bit values for queries (nq, D) float32 and levels (2**bits,) float32
    shared by every coordinate or (2**bits, D) float32 (value v at coordinate j stands for
    levels[v, j]): nibble tables (nq, 2 n_bytes, 16) where ``table_width(bits)`` is at
    most 4, else byte tables (nq, n_bytes, 256), float32. Entry [2b + h, v] of nibble
    tables is for the low (h = 0) or high (h = 1) nibble v of code byte b. A position holds
    4 / bits coordinates where bits divides 4 (their products added in slot order, in
    float32), else one; coordinates past D and values past 2**bits count zero. The compiled
    module's ``nibble_tables`` builds the same bits for shared levels."""
    levels = np.asarray(levels, dtype=np.float32)
    if levels.ndim == 1:
        levels = levels[:, None]
    table = 4 if table_width(bits) <= 4 else 8
    per = table // bits if table % bits == 0 else 1
    positions = n_bytes * 8 // table
    nq, dim = queries.shape
    padded = np.zeros((nq, positions * per), dtype=np.float32)
    padded[:, :dim] = queries
    padded_levels = np.zeros((1 << table, positions * per), dtype=np.float32)
    padded_levels[: levels.shape[0], :dim] = levels
    values = np.arange(1 << table)
    mask = (1 << bits) - 1 if per > 1 else (1 << table) - 1
    tables = None
    for slot in range(per):
        coordinates = np.arange(positions) * per + slot
        slot_levels = padded_levels[(values >> (slot * bits)) & mask][:, coordinates]
        products = padded[:, coordinates][:, :, None] * slot_levels.T[None, :, :]
        tables = products if tables is None else tables + products
    return tables


def padded_tables(tables: np.ndarray, positions: int, entries: int) -> np.ndarray:
    """Tables (nq, p, e) float32 zero-padded to (nq, positions, entries)."""
    if tables.shape[1:] == (positions, entries):
        return np.ascontiguousarray(tables, dtype=np.float32)
    out = np.zeros((tables.shape[0], positions, entries), dtype=np.float32)
    out[:, : tables.shape[1], : tables.shape[2]] = tables
    return out


def table_sums(tables: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Sum over byte positions b, in order and in float32, of tables[:, b, codes[:, b]]:
    (nq, n) float32 for byte tables (nq, P, 256) float32 and code bytes (n, P) uint8."""
    columns = np.ascontiguousarray(codes.T)
    out = np.zeros((tables.shape[0], codes.shape[0]), dtype=np.float32)
    for i in range(tables.shape[0]):
        for byte in range(codes.shape[1]):
            out[i] += tables[i, byte].take(columns[byte])
    return out


def lut_inner_products(queries: np.ndarray, packed: np.ndarray, levels: np.ndarray,
                       bits: int) -> np.ndarray:
    """Sum_j q_j * levels[v_j] for b-bit values v packed per ``bitpack``, by byte tables.

    queries : (nq, D) float32, D <= 8 * P / bits
    packed : (n, P) uint8, each byte holding 8 / bits values (bits divides 8)
    levels : (2**bits,) float32, the value each b-bit index stands for
    Returns (nq, n) float32. Each query gets a (P, 256) table of the partial sums a byte
    contributes, so a code costs P lookups instead of D multiply-adds.
    """
    return table_sums(byte_tables(queries, levels, bits, packed.shape[1]), packed)
