"""Raw JSON records of one dataset -> one Arrow table, a flush at a time.

The hot path never decodes per message: a flush's records are decoded a block of a few thousand
at a time, in one msgspec call, into structs generated from the dataset's declaration; each
block's columns go to Arrow with one pa.array each, and the blocks are joined per column.
If that fails (schema drift, a bad value), the batch is bisected so only the bad records are
quarantined and the good ones keep the fast path.

This runs in a worker thread beside the event loop, so Python per row is kept out of it: values
are read from the structs with C-level map()s, per-frame values are converted once per frame and
repeated by Arrow, and JSON text (exact numbers, JSON columns, the raw record, timestamps) is
parsed by Arrow kernels, which release the GIL. Where a vectorised step meets a value it does not
handle, it falls back to the per-row code, which gives the same result or raises the same error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import accumulate, chain, repeat
from operator import attrgetter, is_, methodcaller
from typing import Annotated, Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from ingest.events import Rejected, Rows
from ingest.json_columns import JsonColumns, Values
from ingest.schema import APPROX_SUFFIX, Column, ColumnType, Dataset

__all__ = ["BuildResult", "build_table", "joined", "table_bytes", "values_table"]

_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_NULL = msgspec.Raw(b"null")
_TS = pa.timestamp("ns", tz="UTC")
_TS_NAIVE = pa.timestamp("ns")
_NULL_STRING = pa.scalar(None, pa.string())
_NOT_NUMBERS = pa.array([b"{", b"[", b"t", b"f"], pa.binary())  # first bytes of objects, arrays, bools
_FAST_PATH_ERRORS = (msgspec.MsgspecError, pa.ArrowException, ValueError, TypeError)
_INT_OR_NONE = {int, type(None)}
_RAW_TYPES = (ColumnType.BIGINT_TEXT, ColumnType.DECIMAL_TEXT, ColumnType.JSON)  # kept as msgspec.Raw
_BLOCK = 2048  # records decoded at a time, see _read_payload
# Arrow's JSON reader takes the GIL off the build of nested records, where msgspec makes a struct
# per object per row (Bitquery transfers: 3.4 vs 3.6 us of CPU a row, +14% rows/s in the daemon);
# flat records msgspec reads with less CPU (BlockDB transfers: 2.1 vs 1.9 us a row, -2% msg/s).
_ARROW_JSON_FLAT = False
_TRACING, _REORG = object(), object()  # keys of the tracing id and reorg flag among payload fields

# A payload field: its path, and how a block of its values becomes Arrow.
_Field = tuple[tuple[str, ...], Callable[[list[Any]], pa.Array]]

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
    """How to decode one dataset: the generated structs and where each path lives in them."""

    decoder: msgspec.json.Decoder[Any]
    attrs: dict[tuple[str, ...], str]  # struct attribute of every path, leaf or nested object
    empty: dict[tuple[str, ...], Any]  # an all-defaults instance of each nested object


@cache
def _plan(dataset: Dataset) -> _Plan:
    leaves: dict[tuple[str, ...], Any] = {c.path: _DECODE[c.type] for c in dataset.payload_columns}
    if dataset.tracing_id:
        leaves.setdefault(dataset.tracing_id, str | int | None)
    if dataset.reorg_flag:
        leaves.setdefault(dataset.reorg_flag, bool | None)

    counter = iter(range(1 << 30))
    attrs: dict[tuple[str, ...], str] = {}
    empty: dict[tuple[str, ...], Any] = {}

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
            attrs[path] = attr
        # gc=False: decoded values hold only scalars, string lists and other such structs, so no
        # cycles; untracked, a flush's hundreds of thousands of structs trigger no GC passes.
        struct = msgspec.defstruct(f"{dataset.name}_{len(prefix)}", fields, kw_only=True, gc=False)
        empty[prefix] = struct()
        return struct

    root = make(())
    return _Plan(
        decoder=msgspec.json.Decoder(list[root], strict=False),  # type: ignore[valid-type]
        attrs=attrs,
        empty=empty,
    )


class _Reader:
    """Values of payload paths across a block of decoded records; each nested level is read once."""

    def __init__(self, plan: _Plan, structs: list[Any]) -> None:
        self._plan = plan
        self._objects: dict[tuple[str, ...], list[Any]] = {(): structs}

    def _level(self, prefix: tuple[str, ...]) -> list[Any]:
        objs = self._objects.get(prefix)
        if objs is None:
            objs = list(map(attrgetter(self._plan.attrs[prefix]), self._level(prefix[:-1])))
            if None in objs:
                # A null or absent object reads as one with every field at its default (null).
                stand_in = self._plan.empty[prefix]
                objs = [stand_in if o is None else o for o in objs]
            self._objects[prefix] = objs
        return objs

    def values(self, path: tuple[str, ...]) -> list[Any]:
        return list(map(attrgetter(self._plan.attrs[path]), self._level(path[:-1])))


@dataclass(frozen=True, slots=True)
class _Frames:
    """A flush's chunks (frames) and how their records map to rows, for per-frame values."""

    chunks: list[Rows]  # only those holding records
    records: list[bytes]  # all their records, in order
    n: int  # rows
    run_ends: pa.Array | None  # each chunk's last row + 1; None when each chunk holds one record

    @classmethod
    def of(cls, chunks: Sequence[Rows]) -> _Frames:
        per_chunk = list(map(attrgetter("records"), chunks))
        lengths = list(map(len, per_chunk))
        if 0 in lengths:  # an empty chunk adds no row and so no per-frame value
            chunks = [ch for ch, k in zip(chunks, lengths, strict=True) if k]
            lengths = [k for k in lengths if k]
        records = list(chain.from_iterable(per_chunk))
        n = len(records)
        run_ends = None if n == len(chunks) else pc.cumulative_sum(pa.array(lengths, pa.int64()))
        return cls(list(chunks), records, n, run_ends)

    def runs(self, get: Callable[[Rows], Any]) -> tuple[list[Any], pa.Array | None]:
        """One value per run of rows, and the runs' ends (None: one run per row).

        When every chunk gives the very same object (provider, subscription, a shared context),
        the flush is one run: Arrow converts one value and repeats it.
        """
        values = list(map(get, self.chunks))
        if len(values) > 1 and all(map(is_, values, repeat(values[0]))):
            return values[:1], pa.array([self.n], pa.int64())
        return values, self.run_ends

    def column(self, get: Callable[[Rows], Any], typ: pa.DataType) -> pa.Array:
        values, ends = self.runs(get)
        return _repeat(pa.array(values, typ), ends)

    def positions(self) -> pa.Array:
        """Each row's journal position: its chunk's, or its own where a chunk spans frames."""
        spans = list(map(attrgetter("positions"), self.chunks))
        if spans.count(None) == len(spans):
            return self.column(attrgetter("position"), pa.int64())
        per_row = chain.from_iterable(
            repeat(ch.position, len(ch.records)) if span is None else span
            for ch, span in zip(self.chunks, spans, strict=True)
        )
        return pa.array(list(per_row), pa.int64())

    def constant(self, value: Any, typ: pa.DataType) -> pa.Array:
        if not self.n:
            return pa.array([], typ)
        return _repeat(pa.array([value], typ), pa.array([self.n], pa.int64()))


