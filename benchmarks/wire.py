"""Just enough RFC 6455 for a load server: the upgrade handshake, server frames, client frames.

Server-to-client frames are unmasked (RFC 6455 5.1), so a frame is a 2-, 4- or 10-byte header
and the payload: the load server builds thousands of them once and writes them in one call.
Client-to-server frames are masked and small (subscribe, ping, close); `FrameReader` unmasks them.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "CLOSE",
    "PING",
    "PONG",
    "TEXT",
    "FrameReader",
    "Request",
    "encode_frame",
    "frame_header",
    "handshake_response",
    "masked_frame",
    "parse_request",
]

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
MAX_REQUEST = 64 << 10


def frame_header(length: int, opcode: int = TEXT) -> bytes:
    """The header of one final, unmasked frame carrying `length` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def encode_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    return frame_header(len(payload), opcode) + payload


def _xor(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def masked_frame(payload: bytes, opcode: int = TEXT, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """A client frame (masked, as RFC 6455 5.3 requires of clients), for the null consumer."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + _xor(payload, mask)


@dataclass(frozen=True, slots=True)
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(repr=False)  # lower-cased names

    @property
    def subprotocols(self) -> tuple[str, ...]:
        raw = self.headers.get("sec-websocket-protocol", "")
        return tuple(p.strip() for p in raw.split(",") if p.strip())


def parse_request(raw: bytes) -> Request:
    """An HTTP/1.1 upgrade request (up to the blank line); ValueError if it is not one."""
    head = raw.decode("latin-1").split("\r\n")
    method, target, _version = head[0].split(" ", 2)
    if method != "GET":
        raise ValueError(f"not a GET: {method}")
    headers = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "sec-websocket-key" not in headers or "websocket" not in headers.get("upgrade", "").lower():
        raise ValueError("not a WebSocket upgrade")
    parts = urlsplit(target)
    return Request(parts.path, dict(parse_qsl(parts.query)), headers)


def handshake_response(request: Request, accept: tuple[str, ...] = ()) -> tuple[bytes, str | None]:
    """The 101 answer; echoes the first subprotocol offered that is in `accept` (RFC 6455 4.2.2)."""
    key = request.headers["sec-websocket-key"].encode()
    digest = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
    chosen = next((p for p in request.subprotocols if p in accept), None)
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {digest}",
    ]
    if chosen:
        lines.append(f"Sec-WebSocket-Protocol: {chosen}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), chosen


class FrameReader:
    """Incremental parser of masked client frames; yields (opcode, payload) per complete message."""

    def __init__(self, max_payload: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._max = max_payload
        self._parts: list[bytes] = []
        self._opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while True:
            buf = self._buf
            if len(buf) < 2:
                return out
            fin, opcode = buf[0] & 0x80, buf[0] & 0x0F
            masked, length = buf[1] & 0x80, buf[1] & 0x7F
            pos = 2
            if length == 126:
                if len(buf) < 4:
                    return out
                length = struct.unpack_from("!H", buf, 2)[0]
                pos = 4
            elif length == 127:
                if len(buf) < 10:
                    return out
                length = struct.unpack_from("!Q", buf, 2)[0]
                pos = 10
            if length > self._max:
                raise ValueError(f"client frame of {length} bytes")
            mask = b""
            if masked:
                if len(buf) < pos + 4:
                    return out
                mask = bytes(buf[pos : pos + 4])
                pos += 4
            if len(buf) < pos + length:
                return out
            payload = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            if mask:
                payload = _xor(payload, mask)
            if opcode >= 0x8:  # control frames are never fragmented
                out.append((opcode, payload))
                continue
            if opcode:
                self._opcode = opcode
            self._parts.append(payload)
            if fin:
                out.append((self._opcode, b"".join(self._parts)))
                self._parts = []
