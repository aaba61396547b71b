"""A flush's payload columns read by Arrow's JSON reader, which releases the GIL.

The msgspec build (arrow_batch) holds the GIL for every value it reads, ~4 us a row for wide
nested records such as Bitquery's, and the GIL is what the event loop needs to receive. Arrow's
reader parses the flush as newline-delimited JSON against an explicit schema in C++, without it.

It is strict about types: a value of another JSON type than the schema says is an error, never a
silent conversion (a number where a string is declared, a null inside a list). So this reader
gives what the msgspec build would, or nothing: on any doubt the flush goes the msgspec way,
which gives its result or raises its error (and so quarantines what it always did). Numbers in
exact-decimal columns never come this way, since Arrow would read them as doubles.

A number beyond a double (a 400-digit integer, 1.7976931348623159e308) Arrow reads as inf, where
msgspec rejects it ("Number out of range"), and NaN, Inf, Infinity, which are no JSON, it reads as
numbers: a flush where a double column holds any non-finite value goes to msgspec. (The same
literals in a field no column reads pass unseen: a scan for them, ~1.7 ms a MB, would add a
quarter to Bitquery's read.)

Providers send some integers as strings (Bitquery's Block.Number): where a column allows either,
the reader learns which one a dataset's provider sends from the reader's first error and keeps it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ingest.schema import ColumnType

__all__ = ["JsonColumns", "JsonRead", "Values", "wire_types"]

Values = pa.Array | pa.ChunkedArray  # a flush's column: one array, or a chunk per slice read

_LIST = pa.list_(pa.string())
# The JSON types a column may arrive as, that Arrow reads as what msgspec would: the first is
# the first guess. Integers as strings are checked to be plain integers before they are cast.
_WIRE: dict[ColumnType, tuple[pa.DataType, ...]] = {
    ColumnType.INT64: (pa.int64(), pa.string()),
    ColumnType.FLOAT64: (pa.float64(),),
    ColumnType.BOOL: (pa.bool_(),),
    ColumnType.STRING: (pa.string(),),
    ColumnType.TIMESTAMP: (pa.string(),),
    ColumnType.TEXT: (pa.string(), pa.int64(), pa.bool_()),
    ColumnType.BIGINT_TEXT: (pa.string(),),
    ColumnType.DECIMAL_TEXT: (pa.string(),),
    # Only ever absent or null: any value needs its JSON text as written, which Arrow's reader
    # does not keep (a string's quotes and escapes, an object's spacing).
    ColumnType.JSON: (pa.null(),),
    ColumnType.LIST_STRING: (_LIST,),
}
_TRACING_WIRE = (pa.string(), pa.int64())  # a provider's tracing id: text, or a number as its digits
_CHANGED = re.compile(r"Column\((/[^)]*)\) changed from \w+ to (\w+)")
_KIND = {"string": pa.string(), "boolean": pa.bool_()}
_PLAIN_INT = r"^-?(0|[1-9][0-9]{0,18})$"  # what msgspec reads as an int from a string
_SLICE = 2048  # records read at a time
_BLOCK_BYTES = 16 << 20  # Arrow's block: above a slice, so a slice parses as one block
_BACKOFF = 16  # flushes that skip this reader after one it could not read


def wire_types(kind: ColumnType | str) -> tuple[pa.DataType, ...]:
    """The JSON types a leaf of this kind ("tracing": a tracing id) may arrive as."""
    return _TRACING_WIRE if kind == "tracing" else _WIRE.get(kind, ())  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class JsonRead:
    leaves: dict[tuple[str, ...], Values]  # by payload path
    records: Values  # each record's text, checked to be UTF-8: the _raw column


class JsonColumns:
    """Reads the leaves of one dataset's records; keeps what it learns of their wire types."""

    def __init__(self, leaves: dict[tuple[str, ...], ColumnType | str]) -> None:
        self._kinds = leaves
        self._allowed = {path: wire_types(kind) for path, kind in leaves.items()}
        self.usable = bool(leaves) and all(self._allowed.values())
        self._wire = {path: allowed[0] for path, allowed in self._allowed.items() if allowed}
        self._skip = 0

    def read(self, records: list[bytes]) -> JsonRead | None:
        """Each leaf's values across the records, decoded as msgspec would; None: not these."""
        if not self.usable or not records:
            return None
        if self._skip:
            self._skip -= 1
            return None
        relearned: set[tuple[str, ...]] = set()
        while True:  # again from the start if a leaf's wire type was learned on the way
            learned = len(relearned)
            parts: dict[tuple[str, ...], list[pa.Array]] = {path: [] for path in self._kinds}
            lines: list[pa.Array] = []
            # A slice at a time, while its text is in cache; a whole flush at once is slower
            # and holds its text, its parse and its columns all at the same time.
            for start in range(0, len(records), _SLICE):
                read = self._read_slice(records[start : start + _SLICE], relearned)
                if read is None:
                    return None
                if len(relearned) > learned:
                    break
                for path, values in read.leaves.items():
                    parts[path].append(values)
                lines.append(read.records)
            else:
                break
        # Columns stay in the slices they were read in: joined, each would be copied once more
        # while the slices are still held (for Bitquery's 24 MB flushes, ~20 MB off the peak RSS).
        leaves = {}
        for path, kind in self._kinds.items():
            values = _decoded(_chunked(parts.pop(path)), kind)
            if values is None:
                return None
            leaves[path] = values
        return JsonRead(leaves, _chunked(lines))

    def _read_slice(self, records: list[bytes], relearned: set[tuple[str, ...]]) -> JsonRead | None:
        """The leaves of some records as Arrow read them (wire types, not yet decoded)."""
        data = b"\n".join(records)
        # An escaped surrogate is where Arrow's and msgspec's readings of a string could differ.
        if len(data) >= 2**31 or (b"\\" in data and (b"\\ud" in data or b"\\uD" in data)):
            return None
        try:
            lines = _lines(data)
        except pa.ArrowInvalid:  # not UTF-8, which Arrow's JSON reader would patch and msgspec rejects
            return None
        if len(lines) != len(records):  # a record spanning lines would shift every row after it
            return None
        # Only objects: Arrow reads a `null` line as a row of nulls (and crashes on a block of one),
        # where msgspec rejects it. With one object starting each line, rows and records align.
        if not pc.all(pc.starts_with(lines, "{")).as_py():
            return None
        table = self._parse(data, relearned)
        if table is None or table.num_rows != len(records):  # a record holding two objects
            return None
        return JsonRead({path: _leaf(table, path) for path in self._kinds}, lines)

    def _parse(self, data: bytes, relearned: set[tuple[str, ...]]) -> pa.Table | None:
        while True:
            try:
                return pj.read_json(
                    pa.BufferReader(data),
                    read_options=pj.ReadOptions(use_threads=False, block_size=_BLOCK_BYTES),
                    parse_options=pj.ParseOptions(
                        explicit_schema=self._schema(), unexpected_field_behavior="ignore"
                    ),
                )
            except pa.ArrowInvalid as exc:
                if not self._learn(str(exc), relearned):
                    self._skip = _BACKOFF
                    return None

    def _schema(self) -> pa.Schema:
        tree: dict[str, Any] = {}
        for path, typ in self._wire.items():
            node = tree
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = typ
        return pa.schema(_fields(tree))

    def _learn(self, message: str, relearned: set[tuple[str, ...]]) -> bool:
        """From "Column(/Block/Number) changed from number to string": read that leaf as a string
        from now on, if it may be one and has not been switched already in this flush."""
        found = _CHANGED.search(message)
        if found is None:
            return False
        path = tuple(found.group(1).split("/")[1:])
        allowed = self._allowed.get(path, ())
        sent = found.group(2)  # string, number, boolean, or object, array, null: never a leaf's
        if sent == "number":
            kind = next((t for t in allowed if pa.types.is_integer(t) or pa.types.is_floating(t)), None)
        else:
            kind = _KIND.get(sent)
        if kind is None or kind not in allowed or path in relearned:
            return False
        relearned.add(path)
        self._wire[path] = kind
        return True


