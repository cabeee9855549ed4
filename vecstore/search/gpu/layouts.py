"""Codes as the kernels read them: a codec's ``DeviceFormat`` (codecs/device_format.py)
decides the kernel family, and ``DeviceCodes`` holds a part's codes transposed to words of
rows, with the per-row terms of the scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vecstore.codecs.device_format import DeviceFormat, device_format


def family(codec) -> str | None:
    """The kernel family of ``codec``'s codes ("tq", "prod", "table", "hamming"), or None
    when no kernel scores them."""
    fmt = device_format(codec)
    return None if fmt is None else fmt.family


def supports(codec) -> bool:
    """Whether a GPU kernel scores ``codec``'s codes: TurboQuant (``tq{b}``, ``tq{b}c``,
    ``tq{b}-prod``), PQ and MIB (asymmetric or Hamming), once trained."""
    return device_format(codec) is not None


def code_format(codec) -> DeviceFormat:
    """``codec``'s device format; ValueError for a codec no kernel scores."""
    fmt = device_format(codec)
    if fmt is None:
        raise ValueError(f"codec {codec.spec!r} has no GPU kernel")
    return fmt


@dataclass
class DeviceCodes:
    """One part's codes on the GPU in the kernel's layout.

    words : (W, n_pad) uint32, word w of every row's packed indices, rows contiguous
    scale : (n,) float32, the factor on <q_rot, y_mse> (||x||, or ||x|| / <y, y_mse>)
    sq_norms : (n,) float32, ||x||^2 for l2 keys
    signs : (S, n_pad) uint32, QJL sign words of tq{b}-prod codes (else None)
    residual : (n,) float32, sqrt(pi/2)/D * ||r|| of tq{b}-prod codes (else None)
    """

    words: object
    scale: object
    sq_norms: object
    n: int
    zeros: object = None
    signs: object = None
    residual: object = None

    def __post_init__(self):
        if self.zeros is None:
            self.zeros = self.scale * 0

    def buffers(self) -> list:
        """words, scale, sq_norms, signs, residual (the order of a host layout)."""
        return [self.words, self.scale, self.sq_norms, self.signs, self.residual]

    @property
    def nbytes(self) -> int:
        held = [a.nbytes for a in (*self.buffers(), self.zeros) if a is not None]
        return int(sum(held))


def metric_terms(metric: str, device: DeviceCodes) -> tuple[np.float32, object]:
    """The key's factor on the dot product and its per-row bias (n,) float32: keys are
    -dot * scale (ip, cosine) or ||q||^2 - 2 dot * norm + norm^2 (l2)."""
    if metric == "l2":
        return np.float32(-2.0), device.sq_norms
    return np.float32(-1.0), device.zeros


def transposed_words(packed: np.ndarray) -> np.ndarray:
    """Bytes (n, B) uint8 as the kernels' words (ceil(B / 4), n_pad) uint32: word w of
    every row contiguous, rows padded with zeros to a multiple of 32."""
    n, width = packed.shape
    n_words = -(-width // 4)
    n_pad = -(-max(n, 1) // 32) * 32
    padded = np.zeros((n_pad, n_words * 4), dtype=np.uint8)
    padded[:n, :width] = packed
    return np.ascontiguousarray(padded.view("<u4").T)


def prod_layout(codec, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """QJL sign words (S, n_pad) uint32 and residual factors (n,) float32 of tq{b}-prod
    codes (n, code_size) uint8."""
    start, stop = code_format(codec).sign_bytes
    signs = transposed_words(codes[:, start:stop])
    return signs, codec.score_tail_scales(codes).astype(np.float32)


def device_layout(codec, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host arrays of ``DeviceCodes`` for codes (n, code_size) uint8: words (W, n_pad)
    uint32, scale (n,) float32 (the codec's score scales; ones for table and Hamming
    codes, whose kernels scale per query), squared norms (n,) float32."""
    fmt = code_format(codec)
    words = transposed_words(codes[:, : fmt.index_bytes])
    norms = codec.norms(codes)
    if fmt.family in ("table", "hamming"):
        scale = np.ones(codes.shape[0], dtype=np.float32)
    else:
        scale = codec.score_scales(codes)
    return words, scale.astype(np.float32), np.square(norms, dtype=np.float32)


def host_layout(codec, codes: np.ndarray) -> list[np.ndarray | None]:
    """words, scale, sq_norms, signs, residual of ``codes`` (n, code_size) uint8 on the
    host, as ``DeviceCodes`` holds them (the last two None unless the codec is
    tq{b}-prod)."""
    words, scale, sq_norms = device_layout(codec, codes)
    extra = prod_layout(codec, codes) if family(codec) == "prod" else (None, None)
    return [words, scale, sq_norms, *extra]