def _repeat(values: pa.Array, run_ends: pa.Array | None) -> pa.Array:
    """Value i repeated up to row run_ends[i]: run-end decoding, one pass in Arrow."""
    if run_ends is None:
        return values
    return pc.run_end_decode(pa.RunEndEncodedArray.from_arrays(run_ends, values))


def _binary(values: Sequence[Any]) -> pa.Array:
    """A binary array of msgspec.Raw values, which pa.array does not take: one join of their
    buffers, offsets from their lengths. Anything else is left to pa.array."""
    try:
        data = b"".join(values)
    except TypeError:
        return pa.array(values, pa.binary())
    offsets = list(accumulate(map(len, values), initial=0))
    if offsets[-1] != len(data) or len(data) >= 2**31:
        return pa.array(values, pa.binary())  # lengths not in bytes, or beyond 32-bit offsets
    offsets_buffer = pa.array(offsets, pa.int32()).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), len(values), [None, offsets_buffer, pa.py_buffer(data)])


def _json_text(values: list[Any]) -> list[str | None]:
    """Per row: the reference for _json_texts, and its fallback where a value needs it."""
    out: list[str | None] = []
    for raw in values:
        text = b"null" if raw is None else bytes(raw)  # None: a parent object was absent
        out.append(None if text == b"null" else text.decode())
    return out


