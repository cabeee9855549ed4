"""Typed metadata columns stored beside the vectors, and search filters over them.

A collection's metadata schema grows as ``add`` brings new fields; a field keeps the
Arrow type it first had, and later values must cast to it safely. Rows added without a
field hold null there.

Filters are pyarrow compute expressions (``pc.field("year") >= 2020``) or a small dict
form whose keys are all required to hold::

    {"lang": "en"}                        lang == "en"
    {"lang": ["en", "de"]}                lang is one of the values
    {"year": {">=": 2020, "<": 2024}}     comparisons: == != < <= > >= in
    {"source": None}                      source is null

A row whose filter value is null does not match.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from vecstore.errors import InvalidArgument
from vecstore.rows import RESERVED

EMPTY_SCHEMA = pa.schema([])
_COMPARISONS = {
    "==": lambda f, v: f == v, "!=": lambda f, v: f != v,
    "<": lambda f, v: f < v, "<=": lambda f, v: f <= v,
    ">": lambda f, v: f > v, ">=": lambda f, v: f >= v,
    "in": lambda f, v: f.isin(list(v)),
}


def as_metadata(metadata, n: int) -> pa.Table | None:
    """``metadata`` (a dict of n-long sequences, a pyarrow Table or RecordBatch) as a Table.

    Raises InvalidArgument for reserved or non-string names, wrong lengths, nested
    dicts that Arrow cannot type, and columns with no values to infer a type from.
    """
    if metadata is None:
        return None
    if isinstance(metadata, pa.RecordBatch):
        metadata = pa.Table.from_batches([metadata])
    if isinstance(metadata, dict):
        for name, values in metadata.items():
            if not isinstance(name, str) or not name:
                raise InvalidArgument(f"metadata field names must be non-empty strings: {name!r}")
            if np.ndim(values) == 0 and not isinstance(values, pa.Array | pa.ChunkedArray):
                raise InvalidArgument(f"metadata field {name!r} must be a sequence of {n} values")
        try:
            metadata = pa.table({name: (values if isinstance(values, pa.Array | pa.ChunkedArray)
                                        else pa.array(values))
                                 for name, values in metadata.items()})
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            raise InvalidArgument(f"metadata cannot be stored as Arrow columns: {exc}") from exc
    if not isinstance(metadata, pa.Table):
        raise InvalidArgument(
            f"metadata must be a dict of columns or a pyarrow Table, got {type(metadata).__name__}"
        )
    if metadata.num_rows != n:
        raise InvalidArgument(f"metadata has {metadata.num_rows} rows for {n} vectors")
    for field in metadata.schema:
        if field.name in RESERVED:
            raise InvalidArgument(f"metadata field name {field.name!r} is reserved: {RESERVED}")
        if pa.types.is_null(field.type):
            raise InvalidArgument(
                f"metadata field {field.name!r} holds only nulls; its type cannot be inferred "
                "(pass a typed pyarrow array)"
            )
    if len(set(metadata.column_names)) != metadata.num_columns:
        raise InvalidArgument(f"duplicate metadata field names: {metadata.column_names}")
    return metadata.replace_schema_metadata(None)


def merge_schema(schema: pa.Schema, metadata: pa.Table) -> tuple[pa.Schema, pa.Table]:
    """The schema grown by ``metadata``'s new fields, and ``metadata`` cast to it.

    Raises InvalidArgument when a known field's values do not cast safely to its type.
    """
    fields = list(schema)
    known = {field.name: field for field in schema}
    for field in metadata.schema:
        if field.name not in known:
            fields.append(pa.field(field.name, field.type))
    merged = pa.schema(fields)
    return merged, conform(metadata, merged, metadata.num_rows)


def conform(metadata: pa.Table | None, schema: pa.Schema, n: int) -> pa.Table:
    """``metadata`` (n rows, or None for no fields) with exactly ``schema``'s fields, in
    order; absent fields are null."""
    columns = []
    for field in schema:
        if metadata is not None and field.name in metadata.column_names:
            column = metadata.column(field.name)
            if column.type != field.type:
                try:
                    column = column.cast(field.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise InvalidArgument(
                        f"metadata field {field.name!r} has type {field.type}; values of type "
                        f"{column.type} do not convert: {exc}"
                    ) from exc
            columns.append(column)
        else:
            columns.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def as_filter(filter, schema: pa.Schema) -> pc.Expression | None:
    """A validated boolean expression from an Expression or the dict form (None passes)."""
    if filter is None:
        return None
    if not schema.names:
        raise InvalidArgument("the collection has no metadata fields to filter on")
    if isinstance(filter, dict):
        expression = _from_dict(filter, schema)
    elif isinstance(filter, pc.Expression):
        expression = filter
    else:
        raise InvalidArgument(
            f"filter must be a pyarrow.compute.Expression or a dict, got {type(filter).__name__}"
        )
    result_type = _evaluate(expression, conform(None, schema, 0)).type
    if not pa.types.is_boolean(result_type):
        raise InvalidArgument(f"filter must give booleans, it gives {result_type}")
    return expression


def _from_dict(filter: dict, schema: pa.Schema) -> pc.Expression:
    if not filter:
        raise InvalidArgument("filter dict is empty")
    terms = []
    for name, condition in filter.items():
        if name not in schema.names:
            raise InvalidArgument(f"filter names unknown metadata field {name!r}; "
                                  f"known fields: {schema.names}")
        field = pc.field(name)
        if condition is None:
            terms.append(field.is_null())
        elif isinstance(condition, dict):
            if not condition:
                raise InvalidArgument(f"filter on {name!r} has no conditions")
            for op, value in condition.items():
                if op not in _COMPARISONS:
                    raise InvalidArgument(f"unknown filter operator {op!r} on {name!r}; "
                                          f"use one of {sorted(_COMPARISONS)}")
                terms.append(_COMPARISONS[op](field, value))
        elif isinstance(condition, list | tuple | set | frozenset):
            terms.append(field.isin(list(condition)))
        else:
            terms.append(field == condition)
    expression = terms[0]
    for term in terms[1:]:
        expression = expression & term
    return expression


def _evaluate(expression: pc.Expression, metadata: pa.Table) -> pa.ChunkedArray:
    try:
        return ds.dataset(metadata).to_table(columns={"match": expression}).column("match")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise InvalidArgument(f"filter cannot be applied to the metadata: {exc}") from exc


def filter_mask(expression: pc.Expression, metadata: pa.Table) -> np.ndarray:
    """Rows (n,) bool of ``metadata`` that match ``expression``; nulls do not match."""
    if metadata.num_rows == 0:
        return np.zeros(0, dtype=bool)
    match = _evaluate(expression, metadata)
    return pc.fill_null(match, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)
