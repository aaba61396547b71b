"""Dataset declarations: schemas/*.toml -> Arrow schema, DuckDB DDL and decode plan, in one registry."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pyarrow as pa

from ingest.errors import ConfigError

__all__ = [
    "SCHEMA_DIR",
    "Column",
    "ColumnType",
    "Dataset",
    "Registry",
    "load_registry",
    "quote_ident",
]

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_COLUMN = re.compile(r"^_?[a-z][a-z0-9_]{0,62}$")
# The lake's directories, dataset=<name>/date=<day> (ingest/lake.py): engines reading its files
# with Hive partitioning (DuckDB by default, polars) replace a column of either name by the
# directory's value.
_PARTITION_KEYS = frozenset({"dataset", "date"})


class ColumnType(StrEnum):
    """Logical column types; each maps to one Arrow type and one DuckDB type."""

    INT64 = "int64"
    FLOAT64 = "float64"
    BOOL = "bool"
    STRING = "string"  # JSON string only: a number here is schema drift
    TEXT = "text"  # JSON string or scalar, stored as its text
    TIMESTAMP = "timestamp"  # ISO-8601 text, stored as UTC nanoseconds
    BIGINT_TEXT = "bigint_text"  # exact integer of any size as text, plus a <name>_f64 double
    DECIMAL_TEXT = "decimal_text"  # exact decimal as text, plus a <name>_f64 double
    JSON = "json"  # any JSON value, kept as its JSON text
    LIST_STRING = "list_string"
    BINARY = "binary"


_ARROW: dict[ColumnType, pa.DataType] = {
    ColumnType.INT64: pa.int64(),
    ColumnType.FLOAT64: pa.float64(),
    ColumnType.BOOL: pa.bool_(),
    ColumnType.STRING: pa.string(),
    ColumnType.TEXT: pa.string(),
    ColumnType.TIMESTAMP: pa.timestamp("ns", tz="UTC"),
    ColumnType.BIGINT_TEXT: pa.string(),
    ColumnType.DECIMAL_TEXT: pa.string(),
    ColumnType.JSON: pa.string(),
    ColumnType.LIST_STRING: pa.list_(pa.string()),
    ColumnType.BINARY: pa.binary(),
}

# TIMESTAMPTZ_NS keeps the nanoseconds Parquet keeps, so both sinks read back the same values.
_DUCKDB: dict[ColumnType, str] = {
    ColumnType.INT64: "BIGINT",
    ColumnType.FLOAT64: "DOUBLE",
    ColumnType.BOOL: "BOOLEAN",
    ColumnType.STRING: "VARCHAR",
    ColumnType.TEXT: "VARCHAR",
    ColumnType.TIMESTAMP: "TIMESTAMPTZ_NS",
    ColumnType.BIGINT_TEXT: "VARCHAR",
    ColumnType.DECIMAL_TEXT: "VARCHAR",
    ColumnType.JSON: "VARCHAR",
    ColumnType.LIST_STRING: "VARCHAR[]",
    ColumnType.BINARY: "BLOB",
}

APPROX_SUFFIX = "_f64"
RAW = "_raw"  # each row's record as received (the envelope's widest column)

# Types whose text Arrow's cast to string and DuckDB's CAST AS VARCHAR write alike (integers,
# and what both hold as text): a natural key of these DuckDB can join into the dedup key itself,
# byte for byte (Dataset.duckdb_computed).
_SAME_TEXT = frozenset(
    {
        ColumnType.INT64,
        ColumnType.STRING,
        ColumnType.TEXT,
        ColumnType.BIGINT_TEXT,
        ColumnType.DECIMAL_TEXT,
        ColumnType.JSON,
    }
)


def quote_ident(name: str) -> str:
    """Quote an SQL identifier; names are validated at load, quoting is belt and braces."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """Quote an SQL string literal (a path in ATTACH, which takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Column:
    """One declared column: where its value comes from and how it is typed."""

    name: str
    type: ColumnType
    path: tuple[str, ...] = ()  # payload path; empty for context and envelope columns
    context: bool = False  # taken from the frame's envelope, not the record
    doc: str = ""
    split: tuple[str, int] | None = None  # (column, part): the part of that column's "_"-separated text
    # (value as sent, value stored) pairs: a provider's codes stored as their names, so one value
    # has one spelling; a value not listed is stored as sent. A tuple: datasets are hashed.
    enum: tuple[tuple[str, str], ...] = ()

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW[self.type]

    @property
    def duckdb_type(self) -> str:
        return _DUCKDB[self.type]

    @property
    def has_approx(self) -> bool:
        return self.type in (ColumnType.BIGINT_TEXT, ColumnType.DECIMAL_TEXT)


@dataclass(frozen=True, slots=True)
class Dataset:
    """A dataset: one Arrow schema, one DuckDB table, one Parquet directory."""

    name: str
    provider: str
    description: str
    columns: tuple[Column, ...]  # dataset columns (payload + context), declaration order
    envelope: tuple[Column, ...]  # the shared reconciliation columns
    kind: str = "records"  # "records" (decoded from JSON) or "values" (rows the pipeline builds itself)
    tracing_id: tuple[str, ...] = ()  # payload path of the provider's tracing id
    reorg_flag: tuple[str, ...] = ()  # payload path of the payload's reorg flag
    event_time: str | None = None  # column holding the event time
    key: tuple[str, ...] = ()  # natural key columns, for the dedup key
    identity: tuple[str, ...] = ()  # columns a tracing id is derived from when the provider sends none
    received_column: str = "_received_at"  # the receive time: Parquet partitions by its date
    generic: bool = False  # message types without a table of their own: `_raw` is their content
    arrow_schema: pa.Schema = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields: list[pa.Field] = []
        for col in self.all_columns():
            fields.append(pa.field(col.name, col.arrow_type))
            if col.has_approx:
                fields.append(pa.field(col.name + APPROX_SUFFIX, pa.float64()))
        object.__setattr__(self, "arrow_schema", pa.schema(fields))

    def all_columns(self) -> tuple[Column, ...]:
        return self.columns + self.envelope

    @property
    def payload_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if not c.context and c.split is None)

    @property
    def raw_only(self) -> bool:
        """`_raw` is the record's only full copy: a generic dataset (a few columns to find its
        records by, such as CoinAPI's message type), or one without typed payload columns."""
        return self.kind == "records" and (self.generic or not self.payload_columns)

    @property
    def context_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.context)

    @property
    def tracing_column(self) -> str | None:
        """A string column the provider's tracing id is read from too (CoinAPI's uuid): the
        tracing id is that column, as built."""
        return next(
            (
                c.name
                for c in self.payload_columns
                if c.path == self.tracing_id and c.type is ColumnType.STRING
            ),
            None,
        )

    def duckdb_computed(self) -> dict[str, str]:
        """Envelope columns that only repeat others of the row, as the DuckDB expression of each.

        A DuckDB table the sink creates computes these when read (virtual generated columns)
        instead of storing a second copy of unique text: CoinAPI's `_tracing_id` is its `uuid`,
        and a `_dedup_key` is the tracing id wherever one came, else the natural key joined by
        "|" (arrow_batch._dedup_keys). Two such columns are ~0.9 of DuckDB's ~2.5 us a trade row
        (README.md). Only where the build's rule is written exactly in SQL: a key of
        types whose text both write alike, or a tracing id derived for every row.
        """
        tracing_column = self.tracing_column
        tracing = quote_ident(tracing_column or "_tracing_id")
        computed = {"_tracing_id": tracing} if tracing_column else {}
        types = {c.name: c.type for c in self.columns}
        if self.identity and not self.tracing_id:  # derived for every row: never null
            computed["_dedup_key"] = tracing
        elif self.key and all(types[k] in _SAME_TEXT for k in self.key):
            parts = ", '|', ".join(f"coalesce(CAST({quote_ident(k)} AS VARCHAR), '')" for k in self.key)
            computed["_dedup_key"] = f"coalesce({tracing}, concat({parts}))"
        return computed if self.kind == "records" else {}

    def duckdb_columns(self, exclude: Collection[str] = ()) -> list[tuple[str, str]]:
        """(name, DuckDB type) for every column of the table, in Arrow schema order."""
        out: list[tuple[str, str]] = []
        for col in self.all_columns():
            if col.name in exclude:
                continue
            out.append((col.name, col.duckdb_type))
            if col.has_approx:
                out.append((col.name + APPROX_SUFFIX, "DOUBLE"))
        return out

    def create_table_sql(
        self, exclude: Collection[str] = (), computed: Mapping[str, str] | None = None
    ) -> str:
        """The table's DDL; `computed` columns (duckdb_computed) are virtual, as expressions."""
        computed = computed or {}

        def column(name: str, typ: str) -> str:
            if name in computed:
                return f"{quote_ident(name)} {typ} GENERATED ALWAYS AS ({computed[name]}) VIRTUAL"
            return f"{quote_ident(name)} {typ}"

        cols = ", ".join(column(n, t) for n, t in self.duckdb_columns(exclude))
        return f"CREATE TABLE IF NOT EXISTS {quote_ident(self.name)} ({cols})"


