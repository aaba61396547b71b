"""Raw JSON records of one dataset -> one Arrow table, a flush at a time.

The hot path never decodes per message: a flush's records are decoded in one msgspec call into
structs generated from the dataset's declaration, then each column is built with one pa.array.
If that fails (schema drift, a bad value), the batch is bisected so only the bad records are
quarantined and the good ones keep the fast path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import repeat
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from ingest.events import Rejected, Rows
from ingest.schema import APPROX_SUFFIX, Column, ColumnType, Dataset

__all__ = ["BuildResult", "build_table", "values_table"]

_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_NULL = msgspec.Raw(b"null")
_TS = pa.timestamp("ns", tz="UTC")
_TS_NAIVE = pa.timestamp("ns")

# What msgspec decodes each logical type into; lax mode (strict=False) accepts numbers sent as
# strings, which providers do (BlockDB gas_used, Bitquery Block.Number).
_DECODE: dict[ColumnType, Any] = {
    ColumnType.INT64: _INT64 | None,
    ColumnType.FLOAT64: float | None,
    ColumnType.BOOL: bool | None,
    ColumnType.STRING: str | None,
    ColumnType.TEXT: str | int | float | bool | None,
    ColumnType.TIMESTAMP: str | None,
    ColumnType.BIGINT_TEXT: msgspec.Raw,  # raw text keeps every digit of any size
    ColumnType.DECIMAL_TEXT: msgspec.Raw,
    ColumnType.JSON: msgspec.Raw,
    ColumnType.LIST_STRING: list[str] | None,
}


@dataclass(frozen=True, slots=True)
class BuildResult:
    table: pa.Table
    rejected: list[Rejected]
    positions: pa.Array = field(default_factory=lambda: pa.array([], pa.int64()))  # per row, journal


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to decode one dataset: the generated struct and a getter per path."""

    decoder: msgspec.json.Decoder[Any]
    one: msgspec.json.Decoder[Any]
    getters: dict[tuple[str, ...], Callable[[list[Any]], list[Any]]]


def _getter(attrs: list[str]) -> Callable[[list[Any]], list[Any]]:
    first = attrgetter(attrs[0])
    rest = attrs[1:]

    def get(objs: list[Any]) -> list[Any]:
        vals = list(map(first, objs))
        for attr in rest:  # nested objects may be absent or null
            vals = [None if v is None else getattr(v, attr) for v in vals]
        return vals

    return get


@cache
def _plan(dataset: Dataset) -> _Plan:
    leaves: dict[tuple[str, ...], Any] = {c.path: _DECODE[c.type] for c in dataset.payload_columns}
    if dataset.tracing_id:
        leaves.setdefault(dataset.tracing_id, str | int | None)
    if dataset.reorg_flag:
        leaves.setdefault(dataset.reorg_flag, bool | None)

    counter = iter(range(1 << 30))
    getters: dict[tuple[str, ...], Callable[[list[Any]], list[Any]]] = {}

    def make(prefix: tuple[str, ...]) -> type[msgspec.Struct]:
        fields: list[tuple[str, Any, Any]] = []
        children = sorted(
            {p[len(prefix)] for p in leaves if p[: len(prefix)] == prefix and len(p) > len(prefix)}
        )
        for key in children:
            path = (*prefix, key)
            attr = f"f{next(counter)}"  # JSON keys need not be identifiers: map them by name
            if path in leaves:
                typ = leaves[path]
                default = _NULL if typ is msgspec.Raw else None
                fields.append((attr, typ, msgspec.field(default=default, name=key)))
            else:
                fields.append((attr, make(path) | None, msgspec.field(default=None, name=key)))
            attr_path[path] = attr
        return msgspec.defstruct(f"{dataset.name}_{len(prefix)}", fields, kw_only=True)

    attr_path: dict[tuple[str, ...], str] = {}
    root = make(())
    for path in leaves:
        getters[path] = _getter([attr_path[path[: i + 1]] for i in range(len(path))])
    return _Plan(
        decoder=msgspec.json.Decoder(list[root], strict=False),  # type: ignore[valid-type]
        one=msgspec.json.Decoder(root, strict=False),
        getters=getters,
    )