def _json_texts(texts: pa.Array) -> pa.Array:
    """JSON: raw JSON values (a binary array) as their JSON text, as written: a string keeps its
    quotes and escapes (`"BlockhashNotFound"`, not `BlockhashNotFound`); JSON null -> null.

    _json_text by Arrow kernels; where the text is not UTF-8, _json_text raises the error it has.
    """
    try:
        strings = texts.cast(pa.string())  # UTF-8 checked
    except pa.ArrowInvalid:
        return pa.array(_json_text(texts.to_pylist()), pa.string())
    null = pc.equal(texts, b"null")
    return pc.if_else(null, _NULL_STRING, strings) if pc.any(null).as_py() else strings


def _raw_text(values: list[Any], *, numeric: bool) -> list[str | None]:
    """Per row: the reference for _raw_strings, and its fallback where a value needs it."""
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


def _raw_strings(texts: pa.Array, *, numeric: bool) -> pa.Array:
    """Raw JSON values (a binary array) as text: null -> null, strings unquoted, the rest as written.

    _raw_text by Arrow kernels, except where a value needs it: then _raw_text itself, which gives
    the same result or raises the error it always has (a bad escape, invalid UTF-8, not a number).
    """
    try:
        strings = _unquoted(texts, numeric=numeric)
    except _FAST_PATH_ERRORS:
        strings = None
    if strings is None:
        return pa.array(_raw_text(texts.to_pylist(), numeric=numeric), pa.string())
    return strings


def _unquoted(texts: pa.Array, *, numeric: bool) -> pa.Array | None:
    """_raw_text by kernels; None where a number should be and another JSON value is."""
    first = pc.binary_slice(texts, 0, 1)
    if numeric and pc.any(pc.is_in(first, value_set=_NOT_NUMBERS)).as_py():
        return None  # an object, array or bool where a number belongs
    quoted = pc.equal(first, b'"')
    unquoted = pc.if_else(quoted, pc.binary_slice(texts, 1, -1), texts).cast(pa.string())  # UTF-8 checked
    null = pc.equal(texts, b"null")
    strings = pc.if_else(null, _NULL_STRING, unquoted) if pc.any(null).as_py() else unquoted
    escaped = pc.and_(quoted, pc.match_substring(texts, "\\"))
    if pc.any(escaped).as_py():  # only these need a real JSON decode
        decoded = [msgspec.json.decode(t, type=str) for t in pc.filter(texts, escaped).to_pylist()]
        strings = pc.replace_with_mask(strings, escaped, pa.array(decoded, pa.string()))
    return strings


def _text(values: list[Any]) -> pa.Array:
    """TEXT: strings as they are, other JSON scalars as their JSON text."""
    try:
        return pa.array(values, pa.string())  # refuses any non-string
    except pa.ArrowTypeError:
        pass
    if set(map(type, values)) <= _INT_OR_NONE:  # integers only (BlockDB transfer_type): their digits
        try:
            return pa.array(values, pa.int64()).cast(pa.string())
        except OverflowError:
            pass
    encoded = [v if v is None or type(v) is str else msgspec.json.encode(v).decode() for v in values]
    return pa.array(encoded, pa.string())


@cache
def _enum_arrays(enum: tuple[tuple[str, str], ...]) -> tuple[pa.Array, pa.Array]:
    return pa.array([k for k, _ in enum], pa.string()), pa.array([v for _, v in enum], pa.string())


def _enum_mapped(values: Values, enum: tuple[tuple[str, str], ...]) -> Values:
    """A column's declared codes as their names (Column.enum), by kernels once per flush: each
    value is looked up among the codes, and one not among them (a name already, an unknown code)
    stays as it is."""
    codes, names = _enum_arrays(enum)
    return pc.coalesce(pc.take(names, pc.index_in(values, value_set=codes)), values)


def _timestamps(strings: pa.Array) -> pa.Array:
    try:
        return pc.cast(strings, _TS)
    except pa.ArrowInvalid:
        # No zone offset given: provider times are UTC (PROTOCOLS.md), so read them as UTC.
        return pc.assume_timezone(pc.cast(strings, _TS_NAIVE), "UTC")


