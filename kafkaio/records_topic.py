"""The records topic's wire format: what enrich emits and how store reads it back. One place for
both sides, so they cannot drift.

Enrich emits, per fold, one message per batch of records of one kind: an Arrow IPC stream whose
schema is derived from the contracts' Struct (field names, order and types; ``X | None`` is the
only nullable). Store checks each batch against that schema — types, nulls, Literal values: what
msgspec would check — and inserts the batches' Arrow columns as they are, with no Python object
per row. Messages of one Struct each (msgpack; what enrich sent before) are still read.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from contracts import kafka as k
from contracts.kafka import Message
from contracts.records import (
    MONEY_PRECISION,
    MONEY_SCALE,
    CallLeg,
    CallRecord,
    Output,
    Quarantined,
    call_leg_decoder,
    call_record_decoder,
    quarantined_decoder,
)

MESSAGE_ROWS = 1_000
"""Rows per message at most: a batch of call rows stays well under Kafka's 1 MB message limit."""

MESSAGE_BYTES = 512 << 10
"""A batch encoding to more than this is split in two (long strings: quarantined frames)."""


class RecordsError(ValueError):
    """A records-topic message that is not what its kind says: undecodable or failing the schema."""


def _arrow_type(t: msgspec.inspect.Type) -> tuple[pa.DataType, bool]:
    """Arrow type of a Struct field's type, and whether it is nullable."""
    if isinstance(t, msgspec.inspect.UnionType):
        kinds = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        if len(kinds) == 1 and len(t.types) == 2:
            return _arrow_type(kinds[0])[0], True
    elif isinstance(t, (msgspec.inspect.StrType, msgspec.inspect.LiteralType)):
        return pa.string(), False
    elif isinstance(t, msgspec.inspect.BoolType):
        return pa.bool_(), False
    elif isinstance(t, msgspec.inspect.IntType):
        return pa.int64(), False
    elif isinstance(t, msgspec.inspect.FloatType):
        return pa.float64(), False
    elif isinstance(t, msgspec.inspect.DecimalType):
        return pa.decimal128(MONEY_PRECISION, MONEY_SCALE), False
    elif isinstance(t, msgspec.inspect.VarTupleType):
        return pa.list_(pa.field("item", _arrow_type(t.item_type)[0], nullable=False)), False
    raise TypeError(f"no Arrow type for {t!r}: extend kafkaio.records_topic._arrow_type")


@dataclass(frozen=True, eq=False)  # one object per kind: hashed by identity
class Kind:
    """One kind of record on the topic: its Struct, the ClickHouse table, both message kinds."""

    table: str
    struct: type[msgspec.Struct]
    batch_kind: bytes  # an Arrow IPC stream of rows
    record_kind: bytes  # one msgpack Struct (read only)
    decoder: Any
    schema: pa.Schema
    literals: tuple[tuple[str, pa.Array], ...]  # Literal fields and their allowed values
    defaults: dict[str, Any]  # field -> its default: what a writer that predates it meant

    @classmethod
    def of(cls, table: str, struct: type[msgspec.Struct], batch_kind: bytes, record_kind: bytes,
           decoder: Any) -> Kind:
        info = msgspec.inspect.type_info(struct)
        assert isinstance(info, msgspec.inspect.StructType)
        fields, literals, defaults = [], [], {}
        for f in info.fields:
            if f.default is not msgspec.NODEFAULT:
                defaults[f.name] = f.default
            typ, nullable = _arrow_type(f.type)
            fields.append(pa.field(f.name, typ, nullable=nullable))
            lit = f.type
            if isinstance(lit, msgspec.inspect.UnionType):
                lit = next(x for x in lit.types if not isinstance(x, msgspec.inspect.NoneType))
            if isinstance(lit, msgspec.inspect.LiteralType):
                literals.append((f.name, pa.array(lit.values, pa.string())))
        return cls(table, struct, batch_kind, record_kind, decoder, pa.schema(fields),
                   tuple(literals), defaults)


CALLS = Kind.of("calls", CallRecord, k.KIND_CALL_BATCH, k.KIND_CALL, call_record_decoder)
LEGS = Kind.of("call_legs", CallLeg, k.KIND_LEG_BATCH, k.KIND_LEG, call_leg_decoder)
QUARANTINE = Kind.of("quarantine", Quarantined, k.KIND_QUARANTINED_BATCH, k.KIND_QUARANTINED,
                     quarantined_decoder)
KINDS = (CALLS, LEGS, QUARANTINE)
BY_MESSAGE_KIND: dict[bytes, Kind] = {
    **{kind.batch_kind: kind for kind in KINDS}, **{kind.record_kind: kind for kind in KINDS}}
"""kind header -> the Kind of a records-topic message, batch or single record."""
_BY_STRUCT: dict[type, Kind] = {kind.struct: kind for kind in KINDS}


# -- enrich's side ------------------------------------------------------------------------------


