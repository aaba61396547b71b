"""A consumer that reads and discards: the load server's own ceiling is measured against it.

`python -m benchmarks.null_client URL MIX` upgrades a plain socket, sends the provider's opening
message (so the server starts streaming), then `recv_into` a 4 MiB buffer until the server
closes. It parses nothing, so it reads at memory speed and the server is the bottleneck.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import time
from urllib.parse import urlsplit

from benchmarks.probe import cpu_seconds, emit, peak_rss_bytes
from benchmarks.wire import masked_frame

OPENING: dict[str, list[bytes]] = {
    "coinapi": [b'{"type":"hello","heartbeat":false,"subscribe_data_type":["trade"]}'],
    "blockdb": [b'{"action":"subscribe","chain_id":1,"dataset_id":"0304","params":{}}'],
    "bitquery": [
        b'{"type":"connection_init"}',
        b'{"type":"subscribe","id":"1","payload":'
        b'{"query":"subscription { EVM { Transfers { Block { Number } } } }"}}',
    ],
}


def run(url: str, mix: str, timeout: float = 120.0) -> dict[str, float | int]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    protocol = "Sec-WebSocket-Protocol: graphql-transport-ws\r\n" if mix == "bitquery" else ""
    sock.sendall(
        (
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{protocol}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    for message in OPENING[mix]:
        sock.sendall(masked_frame(message))
    buf = bytearray(4 << 20)
    total = len(head) - head.index(b"\r\n\r\n") - 4
    started = time.monotonic()
    while True:
        n = sock.recv_into(buf)
        if not n:
            break
        total += n
    sock.close()
    return {"bytes": total, "seconds": time.monotonic() - started}


if __name__ == "__main__":
    result = run(sys.argv[1], sys.argv[2])
    emit({"ok": True, **result, "cpu_seconds": cpu_seconds(), "peak_rss": peak_rss_bytes()})