def _block_form(col: Column) -> Callable[[list[Any]], pa.Array]:
    """How a block's values of a column become Arrow, while the block is in the CPU cache."""
    if col.type in _RAW_TYPES:
        return _binary  # the JSON text, parsed once per column by _raw_strings or _json_texts
    if col.type is ColumnType.TEXT:
        return _text
    return partial(pa.array, type=pa.string() if col.type is ColumnType.TIMESTAMP else col.arrow_type)


def _concat(arrays: list[pa.Array]) -> pa.Array:
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


def _exact(col: Column, text: pa.Array) -> list[tuple[str, pa.Array]]:
    if col.type is ColumnType.JSON:
        return [(col.name, text)]
    return [(col.name, text), (col.name + APPROX_SUFFIX, pc.cast(text, pa.float64()))]


def _assemble(col: Column, blocks: list[pa.Array]) -> list[tuple[str, pa.Array]]:
    """A column (two for exact numbers: text and double) from its blocks."""
    array = _concat(blocks)
    if col.type is ColumnType.JSON:
        return _exact(col, _json_texts(array))
    if col.type in _RAW_TYPES:
        return _exact(col, _raw_strings(array, numeric=True))
    return [(col.name, _timestamps(array) if col.type is ColumnType.TIMESTAMP else array)]


def _context_column(col: Column, values: list[Any]) -> list[tuple[str, pa.Array]]:
    """A column of envelope values: Python values, not JSON text."""
    if col.type is ColumnType.JSON:  # a value's JSON text
        texts = [None if v is None else msgspec.json.encode(v).decode() for v in values]
        return _exact(col, pa.array(texts, pa.string()))
    if col.type in _RAW_TYPES:
        return _exact(col, pa.array(_raw_text(values, numeric=True), pa.string()))
    return _assemble(col, [_block_form(col)(values)])


def _split_parts(values: Values) -> tuple[pa.Array, pa.Array]:
    """The first four parts of "A_B_C_D..." text of each distinct value, and each row's index
    into them, for _split_part.

    Split once per distinct value, then taken per row: the values repeat (CoinAPI's symbol ids,
    a few dozen a flush), and all four parts cost ~90 ns a row instead of ~310. Padding with
    separators first makes every value split into at least four parts, so the lookup needs no
    bounds check (CoinAPI: EXCHANGE_TYPE_BASE_QUOTE). A fifth split takes off what follows the
    fourth part (a future's expiry, an option's expiry, strike and kind: BITMEX_FTS_BTC_USD_200925
    is quoted in USD, not USD_200925).
    """
    if isinstance(values, pa.ChunkedArray):  # one dictionary for the whole flush
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    padded = pc.binary_join_element_wise(encoded.dictionary, "___", "")
    return pc.split_pattern(padded, "_", max_splits=4), encoded.indices


def _split_part(split: tuple[pa.Array, pa.Array], part: int) -> pa.Array:
    """Part `part` of each row's text split by _split_parts; null where there is none."""
    parts, indices = split
    piece = pc.list_element(parts, part)
    return pc.take(pc.if_else(pc.equal(piece, ""), _NULL_STRING, piece), indices)


def _hex_digests(keys: list[bytes]) -> pa.Array:
    # A Python loop rather than a C-level map(): as fast, and the GIL can pass between rows.
    return pa.array([hashlib.blake2b(k, digest_size=16).hexdigest() for k in keys], pa.string())


def _derived_tracing_ids(dataset: Dataset, arrays: dict[str, Values], raws: list[bytes]) -> pa.Array:
    """A deterministic id from the event's on-chain identity: the same event twice, the same id."""
    parts = [pc.fill_null(pc.cast(arrays[k], pa.string()), "") for k in dataset.identity]
    joined = pc.binary_join_element_wise(*parts, "|")
    keys = joined.cast(pa.binary()).to_pylist()  # bytes: the UTF-8 of each key
    blank = pc.equal(joined, "|" * (len(parts) - 1))
    if pc.any(blank).as_py():
        for i in pc.indices_nonzero(blank).to_pylist():
            keys[i] = raws[i]  # nothing of the identity was selected: the row's own bytes are all there is
    return _hex_digests(keys)


