"""Bitquery V2 streaming schema subset: the cube catalogue and the graphql-core schema built from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple

from graphql import (
    GraphQLArgument,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLField,
    GraphQLFloat,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    StringValueNode,
)

__all__ = ["CUBES", "METRICS", "NETWORKS", "TRIGGERS", "Cube", "Leaf", "schema"]


class Leaf(NamedTuple):
    """A scalar column: its output type, its `where` selector type, and how its values compare."""

    output: str  # String, Int, Float, Boolean, DateTime, or "enum"
    selector: str  # input type name used in `where`; "" for enum leaves (generated per cube)
    compare: str  # text, number, time or bool
    values: tuple[str, ...] = ()  # enum leaves only


# Bitquery types big numbers and amounts as String (PROTOCOLS.md 1.7); their selectors take strings.
STRING = Leaf("String", "OLAP_String", "text")
BIGINT = Leaf("String", "OLAP_BigInteger", "number")
AMOUNT = Leaf("String", "EVM_Amount_With_Decimals", "number")
INT = Leaf("Int", "OLAP_Integer", "number")
FLOAT = Leaf("Float", "OLAP_Float", "number")
BOOL = Leaf("Boolean", "Boolean", "bool")  # a bare Boolean in where: {TransactionStatus: {Success: true}}
DATETIME = Leaf("DateTime", "OLAP_DateTime", "time")
DATE = Leaf("String", "OLAP_Date", "time")


def _enum(*values: str) -> Leaf:
    return Leaf("enum", "", "text", values)


Spec = dict[str, Any]  # field name -> Leaf or nested Spec

SIGNATURE: Spec = {"Name": STRING, "Signature": STRING, "SignatureHash": STRING}
EVM_BLOCK: Spec = {
    "Number": BIGINT, "Hash": STRING, "ParentHash": STRING, "Time": DATETIME, "Date": DATE,
    "TxCount": INT, "UnclesCount": INT, "GasUsed": BIGINT, "GasLimit": BIGINT, "BaseFee": BIGINT,
    "Coinbase": STRING, "Difficulty": BIGINT, "Nonce": BIGINT, "Extra": STRING, "ReceiptHash": STRING,
    "TxHash": STRING, "Root": STRING, "UncleHash": STRING, "MixDigest": STRING,
}  # fmt: skip
EVM_TX: Spec = {
    "Hash": STRING, "From": STRING, "To": STRING, "Index": INT, "Nonce": INT, "Gas": BIGINT,
    "GasPrice": BIGINT, "GasFeeCap": BIGINT, "GasTipCap": BIGINT, "Value": AMOUNT, "ValueInUSD": AMOUNT,
    "Cost": AMOUNT, "CostInUSD": AMOUNT, "Type": INT, "Time": DATETIME,
}  # fmt: skip
STATUS: Spec = {"Success": BOOL, "FaultError": STRING, "EndError": STRING}
RECEIPT: Spec = {
    "GasUsed": BIGINT, "CumulativeGasUsed": BIGINT, "Status": INT, "ContractAddress": STRING, "Type": INT,
}  # fmt: skip
CURRENCY: Spec = {
    "Symbol": STRING, "Name": STRING, "SmartContract": STRING, "Decimals": INT, "Native": BOOL,
    "Fungible": BOOL, "ProtocolName": STRING, "HasURI": BOOL, "Delegated": BOOL, "DelegatedTo": STRING,
}  # fmt: skip
LOG: Spec = {"Index": INT, "LogAfterCallIndex": INT, "SmartContract": STRING, "Signature": SIGNATURE}
CALL: Spec = {
    "Index": INT, "From": STRING, "To": STRING, "Value": AMOUNT, "Create": BOOL, "Success": BOOL,
    "Signature": SIGNATURE,
}  # fmt: skip
TRANSFER: Spec = {
    "Amount": AMOUNT, "AmountInUSD": AMOUNT, "Sender": STRING, "Receiver": STRING, "Success": BOOL,
    "Type": _enum("transaction", "call", "token"), "Id": BIGINT, "URI": STRING, "Data": STRING,
    "Currency": CURRENCY,
}  # fmt: skip
SIDE: Spec = {
    "Amount": AMOUNT, "AmountInUSD": AMOUNT, "Buyer": STRING, "Seller": STRING, "Price": FLOAT,
    "PriceInUSD": FLOAT, "Currency": CURRENCY,
}  # fmt: skip
DEX: Spec = {
    "ProtocolName": STRING, "ProtocolFamily": STRING, "ProtocolVersion": STRING, "SmartContract": STRING,
    "OwnerAddress": STRING,
    "Pair": {"Name": STRING, "SmartContract": STRING, "Symbol": STRING, "Decimals": INT},
}  # fmt: skip
TRADE: Spec = {"Buy": SIDE, "Sell": SIDE, "Dex": DEX, "Sender": STRING, "Success": BOOL}
BALANCE_UPDATE: Spec = {
    "Address": STRING, "Amount": AMOUNT, "AmountInUSD": AMOUNT, "Id": BIGINT, "URI": STRING,
    "Type": _enum("transfer", "fee", "block_reward", "uncle_reward", "genesis", "other"),
}  # fmt: skip

TRON_BLOCK: Spec = {
    "Number": BIGINT, "Hash": STRING, "ParentHash": STRING, "Time": DATETIME, "Date": DATE, "TxCount": INT,
}  # fmt: skip
TRON_TX: Spec = {
    "Hash": STRING, "Index": INT, "Time": DATETIME, "Fee": AMOUNT, "FeePayer": STRING,
    "Result": {"Success": BOOL, "Status": STRING},
}  # fmt: skip
TRON_TRANSFER: Spec = {
    "Amount": AMOUNT, "AmountInUSD": AMOUNT, "Sender": STRING, "Receiver": STRING, "Id": BIGINT,
    "Success": BOOL,
    "Currency": {"SmartContract": STRING, "Symbol": STRING, "Name": STRING, "Decimals": INT,
                 "Fungible": BOOL, "Native": BOOL},
}  # fmt: skip

SOL_BLOCK: Spec = {
    "Slot": BIGINT, "Height": BIGINT, "ParentSlot": BIGINT, "Time": DATETIME, "Date": DATE, "Hash": STRING,
    "ParentHash": STRING, "TxCount": INT, "RewardsCount": INT,
}  # fmt: skip
SOL_TX: Spec = {
    "Signature": STRING, "Signer": STRING, "Index": INT, "Fee": AMOUNT, "FeeInUSD": AMOUNT,
    "FeePayer": STRING, "Result": {"Success": BOOL, "ErrorMessage": STRING},
}  # fmt: skip
SOL_ACCOUNT: Spec = {"Address": STRING, "Owner": STRING}
SOL_TRANSFER: Spec = {
    "Amount": AMOUNT, "AmountInUSD": AMOUNT, "Sender": SOL_ACCOUNT, "Receiver": SOL_ACCOUNT,
    "Currency": {"MintAddress": STRING, "Symbol": STRING, "Name": STRING, "Decimals": INT,
                 "Fungible": BOOL, "Native": BOOL},
}  # fmt: skip


@dataclass(frozen=True)
class Cube:
    """One cube: `root.field` in documents, `<root>_<stem>_*` in type names, and its dimensions."""

    root: str
    field: str
    stem: str
    dims: Spec
    # Enum name (Block_Number) -> (path, leaf); the cube's EnumFields, NumFields and CompareFields.
    paths: dict[str, tuple[tuple[str, ...], Leaf]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        paths: dict[str, tuple[tuple[str, ...], Leaf]] = {}

        def walk(spec: Spec, prefix: tuple[str, ...]) -> None:
            for name, sub in spec.items():
                if isinstance(sub, Leaf):
                    paths["_".join((*prefix, name))] = ((*prefix, name), sub)
                else:
                    walk(sub, (*prefix, name))

        walk(self.dims, ())
        object.__setattr__(self, "paths", paths)

    @property
    def prefix(self) -> str:
        return f"{self.root}_{self.stem}"


def _evm(field_name: str, stem: str, dims: Spec) -> Cube:
    return Cube("EVM", field_name, stem, {"ChainId": BIGINT, **dims})


_TXN: Spec = {"Block": EVM_BLOCK, "Transaction": EVM_TX}
CUBES: dict[tuple[str, str], Cube] = {
    (c.root, c.field): c
    for c in (
        _evm("Blocks", "Block", {"Block": EVM_BLOCK}),
        _evm("Transactions", "Transaction", {**_TXN, "TransactionStatus": STATUS, "Receipt": RECEIPT}),
        _evm("Transfers", "Transfer", {**_TXN, "Transfer": TRANSFER, "Log": LOG, "Call": CALL,
                                        "TransactionStatus": STATUS}),
        _evm("DEXTrades", "DEXTrade", {**_TXN, "Trade": TRADE, "Log": LOG, "Call": CALL,
                                       "TransactionStatus": STATUS, "Receipt": RECEIPT}),
        _evm("BalanceUpdates", "BalanceUpdate", {**_TXN, "BalanceUpdate": BALANCE_UPDATE,
                                                 "Currency": CURRENCY, "Log": LOG, "Call": CALL}),
        Cube("Tron", "Blocks", "Block", {"Block": TRON_BLOCK}),
        Cube("Tron", "Transfers", "Transfer", {"Block": TRON_BLOCK, "Transaction": TRON_TX,
                                               "Transfer": TRON_TRANSFER}),
        Cube("Solana", "Blocks", "Block", {"Block": SOL_BLOCK}),
        Cube("Solana", "Transfers", "Transfer", {"Block": SOL_BLOCK, "Transaction": SOL_TX,
                                                 "Transfer": SOL_TRANSFER}),
    )
}  # fmt: skip
# EVM networks served and their chain ids; eth uses the same synthetic chain as the BlockDB emulator.
NETWORKS: dict[str, int] = {
    "eth": 1, "bsc": 56, "base": 8453, "arbitrum": 42161, "optimism": 10, "matic": 137, "opbnb": 204,
}  # fmt: skip
TRIGGERS = ("all", "head", "head_updates", "branches_updates")  # PROTOCOLS.md 1.9
METRICS = frozenset({"count", "sum", "average", "uniq", "maximum", "minimum"})


def _parse_datetime_literal(node: Any, _variables: Any = None) -> str:
    if not isinstance(node, StringValueNode):
        raise TypeError("DateTime expects an ISO-8601 string")
    return node.value


def _parse_datetime(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("DateTime expects an ISO-8601 string")
    return value


class _Builder:
    """Builds the graphql-core types for every cube, sharing scalar selectors and root enums."""

    def __init__(self) -> None:
        self.datetime = GraphQLScalarType(
            "DateTime",
            serialize=str,
            parse_value=_parse_datetime,
            parse_literal=_parse_datetime_literal,
            description="ISO-8601 date and time, UTC",
        )
        self.outputs: dict[str, GraphQLOutputType] = {
            "String": GraphQLString, "Int": GraphQLInt, "Float": GraphQLFloat,
            "Boolean": GraphQLBoolean, "DateTime": self.datetime,
        }  # fmt: skip
        text = {"is": GraphQLString, "not": GraphQLString}
        compare = ("eq", "ne", "gt", "ge", "lt", "le")
        self.selectors: dict[str, GraphQLInputType] = {
            "OLAP_String": self._selector("OLAP_String", text, GraphQLString),
            "OLAP_BigInteger": self._selector("OLAP_BigInteger", dict.fromkeys(compare, GraphQLString),
                                              GraphQLString),
            "EVM_Amount_With_Decimals": self._selector(
                "EVM_Amount_With_Decimals", dict.fromkeys(compare, GraphQLString), GraphQLString
            ),
            "OLAP_Integer": self._selector("OLAP_Integer", dict.fromkeys(compare, GraphQLInt), GraphQLInt),
            "OLAP_Float": self._selector("OLAP_Float", dict.fromkeys(compare, GraphQLFloat), None),
            "OLAP_DateTime": self._selector("OLAP_DateTime", self._times(self.datetime), self.datetime),
            "OLAP_Date": self._selector("OLAP_Date", self._times(GraphQLString), GraphQLString),
            "Boolean": GraphQLBoolean,
        }  # fmt: skip

    @staticmethod
    def _times(of: GraphQLInputType) -> dict[str, GraphQLInputType]:
        return dict.fromkeys(("is", "not", "after", "before", "since", "till"), of)

    @staticmethod
    def _selector(
        name: str, ops: dict[str, GraphQLInputType], listed: GraphQLInputType | None
    ) -> GraphQLInputObjectType:
        fields = {op: GraphQLInputField(t) for op, t in ops.items()}
        if listed is not None:
            fields["in"] = GraphQLInputField(GraphQLList(listed))
            fields["notIn"] = GraphQLInputField(GraphQLList(listed))
        return GraphQLInputObjectType(name, fields)

    def cube_field(self, cube: Cube) -> GraphQLField:
        p = cube.prefix
        every = {name: name for name in cube.paths}
        numeric = {name: name for name, (_, leaf) in cube.paths.items() if leaf.compare == "number"}
        enum_fields = GraphQLEnumType(f"{p}_EnumFields", every)
        compare_fields = GraphQLEnumType(f"{p}_CompareFields", every)
        num_fields = GraphQLEnumType(f"{p}_NumFields", numeric)
        dims: dict[str, GraphQLInputField] = {}
        filter_type = GraphQLInputObjectType(
            f"{p}_Filter",
            lambda: {**dims, "any": GraphQLInputField(GraphQLList(GraphQLNonNull(filter_type)))},
        )
        for name, sub in cube.dims.items():
            dims[name] = GraphQLInputField(self._input(cube, (name,), sub))
        given = GraphQLArgument(filter_type)
        extremes = {"maximum": GraphQLArgument(compare_fields), "minimum": GraphQLArgument(compare_fields)}
        fields: dict[str, GraphQLField] = {
            name: self._output(cube, (name,), sub, extremes) for name, sub in cube.dims.items()
        }
        of_num = GraphQLArgument(GraphQLNonNull(num_fields))
        of_any = GraphQLArgument(GraphQLNonNull(enum_fields))
        fields.update({
            "count": GraphQLField(GraphQLString, {"distinct": GraphQLArgument(GraphQLList(enum_fields)),
                                                  "if": given}),
            "sum": GraphQLField(GraphQLString, {"of": of_num, "if": given}),
            "average": GraphQLField(GraphQLFloat, {"of": of_num, "if": given}),
            "uniq": GraphQLField(GraphQLString, {"of": of_any, "if": given}),
            "maximum": GraphQLField(GraphQLString, {"of": of_any, "get": GraphQLArgument(enum_fields),
                                                    "if": given}),
            "minimum": GraphQLField(GraphQLString, {"of": of_any, "get": GraphQLArgument(enum_fields),
                                                    "if": given}),
        })  # fmt: skip
        cube_type = GraphQLObjectType(f"{p}_Cube", fields)
        pages = {"count": GraphQLInputField(GraphQLInt), "offset": GraphQLInputField(GraphQLInt)}
        limit_by = {"by": GraphQLInputField(GraphQLList(enum_fields)), **pages}
        ordering = {
            "ascending": GraphQLInputField(enum_fields),
            "descending": GraphQLInputField(enum_fields),
            "ascendingByField": GraphQLInputField(GraphQLString),
            "descendingByField": GraphQLInputField(GraphQLString),
        }
        args = {
            "where": GraphQLArgument(filter_type),
            "limit": GraphQLArgument(GraphQLInputObjectType(f"{p}_Limit", pages)),
            "limitBy": GraphQLArgument(GraphQLInputObjectType(f"{p}_LimitBy", limit_by)),
            "orderBy": GraphQLArgument(GraphQLList(GraphQLInputObjectType(f"{p}_Ordering", ordering))),
        }
        return GraphQLField(GraphQLList(cube_type), args)

    def _output(
        self, cube: Cube, path: tuple[str, ...], sub: Any, extremes: dict[str, GraphQLArgument]
    ) -> GraphQLField:
        if isinstance(sub, Leaf):
            if sub.output == "enum":
                name = f"{cube.prefix}_Fields_{'_'.join(path[:-1])}_{'_'.join(path[-2:])}_Output"
                return GraphQLField(GraphQLEnumType(name, {v: v for v in sub.values}), extremes)
            return GraphQLField(self.outputs[sub.output], extremes)
        fields = {n: self._output(cube, (*path, n), s, extremes) for n, s in sub.items()}
        return GraphQLField(GraphQLObjectType(f"{cube.prefix}_Fields_{'_'.join(path)}", fields))

    def _input(self, cube: Cube, path: tuple[str, ...], sub: Any) -> GraphQLInputType:
        if isinstance(sub, Leaf):
            if sub.output == "enum":
                joined = "_".join(path[-2:])
                name = f"{cube.prefix}_Input_{joined}_Input_{joined}"
                values = GraphQLEnumType(f"{name}_Input", {v: v for v in sub.values})
                ops = {"is": values, "not": values}
                return self._selector(name, ops, values)
            return self.selectors[sub.selector]
        fields = {n: GraphQLInputField(self._input(cube, (*path, n), s)) for n, s in sub.items()}
        return GraphQLInputObjectType(f"{cube.prefix}_Input_{'_'.join(path)}_InputType", fields)


@cache
def schema() -> GraphQLSchema:
    """The schema every document is validated against (built once; ~100 types)."""
    b = _Builder()
    trigger = GraphQLEnumType("blocks_update_arg_enum", {t: t for t in TRIGGERS})
    mempool = GraphQLArgument(GraphQLBoolean, default_value=False)
    # Argument sets of the subscription roots (docs: graphql-reference/subscriptions/evm).
    root_args = {
        "EVM": {
            "network": GraphQLArgument(GraphQLEnumType("evm_network", {n: n for n in NETWORKS})),
            "trigger_on": GraphQLArgument(trigger),
            "mempool": mempool,
        },
        "Tron": {
            "network": GraphQLArgument(GraphQLEnumType("tron_network", {"tron": "tron"})),
            "trigger_on": GraphQLArgument(trigger),
            "mempool": mempool,
        },
        "Solana": {
            "network": GraphQLArgument(GraphQLEnumType("solana_network", {"solana": "solana"})),
            "trigger_on": GraphQLArgument(trigger),
        },
    }
    roots: dict[str, GraphQLField] = {}
    for root, args in root_args.items():
        cubes = {c.field: b.cube_field(c) for c in CUBES.values() if c.root == root}
        roots[root] = GraphQLField(GraphQLObjectType(f"{root}_Subscription", cubes), args)
    # A query root is mandatory in GraphQL; documents that are not subscriptions are refused later.
    return GraphQLSchema(
        query=GraphQLObjectType("Query", roots), subscription=GraphQLObjectType("Subscription", roots)
    )
