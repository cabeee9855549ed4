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

A row whose filter value is null does not match. Dicts and lists nest at most
MAX_FILTER_DEPTH (32) levels deep in a filter; values must fit the field's Arrow type
(an integer beyond int64 is InvalidArgument).
"""

from __future__ import annotations

import collections
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from vecstore.errors import InvalidArgument
from vecstore.rows import RESERVED

EMPTY_SCHEMA = pa.schema([])
# Deepest nesting of dicts and lists in the dict form of a filter (the form itself needs 3).
MAX_FILTER_DEPTH = 32
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
            if not isinstance(values, pa.Array | pa.ChunkedArray) and np.ndim(values) == 0:
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
    columns = [_storable_column(field.name, column)
               for field, column in zip(metadata.schema, metadata.columns, strict=True)]
    schema = pa.schema([field.with_type(column.type)
                        for field, column in zip(metadata.schema, columns, strict=True)])
    metadata = pa.Table.from_arrays(columns, schema=schema)
    _check_storable(metadata)
    return metadata


def _plain_type(name: str, type_: pa.DataType) -> pa.DataType:
    """``type_`` with every view type replaced by its plain counterpart and every
    run-end-encoded type by its value type; InvalidArgument for types never stored."""
    if pa.types.is_string_view(type_):
        return pa.string()
    if pa.types.is_binary_view(type_):
        return pa.binary()
    if pa.types.is_run_end_encoded(type_):
        return _plain_type(name, type_.value_type)
    if pa.types.is_union(type_):
        raise InvalidArgument(f"metadata field {name!r} has type {type_}: union columns "
                              "cannot be stored")
    if pa.types.is_list_view(type_) or pa.types.is_list(type_):
        return pa.list_(_plain_field(name, type_.value_field))
    if pa.types.is_large_list_view(type_) or pa.types.is_large_list(type_):
        return pa.large_list(_plain_field(name, type_.value_field))
    if pa.types.is_fixed_size_list(type_):
        return pa.list_(_plain_field(name, type_.value_field), type_.list_size)
    if pa.types.is_map(type_):
        return pa.map_(_plain_field(name, type_.key_field), _plain_field(name, type_.item_field),
                       type_.keys_sorted)
    if pa.types.is_struct(type_):
        return pa.struct([_plain_field(name, type_.field(i)) for i in range(type_.num_fields)])
    if pa.types.is_dictionary(type_):
        return pa.dictionary(type_.index_type, _plain_type(name, type_.value_type),
                             type_.ordered)
    return type_


def _plain_field(name: str, field: pa.Field) -> pa.Field:
    return field.with_type(_plain_type(name, field.type))


def _storable_column(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` as its plain type (see ``_plain_type``): the same values, stored alike."""
    target = _plain_type(name, column.type)
    try:
        if pa.types.is_run_end_encoded(column.type):
            column = pc.run_end_decode(column)
        if pa.types.is_list_view(column.type) or pa.types.is_large_list_view(column.type):
            large = pa.types.is_large_list_view(column.type)
            column = pa.chunked_array(
                [_list_of_view(chunk) for chunk in column.chunks],
                (pa.large_list if large else pa.list_)(column.type.value_field))
        if column.type != target:
            column = column.cast(target)
        column.validate()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise InvalidArgument(f"metadata field {name!r} has type {column.type}, which "
                              f"cannot be stored: {_short(exc)}") from exc
    return column


def _list_of_view(array: pa.Array) -> pa.Array:
    """A list (or large list) array with the values of the list-view ``array``: the same
    lists, their values laid out in order (pyarrow's cast leaves invalid offsets)."""
    large = pa.types.is_large_list_view(array.type)
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64 if large else np.int32)
    make = pa.LargeListArray if large else pa.ListArray
    kind = pa.large_list if large else pa.list_
    return make.from_arrays(pa.array(offsets), pc.list_flatten(array),
                            type=kind(array.type.value_field), mask=array.is_null())


