"""Tight little-endian bit packing of small unsigned integers.

Value j of a row occupies bits [j*b, (j+1)*b) of the row's bit stream, and stream bit s
is bit (s % 8) of byte s // 8. So at b = 4 byte p holds value 2p in its low nibble and
value 2p+1 in its high nibble; at b = 1 this is numpy's ``packbits(bitorder="little")``.

Widths dividing 8 shift whole values into bytes. Other widths use the fact that every
group of 8 values fills exactly b bytes: a group is assembled into, or split out of, one
little-endian 64-bit integer.
"""

from __future__ import annotations

import numpy as np


def packed_size(count: int, bits: int) -> int:
    """Bytes taken by ``count`` values of ``bits`` bits each."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")


def pack(values: np.ndarray, bits: int, xp=np) -> np.ndarray:
    """Pack (n, m) uint8 values < 2**bits into (n, packed_size(m, bits)) uint8.

    ``xp`` is the array module of ``values`` (numpy, or CuPy for device arrays).
    """
    _check_bits(bits)
    n, m = values.shape
    if bits == 8:
        return xp.ascontiguousarray(values, dtype=xp.uint8)
    if 8 % bits == 0:
        per_byte = 8 // bits
        padded = xp.zeros((n, packed_size(m, bits) * per_byte), dtype=xp.uint8)
        padded[:, :m] = values
        slots = padded.reshape(n, packed_size(m, bits), per_byte)
        out = slots[:, :, 0].copy()
        for slot in range(1, per_byte):
            out |= slots[:, :, slot] << xp.uint8(slot * bits)
        return out
    groups = -(-m // 8)
    padded = xp.zeros((n, groups, 8), dtype=xp.uint64)
    padded.reshape(n, groups * 8)[:, :m] = values
    word = padded[:, :, 0].copy()
    for slot in range(1, 8):
        word |= padded[:, :, slot] << xp.uint64(slot * bits)
    group_bytes = word[:, :, None].view(xp.uint8)[:, :, :bits]
    return xp.ascontiguousarray(group_bytes.reshape(n, groups * bits)[:, : packed_size(m, bits)])


def unpack(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of ``pack``: (n, packed_size(count, bits)) uint8 -> (n, count) uint8."""
    _check_bits(bits)
    n = packed.shape[0]
    if bits == 8:
        return np.ascontiguousarray(packed[:, :count])
    if 8 % bits == 0:
        per_byte = 8 // bits
        mask = np.uint8((1 << bits) - 1)
        out = np.empty((n, packed.shape[1], per_byte), dtype=np.uint8)
        for slot in range(per_byte):
            np.bitwise_and(packed >> np.uint8(slot * bits), mask, out=out[:, :, slot])
        return out.reshape(n, packed.shape[1] * per_byte)[:, :count]
    groups = -(-count // 8)
    stream = np.zeros((n, groups * bits), dtype=np.uint8)
    stream[:, : packed.shape[1]] = packed
    group_bytes = np.zeros((n, groups, 8), dtype=np.uint8)
    group_bytes[:, :, :bits] = stream.reshape(n, groups, bits)
    word = group_bytes.view(np.uint64)[:, :, 0]
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((n, groups, 8), dtype=np.uint8)
    for slot in range(8):
        out[:, :, slot] = (word >> np.uint64(slot * bits)) & mask
    return out.reshape(n, groups * 8)[:, :count]