class Registry(Mapping[str, Dataset]):
    """Every declared dataset, by name."""

    def __init__(self, datasets: Mapping[str, Dataset]) -> None:
        self._datasets = dict(datasets)

    def __getitem__(self, name: str) -> Dataset:
        return self._datasets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._datasets)

    def __len__(self) -> int:
        return len(self._datasets)

    def for_provider(self, provider: str) -> list[Dataset]:
        return [d for d in self._datasets.values() if d.provider == provider]


def _parse_column(raw: object, where: str, *, envelope: bool = False) -> Column:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(raw) - {"name", "type", "path", "context", "doc", "split_of", "part", "enum"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
    name = raw.get("name")
    if not isinstance(name, str) or not _COLUMN.match(name):
        raise ConfigError(f"{where}.name: expected a lower-case identifier, got {name!r}")
    if name in _PARTITION_KEYS:
        raise ConfigError(f"{where}.name: {name!r} is a partition key of the Parquet lake; name it otherwise")
    try:
        ctype = ColumnType(raw.get("type"))
    except ValueError:
        raise ConfigError(
            f"{where}.type: {raw.get('type')!r} is not one of {[t.value for t in ColumnType]}"
        ) from None
    context = bool(raw.get("context", False))
    path: tuple[str, ...] = ()
    split = None
    if "split_of" in raw:
        part = raw.get("part")
        if not isinstance(part, int) or not 0 <= part <= 3:
            raise ConfigError(f"{where}.part: expected 0 to 3")
        split = (str(raw["split_of"]), part)
    elif not envelope and not context:
        path_text = raw.get("path", name)
        if not isinstance(path_text, str) or not path_text:
            raise ConfigError(f"{where}.path: expected a dotted payload path")
        path = tuple(path_text.split("."))
    enum: tuple[tuple[str, str], ...] = ()
    if "enum" in raw:
        table = raw["enum"]
        if ctype not in (ColumnType.TEXT, ColumnType.STRING) or not isinstance(table, dict):
            raise ConfigError(f"{where}.enum: expected a table of text values, on a text or string column")
        if bad := [k for k, v in table.items() if not isinstance(v, str) or not v]:
            raise ConfigError(f"{where}.enum.{bad[0]}: expected the non-empty text stored for it")
        enum = tuple(sorted(table.items()))
    return Column(
        name=name,
        type=ctype,
        path=path,
        context=context,
        doc=str(raw.get("doc", "")),
        split=split,
        enum=enum,
    )


def _load_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: {exc}") from exc


def load_registry(schema_dir: Path = SCHEMA_DIR) -> Registry:
    """Read every schemas/*.toml; _envelope.toml supplies the columns every row carries."""
    env_doc = _load_file(schema_dir / "_envelope.toml")
    envelope = tuple(
        _parse_column(c, f"_envelope.columns[{i}]", envelope=True)
        for i, c in enumerate(env_doc.get("columns", []))  # type: ignore[arg-type]
    )
    datasets: dict[str, Dataset] = {}
    for path in sorted(schema_dir.glob("*.toml")):
        if path.name.startswith("_"):
            continue
        doc = _load_file(path)
        where = path.name
        name = doc.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}.name: expected a lower-case identifier, got {name!r}")
        kind = str(doc.get("kind", "records"))
        columns = tuple(
            _parse_column(c, f"{where}.columns[{i}]", envelope=kind != "records")
            for i, c in enumerate(doc.get("columns", []))  # type: ignore[arg-type]
        )
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.columns: duplicate column name")
        for col in columns:
            if col.split and col.split[0] not in names:
                raise ConfigError(f"{where}.columns: {col.name} splits a column that does not exist")
        event_time = doc.get("event_time")
        if event_time is not None and event_time not in names:
            raise ConfigError(f"{where}.event_time: no column named {event_time!r}")
        key = tuple(doc.get("key", ()))  # type: ignore[arg-type]
        if missing := [k for k in key if k not in names]:
            raise ConfigError(f"{where}.key: no column named {missing[0]!r}")
        identity = tuple(doc.get("identity", ()))  # type: ignore[arg-type]
        if missing := [k for k in identity if k not in names]:
            raise ConfigError(f"{where}.identity: no column named {missing[0]!r}")
        datasets[name] = Dataset(
            name=name,
            provider=str(doc.get("provider", "")),
            description=str(doc.get("description", "")),
            columns=columns,
            envelope=envelope if kind == "records" else (),
            kind=kind,
            tracing_id=tuple(str(doc["tracing_id"]).split(".")) if "tracing_id" in doc else (),
            reorg_flag=tuple(str(doc["reorg_flag"]).split(".")) if "reorg_flag" in doc else (),
            event_time=event_time,  # type: ignore[arg-type]
            key=key,
            identity=identity,
            received_column=str(doc.get("received_column", "_received_at")),
            generic=doc.get("generic", False) is True,
        )
        if datasets[name].received_column not in datasets[name].arrow_schema.names:
            raise ConfigError(f"{where}.received_column: no column named {datasets[name].received_column!r}")
    return Registry(datasets)