def _check_storable(metadata: pa.Table) -> None:
    """Raise InvalidArgument unless one row of ``metadata`` survives what storage does
    with rows: take, concatenate, and the Arrow IPC stream and file formats."""
    sample = metadata.slice(0, 1)
    try:
        sample = pa.concat_tables([sample, sample.take([0])])
        for new, open_ in ((pa.ipc.new_stream, pa.ipc.open_stream),
                           (pa.ipc.new_file, pa.ipc.open_file)):
            sink = pa.BufferOutputStream()
            with new(sink, sample.schema) as writer:
                writer.write_table(sample)
            open_(sink.getvalue()).read_all().validate(full=True)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise InvalidArgument(f"metadata of types {metadata.schema.types} cannot be "
                              f"stored: {_short(exc)}") from exc


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "…"


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


# Filters known to give booleans for a schema (the check evaluates them on an empty table,
# a fixed cost of about half a millisecond), the last VALIDATED_FILTERS used.
VALIDATED_FILTERS = 256
_VALIDATED: collections.OrderedDict = collections.OrderedDict()
_VALIDATED_LOCK = threading.Lock()


def as_filter(filter, schema: pa.Schema) -> pc.Expression | None:
    """A validated boolean expression from an Expression or the dict form (None passes)."""
    if filter is None:
        return None
    if not schema.names:
        raise InvalidArgument("the collection has no metadata fields to filter on")
    if isinstance(filter, dict):
        check_filter_depth(filter, "filter")
        try:
            expression = _from_dict(filter, schema)
        except (OverflowError, RecursionError) as exc:
            raise InvalidArgument(f"filter has a value Arrow cannot hold: {_short(exc)}") from exc
    elif isinstance(filter, pc.Expression):
        expression = filter
    else:
        raise InvalidArgument(
            f"filter must be a pyarrow.compute.Expression or a dict, got {type(filter).__name__}"
        )
    key = (str(expression), id(schema))
    with _VALIDATED_LOCK:
        known = _VALIDATED.get(key)
        if known is not None:
            _VALIDATED.move_to_end(key)
    if known is not None and known[0] is schema and known[1].equals(expression):
        return expression
    result_type = _evaluate(expression, conform(None, schema, 0)).type
    if not pa.types.is_boolean(result_type):
        raise InvalidArgument(f"filter must give booleans, it gives {result_type}")
    with _VALIDATED_LOCK:
        _VALIDATED[key] = (schema, expression)
        while len(_VALIDATED) > VALIDATED_FILTERS:
            _VALIDATED.popitem(last=False)
    return expression


def filter_depth(value) -> int:
    """How deeply dicts and lists nest in ``value`` (a scalar is 0), counted without
    recursion and only up to MAX_FILTER_DEPTH + 1."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_FILTER_DEPTH:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_filter_depth(filter, field: str) -> None:
    """Raise InvalidArgument when dicts and lists nest deeper than MAX_FILTER_DEPTH."""
    if filter_depth(filter) > MAX_FILTER_DEPTH:
        raise InvalidArgument(f"{field} nests dicts and lists deeper than "
                              f"{MAX_FILTER_DEPTH} levels")


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
                if op == "in" and not isinstance(value, list | tuple | set | frozenset):
                    raise InvalidArgument(f"filter operator 'in' on {name!r} takes a list, "
                                          f"got {type(value).__name__}")
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
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError,
            RecursionError) as exc:
        raise InvalidArgument(f"filter cannot be applied to the metadata: {_short(exc)}") from exc


def filter_mask(expression: pc.Expression, metadata: pa.Table) -> np.ndarray:
    """Rows (n,) bool of ``metadata`` that match ``expression``; nulls do not match."""
    if metadata.num_rows == 0:
        return np.zeros(0, dtype=bool)
    match = _evaluate(expression, metadata)
    return pc.fill_null(match, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)
