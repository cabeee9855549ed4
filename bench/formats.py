"""Readers for the common vector file formats of public benchmark sets.

- ``.fvecs``, ``.ivecs``, ``.bvecs`` (the TEXMEX layout of SIFT and GIST): each vector is a
  little-endian int32 dimension d followed by d float32, int32 or uint8 values.
- ann-benchmarks HDF5: datasets ``train`` (base), ``test`` (queries) and ``neighbors``
  (ground truth ids), and the attribute ``distance``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

VECS_DTYPES = {".fvecs": np.dtype("<f4"), ".ivecs": np.dtype("<i4"), ".bvecs": np.dtype("u1")}

# ann-benchmarks distance names -> vecstore metrics.
HDF5_METRICS = {"angular": "cosine", "euclidean": "l2", "dot": "ip", "ip": "ip"}


def read_fvecs(path: str | os.PathLike, max_rows: int | None = None) -> np.ndarray:
    """Vectors of an ``.fvecs`` file as (n, d) float32; the first ``max_rows`` if given."""
    return read_vecs(path, np.dtype("<f4"), max_rows)


def read_ivecs(path: str | os.PathLike, max_rows: int | None = None) -> np.ndarray:
    """Vectors of an ``.ivecs`` file as (n, d) int32; the first ``max_rows`` if given."""
    return read_vecs(path, np.dtype("<i4"), max_rows)


def read_bvecs(path: str | os.PathLike, max_rows: int | None = None) -> np.ndarray:
    """Vectors of a ``.bvecs`` file as (n, d) uint8; the first ``max_rows`` if given."""
    return read_vecs(path, np.dtype("u1"), max_rows)


def read_vecs(path: str | os.PathLike, dtype: np.dtype, max_rows: int | None = None) -> np.ndarray:
    """Vectors of a TEXMEX file whose values have ``dtype``, as a new (n, d) array.

    The file is memory-mapped, so reading the first rows of a large file is cheap.

    Raises
    ------
    ValueError : the file is empty, its size is not a whole number of records, or its
        records do not all have the same dimension.
    """
    path = Path(path)
    dtype = np.dtype(dtype).newbyteorder("<")
    size = path.stat().st_size
    if size < 4:
        raise ValueError(f"{path} is empty; a vecs file holds (int32 d, d values) records")
    dim = int(np.fromfile(path, dtype="<i4", count=1)[0])
    if dim < 1:
        raise ValueError(f"{path} starts with dimension {dim}; expected a positive int32")
    record = 4 + dim * dtype.itemsize
    if size % record:
        raise ValueError(
            f"{path} has {size} bytes, not a whole number of {record}-byte records of "
            f"dimension {dim} ({dtype.name} values)"
        )
    rows = size // record
    if max_rows is not None:
        rows = min(rows, max_rows)
    raw = np.memmap(path, dtype="u1", mode="r", shape=(rows, record))
    dims = raw[:, :4].copy().view("<i4").ravel()
    if np.any(dims != dim):
        bad = int(np.argmax(dims != dim))
        raise ValueError(f"{path}: record {bad} has dimension {dims[bad]}, record 0 has {dim}")
    return raw[:, 4:].copy().view(dtype).astype(dtype.newbyteorder("="), copy=False)


def write_vecs(path: str | os.PathLike, vectors: np.ndarray) -> None:
    """Write (n, d) vectors to ``path`` in the format its suffix names.

    Values are cast to the suffix's type (float32, int32 or uint8); raises ValueError for an
    unknown suffix or a non 2-D array.
    """
    path = Path(path)
    if path.suffix not in VECS_DTYPES:
        raise ValueError(f"{path}: unknown suffix; expected one of {', '.join(VECS_DTYPES)}")
    values = np.asarray(vectors)
    if values.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {values.shape}")
    dtype = VECS_DTYPES[path.suffix]
    n, dim = values.shape
    records = np.empty((n, 4 + dim * dtype.itemsize), dtype="u1")
    records[:, :4] = np.full((n, 1), dim, dtype="<i4").view("u1")
    records[:, 4:] = np.ascontiguousarray(values, dtype=dtype).view("u1").reshape(n, -1)
    records.tofile(path)


def read_ann_hdf5(
    path: str | os.PathLike, max_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """An ann-benchmarks HDF5 file's contents.

    Parameters
    ----------
    path : the ``.hdf5`` file.
    max_rows : read only the first this many base (``train``) rows.

    Returns
    -------
    base : (n, d) float32, the ``train`` dataset.
    queries : (nq, d) float32, the ``test`` dataset.
    neighbors : (nq, k) int64 ground truth ids from ``neighbors``, or None when absent.
    metric : the vecstore metric of the ``distance`` attribute (angular -> "cosine",
        euclidean -> "l2", dot -> "ip").

    Raises
    ------
    ImportError : h5py is not installed.
    ValueError : a dataset or the ``distance`` attribute is missing or unsupported.
    """
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            "reading ann-benchmarks .hdf5 files needs h5py: pip install h5py"
        ) from exc
    with h5py.File(path, "r") as f:
        for required in ("train", "test"):
            if required not in f:
                raise ValueError(f"{path} has no {required!r} dataset; not an ann-benchmarks file")
        distance = f.attrs.get("distance")
        if isinstance(distance, bytes):
            distance = distance.decode()
        if distance not in HDF5_METRICS:
            raise ValueError(
                f"{path}: distance attribute {distance!r} is not supported; "
                f"expected one of {', '.join(HDF5_METRICS)}"
            )
        rows = slice(None) if max_rows is None else slice(0, max_rows)
        base = np.asarray(f["train"][rows], dtype=np.float32)
        queries = np.asarray(f["test"][:], dtype=np.float32)
        neighbors = np.asarray(f["neighbors"][:], dtype=np.int64) if "neighbors" in f else None
    return base, queries, neighbors, HDF5_METRICS[distance]
