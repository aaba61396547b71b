"""BlockDB EVM streams (PROTOCOLS.md section 2): subscribe by chain_id + dataset_id, one record per frame."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from ingest.errors import ConfigError
from ingest.events import (
    Event,
    FatalError,
    Notice,
    Rejected,
    Rows,
    SubscriptionAcked,
    SubscriptionFailed,
)
from ingest.protocols.base import AskAgain, AuthDefaults, Batch, read_decoded
from ingest.retry_hints import MAX_WAIT

__all__ = ["DATASETS", "GENERIC_DATASET", "BlockDBProtocol", "BlockDBSubscription"]

# Dataset ids with a typed table; every other id lands in the generic table with its payload.
DATASETS: dict[str, str] = {
    "0101": "blockdb_blocks",
    "0102": "blockdb_transactions",
    "0103": "blockdb_logs",
    "0302": "blockdb_swaps",
    "0304": "blockdb_transfers",
}
GENERIC_DATASET = "blockdb_generic"
_DATASET_ID = re.compile(r"^\d{4}$")
# A bad key stops the collector. FORBIDDEN (403, details.required_plan) in an ack means "your plan
# lacks this dataset": only that subscription fails (doc 2.4). A key refused outright is seen at the
# handshake (HTTP 401/403) or as close 1008, both fatal in the driver.
_AUTH_CODES = frozenset({"UNAUTHORIZED"})
# A refusal whose `retryable` is absent or no bool: these codes clear with time (429 and 5xx, the
# doc's RATE_LIMIT_EXCEEDED and INTERNAL_SERVER_ERROR); anything else is taken as permanent.
_RETRYABLE_CODES = frozenset(
    {
        "RATE_LIMIT_EXCEEDED",
        "TOO_MANY_REQUESTS",
        "INTERNAL_SERVER_ERROR",
        "BAD_GATEWAY",
        "SERVICE_UNAVAILABLE",
        "GATEWAY_TIMEOUT",
        "TRY_AGAIN_LATER",
    }
)

Pair = tuple[int, str]


@dataclass(frozen=True, slots=True)
class BlockDBSubscription:
    name: str
    chain_id: int
    dataset_id: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pair(self) -> Pair:
        return (self.chain_id, self.dataset_id)


class _Frame(msgspec.Struct, kw_only=True):
    """Every server frame: acks carry action/status, updates carry data (PROTOCOLS.md 2.3)."""

    action: str | None = None
    status: str | None = None
    error: Any = None
    chain_id: int | None = None
    dataset_id: str | None = None
    is_reorg: bool | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")


_decode = msgspec.json.Decoder(_Frame).decode
_encode = msgspec.json.encode


class BlockDBProtocol:
    """Sans-I/O BlockDB session: desired subscriptions survive reconnects, acks tracked per socket."""

    kind: ClassVar[str] = "blockdb"
    auth: ClassVar[AuthDefaults] = AuthDefaults(location="header", query_param="api_key")
    fatal_close_codes: ClassVar[frozenset[int]] = frozenset()
    # 1008 POLICY_VIOLATION is BlockDB's answer to a bad key or scope: retrying the same key loops.
    auth_close_codes: ClassVar[frozenset[int]] = frozenset({1008})
    # Quiet filtered streams are normal (doc 2.5), and the server's ping period is not documented, so
    # liveness comes from our own pings: after 15 s without any frame the driver pings and gives the pong
    # 7.5 s (half the interval). A healthy quiet link thus answers at least every ~15 s, well inside
    # the 30 s idle timeout, and a dead one is closed ~22.5 s after its last frame, before it.
    default_idle_timeout: ClassVar[float] = 30.0
    option_keys: ClassVar[tuple[str, ...]] = ()
    linger: ClassVar[float] = 0.0  # unsubscribes are acknowledged
    default_ping_interval: ClassVar[float] = 15.0  # see above; at most 2/3 of the idle timeout
    # A retryable refusal of a pair is asked again after 1 s, 2 s, 4 s ... up to 30 s, +/-20 %
    # (doc 2.4), or after the server's retry_after_seconds where that is longer.
    retry_initial: ClassVar[float] = 1.0
    retry_max: ClassVar[float] = 30.0

    def __init__(
        self, name: str, subscriptions: list[BlockDBSubscription], options: Mapping[str, Any] | None = None
    ) -> None:
        self.name = name
        self.subprotocols: tuple[str, ...] = ()
        self._desired: dict[Pair, BlockDBSubscription] = {s.pair: s for s in subscriptions}
        self._sent: set[Pair] = set()  # subscribed on this socket (acked or not yet)
        self._acked: set[Pair] = set()
        self._retry: AskAgain[Pair] = AskAgain()  # refused with retryable=true
        self._closing = False
        self._unsubscribing: set[Pair] = set()
        self._outbox: list[str] = []
        self._context: dict[Pair, dict[str, Any]] = {}

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], where: str) -> Mapping[str, Any]:
        return {}

    @classmethod
    def parse_subscription(
        cls, raw: Mapping[str, Any], where: str, base_dir: Path | None = None
    ) -> BlockDBSubscription:
        unknown = set(raw) - {"name", "chain_id", "dataset_id", "params"}
        if unknown:
            raise ConfigError(
                f"{where}.{sorted(unknown)[0]}: unknown key (expected chain_id, dataset_id, params, name)"
            )
        chain_id = raw.get("chain_id")
        if not isinstance(chain_id, int) or isinstance(chain_id, bool) or chain_id <= 0:
            raise ConfigError(f"{where}.chain_id: expected a positive integer, got {chain_id!r}")
        dataset_id = raw.get("dataset_id")
        if not isinstance(dataset_id, str) or not _DATASET_ID.match(dataset_id):
            raise ConfigError(
                f'{where}.dataset_id: expected a 4-digit string such as "0101", got {dataset_id!r}'
            )
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise ConfigError(f"{where}.params: expected a table")
        name = raw.get("name", f"{chain_id}:{dataset_id}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name: expected a non-empty string")
        return BlockDBSubscription(name=name, chain_id=chain_id, dataset_id=dataset_id, params=params)

    @classmethod
    def check_subscriptions(cls, subs: Sequence[BlockDBSubscription], where: str) -> None:
        """A connection holds one subscription per chain and dataset (PROTOCOLS.md 2.2): a second
        one of the same pair would replace the first, which then never delivers."""
        seen: dict[Pair, str] = {}
        for sub in subs:
            if (first := seen.setdefault(sub.pair, sub.name)) != sub.name:
                raise ConfigError(
                    f"{where}: {first!r} and {sub.name!r} both subscribe to chain {sub.chain_id}, "
                    f"dataset {sub.dataset_id}; a connection holds one subscription per pair: put "
                    "the filters in one subscription's params, or the other in a provider of its own"
                )

    # -- driver inputs ---------------------------------------------------------------------------

    def connect(self) -> None:
        # BlockDB keeps nothing across reconnects: every subscription is sent again (doc 2.2),
        # except one still within a refusal's retry_after_seconds, which keepalive() asks for.
        self._retry.due()  # their wait is over: asked now, with the rest
        for sub in self._desired.values():
            if sub.pair not in self._retry:
                self._subscribe(sub)
                self._sent.add(sub.pair)

    def receive(self, frame: str | bytes, received_at: int) -> list[Event]:
        try:
            msg = _decode(frame)
        except msgspec.MsgspecError as exc:
            return [self._reject(frame, f"unreadable frame: {exc}", received_at)]
        batch = Batch()
        self._read(frame, msg, received_at, 0, batch)
        return batch.events

    def receive_many(self, frames: list[bytes], received_at: int, positions: Iterable[int]) -> list[Event]:
        return read_decoded(self, _decode, self._read, frames, received_at, positions)

    def _read(self, frame: str | bytes, msg: _Frame, received_at: int, position: int, batch: Batch) -> None:
        """Append what one decoded frame means to the batch."""
        events = batch.events
        if msg.status is not None:
            for event in self._on_ack(msg, frame, received_at):
                if type(event) is Rejected:
                    event.position = position
                events.append(event)
            return
        data = bytes(msg.data)
        if msg.chain_id is not None and msg.dataset_id is not None and data != b"null":
            pair = (msg.chain_id, msg.dataset_id)
            sub = self._desired.get(pair)
            context = self._context.get(pair)
            if context is None:
                context = self._context[pair] = {"chain_id": msg.chain_id, "dataset_id": msg.dataset_id}
            reorg = bool(msg.is_reorg)
            run = batch.run
            # Frames of one read from the same stream, reorg flag alike: one Rows for the run.
            if run is not None and run.context is context and run.is_reorg is reorg:
                run.join(data, position)
                return
            run = batch.run = Rows(
                provider=self.name,
                dataset=DATASETS.get(msg.dataset_id, GENERIC_DATASET),
                subscription=sub.name if sub else f"{msg.chain_id}:{msg.dataset_id}",
                records=[data],
                received_at=received_at,
                context=context,
                is_reorg=reorg,
                position=position,
            )
            events.append(run)
            return
        reason = "unknown message: neither an acknowledgement nor an update"
        rejected = self._reject(frame, reason, received_at)
        rejected.position = position
        events.append(rejected)

    def data_to_send(self) -> list[str]:
        out, self._outbox = self._outbox, []
        return out

    def keepalive(self) -> None:
        if self._closing:  # unsubscribed: asking again now would undo the goodbye
            return
        # Sent by the driver as soon as next_due() has come, not only at its periodic tick.
        for pair in self._retry.due():
            if pair in self._desired:
                self._subscribe(self._desired[pair])
                self._sent.add(pair)

    def close(self) -> None:
        self._closing = True
        for pair in sorted(self._sent):
            self._unsubscribing.add(pair)
            self._outbox.append(
                _encode({"action": "unsubscribe", "chain_id": pair[0], "dataset_id": pair[1]}).decode()
            )

    def next_due(self) -> int | None:
        """When the first refused subscription may be asked again (ns, wall clock); None: none waits."""
        return None if self._closing else self._retry.next_at()

    @property
    def closed(self) -> bool:
        return self._closing and not self._unsubscribing

    @property
    def active(self) -> int:
        return len(self._desired)

    def connection_lost(self) -> None:
        self._sent.clear()
        self._acked.clear()
        self._unsubscribing.clear()
        # _retry stays: a refusal's retry_after_seconds holds across a reconnect too.

    def state(self) -> dict[str, Any]:
        return {}  # every update names its own chain and dataset: nothing to restore

    def load_state(self, state: Mapping[str, Any]) -> None:
        pass

    # -- internals -------------------------------------------------------------------------------

    def _subscribe(self, sub: BlockDBSubscription) -> None:
        msg = {
            "action": "subscribe",
            "chain_id": sub.chain_id,
            "dataset_id": sub.dataset_id,
            "params": sub.params,
        }
        self._outbox.append(_encode(msg).decode())

    def _reject(self, frame: str | bytes, reason: str, received_at: int) -> Rejected:
        raw = frame.encode() if isinstance(frame, str) else frame
        return Rejected(self.name, raw, reason, received_at)

    def _on_ack(self, msg: _Frame, frame: str | bytes, received_at: int) -> list[Event]:
        pair = (msg.chain_id, msg.dataset_id)
        sub = self._desired.get(pair) if msg.chain_id is not None and msg.dataset_id is not None else None
        label = sub.name if sub else f"{msg.chain_id}:{msg.dataset_id}"
        if msg.status == "success":
            if msg.action == "subscribe" and sub is not None:
                self._acked.add(sub.pair)
                self._sent.add(sub.pair)  # subscribed on this socket, whatever a pair-less error said
                # Not asked again on this socket; a later refusal backs off anew.
                self._retry.granted(sub.pair)
                return [SubscriptionAcked(sub.name)]
            if msg.action == "unsubscribe":
                self._unsubscribing.discard(pair)  # type: ignore[arg-type]
                self._acked.discard(pair)  # type: ignore[arg-type]
                return []
            return [self._reject(frame, f"acknowledgement for no known subscription ({label})", received_at)]
        error = msg.error if isinstance(msg.error, dict) else {}
        text = f"{error.get('code', 'ERROR')}: {error.get('message', msg.error)}"
        details = error.get("details")
        if isinstance(details, dict) and (plan := details.get("required_plan")):
            text += f" (required plan: {plan})"
        if hint := error.get("hint"):
            text += f" (hint: {hint})"
        code = error.get("code")
        if isinstance(code, str) and code in _AUTH_CODES:  # a hostile code (a list, say) is no key
            return [FatalError(f"{label}: {text}", auth=True)]
        retryable = _retryable(error)
        if msg.action == "unsubscribe":
            self._unsubscribing.discard(pair)  # type: ignore[arg-type]
        elif sub is not None:
            return [self._refused(sub, text, retryable, error, received_at)]
        elif msg.chain_id is None or msg.dataset_id is None:
            # An error naming no pair answers one of the subscribes still unanswered. With one
            # waiting, it is that one's; with several, which is unknown: each is asked again
            # (none is given up on a guess), and one the server then grants is not asked twice.
            waiting = [
                self._desired[p]
                for p in sorted(self._sent - self._acked)
                if p in self._desired and msg.chain_id in (None, p[0]) and msg.dataset_id in (None, p[1])
            ]
            if len(waiting) == 1:
                return [self._refused(waiting[0], text, retryable, error, received_at)]
            if waiting:
                text += " (naming no subscription: each unanswered one is asked again)"
                return [self._refused(s, text, True, error, received_at) for s in waiting]
            return [Notice("", f"error naming no subscription: {text}")]
        return [SubscriptionFailed(label, text, retryable)]

    def _refused(
        self, sub: BlockDBSubscription, text: str, retryable: bool, error: Mapping[str, Any], received_at: int
    ) -> SubscriptionFailed:
        """A subscribe the server refused: asked again after a backoff, or given up."""
        pair = sub.pair
        self._sent.discard(pair)  # not subscribed on this socket: nothing to unsubscribe at the goodbye
        if not retryable:
            # Asking again only repeats the error, so this one stops here.
            del self._desired[pair]
            self._retry.granted(pair)
            return SubscriptionFailed(sub.name, text, False)
        # The jitter is drawn from the refusal itself (pair and receive time): pairs refused together
        # still spread out, and the same frames give the same waits (a replay, a batch read as
        # frames one by one).
        jitter = random.Random(f"{pair}|{received_at}")
        wait = self._retry.backoff(pair, self.retry_initial, self.retry_max) * jitter.uniform(0.8, 1.2)
        if asked := _retry_after(error):
            # Never sooner than the server asked; up to a fifth later, so pairs refused together
            # do not all come back in the same instant.
            wait = max(wait, asked * jitter.uniform(1.0, 1.2))
            text += f" (the server asks for {asked:g} s: asked again in {wait:.1f} s)"
        else:
            text += f" (asked again in {wait:.1f} s)"
        self._retry.later(pair, received_at + int(wait * 1e9))
        return SubscriptionFailed(sub.name, text, True)


def _retryable(error: Mapping[str, Any]) -> bool:
    """The error's `retryable` where it is a real bool; otherwise by its code (_RETRYABLE_CODES,
    or an HTTP status sent as the code: 429 or 5xx)."""
    flag = error.get("retryable")
    if type(flag) is bool:
        return flag
    code = error.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if type(code) is int:
        return code == 429 or 500 <= code <= 599
    return isinstance(code, str) and code.upper() in _RETRYABLE_CODES


def _retry_after(error: Mapping[str, Any]) -> float:
    """Seconds a retryable error asks to wait before the same request (RATE_LIMIT_EXCEEDED's
    `retry_after_seconds`, PROTOCOLS.md 2.4), on the error or in its details, at most MAX_WAIT
    (as a Retry-After header); 0 when absent."""
    details = error.get("details")
    nested = details.get("retry_after_seconds") if isinstance(details, dict) else None
    for value in (error.get("retry_after_seconds"), nested):
        if type(value) in (int, float) and 0 < value < math.inf:
            return float(min(value, MAX_WAIT))  # min first: an integer past a double's range
    return 0.0