def _dedup_keys(dataset: Dataset, arrays: dict[str, Values], tracing: Values, raws: list[bytes]) -> pa.Array:
    if not tracing.null_count:
        return tracing  # every row has its tracing id: that is the key (the same buffers, no copy)
    if dataset.key:
        parts = [pc.fill_null(pc.cast(arrays[k], pa.string()), "") for k in dataset.key]
        natural = pc.binary_join_element_wise(*parts, "|")
    else:  # no natural key declared: the record's own bytes are its identity
        natural = _hex_digests(raws)
    return pc.coalesce(tracing, natural)


def _tracing_ids(values: list[Any]) -> pa.Array:
    """A provider's tracing ids, as text whether sent as strings or numbers."""
    try:
        return pa.array(values, pa.string())  # refuses any non-string: then convert them
    except pa.ArrowTypeError:
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _read_payload(
    plan: _Plan, fields: dict[Any, _Field], raws: list[bytes], *, keep_records: bool
) -> tuple[dict[Any, list[pa.Array]], list[pa.Array]]:
    """Decode the records a block at a time: per field, its values of each block in block form,
    and (keep_records) the records themselves as binary arrays.

    A block's structs are read while they are still in the CPU cache, and freed before the next
    block is decoded into the same memory: decoding a whole flush at once is a third slower.
    """
    blocks: dict[Any, list[pa.Array]] = {key: [] for key in fields}
    records: list[pa.Array] = []
    for start in range(0, max(len(raws), 1), _BLOCK):
        part = raws[start : start + _BLOCK]
        buffer = b"".join((b"[", b",".join(part), b"]"))
        reader = _Reader(plan, plan.decoder.decode(buffer))
        for key, (path, form) in fields.items():
            blocks[key].append(form(reader.values(path)))
        if keep_records:  # copied while they are in cache: for the _raw column
            records.append(pa.array(part, pa.binary()))
    return blocks, records


@cache
def _json_columns(dataset: Dataset) -> JsonColumns:
    """The reader of this dataset's leaves by Arrow's JSON reader; unusable where a leaf would be
    read two ways (a tracing id that is also a column of another type)."""
    wanted: list[tuple[tuple[str, ...], ColumnType | str]]
    wanted = [(c.path, c.type) for c in dataset.payload_columns]
    if dataset.tracing_id and dataset.tracing_column is None:
        wanted.append((dataset.tracing_id, "tracing"))
    if dataset.reorg_flag:
        wanted.append((dataset.reorg_flag, ColumnType.BOOL))
    leaves: dict[tuple[str, ...], ColumnType | str] = {}
    for path, kind in wanted:
        if leaves.setdefault(path, kind) != kind:
            return JsonColumns({})
    if not _ARROW_JSON_FLAT and all(len(path) == 1 for path in leaves):
        return JsonColumns({})
    return JsonColumns(leaves)


def _decoded_column(col: Column, values: Values) -> list[tuple[str, Values]]:
    """_assemble for a column Arrow's JSON reader decoded (text already unquoted)."""
    if col.type in _RAW_TYPES:
        return _exact(col, values)
    return [(col.name, _timestamps(values) if col.type is ColumnType.TIMESTAMP else values)]