def _fields(tree: dict[str, Any]) -> list[pa.Field]:
    return [
        pa.field(key, pa.struct(_fields(node)) if isinstance(node, dict) else node)
        for key, node in tree.items()
    ]


def _lines(data: bytes) -> pa.Array:
    """The newline-joined records as a string array, split by Arrow without the GIL."""
    offsets = pa.array([0, len(data)], pa.int32()).buffers()[1]
    text = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, pa.py_buffer(data)])
    return pc.split_pattern(text.cast(pa.string()), "\n").flatten()


def _chunked(arrays: list[pa.Array]) -> Values:
    return arrays[0] if len(arrays) == 1 else pa.chunked_array(arrays)


def _leaf(table: pa.Table, path: tuple[str, ...]) -> pa.Array:
    column = table.column(path[0])
    if len(path) > 1:
        column = pc.struct_field(column, list(path[1:]))  # null where any parent is null
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _decoded(values: Values, kind: ColumnType | str) -> Values | None:
    """A leaf as the msgspec build decodes it: int64, float64, bool, a string list or text.

    None where a value is one msgspec would not read that way (it then rejects the record).
    """
    typ = values.type
    if kind is ColumnType.INT64:
        if pa.types.is_string(typ):
            if pc.all(pc.match_substring_regex(values, _PLAIN_INT)).as_py() is False:
                return None
            try:
                return pc.cast(values, pa.int64())
            except pa.ArrowInvalid:  # 19 digits beyond int64
                return None
        return values
    if kind is ColumnType.LIST_STRING:
        return None if pc.list_flatten(values).null_count else values  # msgspec: list[str]
    if kind is ColumnType.FLOAT64:
        # Read from JSON text, a double is finite unless the number was out of its range, which
        # msgspec rejects ("Number out of range"): then msgspec reads the flush.
        return None if pc.all(pc.is_finite(values)).as_py() is False else values
    if kind is ColumnType.BOOL:
        return values
    if pa.types.is_string(typ):
        return values
    return pc.cast(values, pa.string())  # null (JSON), int64 or bool (TEXT, tracing ids): as text