def _raw_text(values: list[Any], *, numeric: bool) -> list[str | None]:
    out: list[str | None] = []
    for raw in values:
        text = b"null" if raw is None else bytes(raw)  # None: a parent object was absent
        if text == b"null":
            out.append(None)
        elif text[:1] == b'"':
            # Only escaped strings need a real JSON decode; digits never carry escapes.
            out.append(msgspec.json.decode(text, type=str) if b"\\" in text else text[1:-1].decode())
        elif numeric and text[:1] in (b"{", b"[", b"t", b"f"):
            raise ValueError(f"expected a number, got {text[:40]!r}")
        else:
            out.append(text.decode())
    return out


def _timestamps(values: list[str | None]) -> pa.Array:
    strings = pa.array(values, pa.string())
    try:
        return pc.cast(strings, _TS)
    except pa.ArrowInvalid:
        # No zone offset given: provider times are UTC (PROTOCOLS.md), so read them as UTC.
        return pc.assume_timezone(pc.cast(strings, _TS_NAIVE), "UTC")


def _column(col: Column, values: list[Any]) -> list[tuple[str, pa.Array]]:
    t = col.type
    if t is ColumnType.TIMESTAMP:
        return [(col.name, _timestamps(values))]
    if t in (ColumnType.BIGINT_TEXT, ColumnType.DECIMAL_TEXT):
        text = pa.array(_raw_text(values, numeric=True), pa.string())
        return [(col.name, text), (col.name + APPROX_SUFFIX, pc.cast(text, pa.float64()))]
    if t is ColumnType.JSON:
        return [(col.name, pa.array(_raw_text(values, numeric=False), pa.string()))]
    if t is ColumnType.TEXT and any(v is not None and type(v) is not str for v in values):
        values = [v if v is None or type(v) is str else msgspec.json.encode(v).decode() for v in values]
    return [(col.name, pa.array(values, col.arrow_type))]


def _split_part(values: pa.Array, part: int) -> pa.Array:
    """Part `part` of "A_B_C_D..." text (the last part keeps the rest); null where there is none.

    Padding with separators first makes every row split into at least four parts, so the
    lookup needs no per-row bounds check (CoinAPI: EXCHANGE_TYPE_BASE_QUOTE).
    """
    padded = pc.binary_join_element_wise(values, "___", "")
    piece = pc.list_element(pc.split_pattern(padded, "_", max_splits=3), part)
    if part == 3:
        piece = pc.utf8_rtrim(piece, "_")
    return pc.if_else(pc.equal(piece, ""), pa.scalar(None, pa.string()), piece)


def _expand(chunks: Sequence[Rows], get: Callable[[Rows], Any], n: int) -> list[Any]:
    if n == len(chunks):  # one record per frame, the common case: skip the repeat machinery
        return list(map(get, chunks))
    return [v for ch in chunks for v in repeat(get(ch), len(ch.records))]


def _derived_tracing_ids(dataset: Dataset, arrays: dict[str, pa.Array], raws: list[bytes]) -> pa.Array:
    """A deterministic id from the event's on-chain identity: the same event twice, the same id."""
    parts = [pc.fill_null(pc.cast(arrays[k], pa.string()), "") for k in dataset.identity]
    joined = pc.binary_join_element_wise(*parts, "|").to_pylist()
    blank = "|" * (len(parts) - 1)
    return pa.array(
        [
            # Nothing of the identity was selected: the row's own bytes are all there is.
            hashlib.blake2b(key.encode() if key != blank else raw, digest_size=16).hexdigest()
            for key, raw in zip(joined, raws, strict=True)
        ],
        pa.string(),
    )


def _dedup_keys(
    dataset: Dataset, arrays: dict[str, pa.Array], tracing: pa.Array, raws: list[bytes]
) -> pa.Array:
    if dataset.key:
        parts = [pc.fill_null(pc.cast(arrays[k], pa.string()), "") for k in dataset.key]
        natural = pc.binary_join_element_wise(*parts, "|")
    else:  # no natural key declared: the record's own bytes are its identity
        natural = pa.array([hashlib.blake2b(r, digest_size=16).hexdigest() for r in raws], pa.string())
    return pc.coalesce(tracing, natural)


