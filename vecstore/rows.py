"""Batches of stored rows as numpy columns, and their zero-copy Arrow form.

A batch is a dict of row-aligned numpy columns plus an Arrow table of metadata:

- ``id`` (n,) int64
- ``code`` (n, code_size) uint8: the search codes
- ``norm`` (n,) float32: each vector's Euclidean norm as given (before cosine normalizing)
- ``vector`` (n, d) float16 or float32, optional: the vectors kept for rescoring
- ``rescore_code`` (n, rescore_code_size) uint8, optional: finer codes for rescoring

Segment files and log records hold the same columns as Arrow arrays: ``id int64``,
``code fixed_size_binary[code_size]``, ``norm float32``, ``vector
fixed_size_list<float16|float32>[d]``, ``rescore_code fixed_size_binary``, then one
column per metadata field.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

ID, CODE, NORM, VECTOR, RESCORE_CODE = "id", "code", "norm", "vector", "rescore_code"
RESERVED = (ID, CODE, NORM, VECTOR, RESCORE_CODE)
BINARY_COLUMNS = (CODE, RESCORE_CODE)

Columns = dict[str, np.ndarray]


def _binary_array(codes: np.ndarray) -> pa.Array:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(codes.shape[1]), codes.shape[0], [None, pa.py_buffer(codes)]
    )


def _binary_numpy(array: pa.Array) -> np.ndarray:
    width = array.type.byte_width
    if array.null_count:
        raise ValueError("code columns cannot hold nulls")
    return np.frombuffer(array.buffers()[1], dtype=np.uint8, count=len(array) * width,
                         offset=array.offset * width).reshape(len(array), width)


def _column(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def to_table(columns: Columns, metadata: pa.Table | None = None,
             schema_metadata: dict[str, str] | None = None) -> pa.Table:
    """The Arrow table of a batch; metadata columns follow the stored ones."""
    arrays, names = [pa.array(columns[ID], type=pa.int64())], [ID]
    if CODE in columns:
        arrays += [_binary_array(columns[CODE]), pa.array(columns[NORM], type=pa.float32())]
        names += [CODE, NORM]
    if VECTOR in columns:
        vectors = np.ascontiguousarray(columns[VECTOR])
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)),
                                                        vectors.shape[1]))
        names.append(VECTOR)
    if RESCORE_CODE in columns:
        arrays.append(_binary_array(columns[RESCORE_CODE]))
        names.append(RESCORE_CODE)
    if metadata is not None:
        for field, column in zip(metadata.schema, metadata.columns, strict=True):
            arrays.append(column)
            names.append(field.name)
    table = pa.Table.from_arrays(arrays, names=names)
    return table.replace_schema_metadata(schema_metadata) if schema_metadata else table


def from_table(table: pa.Table) -> tuple[Columns, pa.Table]:
    """Numpy views (no copies for single-chunk columns) of a batch, and its metadata."""
    columns = {ID: _column(table, ID).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)}
    for name in BINARY_COLUMNS:
        if name in table.column_names:
            columns[name] = _binary_numpy(_column(table, name))
    if NORM in table.column_names:
        columns[NORM] = _column(table, NORM).to_numpy(zero_copy_only=False)
    if VECTOR in table.column_names:
        vectors = _column(table, VECTOR)
        flat = vectors.flatten().to_numpy(zero_copy_only=False)
        columns[VECTOR] = flat.reshape(len(vectors), vectors.type.list_size)
    metadata = table.drop_columns([n for n in table.column_names if n in RESERVED])
    return columns, metadata.replace_schema_metadata(None)


def take(columns: Columns, rows: np.ndarray) -> Columns:
    """The given rows (m,) of every column."""
    return {name: column[rows] for name, column in columns.items()}


def concat(batches: list[Columns]) -> Columns:
    """Rows of several batches with the same columns, in order."""
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
