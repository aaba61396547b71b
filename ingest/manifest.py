"""A date partition's compaction manifest: which merged files are live and which files they replace."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ingest.errors import Fatal

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ManifestError",
    "Output",
    "Replaced",
    "compacted_name",
    "is_compacted",
    "is_data_file",
    "journal_range",
]

MANIFEST_NAME = "_manifest.json"
_FORMAT = 1
# Instance names are lower-case identifiers without "-", so no sink file (<instance>-<run>-<seq>)
# can ever match this: a merged file is recognised by its name alone.
_COMPACTED = re.compile(r"^[a-z][a-z0-9_]{0,39}-compacted-[0-9a-f]{16}-[0-9]{4}\.parquet$")
# ParquetSink's name for a flush with journal positions: <instance>-<first>-<last>.parquet.
_JOURNALED = re.compile(r"^(?P<instance>[a-z][a-z0-9_]*)-(?P<first>[0-9]{20})-(?P<last>[0-9]{20})\.parquet$")


class ManifestError(Fatal):
    """A manifest that cannot be read: guessing which files are live could count rows twice."""


def is_data_file(name: str) -> bool:
    """A finished Parquet file: temporary files and hidden names (`_`, `.`) are never data."""
    return name.endswith(".parquet") and not name.startswith(("_", "."))


def is_compacted(name: str) -> bool:
    return _COMPACTED.match(name) is not None


def journal_range(name: str) -> tuple[str, int, int] | None:
    """(instance, first, last) journal positions a sink file holds, from its name; None if none."""
    match = _JOURNALED.match(name)
    return (match["instance"], int(match["first"]), int(match["last"])) if match else None


def writer_of(name: str) -> str:
    """The instance that wrote a sink file: every name starts `<instance>-` (no "-" in instances)."""
    return name.split("-", 1)[0]


def compacted_name(instance: str, inputs: Iterable[str], index: int) -> str:
    """`<instance>-compacted-<hash of the input names>-<index>.parquet`: equal inputs, equal names.

    A rerun after a crash therefore overwrites its own unpublished outputs instead of adding more.
    """
    digest = hashlib.sha256("\n".join(sorted(inputs)).encode()).hexdigest()[:16]
    return f"{instance}-compacted-{digest}-{index:04d}.parquet"


@dataclass(frozen=True, slots=True)
class Output:
    """A merged file the manifest makes live."""

    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Replaced:
    """A file merged into an output: hidden from readers at once, deleted a grace period later."""

    replaced_at: float  # wall clock (several machines may compact one lake), seconds
    deleted_at: float | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    """The live set of one partition; published whole (one S3 PUT, or one local rename)."""

    generation: int = 0  # 0: no manifest yet
    writer: str = ""  # the instance that published it
    outputs: dict[str, Output] = field(default_factory=dict)
    replaced: dict[str, Replaced] = field(default_factory=dict)
    # Per writer instance, the highest journal position among the files replaced: a sink that
    # finds its checkpoint in its file names must still find it once compaction deleted them.
    positions: dict[str, int] = field(default_factory=dict)

    def visible(self, names: Iterable[str]) -> list[str]:
        """The files a reader must read, given the data files a listing found.

        A plain file is live unless replaced; a merged file is live only if this manifest lists
        it. Outputs come from the manifest, not the listing, so the rule gives every row once
        whether the listing was taken before or after the manifest was published.
        """
        plain = {n for n in names if is_data_file(n) and not is_compacted(n) and n not in self.replaced}
        return sorted(plain | set(self.outputs))

    def publish(self, writer: str, *, outputs: dict[str, Output], replaced: dict[str, Replaced]) -> Manifest:
        """The next generation with these outputs and replaced files; positions only ever grow."""
        positions = dict(self.positions)
        for name in replaced:
            if (span := journal_range(name)) is not None:
                positions[span[0]] = max(positions.get(span[0], 0), span[2])
            elif not is_compacted(name):  # no positions (journal off, derived rows): still a writer
                positions.setdefault(writer_of(name), 0)
        return Manifest(self.generation + 1, writer, outputs, replaced, positions)

    def to_json(self) -> bytes:
        doc = {
            "format": _FORMAT,
            "generation": self.generation,
            "writer": self.writer,
            "outputs": {n: {"rows": o.rows, "bytes": o.bytes} for n, o in sorted(self.outputs.items())},
            "replaced": {
                n: {"replaced_at": r.replaced_at, "deleted_at": r.deleted_at}
                for n, r in sorted(self.replaced.items())
            },
            "positions": dict(sorted(self.positions.items())),
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("format") != _FORMAT:
                raise ManifestError(f"{where}: unknown manifest format {doc.get('format')!r}")
            return cls(
                generation=int(doc["generation"]),
                writer=str(doc.get("writer", "")),
                outputs={n: Output(int(o["rows"]), int(o["bytes"])) for n, o in doc["outputs"].items()},
                replaced={
                    n: Replaced(
                        float(r["replaced_at"]), None if r["deleted_at"] is None else float(r["deleted_at"])
                    )
                    for n, r in doc["replaced"].items()
                },
                positions={str(k): int(v) for k, v in doc.get("positions", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{where}: unreadable manifest ({type(exc).__name__}: {exc})") from None
