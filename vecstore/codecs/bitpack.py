"""Tight little-endian bit packing of small unsigned integers.

Value j of a row occupies bits [j*b, (j+1)*b) of the row's bit stream, and stream bit s
is bit (s % 8) of byte s // 8. So at b = 4 byte p holds value 2p in its low nibble and
value 2p+1 in its high nibble; at b = 1 this is numpy's ``packbits(bitorder="little")``.
"""

from __future__ import annotations

import numpy as np


def packed_size(count: int, bits: int) -> int:
    """Bytes taken by ``count`` values of ``bits`` bits each."""
    return (count * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack (n, m) uint8 values < 2**bits into (n, packed_size(m, bits)) uint8."""
    n, m = values.shape
    values = values.astype(np.uint8, copy=False)
    if bits == 8:
        return np.ascontiguousarray(values)
    if 8 % bits == 0:
        per_byte = 8 // bits
        padded = np.zeros((n, packed_size(m, bits) * per_byte), dtype=np.uint8)
        padded[:, :m] = values
        groups = padded.reshape(n, -1, per_byte)
        out = np.zeros((n, groups.shape[1]), dtype=np.uint8)
        for slot in range(per_byte):
            out |= groups[:, :, slot] << np.uint8(slot * bits)
        return out
    planes = (values[:, :, None] >> np.arange(bits, dtype=np.uint8)) & np.uint8(1)
    return np.packbits(planes.reshape(n, m * bits), axis=1, bitorder="little")


def unpack(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of ``pack``: (n, packed_size(count, bits)) uint8 -> (n, count) uint8."""
    n = packed.shape[0]
    if bits == 8:
        return np.ascontiguousarray(packed[:, :count])
    if 8 % bits == 0:
        per_byte = 8 // bits
        mask = np.uint8((1 << bits) - 1)
        out = np.empty((n, packed.shape[1], per_byte), dtype=np.uint8)
        for slot in range(per_byte):
            np.bitwise_and(packed >> np.uint8(slot * bits), mask, out=out[:, :, slot])
        return out.reshape(n, -1)[:, :count]
    planes = np.unpackbits(packed, axis=1, count=count * bits, bitorder="little")
    planes = planes.reshape(n, count, bits)
    out = planes[:, :, 0].copy()
    for bit in range(1, bits):
        out |= planes[:, :, bit] << np.uint8(bit)
    return out
