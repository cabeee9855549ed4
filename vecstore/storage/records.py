"""Checks that log records hold what the collection itself writes, before replay.

A frame's CRC32C proves its bytes are the ones written, not that a vecstore wrote them.
Every record read at open is checked against the collection's config: add and upsert
records hold ``id int64`` (unique, non-negative, no nulls), ``code
fixed_size_binary[code_size]``, finite non-negative ``norm float32``, finite ``vector``
values of the stored dtype and dimension exactly when the collection keeps vectors,
``rescore_code`` of the rescoring codec's width exactly when it has one, then metadata
columns that merge into the schema grown so far. Delete records hold the ``id`` column
alone. A record that fails is DataLoss naming its log file, sequence number and offset;
a config that cannot be checked against is DataLoss naming the manifest.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from vecstore import metadata, rows
from vecstore.codecs.registry import codec_from_config
from vecstore.errors import DataLoss
from vecstore.storage.wal import OP_DELETE, WalRecord

VECTOR_TYPES = {"float16": pa.float16(), "float32": pa.float32()}


def _positive_int(config: dict, key: str, manifest: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataLoss(f"{manifest}: the collection config has no valid {key}: {value!r}")
    return value


def _binary_problem(column: pa.ChunkedArray, name: str, width: int) -> str | None:
    if column.type != pa.binary(width):
        return f"has {name} of type {column.type}, not fixed_size_binary[{width}]"
    return f"has null {name} values" if column.null_count else None


def _id_problem(table: pa.Table) -> str | None:
    if rows.ID not in table.column_names:
        return "has no id column"
    column = table.column(rows.ID)
    if column.type != pa.int64():
        return f"has ids of type {column.type}, not int64"
    if column.null_count:
        return "has null ids"
    ids = column.to_numpy()
    if ids.min() < 0:
        return f"has the negative id {int(ids.min())}"
    ordered = np.sort(ids)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    return f"holds the id {int(repeated[0])} twice" if repeated.size else None


def _norm_problem(column: pa.ChunkedArray) -> str | None:
    if column.type != pa.float32():
        return f"has norms of type {column.type}, not float32"
    if column.null_count:
        return "has null norms"
    norms = column.to_numpy()
    if not np.isfinite(norms).all() or (norms < 0).any():
        return "has a NaN, infinite or negative norm"
    return None


def _vector_problem(column: pa.ChunkedArray, value_type: pa.DataType, dim: int) -> str | None:
    kind = column.type
    if (not pa.types.is_fixed_size_list(kind) or kind.value_type != value_type
            or kind.list_size != dim):
        return f"has vectors of type {kind}, not fixed_size_list<{value_type}>[{dim}]"
    values = column.combine_chunks().flatten()
    if column.null_count or values.null_count:
        return "has null vectors"
    if not np.isfinite(values.to_numpy(zero_copy_only=False)).all():
        return "has NaN or infinite vector values"
    return None


class RecordCheck:
    """What one collection's log records must hold, from its config and metadata schema.
    ``check`` takes records in log order: the schema grows as replay will grow it."""

    def __init__(self, manifest: Path, config: dict, schema: pa.Schema):
        self.manifest = manifest
        self.code_size = _positive_int(config, "code_size", manifest)
        self.dim = _positive_int(config, "dim", manifest)
        stored = config.get("store_vectors")
        if stored is not None and stored not in VECTOR_TYPES:
            raise DataLoss(f"{manifest}: the collection config has an unknown "
                           f"store_vectors dtype: {stored!r}")
        self.vector_type = VECTOR_TYPES.get(stored)
        self.rescore_config = config.get("rescore_codec")
        self.schema = schema

    @cached_property
    def rescore_code_size(self) -> int:
        """Bytes per row of the rescoring codec (built from its config when first asked)."""
        try:
            return codec_from_config(self.rescore_config).code_size
        except (KeyError, ValueError, TypeError) as exc:
            raise DataLoss(f"{self.manifest}: the collection's rescore_codec config cannot "
                           f"be rebuilt: {exc}") from exc

    def check(self, records: list[WalRecord]) -> None:
        """DataLoss naming the first of ``records`` the collection could not have written."""
        for record in records:
            problem = self._problem(record)
            if problem is not None:
                raise DataLoss(f"{record.where()} {problem}; vecstore never writes such a "
                               "record, so the log was damaged or forged")

    def _problem(self, record: WalRecord) -> str | None:
        table = record.table
        if table.num_rows == 0:
            return "holds no rows"
        if len(set(table.column_names)) != table.num_columns:
            return f"repeats a column name: {table.column_names}"
        problem = _id_problem(table)
        if problem is None and record.op == OP_DELETE:
            return None if table.num_columns == 1 else "deletes ids but holds other columns"
        return problem or self._stored_problem(table) or self._metadata_problem(table)

    def _expected(self) -> list[str]:
        names = [rows.ID, rows.CODE, rows.NORM]
        if self.vector_type is not None:
            names.append(rows.VECTOR)
        if self.rescore_config:
            names.append(rows.RESCORE_CODE)
        return names

    def _stored_problem(self, table: pa.Table) -> str | None:
        expected = self._expected()
        present = [n for n in table.column_names if n in rows.RESERVED]
        if sorted(present) != sorted(expected):
            return f"has the columns {present}, the collection writes {expected}"
        problem = (_binary_problem(table.column(rows.CODE), rows.CODE, self.code_size)
                   or _norm_problem(table.column(rows.NORM)))
        if problem is None and self.vector_type is not None:
            problem = _vector_problem(table.column(rows.VECTOR), self.vector_type, self.dim)
        if problem is None and self.rescore_config:
            problem = _binary_problem(table.column(rows.RESCORE_CODE), rows.RESCORE_CODE,
                                      self.rescore_code_size)
        return problem

    def _metadata_problem(self, table: pa.Table) -> str | None:
        meta = table.drop_columns([n for n in table.column_names if n in rows.RESERVED])
        if not meta.num_columns:
            return None
        untyped = [f.name for f in meta.schema if pa.types.is_null(f.type)]
        if untyped:
            return f"has the metadata field {untyped[0]!r} of type null"
        try:
            self.schema, _ = metadata.merge_schema(self.schema, meta)
        except (ValueError, pa.ArrowException) as exc:
            return f"has metadata that does not fit the collection's schema: {exc}"
        return None


