"""Messages between the request process and the model process: length-prefixed pickles on a
Unix socket pair. The model process reads and writes them blocking (its own threads); the
request process speaks the same framing through asyncio (``FrameReader``), so its event loop
never blocks on the pipe and no thread of its own competes for the interpreter lock."""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

HEADER = struct.Struct("!Q")


def encode(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def _exactly(sock: socket.socket, n: int) -> memoryview:
    buf = memoryview(bytearray(n))
    got = 0
    while got < n:
        k = sock.recv_into(buf[got:], n - got)
        if k == 0:
            raise EOFError("the other process closed the pipe")
        got += k
    return buf


def receive(sock: socket.socket) -> Any:
    """One message (blocking); EOFError once the other side is gone."""
    (size,) = HEADER.unpack(_exactly(sock, HEADER.size))
    return pickle.loads(_exactly(sock, size))


class FrameReader:
    """Incremental decoding of a byte stream into messages."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self.buffer += data
        out = []
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            end = HEADER.size + size
            if len(self.buffer) < end:
                break
            out.append(pickle.loads(memoryview(self.buffer)[HEADER.size:end]))
            del self.buffer[:end]
        return out
