"""Emulators: faithful local stand-ins for the providers, sharing no code with ingest.protocols."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from ingest.emulators.bitquery import BitqueryEmulator
from ingest.emulators.blockdb import BlockDBEmulator
from ingest.emulators.coinapi import CoinAPIEmulator
from ingest.emulators.helius import HeliusEmulator
from ingest.errors import ConfigError

__all__ = [
    "EMULATORS",
    "BitqueryEmulator",
    "BlockDBEmulator",
    "CoinAPIEmulator",
    "HeliusEmulator",
    "check_options",
    "make_emulator",
]

EMULATORS: dict[str, Any] = {
    "bitquery": BitqueryEmulator,
    "blockdb": BlockDBEmulator,
    "coinapi": CoinAPIEmulator,
    "helius": HeliusEmulator,
}


_AUTH = frozenset({"key", "client_id", "client_secret"})  # given by the daemon, not by options


def make_emulator(kind: str, options: Mapping[str, Any], **auth: Any) -> Any:
    """The emulator of `kind` with options from a config or `emulate --set` (see check_options)."""
    check_options(kind, options)
    return EMULATORS[kind](**auth, **options)


def check_options(kind: str, options: Mapping[str, Any]) -> None:
    """ConfigError naming the option that is unknown or of the wrong type: the emulator would take
    a wrong type and fail mid-run (a `block_interval` of "fast" stopped its clock, so nothing was
    ever sent). Cheap, so the daemon checks before it creates anything."""
    factory = EMULATORS[kind]
    parameters = inspect.signature(factory.__init__).parameters
    known = sorted(name for name in parameters if name != "self" and name not in _AUTH)
    hints = typing.get_type_hints(factory.__init__)
    for name, value in options.items():
        if name not in known:
            raise ConfigError(f"{name}: unknown option (the {kind} emulator takes: {', '.join(known)})")
        expected = hints.get(name)
        if expected is not None and not _fits(value, expected):
            raise ConfigError(f"{name}: expected {_describe(expected)}, got {value!r}")


def _fits(value: Any, expected: Any) -> bool:
    """Whether a TOML value can stand for a parameter of this annotation (lists for sequences);
    annotations of other kinds (a datetime, a symbol table) are left to the emulator."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if expected is type(None):
        return value is None
    if isinstance(value, bool):
        return expected is bool
    if expected is float:
        return isinstance(value, int | float)
    if expected in (int, str, bool):
        return isinstance(value, expected)
    if origin in (tuple, list, collections.abc.Iterable, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    return True


def _describe(expected: Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    names = {float: "a number", int: "an integer", str: "a string", bool: "true or false", type(None): "none"}
    if expected in names:
        return names[expected]
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    return f"a list, each {_describe(args[0])}" if args else "a list"
