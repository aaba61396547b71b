"""What a Bitquery subscription document asks for: which cubes, on which network, under which names.

A result frame is keyed by response names (aliases where the query gave them), so each
(root key, cube key) of the result is bound here, once per subscription, to its dataset, its
context columns (network, mempool) and the alias map that turns its rows back into field names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    Undefined,
    parse,
    value_from_ast_untyped,
)

from ingest.errors import ConfigError

__all__ = ["DATASETS", "GENERIC_DATASET", "METRICS", "Cube", "Renames", "analyse"]

# (root field, cube field) -> dataset with a typed table; anything else lands in the generic one.
DATASETS: dict[tuple[str, str], str] = {
    ("EVM", "Blocks"): "bitquery_evm_blocks",
    ("EVM", "Transfers"): "bitquery_evm_transfers",
    ("EVM", "DEXTrades"): "bitquery_evm_dex_trades",
    ("EVM", "BalanceUpdates"): "bitquery_evm_balance_updates",
    ("Tron", "Transfers"): "bitquery_tron_transfers",
}
GENERIC_DATASET = "bitquery_generic"
METRICS = "metrics"  # where a row's aggregates (count, sum, ...) go, under the names the query gave


@dataclass(frozen=True, slots=True)
class Renames:
    """How one level of a row goes back to field names; only the keys with something to do.

    Keys absent from both maps are kept as they are, so a row is walked only down to its aliases.
    """

    fields: Mapping[str, str] = field(default_factory=dict)  # response key -> field name, where they differ
    below: Mapping[str, Renames] = field(default_factory=dict)  # response key -> renames inside its value
    # The rows of a cube share their keys, in order: each key sequence is worked out once (bounded).
    _seen: dict[tuple[str, ...], tuple[str, ...] | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def renamed_keys(self, keys: tuple[str, ...]) -> tuple[str, ...] | None:
        """The keys of an object at this level, in order, under field names; None if unchanged."""
        try:
            return self._seen[keys]
        except KeyError:
            pass
        out: dict[str, None] = {}
        present = set(keys)
        for key in keys:
            name = self.fields.get(key, key)
            # Two aliases of one field (`a: Amount`, `b: Amount(in: USD)`) cannot both take its name,
            # nor can an alias take the name of the field selected alongside it.
            out[key if name in out or (name != key and name in present) else name] = None
        renamed = tuple(out)
        result = None if renamed == keys else renamed
        if len(self._seen) < 64:
            self._seen[keys] = result
        return result


@dataclass(frozen=True, slots=True)
class Cube:
    """One cube of a subscription, as the result names it."""

    root: str  # EVM, Tron, Solana, Trading
    cube: str  # Blocks, Transfers, ... (field name, not alias)
    dataset: str
    context: Mapping[str, Any] = field(default_factory=dict)
    renames: Renames | None = None  # None: rows are already keyed by field names
    metrics: tuple[str, ...] = ()  # top-level response keys that are aggregates

    @property
    def rewrite(self) -> bool:
        return self.renames is not None or bool(self.metrics)


def _fields(
    selection: SelectionSetNode | None, fragments: Mapping[str, FragmentDefinitionNode]
) -> list[FieldNode]:
    """The fields of a selection set, with fragments spread in place."""
    out: list[FieldNode] = []
    for node in selection.selections if selection else ():
        if isinstance(node, FieldNode):
            out.append(node)
        elif isinstance(node, InlineFragmentNode):
            out.extend(_fields(node.selection_set, fragments))
        elif isinstance(node, FragmentSpreadNode) and node.name.value in fragments:
            out.extend(_fields(fragments[node.name.value].selection_set, fragments))
    return out


def _renames(
    selection: SelectionSetNode | None, fragments: Mapping[str, FragmentDefinitionNode]
) -> Renames | None:
    fields: dict[str, str] = {}
    below: dict[str, Renames] = {}
    needed = False
    for node in _fields(selection, fragments):
        key, name = (node.alias.value if node.alias else node.name.value), node.name.value
        inner = _renames(node.selection_set, fragments)
        # A response key selected twice: the last selection decides what happens to it.
        fields.pop(key, None)
        below.pop(key, None)
        if key != name:
            fields[key] = name
        if inner is not None:
            below[key] = inner
        needed = needed or key != name or inner is not None
    return Renames(fields, below) if needed else None


def _is_metric(node: FieldNode) -> bool:
    # Bitquery's aggregates are the lower-case fields of a cube (count, sum, average, uniq, ...).
    return node.name.value[:1].islower() and node.name.value != "__typename"


def _operation(doc: DocumentNode, name: str | None, where: str, at: str) -> OperationDefinitionNode:
    ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
    if name is not None:
        ops = [op for op in ops if op.name is not None and op.name.value == name]
        if not ops:
            raise ConfigError(f"{where}.operation_name: no operation named {name!r} in the query")
    if len(ops) != 1:
        raise ConfigError(f"{at}: {len(ops)} operations; name the one to run with operation_name")
    if ops[0].operation is not OperationType.SUBSCRIPTION:
        raise ConfigError(f"{at}: a {ops[0].operation.value}, not a subscription")
    return ops[0]


def _fragment_cycle(fragments: Mapping[str, FragmentDefinitionNode]) -> list[str] | None:
    """Fragments that spread into themselves, directly or through others: [F, G, F]; else None.

    Depth-first with a stack of its own: a chain of a thousand fragments is no cycle, and must not
    exhaust Python's.
    """
    spreads = {name: sorted(_spreads(d.selection_set)) for name, d in fragments.items()}
    done: set[str] = set()
    for start in fragments:
        if start in done:
            continue
        path, children = [start], [iter(spreads[start])]
        while children:
            child = next(children[-1], None)
            if child is None:  # every spread below path[-1] explored: no cycle through it
                done.add(path.pop())
                children.pop()
            elif child in path:
                return [*path[path.index(child) :], child]
            elif child not in done and child in spreads:
                path.append(child)
                children.append(iter(spreads[child]))
    return None


def _spreads(selection: SelectionSetNode | None) -> set[str]:
    """Names of the fragments spread anywhere inside a selection set (not through other fragments)."""
    names: set[str] = set()
    stack = [selection]
    while stack:
        current = stack.pop()
        for node in current.selections if current else ():
            if isinstance(node, FragmentSpreadNode):
                names.add(node.name.value)
            elif isinstance(node, FieldNode | InlineFragmentNode):
                stack.append(node.selection_set)
    return names


def analyse(
    query: str, variables: Mapping[str, Any], operation_name: str | None, where: str, key: str = "query"
) -> dict[tuple[str, str], Cube]:
    """Bind each cube of the subscription to its dataset; ConfigError for what Bitquery would refuse.

    `where.key` names the document in errors (`query`, or `query_file` for one read from a file).
    graphql-core's parser refuses a document nested too deeply; fragments spread in fragments
    too deep to expand (a chain of a thousand) are refused here.
    """
    at = f"{where}.{key}"
    try:
        doc = parse(query)
    except GraphQLError as exc:
        line = exc.locations[0].line if exc.locations else "?"
        raise ConfigError(f"{at}: {exc.message} (line {line})") from None
    op = _operation(doc, operation_name, where, at)
    fragments = {d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)}
    if cycle := _fragment_cycle(fragments):
        # GraphQL forbids it (NoFragmentCycles): spread in place, it would expand without end.
        raise ConfigError(f"{at}: fragment {cycle[0]} spreads into itself ({' -> '.join(cycle)})")
    try:
        return _cubes(op, fragments, variables, at)
    except RecursionError:  # fragments spread in fragments a thousand deep (no cycle): too deep to expand
        raise ConfigError(f"{at}: fragments nest too deeply") from None


def _cubes(
    op: OperationDefinitionNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    at: str,
) -> dict[tuple[str, str], Cube]:
    roots = _fields(op.selection_set, fragments)
    if len(roots) != 1:
        # Bitquery: one top-level root per document (PROTOCOLS.md 1.6).
        raise ConfigError(f"{at}: a subscription has exactly one root field (EVM, Tron, Solana, ...)")
    root = roots[0]
    # What the server binds: the config's variables over the document's defaults
    # (`$net: evm_network = bsc` streams bsc when `variables` has no `net`).
    bound = {
        d.variable.name.value: value_from_ast_untyped(d.default_value)
        for d in op.variable_definitions or ()
        if d.default_value is not None
    }
    bound.update(variables)
    args = {a.name.value: value_from_ast_untyped(a.value, bound) for a in root.arguments or ()}
    network = args.get("network", root.name.value.lower())
    if network is Undefined or network is None:
        # Stored as every row's chain: a guess would put rows under the wrong one.
        raise ConfigError(f"{at}: {root.name.value}(network: ...) has no value (a variable without one?)")
    context = {"network": str(network), "mempool": bool(args.get("mempool", False))}
    cubes: dict[tuple[str, str], Cube] = {}
    root_key = root.alias.value if root.alias else root.name.value
    for node in _fields(root.selection_set, fragments):
        cube_key = node.alias.value if node.alias else node.name.value
        inner = _fields(node.selection_set, fragments)
        metrics = tuple(f.alias.value if f.alias else f.name.value for f in inner if _is_metric(f))
        dataset = DATASETS.get((root.name.value, node.name.value), GENERIC_DATASET)
        ctx = dict(context)
        if dataset == GENERIC_DATASET:
            ctx.update(root=root.name.value, cube=node.name.value)
        cubes[(root_key, cube_key)] = Cube(
            root=root.name.value,
            cube=node.name.value,
            dataset=dataset,
            context=ctx,
            renames=_renames(node.selection_set, fragments),
            metrics=metrics,
        )
    if not cubes:
        raise ConfigError(f"{at}: {root.name.value} selects no cube")
    return cubes