def table(kind: Kind, items: Sequence[msgspec.Struct]) -> pa.Table:
    """Records of one Struct as an Arrow table of ``kind.schema``."""
    schema = kind.schema
    if not items:
        return schema.empty_table()
    columns = zip(*map(msgspec.structs.astuple, items), strict=True)
    try:
        arrays = [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)]
    except (pa.ArrowInvalid, pa.ArrowTypeError, decimal.InvalidOperation) as e:
        raise RecordsError(f"{kind.struct.__name__} rows do not fit their schema: {e}") from None
    return pa.Table.from_arrays(arrays, schema=schema)


def encode(data: pa.Table) -> bytes:
    """An Arrow IPC stream of the table (one record batch)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data, max_chunksize=max(data.num_rows, 1))
    return bytes(sink.getvalue())


def _chunk_messages(kind: Kind, items: Sequence[Any]) -> Iterable[Message]:
    value = encode(table(kind, items))
    if len(value) > MESSAGE_BYTES and len(items) > 1:
        half = len(items) // 2
        yield from _chunk_messages(kind, items[:half])
        yield from _chunk_messages(kind, items[half:])
        return
    first = items[0]
    if isinstance(first, Quarantined):
        key, ts = k.call_key(first.pbx_id, ""), max(q.received_at for q in items)
    else:
        key, ts = k.call_key(first.pbx_id, first.linkedid), max(r.end for r in items)
    yield key, value, kind.batch_kind, ts


def messages(outputs: Iterable[Output]) -> list[Message]:
    """What enrich sends for one fold's outputs: per kind, batches of at most
    :data:`MESSAGE_ROWS` rows (and :data:`MESSAGE_BYTES`), each keyed by its first record's call
    (the batches spread over the partitions; replays collapse by call id and version)."""
    by_kind: dict[type, list[Any]] = {}
    for o in outputs:
        by_kind.setdefault(type(o), []).append(o)
    out: list[Message] = []
    for struct, items in by_kind.items():
        kind = _BY_STRUCT[struct]
        for i in range(0, len(items), MESSAGE_ROWS):
            out.extend(_chunk_messages(kind, items[i : i + MESSAGE_ROWS]))
    return out


# -- store's side -------------------------------------------------------------------------------


def decode(kind: Kind, value: bytes) -> pa.Table:
    """A batch message's rows, checked against ``kind.schema``; RecordsError if undecodable or
    failing it (wrong columns or types, a null where the Struct has none, a value outside a
    Literal)."""
    try:
        data = pa.ipc.open_stream(value).read_all()
        data.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise RecordsError(f"not an Arrow IPC stream of {kind.struct.__name__} rows: {e}") from None
    if not data.schema.equals(kind.schema):
        data = _with_defaults(kind, data)
    for f, column in zip(kind.schema, data.columns, strict=True):
        if not f.nullable and column.null_count:
            raise RecordsError(f"{kind.struct.__name__}.{f.name}: {column.null_count} nulls")
    for name, allowed in kind.literals:
        column = data.column(name)
        # index_in gives null for a value outside the set (and for a null, allowed or not)
        if pc.index_in(column, value_set=allowed).null_count > column.null_count:
            ok = pc.is_in(column, value_set=allowed, skip_nulls=True)
            bad = pc.filter(column, pc.invert(ok)).unique().to_pylist()[:5]
            raise RecordsError(f"{kind.struct.__name__}.{name}: not one of its values: {bad}")
    return data


def _with_defaults(kind: Kind, data: pa.Table) -> pa.Table:
    """A batch written before the Struct gained fields with defaults, those fields added with
    their defaults (as msgspec decodes an older msgpack record); RecordsError for any other
    schema."""
    names = set(data.column_names)
    if names <= set(kind.schema.names) and all(
            f.name in names or f.name in kind.defaults for f in kind.schema):
        columns = [data.column(f.name) if f.name in names
                   else pa.array([kind.defaults[f.name]] * data.num_rows, f.type)
                   for f in kind.schema]
        try:
            upgraded = pa.Table.from_arrays(columns, schema=kind.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        else:
            if all(data.schema.field(n).equals(kind.schema.field(n)) for n in names):
                return upgraded
    raise RecordsError(f"schema is not {kind.struct.__name__}'s: got {_describe(data.schema)}")


def decode_record(kind: Kind, value: bytes) -> pa.Table:
    """A one-record message (msgpack Struct) as a one-row table; RecordsError if undecodable."""
    try:
        return table(kind, [kind.decoder.decode(value)])
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise RecordsError(str(e)) from None


def records(kind: Kind, data: pa.Table) -> list[Any]:
    """Rows of a table of ``kind.schema`` back as Structs (few rows: alerts, quarantine, tests)."""
    return msgspec.convert(data.to_pylist(), list[kind.struct])  # type: ignore[name-defined]


def _describe(schema: pa.Schema) -> str:
    text = ", ".join(f"{f.name}: {f.type}" + ("" if f.nullable else " not null") for f in schema)
    return text if len(text) <= 300 else text[:297] + "..."
