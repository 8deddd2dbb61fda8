"""A TCP proxy on loopback in front of a real redis-server that loses the reply to one command:
the command reaches the server and is applied, the client never hears back. That is what a
socket timeout or a connection dropped at the wrong moment does to a client."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

# The client drops the connection on its own (socket timeout), or the proxy closes it.
SILENCE = "silence"
CLOSE = "close"


class ReplyDroppingProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`. The first request whose bytes hold
    `trigger` (e.g. the SHA of one Lua script, sent with EVALSHA) reaches the server, but its
    reply does not reach the client: with SILENCE nothing more comes back on that connection
    (the client times out), with CLOSE the proxy closes the connection once the reply arrived.
    Later connections, and later requests holding `trigger`, pass untouched."""

    def __init__(self, target_port: int, trigger: bytes, mode: str = CLOSE) -> None:
        self.target_port = target_port
        self.trigger = trigger
        self.mode = mode
        self.dropped = 0  # requests whose reply is lost (at most one)
        self._armed = True
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            connection = {"drop": False}
            threading.Thread(
                target=self._requests, args=(client, server, connection), daemon=True
            ).start()
            threading.Thread(
                target=self._replies, args=(server, client, connection), daemon=True
            ).start()

    def _requests(self, client: socket.socket, server: socket.socket, connection: dict) -> None:
        tail = b""  # a trigger may straddle two reads
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if not data:
                _shutdown(server)
                return
            with self._lock:
                if self._armed and self.trigger in tail + data:
                    # Decided before the request is forwarded, so the reply cannot slip past.
                    self._armed = False
                    self.dropped += 1
                    connection["drop"] = True
            tail = (tail + data)[-len(self.trigger) :]
            try:
                server.sendall(data)
            except OSError:
                _shutdown(client)
                return

    def _replies(self, server: socket.socket, client: socket.socket, connection: dict) -> None:
        while True:
            try:
                data = server.recv(65536)
            except OSError:
                data = b""
            if not data:
                _shutdown(client)
                return
            if connection["drop"]:
                if self.mode == CLOSE:
                    _shutdown(client)
                    _shutdown(server)
                    return
                continue  # SILENCE: nothing more reaches this client
            try:
                client.sendall(data)
            except OSError:
                _shutdown(server)
                return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for sock in sockets:
            _shutdown(sock)

    def __enter__(self) -> ReplyDroppingProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