def _build(dataset: Dataset, chunks: Sequence[Rows]) -> pa.Table:
    plan = _plan(dataset)
    raws = [r for ch in chunks for r in ch.records]
    structs = plan.decoder.decode(b"[" + b",".join(raws) + b"]")
    # What _raw keeps: the bytes as received, where the protocol had to re-key a record.
    originals = (
        raws if all(ch.raw is None for ch in chunks) else [r for ch in chunks for r in (ch.raw or ch.records)]
    )
    n = len(raws)
    arrays: dict[str, pa.Array] = {}
    for col in dataset.columns:
        if col.split is not None:
            continue  # derived below, once its source column is built
        if col.context:
            values = _expand(chunks, lambda ch, name=col.name: ch.context.get(name), n)
        else:
            values = plan.getters[col.path](structs)
        arrays.update(_column(col, values))

    for col in dataset.columns:
        if col.split is not None:
            arrays[col.name] = _split_part(arrays[col.split[0]], col.split[1])
    if dataset.tracing_id:
        ids = plan.getters[dataset.tracing_id](structs)
        tracing = pa.array([None if v is None else str(v) for v in ids], pa.string())
    elif dataset.identity:
        tracing = _derived_tracing_ids(dataset, arrays, originals)
    else:
        tracing = pa.nulls(n, pa.string())
    chunk_reorg = pa.array(_expand(chunks, attrgetter("is_reorg"), n), pa.bool_())
    if dataset.reorg_flag:
        payload_reorg = pa.array(plan.getters[dataset.reorg_flag](structs), pa.bool_())
        reorg = pc.fill_null(pc.or_kleene(chunk_reorg, payload_reorg), True)
    else:
        reorg = chunk_reorg
    arrays.update(
        {
            "_provider": pa.array(_expand(chunks, attrgetter("provider"), n), pa.string()),
            "_dataset": pa.array([dataset.name] * n, pa.string()),
            "_subscription": pa.array(_expand(chunks, attrgetter("subscription"), n), pa.string()),
            "_received_at": pa.array(_expand(chunks, attrgetter("received_at"), n), _TS),
            "_event_time": arrays[dataset.event_time] if dataset.event_time else pa.nulls(n, _TS),
            "_tracing_id": tracing,
            "_is_reorg": reorg,
            "_dedup_key": _dedup_keys(dataset, arrays, tracing, raws),
            "_raw": pa.array(originals, pa.binary()).cast(pa.string()),
        }
    )
    return pa.Table.from_arrays([arrays[f.name] for f in dataset.arrow_schema], schema=dataset.arrow_schema)


def _split(chunks: Sequence[Rows]) -> list[Rows]:
    """One Rows per record, so bisection can isolate a single bad record."""
    out: list[Rows] = []
    for ch in chunks:
        for i, rec in enumerate(ch.records):
            out.append(
                Rows(
                    provider=ch.provider,
                    dataset=ch.dataset,
                    subscription=ch.subscription,
                    records=[rec],
                    received_at=ch.received_at,
                    context=ch.context,
                    is_reorg=ch.is_reorg,
                    raw=None if ch.raw is None else [ch.raw[i]],
                    position=ch.position,
                )
            )
    return out


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _positions(chunks: Sequence[Rows]) -> pa.Array:
    n = sum(len(ch.records) for ch in chunks)
    return pa.array(_expand(chunks, attrgetter("position"), n), pa.int64())


def build_table(dataset: Dataset, chunks: Sequence[Rows]) -> BuildResult:
    """Build one table from a flush; records that cannot be read come back as Rejected."""
    try:
        return BuildResult(_build(dataset, chunks), [], _positions(chunks))
    except (msgspec.MsgspecError, pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        records = _split(chunks)
        if len(records) == 1:
            rec = records[0]
            original = rec.raw[0] if rec.raw else rec.records[0]  # quarantine keeps the bytes as received
            reason = _reason(exc)
            rejected = Rejected(
                rec.provider, original, reason, rec.received_at, rec.subscription, dataset.name, rec.position
            )
            return BuildResult(dataset.arrow_schema.empty_table(), [rejected])
    mid = len(records) // 2
    left, right = build_table(dataset, records[:mid]), build_table(dataset, records[mid:])
    tables = [t for t in (left.table, right.table) if t.num_rows]
    table = pa.concat_tables(tables) if tables else dataset.arrow_schema.empty_table()
    positions = pa.concat_arrays([left.positions, right.positions])
    return BuildResult(table, left.rejected + right.rejected, positions)


def values_table(dataset: Dataset, values: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows of a dataset the pipeline builds itself (quarantine, gaps); times are ns integers."""
    columns = {f.name: pa.array([v.get(f.name) for v in values], f.type) for f in dataset.arrow_schema}
    return pa.Table.from_pydict(columns, schema=dataset.arrow_schema)
