"""Runs a compiled Bitquery plan over one block's rows: where, metrics and grouping, orderBy, limitBy."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from ingest.emulators.bitquery_query import CubePlan, Sel
from ingest.emulators.bitquery_schema import Cube, Leaf, Spec

__all__ = ["matches", "run_cube"]


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def _dec(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _norm(leaf: Leaf, value: Any) -> Any:
    if leaf.compare == "number":
        return _dec(value)
    if isinstance(value, str) and value[:2].lower() == "0x":
        return value.lower()  # EVM addresses and hashes match whatever their letter case
    return value


def _test(leaf: Leaf, value: Any, cond: Any) -> bool:
    if leaf.compare == "bool" or not isinstance(cond, dict):
        return value == cond
    have = _norm(leaf, value)
    for op, operand in cond.items():
        if operand is None:
            continue
        if op in ("in", "notIn"):
            found = have in {_norm(leaf, o) for o in operand}
            if found != (op == "in"):
                return False
            continue
        want = _norm(leaf, operand)
        if op in ("is", "eq"):
            ok = have == want
        elif op in ("not", "ne"):
            ok = have != want
        elif have is None or want is None:
            ok = False
        elif op in ("gt", "after"):
            ok = have > want
        elif op in ("ge", "since"):
            ok = have >= want
        elif op in ("lt", "before"):
            ok = have < want
        else:  # le, till
            ok = have <= want
        if not ok:
            return False
    return True


def matches(where: dict[str, Any], obj: Any, spec: Spec) -> bool:
    """Whether a row (or a nested part of it) satisfies a `where` filter: AND of keys, `any` is OR."""
    for key, cond in where.items():
        if cond is None:
            continue
        if key == "any":
            if cond and not any(matches(w, obj, spec) for w in cond):
                return False
            continue
        sub = spec[key]
        value = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(sub, Leaf):
            if not _test(sub, value, cond):
                return False
        elif not matches(cond, value, sub):
            return False
    return True


def _project(sels: tuple[Sel, ...], obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sel in sels:
        if sel.kind == "dim":
            value = obj.get(sel.name)
            out[sel.key] = None if value is None else _project(sel.children, value)
        elif sel.kind == "typename":
            out[sel.key] = sel.args["value"]
        else:
            out[sel.key] = obj.get(sel.name)
    return out


def _sort_key(value: Any) -> tuple[int, Any]:
    number = _dec(value)
    if number is not None and not isinstance(value, bool):
        return (0, number)
    return (2, "") if value is None else (1, str(value))


def _plain_leaves(sels: tuple[Sel, ...]) -> list[tuple[str, ...]]:
    out = []
    for sel in sels:
        if sel.kind == "dim":
            out += _plain_leaves(sel.children)
        elif sel.kind == "leaf" and not (sel.args.get("maximum") or sel.args.get("minimum")):
            out.append(sel.path)
    return out


def _format(total: Decimal) -> str:
    return format(total.normalize(), "f") if total else "0"


def _metric(sel: Sel, rows: list[dict[str, Any]], cube: Cube) -> Any:
    args = sel.args
    if args.get("if"):
        rows = [r for r in rows if matches(args["if"], r, cube.dims)]
    of = cube.paths[args["of"]][0] if args.get("of") else None
    if sel.name == "count":
        distinct = [cube.paths[d][0] for d in args.get("distinct") or ()]
        if distinct:
            return str(len({tuple(_get(r, p) for p in distinct) for r in rows}))
        return str(len(rows))
    assert of is not None
    if sel.name == "uniq":
        return str(len({_get(r, of) for r in rows}))
    values = [v for v in (_dec(_get(r, of)) for r in rows) if v is not None]
    if sel.name == "sum":
        return _format(sum(values, Decimal(0)))
    if sel.name == "average":
        return float(sum(values, Decimal(0)) / len(values)) if values else None
    if not rows:
        return None
    pick = max if sel.name == "maximum" else min
    chosen = pick(rows, key=lambda r: _sort_key(_get(r, of)))
    value = _get(chosen, cube.paths[args["get"]][0] if args.get("get") else of)
    return None if value is None else str(value)


def _project_group(sels: tuple[Sel, ...], rows: list[dict[str, Any]], cube: Cube) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sel in sels:
        if sel.kind == "dim":
            out[sel.key] = _project_group(sel.children, rows, cube)
        elif sel.kind == "metric":
            out[sel.key] = _metric(sel, rows, cube)
        elif sel.kind == "typename":
            out[sel.key] = sel.args["value"]
        else:
            extreme = sel.args.get("maximum") or sel.args.get("minimum")
            row = rows[0]
            if extreme:
                pick = max if sel.args.get("maximum") else min
                by = cube.paths[extreme][0]
                row = pick(rows, key=lambda r, by=by: _sort_key(_get(r, by)))
            out[sel.key] = _get(row, sel.path)
    return out


def run_cube(plan: CubePlan, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The response rows of one cube for one block: filtered, grouped if metrics, ordered, limited by."""
    cube = plan.cube
    if plan.where:
        rows = [r for r in rows if matches(plan.where, r, cube.dims)]
    if not rows:
        return []
    if plan.grouped:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        leaves = _plain_leaves(plan.sels)
        for row in rows:
            groups.setdefault(tuple(_get(row, p) for p in leaves), []).append(row)
        pairs = [(g[0], _project_group(plan.sels, g, cube)) for g in groups.values()]
    else:
        pairs = [(r, _project(plan.sels, r)) for r in rows]
    for order in reversed(plan.order):
        for arg, descending in (("ascending", False), ("descending", True)):
            if order.get(arg):
                by = cube.paths[order[arg]][0]
                pairs.sort(key=lambda p, by=by: _sort_key(_get(p[0], by)), reverse=descending)
        for arg, descending in (("ascendingByField", False), ("descendingByField", True)):
            if order.get(arg):
                keys = tuple(order[arg].split("."))
                pairs.sort(key=lambda p, keys=keys: _sort_key(_get(p[1], keys)), reverse=descending)
    limit_by = plan.limit_by
    if limit_by and limit_by.get("by"):
        by_paths = [cube.paths[b][0] for b in limit_by["by"]]
        offset = limit_by.get("offset") or 0
        count = limit_by.get("count")
        seen: dict[tuple[Any, ...], int] = {}
        kept = []
        for pair in pairs:
            k = tuple(_get(pair[0], p) for p in by_paths)
            n = seen[k] = seen.get(k, 0) + 1
            if n > offset and (count is None or n <= offset + count):
                kept.append(pair)
        pairs = kept
    return [p for _, p in pairs]