def _build(dataset: Dataset, frames: _Frames) -> pa.Table:
    chunks, raws, n = frames.chunks, frames.records, frames.n
    tracing_column = dataset.tracing_column
    # What _raw keeps: the bytes as received, where the protocol had to re-key a record.
    as_received = list(map(attrgetter("raw"), chunks)).count(None) == len(chunks)
    originals = raws if as_received else list(chain.from_iterable(ch.raw or ch.records for ch in chunks))
    raw_column = None  # built last, unless the msgspec reading below copies it on the way

    # Arrow's JSON reader where it can read the flush (it releases the GIL), msgspec otherwise.
    decoded = _json_columns(dataset).read(raws)
    if decoded is not None:
        leaves = decoded.leaves
        if as_received:
            raw_column = decoded.records

        def payload(col: Column) -> list[tuple[str, Values]]:
            return _decoded_column(col, leaves[col.path])

        def payload_field(key: object) -> Values:
            return leaves[dataset.tracing_id if key is _TRACING else dataset.reorg_flag]

    else:
        fields: dict[Any, _Field] = {c: (c.path, _block_form(c)) for c in dataset.payload_columns}
        if dataset.tracing_id and tracing_column is None:
            fields[_TRACING] = (dataset.tracing_id, _tracing_ids)
        if dataset.reorg_flag:
            fields[_REORG] = (dataset.reorg_flag, partial(pa.array, type=pa.bool_()))
        blocks, records = _read_payload(_plan(dataset), fields, raws, keep_records=as_received)
        if as_received:
            raw_column = _concat(records)
            del records

        # Each column's blocks are let go as soon as the column is joined from them: a table's
        # worth of blocks and the table itself are never both held (wide rows: tens of MB a flush).
        def payload(col: Column) -> list[tuple[str, Values]]:
            return _assemble(col, blocks.pop(col))

        def payload_field(key: object) -> Values:
            return _concat(blocks.pop(key))

    # Context columns are built once per run of frames, then repeated: as if built per row.
    contexts, context_ends = frames.runs(attrgetter("context")) if dataset.context_columns else ([], None)
    arrays: dict[str, Values] = {}
    for col in dataset.columns:
        if col.split is not None:
            continue  # derived below, once its source column is built
        if col.context:
            built = _context_column(col, list(map(methodcaller("get", col.name), contexts)))
            arrays.update((name, _repeat(arr, context_ends)) for name, arr in built)
        else:
            arrays.update(payload(col))
        if col.enum:
            arrays[col.name] = _enum_mapped(arrays[col.name], col.enum)

    splits: dict[str, tuple[pa.Array, pa.Array]] = {}  # each source column split once for all its parts
    for col in dataset.columns:
        if col.split is not None:
            source, part = col.split
            if source not in splits:
                splits[source] = _split_parts(arrays[source])
            arrays[col.name] = _split_part(splits[source], part)
    if tracing_column is not None:
        tracing = arrays[tracing_column]
    elif dataset.tracing_id:
        tracing = payload_field(_TRACING)
    elif dataset.identity:
        tracing = _derived_tracing_ids(dataset, arrays, originals)
    else:
        tracing = pa.nulls(n, pa.string())
    chunk_reorg = frames.column(attrgetter("is_reorg"), pa.bool_())
    if dataset.reorg_flag:
        payload_reorg = payload_field(_REORG)
        # Either flag true: a reorg. A payload flag absent or null says nothing: the envelope's decides.
        reorg = pc.fill_null(pc.or_kleene(chunk_reorg, payload_reorg), False)
    else:
        reorg = chunk_reorg
    arrays.update(
        {
            "_provider": frames.column(attrgetter("provider"), pa.string()),
            "_dataset": frames.constant(dataset.name, pa.string()),
            "_subscription": frames.column(attrgetter("subscription"), pa.string()),
            "_received_at": frames.column(attrgetter("received_at"), _TS),
            "_event_time": arrays[dataset.event_time] if dataset.event_time else pa.nulls(n, _TS),
            "_tracing_id": tracing,
            "_is_reorg": reorg,
            "_dedup_key": _dedup_keys(dataset, arrays, tracing, raws),
        }
    )
    received = pa.array(originals, pa.binary()) if raw_column is None else raw_column
    arrays["_raw"] = received.cast(pa.string())
    return pa.Table.from_arrays([arrays[f.name] for f in dataset.arrow_schema], schema=dataset.arrow_schema)


def _split(chunks: Sequence[Rows]) -> list[Rows]:
    """One Rows per record, so bisection can isolate a single bad record."""
    out: list[Rows] = []
    for ch in chunks:
        # A protocol bug could send fewer originals than records: keep the records, not crash.
        raw = ch.raw if ch.raw is not None and len(ch.raw) == len(ch.records) else None
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
                    raw=None if raw is None else [raw[i]],
                    position=ch.positions[i] if ch.positions else ch.position,
                )
            )
    return out


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


_BUILD_ERRORS = (msgspec.MsgspecError, pa.ArrowException, ValueError, TypeError, OverflowError)


