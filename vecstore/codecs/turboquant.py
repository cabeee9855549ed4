"""TurboQuant (arXiv 2504.19874): data-oblivious vector quantization.

``TurboQuantMSE`` (``tq1`` … ``tq8``) stores ||x||, rotates x/||x|| by a seeded random
rotation and replaces each rotated coordinate by the nearest of 2**b Lloyd-Max
centroids for the rotated-coordinate density.

``TurboQuantProd`` (``tq2-prod`` … ``tq8-prod``) spends b-1 bits per coordinate on the MSE
quantizer and one more on a QJL sketch of the residual r: it stores sign(S r) for an
i.i.d. Gaussian matrix S and ||r||, which makes inner-product estimates unbiased.

Code layout, per vector (bytes, little-endian):
    tq{b}:       [centroid indices, b bits each over D rotated coordinates][||x|| f32]
    tq{b}-prod:  [indices, b-1 bits each][sign(S r), 1 bit each][||x|| f32][||r|| f32]
D is the rotated dimension: d, or d padded to a power of two for the Hadamard rotation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from vecstore import _native
from vecstore.codecs import bitpack
from vecstore.codecs.device_format import DeviceFormat
from vecstore.codecs.lloyd_max import codebook
from vecstore.codecs.rotation import make_rotation, stable_normal
from vecstore.codecs.tables import (
    ScanFormat,
    byte_tables,
    code_bytes,
    lut_inner_products,
    padded_levels,
    quad_bytes,
    table_width,
    use_lookup_tables,
    value_tables,
)

NORM_BYTES = 4
ENCODE_CHUNK = 4096
SKETCH_STREAM = 1
COUNT_QUANTIZE_MAX_BITS = 5
_SIGN_LEVELS = np.array([-1.0, 1.0], dtype=np.float32)


@dataclass(frozen=True)
class RotatedQueries:
    """Query state: queries in the rotated space, (nq, D) float32, and for the prod
    variant their sketch S q, (nq, D) float32."""

    rotated: np.ndarray
    sketched: np.ndarray | None = None


def byte_levels(levels: np.ndarray, bits: int) -> np.ndarray:
    """The values a byte holds, (256, 8 / bits) float32: entry [b, s] is the level of the
    ``s``-th b-bit value packed in byte b (bits divides 8, little-endian bit order as in
    ``bitpack``)."""
    mask = (1 << bits) - 1
    byte_values = np.arange(256)
    return np.stack([np.asarray(levels, dtype=np.float32)[(byte_values >> (slot * bits)) & mask]
                     for slot in range(8 // bits)], axis=1)


def byte_items(levels: np.ndarray, bits: int) -> np.ndarray:
    """``byte_levels`` with each byte's values as one opaque item of 32 / bits bytes,
    (256,) void: one gather per byte decodes all of its values."""
    table = byte_levels(levels, bits)
    return table.view(np.dtype((np.void, table.shape[1] * 4))).ravel()


def decode_bytes(items: np.ndarray, packed: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` values of packed (n, P) uint8 through ``byte_items`` ``items``:
    (n, count) float32, C-contiguous."""
    values = np.take(items, packed).view(np.float32).reshape(
        packed.shape[0], packed.shape[1] * items.dtype.itemsize // 4)
    return values if values.shape[1] == count else np.ascontiguousarray(values[:, :count])


_SIGN_ITEMS = byte_items(_SIGN_LEVELS, 1)


def shared_nibble_tables(queries: np.ndarray, levels: np.ndarray, bits: int, n_bytes: int
                         ) -> np.ndarray:
    """``value_tables`` of levels (2**bits,) float32 shared by every coordinate, bits
    dividing 4: (nq, 2 * n_bytes, 16) float32, built by the compiled module where it is
    there (the same bits)."""
    if _native.compiled():
        return _native.nibble_tables(queries, levels, bits, n_bytes)
    return value_tables(queries, levels, bits, n_bytes)


def _read_f32(codes: np.ndarray, offset: int) -> np.ndarray:
    """Column of little-endian float32 values stored at byte ``offset`` of each code."""
    return np.ascontiguousarray(codes[:, offset : offset + 4]).view("<f4")[:, 0].astype(np.float32)


def _write_f32(codes: np.ndarray, offset: int, values: np.ndarray) -> None:
    codes[:, offset : offset + 4] = values.astype("<f4").reshape(-1, 1).view(np.uint8)


class _TurboQuantBase:
    """Rotation, scalar codebook and norm handling shared by both TurboQuant variants."""

    data_oblivious = True
    is_trained = True

    def __init__(self, dim: int, bits: int, mse_bits: int, seed: int, rotation: str,
                 centroids: list[float] | None):
        if dim < 2:
            raise ValueError(f"TurboQuant needs dim >= 2, got {dim}")
        self.dim = int(dim)
        self.bits = int(bits)
        self.mse_bits = int(mse_bits)
        self.seed = int(seed)
        self.rotation = make_rotation(rotation, self.dim, self.seed)
        self.rot_dim = self.rotation.out_dim
        if centroids is None:
            centroids = codebook(self.rot_dim, self.mse_bits)
        self.centroids = np.asarray(centroids, dtype=np.float64)
        if self.centroids.shape != (1 << self.mse_bits,):
            raise ValueError(f"expected {1 << self.mse_bits} centroids, got {self.centroids.size}")
        self._centroids32 = self.centroids.astype(np.float32)
        self._boundaries32 = ((self.centroids[1:] + self.centroids[:-1]) / 2).astype(np.float32)
        self.index_bytes = bitpack.packed_size(self.rot_dim, self.mse_bits)
        # Widths dividing 8 decode a byte at a time (``decode_bytes``): 2x faster than
        # unpacking then gathering each value at 4 bits, 12x at 1 bit.
        self._byte_items = (byte_items(self._centroids32, self.mse_bits)
                            if 8 % self.mse_bits == 0 else None)
        self._table_bits = table_width(self.mse_bits)
        self._table_levels = padded_levels(self._centroids32, self.mse_bits)

    # --- helpers -------------------------------------------------------------------------

    def _normalize(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split (n, d) float32 into norms (n,) float32 and unit rows (zero rows stay zero).

        Norms are summed in float64 and rounded once, so they do not depend on summation
        order (the GPU encoder gives the same bits)."""
        x64 = x.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", x64, x64)).astype(np.float32)
        safe = np.where(norms > 0, norms, np.float32(1))
        return norms, x / safe[:, None]

    def _quantize(self, y: np.ndarray) -> np.ndarray:
        """Nearest-centroid index of each rotated coordinate: (n, D) f32 -> (n, D) uint8.

        The index is the count of decision boundaries strictly below y (a value exactly on
        a boundary goes to the lower centroid). Counting by comparisons is several times
        faster than a binary search for up to 31 boundaries.
        """
        if self.mse_bits > COUNT_QUANTIZE_MAX_BITS:
            return np.searchsorted(self._boundaries32, y).astype(np.uint8)
        indices = np.zeros(y.shape, dtype=np.uint8)
        for boundary in self._boundaries32:
            indices += y > boundary
        return indices

    def _encode_parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Codes (n, code_size) uint8 with the indices and ||x|| filled in, plus the rotated
        unit vectors (n, D) float32 and their indices (n, D) uint8, for variants that store
        more."""
        norms, unit = self._normalize(x)
        rotated = self.rotation.forward_exact(unit)
        indices = self._quantize(rotated)
        codes = np.empty((x.shape[0], self.code_size), dtype=np.uint8)
        codes[:, : self.index_bytes] = bitpack.pack(indices, self.mse_bits)
        _write_f32(codes, self.norm_offset, norms)
        return codes, rotated, indices

    def _indices(self, codes: np.ndarray) -> np.ndarray:
        return bitpack.unpack(codes[:, : self.index_bytes], self.rot_dim, self.mse_bits)

    def _dequantize(self, codes: np.ndarray) -> np.ndarray:
        """Rotated-space reconstruction of the unit vectors, (n, D) float32."""
        if self._byte_items is None:
            return np.take(self._centroids32, self._indices(codes))
        return decode_bytes(self._byte_items, codes[:, : self.index_bytes], self.rot_dim)

    def _mse_scores(self, rotated: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """<q_rot, y_mse> for each query and code, (nq, n) float32."""
        if use_lookup_tables(rotated.shape[0]):
            fmt = self.scan_format
            head = code_bytes(codes, fmt)[:, : fmt.split]
            return lut_inner_products(rotated, head, self._table_levels, self._table_bits)
        return rotated @ self._dequantize(codes).T


    @property
    def score_levels(self) -> np.ndarray | None:
        """For codes read as one value a nibble (3- and 4-bit indices) or a byte (5 to 8
        bits), the centroids padded to (16,) or (256,) float32: every table entry [p, v]
        of the MSE part is then rotated coordinate p times level v, which lets the compiled
        scan look the levels up once for a whole batch of queries; None otherwise."""
        return self._table_levels if self._table_bits >= 4 else None

    def _config(self, name: str) -> dict:
        return {
            "codec": name,
            "spec": self.spec,
            "dim": self.dim,
            "bits": self.bits,
            "seed": self.seed,
            "rotation": self.rotation.kind,
            "centroids": [float(c) for c in self.centroids],
        }

    # --- shared protocol methods ---------------------------------------------------------

    def train(self, x: np.ndarray) -> None:
        """TurboQuant is data-oblivious: nothing to learn."""

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Encode (n, d) float32 into (n, code_size) uint8, in bounded chunks."""
        x = np.asarray(x, dtype=np.float32)
        codes = np.empty((x.shape[0], self.code_size), dtype=np.uint8)
        for start in range(0, x.shape[0], ENCODE_CHUNK):
            stop = start + ENCODE_CHUNK
            codes[start:stop] = self._encode_chunk(x[start:stop])
        return codes

    def norms(self, codes: np.ndarray) -> np.ndarray:
        """Stored ||x||, (n,) float32."""
        return _read_f32(codes, self.norm_offset)

    def prepare_query(self, q: np.ndarray) -> RotatedQueries:
        return RotatedQueries(self.rotation.forward(np.asarray(q, dtype=np.float32)))


class TurboQuantMSE(_TurboQuantBase):
    """TurboQuant_mse with ``bits`` bits per rotated coordinate plus a float32 norm."""

    def __init__(self, dim: int, bits: int, seed: int = 0, rotation: str = "auto",
                 centroids: list[float] | None = None):
        if not 1 <= bits <= 8:
            raise ValueError(f"tq bits must be in 1..8, got {bits}")
        super().__init__(dim, bits, bits, seed, rotation, centroids)
        self.spec = f"tq{bits}"
        self.norm_offset = self.index_bytes
        self.code_size = self.index_bytes + NORM_BYTES

    def _encode_chunk(self, x: np.ndarray) -> np.ndarray:
        if (_native.compiled() and hasattr(self.rotation, "matrix64")
                and _native.scan_path() != _native.NUMPY):
            return self._encode_compiled(x)
        return self._encode_parts(x)[0]

    def _encode_compiled(self, x: np.ndarray) -> np.ndarray:
        """``_encode_parts``' codes through the compiled kernels: the rotation is a float32
        matrix product, and only coordinates it leaves within its rounding error of a
        decision boundary are computed again in float64, so the codes are the same bits."""
        norms, unit = _native.normalize_rows(x)
        rotated = self.rotation.forward(unit)
        # A float32 product of unit rows and an orthonormal matrix is within d + 4 float32
        # epsilons of the float64 product rounded once (with room to spare).
        margin = (self.dim + 4) * float(np.finfo(np.float32).eps)
        codes = np.empty((x.shape[0], self.code_size), dtype=np.uint8)
        _native.quantize_pack(np.ascontiguousarray(rotated), unit, self.rotation.matrix64,
                              self._boundaries32, self.mse_bits, margin, codes)
        _write_f32(codes, self.norm_offset, norms)
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruct (n, d) float32 from (n, code_size) uint8."""
        return self.rotation.inverse(self._dequantize(codes)) * self.norms(codes)[:, None]

    def score(self, state: RotatedQueries, codes: np.ndarray) -> np.ndarray:
        """Estimated <q, x>, (nq, n) float32."""
        return self._mse_scores(state.rotated, codes) * self.norms(codes)[None, :]

    def score_scales(self, codes: np.ndarray) -> np.ndarray:
        """What ``score`` multiplies a code's table sum by, (n,) float32: its norm."""
        return self.norms(codes)

    @functools.cached_property
    def device_format(self) -> DeviceFormat:
        """How the GPU kernels read these codes (codecs/device_format.py)."""
        return DeviceFormat("tq", self.index_bytes, self.mse_bits, self.rot_dim,
                            centroids=self._centroids32)

    @functools.cached_property
    def scan_format(self) -> ScanFormat:
        """The code bytes a table scan reads: the packed indices, 3-bit ones a nibble each
        and 5- to 7-bit ones a byte each."""
        width = self._table_bits
        n_bytes = bitpack.packed_size(self.rot_dim, width)
        values = (0, 0, 0, 0) if width == self.mse_bits else (self.mse_bits, self.rot_dim,
                                                              n_bytes, 0)
        return ScanFormat(n_bytes, values, n_bytes, 4 if 4 % width == 0 else 8)

    def score_tables(self, state: RotatedQueries) -> np.ndarray:
        """Byte tables (nq, scan_format.n_bytes, 256) float32 such that a code's score is
        its ``score_scales`` times the sum, in byte order, of the tables at its code bytes
        (what ``score`` computes for one or two queries)."""
        return byte_tables(state.rotated, self._table_levels, self._table_bits,
                           self.scan_format.n_bytes)

    def score_nibble_tables(self, state: RotatedQueries) -> np.ndarray | None:
        """``score_tables`` split by half bytes, (nq, 2 * scan_format.n_bytes, 16) float32,
        for a FastScan pass that bounds scores; None where the code bytes are bytes."""
        fmt = self.scan_format
        if fmt.table_bits != 4:
            return None
        return shared_nibble_tables(state.rotated, self._table_levels, self._table_bits,
                                    fmt.n_bytes)

    def to_config(self) -> dict:
        return self._config("tq")

    @classmethod
    def from_config(cls, config: dict) -> TurboQuantMSE:
        return cls(config["dim"], config["bits"], config["seed"], config["rotation"],
                   config["centroids"])


class TurboQuantProd(_TurboQuantBase):
    """TurboQuant_prod: ``bits - 1`` MSE bits plus a 1-bit QJL sketch of the residual."""

    def __init__(self, dim: int, bits: int, seed: int = 0, rotation: str = "auto",
                 centroids: list[float] | None = None):
        if not 2 <= bits <= 8:
            raise ValueError(f"tq-prod bits must be in 2..8, got {bits}")
        super().__init__(dim, bits, bits - 1, seed, rotation, centroids)
        self.spec = f"tq{bits}-prod"
        self.sign_bytes = bitpack.packed_size(self.rot_dim, 1)
        self.norm_offset = self.index_bytes + self.sign_bytes
        self.residual_offset = self.norm_offset + NORM_BYTES
        self.code_size = self.residual_offset + NORM_BYTES
        # i.i.d. N(0, 1) sketch: sqrt(pi/2)/D is the unbiasing constant for exactly this S.
        self.sketch = stable_normal(self.seed, (self.rot_dim, self.rot_dim), SKETCH_STREAM)
        self.sketch = self.sketch.astype(np.float32)
        self._sketch_t = np.ascontiguousarray(self.sketch.T)
        self.qjl_scale = np.float32(np.sqrt(np.pi / 2) / self.rot_dim)

    def _encode_chunk(self, x: np.ndarray) -> np.ndarray:
        codes, rotated, indices = self._encode_parts(x)
        residual = rotated - np.take(self._centroids32, indices)
        signs = (residual @ self._sketch_t) >= 0
        codes[:, self.index_bytes : self.norm_offset] = np.packbits(
            signs, axis=1, bitorder="little"
        )
        _write_f32(codes, self.residual_offset, np.linalg.norm(residual, axis=1))
        return codes

    def _sign_scores(self, sketched: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """<S q, sign(S r)> for each query and code, (nq, n) float32."""
        packed = codes[:, self.index_bytes : self.norm_offset]
        if use_lookup_tables(sketched.shape[0]):
            return lut_inner_products(sketched, packed, _SIGN_LEVELS, 1)
        return sketched @ self._signs(codes).T

    def _signs(self, codes: np.ndarray) -> np.ndarray:
        """sign(S r) as ±1.0, (n, D) float32."""
        return decode_bytes(_SIGN_ITEMS, codes[:, self.index_bytes : self.norm_offset],
                            self.rot_dim)

    def residual_norms(self, codes: np.ndarray) -> np.ndarray:
        """Stored ||r|| of the unit vector's MSE residual, (n,) float32."""
        return _read_f32(codes, self.residual_offset)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruct (n, d) float32: MSE part plus the QJL dequantized residual."""
        residual_scale = self.qjl_scale * self.residual_norms(codes)
        qjl = (self._signs(codes) @ self.sketch) * residual_scale[:, None]
        rotated = self._dequantize(codes) + qjl
        return self.rotation.inverse(rotated) * self.norms(codes)[:, None]

    def prepare_query(self, q: np.ndarray) -> RotatedQueries:
        rotated = self.rotation.forward(np.asarray(q, dtype=np.float32))
        return RotatedQueries(rotated, rotated @ self._sketch_t)

    def score(self, state: RotatedQueries, codes: np.ndarray) -> np.ndarray:
        """Unbiased estimate of <q, x>, (nq, n) float32."""
        mse = self._mse_scores(state.rotated, codes)
        qjl = self._sign_scores(state.sketched, codes)
        qjl *= self.score_tail_scales(codes)[None, :]
        return (mse + qjl) * self.norms(codes)[None, :]

    @functools.cached_property
    def device_format(self) -> DeviceFormat:
        """How the GPU kernels read these codes (codecs/device_format.py)."""
        return DeviceFormat("prod", self.index_bytes, self.mse_bits, self.rot_dim,
                            centroids=self._centroids32,
                            sign_bytes=(self.index_bytes, self.norm_offset))

    @functools.cached_property
    def scan_format(self) -> ScanFormat:
        """The code bytes a table scan reads: the MSE indices (3-bit ones a nibble each,
        5- to 7-bit ones a byte each) padded to a multiple of four bytes, then the sign
        bytes, whose sum is scaled per row (``score_tail_scales``)."""
        head = quad_bytes(bitpack.packed_size(self.rot_dim, self._table_bits))
        return ScanFormat(head + self.sign_bytes,
                          (self.mse_bits, self.rot_dim, head, self.index_bytes), head,
                          4 if 4 % self._table_bits == 0 else 8)

    def score_scales(self, codes: np.ndarray) -> np.ndarray:
        """What ``score`` multiplies a code's table sum by, (n,) float32: its norm."""
        return self.norms(codes)

    def score_tail_scales(self, codes: np.ndarray) -> np.ndarray:
        """What the sign bytes' table sum is multiplied by before it joins the MSE part's,
        (n,) float32: the QJL constant times ||r||."""
        return self.qjl_scale * self.residual_norms(codes)

    def score_tables(self, state: RotatedQueries) -> np.ndarray:
        """Byte tables (nq, scan_format.n_bytes, 256) float32 of the MSE part, then of the
        sketched query's signs (``scan_format``; what ``score`` computes for one or two
        queries)."""
        fmt = self.scan_format
        return np.concatenate(
            [byte_tables(state.rotated, self._table_levels, self._table_bits, fmt.split),
             byte_tables(state.sketched, _SIGN_LEVELS, 1, self.sign_bytes)], axis=1)

    def score_nibble_tables(self, state: RotatedQueries) -> np.ndarray | None:
        """``score_tables`` split by half bytes, (nq, 2 * scan_format.n_bytes, 16) float32;
        None where the MSE part's code bytes are bytes."""
        fmt = self.scan_format
        if fmt.table_bits != 4:
            return None
        return np.concatenate(
            [shared_nibble_tables(state.rotated, self._table_levels, self._table_bits,
                                  fmt.split),
             shared_nibble_tables(state.sketched, _SIGN_LEVELS, 1, self.sign_bytes)], axis=1)

    def to_config(self) -> dict:
        config = self._config("tq-prod")
        config["sketch"] = "gaussian"
        return config

    @classmethod
    def from_config(cls, config: dict) -> TurboQuantProd:
        if config.get("sketch", "gaussian") != "gaussian":
            raise ValueError(f"unknown QJL sketch {config['sketch']!r}")
        return cls(config["dim"], config["bits"], config["seed"], config["rotation"],
                   config["centroids"])
