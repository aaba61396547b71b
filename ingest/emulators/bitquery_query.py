"""Bitquery subscription documents: parse and validate them, then compile them into plans."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLIncludeDirective,
    GraphQLObjectType,
    GraphQLSkipDirective,
    InlineFragmentNode,
    OperationType,
    SelectionSetNode,
    get_named_type,
    get_operation_ast,
    parse,
    validate,
)
from graphql.execution.values import (
    get_argument_values,
    get_directive_values,
    get_variable_values,
)

from ingest.emulators.bitquery_schema import CUBES, METRICS, Cube, schema

if TYPE_CHECKING:  # graphql-core 3.3 names it; 3.2 passes a plain dict, which works the same here
    from graphql.execution.values import VariableValues

__all__ = ["DEFAULT_BATCH", "CubePlan", "Plan", "RequestError", "Sel", "compile_request"]

# Rows per cube per message unless the document sets `limit: {count: N}` (PROTOCOLS.md 1.7).
DEFAULT_BATCH = 800
_PLAN_CACHE_SIZE = 256
_QUOTED = re.compile(r"'([^'\s]*)'")


class RequestError(Exception):
    """A document refused before execution; `errors` are GraphQL error objects (message, locations)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"] if errors else "invalid request")
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Sel:
    """One selected field: response key, schema name, kind (dim/leaf/metric/typename) and arguments."""

    key: str
    name: str
    kind: str
    children: tuple[Sel, ...] = ()
    args: dict[str, Any] = field(default_factory=dict)
    path: tuple[str, ...] = ()  # schema path from the cube row, for leaves


@dataclass(frozen=True, slots=True)
class CubePlan:
    """One cube of a subscription: where its rows land in the response and how they are shaped."""

    key: str
    cube: Cube
    path: str  # response path, e.g. "EVM.Transfers" or "EVM.count" for an aliased cube
    sels: tuple[Sel, ...]
    where: dict[str, Any] | None
    batch: int
    order: tuple[dict[str, Any], ...]
    limit_by: dict[str, Any] | None
    grouped: bool  # a metric is selected: one row per distinct combination of plain leaves


@dataclass(frozen=True, slots=True)
class Plan:
    """A compiled subscription: the root (with its arguments) and its cubes, in selection order."""

    root: str
    root_key: str
    network: str
    mempool: bool
    trigger: str
    cubes: tuple[CubePlan, ...]
    signature: bytes  # equal for identical requests, so their frames can be encoded once


def _js_quotes(error: dict[str, Any]) -> dict[str, Any]:
    # graphql-core quotes names with '...'; graphql-js and gqlgen servers (and Bitquery) use "...".
    return {**error, "message": _QUOTED.sub(r'"\1"', error["message"])}


_cache: OrderedDict[bytes, Plan] = OrderedDict()


def compile_request(query: str, variables: dict[str, Any] | None, operation_name: str | None) -> Plan:
    """Compile a subscribe/start payload; raise RequestError with GraphQL errors if it is refused."""
    signature = msgspec.json.encode([query, variables or {}, operation_name], order="sorted")
    plan = _cache.get(signature)
    if plan is not None:
        _cache.move_to_end(signature)
        return plan
    plan = _Compiler(query, variables or {}, operation_name, signature).plan()
    _cache[signature] = plan
    if len(_cache) > _PLAN_CACHE_SIZE:
        _cache.popitem(last=False)
    return plan