def build_table(dataset: Dataset, chunks: Sequence[Rows], *, screen: bool = True) -> BuildResult:
    """Build one table from a flush; records that cannot be read come back as Rejected."""
    try:
        frames = _Frames.of(chunks)
        return BuildResult(_build(dataset, frames), [], frames.positions())
    except _BUILD_ERRORS as exc:
        records = _split(chunks)
        if len(records) == 1:
            return BuildResult(dataset.arrow_schema.empty_table(), [_rejected(dataset, records[0], exc)])
        if screen and isinstance(exc, msgspec.MsgspecError):
            screened = _screened(dataset, records)
            if screened is not None:
                return screened
            screen = False  # the others fail too (a value Arrow refuses): bisection alone below
    mid = len(records) // 2
    halves = (records[:mid], records[mid:])
    return joined(dataset, [build_table(dataset, half, screen=screen) for half in halves])


def _rejected(dataset: Dataset, rec: Rows, exc: BaseException) -> Rejected:
    """A record of its own (_split) the schema cannot take, for the quarantine."""
    original = rec.raw[0] if rec.raw else rec.records[0]  # quarantine keeps the bytes as received
    return Rejected(
        rec.provider, original, _reason(exc), rec.received_at, rec.subscription, dataset.name, rec.position
    )


def _screened(dataset: Dataset, records: list[Rows]) -> BuildResult | None:
    """The result of bisecting `records` (one each, _split) down to every record msgspec refuses,
    without bisecting: each is decoded alone, and the others are built as one table. None when
    that is not the same result (the others fail too, or a record reads otherwise alone).

    A drift that hits every record (a field's type changed) made bisection build tables of every
    size down to each record: ~0.7 ms a record, a 50k-row flush in half a minute, while the
    sockets waited for memory. Decoding one costs ~1 us.
    """
    decode = _plan(dataset).decoder.decode
    refused: list[tuple[Rows, msgspec.MsgspecError]] = []
    others: list[Rows] = []
    for rec in records:
        try:
            decode(b"".join((b"[", rec.records[0], b"]")))  # as _read_payload decodes a block of one
            others.append(rec)
        except msgspec.MsgspecError as exc:
            refused.append((rec, exc))
    if not refused:
        return None
    if _json_columns(dataset).usable:
        # Alone, a record may be read by Arrow's JSON reader instead: its own build says.
        alone = [build_table(dataset, [rec], screen=False) for rec, _ in refused]
        if any(result.table.num_rows for result in alone):
            return None
        rejected = [r for result in alone for r in result.rejected]
    else:  # alone, it is read by that very decode: its error is the one its build would raise
        rejected = [_rejected(dataset, rec, exc) for rec, exc in refused]
    if not others:
        return BuildResult(dataset.arrow_schema.empty_table(), rejected)
    try:
        frames = _Frames.of(others)
        return BuildResult(_build(dataset, frames), rejected, frames.positions())
    except _BUILD_ERRORS:
        return None


def joined(dataset: Dataset, results: Sequence[BuildResult]) -> BuildResult:
    """Consecutive builds of a dataset's records as one: their tables' chunks, nothing copied."""
    if len(results) == 1:
        return results[0]
    tables = [r.table for r in results if r.table.num_rows]
    table = pa.concat_tables(tables) if tables else dataset.arrow_schema.empty_table()
    positions = pa.concat_arrays([r.positions for r in results])
    return BuildResult(table, [x for r in results for x in r.rejected], positions)


def table_bytes(table: pa.Table) -> int:
    """The memory a table's buffers take, each counted once: columns share buffers (the tracing
    id is the dedup key, CoinAPI's uuid is its tracing id), which `nbytes` counts again per column."""
    seen: dict[int, int] = {}
    for column in table.columns:
        for chunk in column.chunks:
            for buffer in chunk.buffers():
                if buffer is not None:
                    seen[buffer.address] = buffer.size
    return sum(seen.values())


def values_table(dataset: Dataset, values: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows of a dataset the pipeline builds itself (quarantine, gaps); times are ns integers."""
    columns = {f.name: pa.array([v.get(f.name) for v in values], f.type) for f in dataset.arrow_schema}
    return pa.Table.from_pydict(columns, schema=dataset.arrow_schema)