class _Compiler:
    def __init__(
        self, query: str, variables: dict[str, Any], operation_name: str | None, signature: bytes
    ) -> None:
        self.query, self.variables, self.operation_name = query, variables, operation_name
        self.signature = signature
        self.fragments: dict[str, FragmentDefinitionNode] = {}
        self.vars: VariableValues | None = None

    def plan(self) -> Plan:
        s = schema()
        try:
            doc = parse(self.query)
        except GraphQLError as error:
            raise RequestError([_js_quotes(error.formatted)]) from None
        errors = validate(s, doc)
        if errors:
            raise RequestError([_js_quotes(e.formatted) for e in errors])
        op = get_operation_ast(doc, self.operation_name)
        if op is None:
            message = (
                f'Unknown operation named "{self.operation_name}".'
                if self.operation_name
                else "Must provide operation name if query contains multiple operations."
            )
            raise RequestError([{"message": message}])
        if op.operation is not OperationType.SUBSCRIPTION:
            where = GraphQLError("", op).formatted.get("locations")
            message = f"subscription not valid: a {op.operation.value} cannot be streamed, use a subscription"
            raise RequestError([{"message": message, "locations": where}])
        coerced = get_variable_values(s, op.variable_definitions or (), self.variables)
        if isinstance(coerced, list):
            raise RequestError([_js_quotes(e.formatted) for e in coerced])
        self.vars = coerced
        self.fragments = {d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)}
        subscription = s.subscription_type
        assert subscription is not None
        roots = self._collect([op.selection_set])
        if len(roots) != 1:  # validation allows @skip to leave none
            raise RequestError([{"message": "subscription not valid: select exactly one root"}])
        ((root_key, nodes),) = roots.items()
        root = nodes[0].name.value
        root_def = subscription.fields[root]
        args = self._args(root_def, nodes[0])
        root_type = get_named_type(root_def.type)
        assert isinstance(root_type, GraphQLObjectType)
        cubes = []
        for key, cube_nodes in self._collect(n.selection_set for n in nodes).items():
            name = cube_nodes[0].name.value
            if name == "__typename":
                raise RequestError([{"message": "subscription not valid: __typename is not a cube"}])
            cube = CUBES[(root, name)]
            cube_def = root_type.fields[name]
            cube_type = get_named_type(cube_def.type)
            assert isinstance(cube_type, GraphQLObjectType)
            cargs = self._args(cube_def, cube_nodes[0])
            sels = self._sels(cube_type, [n.selection_set for n in cube_nodes], (), top=True)
            limit = cargs.get("limit") or {}
            order = cargs.get("orderBy") or ()
            cubes.append(
                CubePlan(
                    key=key,
                    cube=cube,
                    path=f"{root_key}.{key}",
                    sels=sels,
                    where=cargs.get("where"),
                    batch=limit.get("count") or DEFAULT_BATCH,
                    order=tuple(o for o in order if o),
                    limit_by=cargs.get("limitBy"),
                    grouped=any(sel.kind == "metric" for sel in sels),
                )
            )
        return Plan(
            root=root,
            root_key=root_key,
            network=args.get("network") or ("eth" if root == "EVM" else root.lower()),
            mempool=bool(args.get("mempool")),
            trigger=args.get("trigger_on") or "all",
            cubes=tuple(cubes),
            signature=self.signature,
        )

    def _args(self, definition: Any, node: FieldNode) -> dict[str, Any]:
        return get_argument_values(definition, node, self.vars)

    def _included(self, node: Any) -> bool:
        skip = get_directive_values(GraphQLSkipDirective, node, self.vars)
        if skip and skip.get("if"):
            return False
        include = get_directive_values(GraphQLIncludeDirective, node, self.vars)
        return not (include and not include.get("if"))

    def _collect(self, sets: Iterable[SelectionSetNode | None]) -> dict[str, list[FieldNode]]:
        """Fields by response key, fragments inlined (every type condition holds: no interfaces here)."""
        fields: dict[str, list[FieldNode]] = {}

        def visit(selection_set: SelectionSetNode) -> None:
            for sel in selection_set.selections:
                if not self._included(sel):
                    continue
                if isinstance(sel, FieldNode):
                    key = sel.alias.value if sel.alias else sel.name.value
                    fields.setdefault(key, []).append(sel)
                elif isinstance(sel, InlineFragmentNode):
                    visit(sel.selection_set)
                elif isinstance(sel, FragmentSpreadNode):
                    visit(self.fragments[sel.name.value].selection_set)

        for selection_set in sets:
            if selection_set is not None:
                visit(selection_set)
        return fields

    def _sels(
        self,
        parent: GraphQLObjectType,
        sets: list[SelectionSetNode | None],
        prefix: tuple[str, ...],
        *,
        top: bool = False,
    ) -> tuple[Sel, ...]:
        out = []
        for key, nodes in self._collect(sets).items():
            name = nodes[0].name.value
            if name == "__typename":
                out.append(Sel(key, name, "typename", args={"value": parent.name}))
                continue
            definition = parent.fields[name]
            args = self._args(definition, nodes[0])
            named = get_named_type(definition.type)
            if isinstance(named, GraphQLObjectType):
                children = self._sels(named, [n.selection_set for n in nodes], (*prefix, name))
                out.append(Sel(key, name, "dim", children, args, (*prefix, name)))
            elif top and name in METRICS:
                out.append(Sel(key, name, "metric", (), args))
            else:
                out.append(Sel(key, name, "leaf", (), args, (*prefix, name)))
        return tuple(out)
