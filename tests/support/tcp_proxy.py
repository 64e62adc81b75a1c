"""A loopback TCP proxy in front of a server (PostgreSQL in the tests), which a test makes fail the
ways a network does, to see what the gateway behind it does:

    proxy = FaultProxy(pg.port)      # listens on 127.0.0.1:proxy.port, forwards to 127.0.0.1:pg.port
    proxy.pause()                    # a silent partition: nothing is forwarded either way, nothing
    proxy.resume()                   #   is closed (the kernel still takes what is sent)
    proxy.down()                     # every connection reset, new ones accepted and reset at once
    proxy.up()
    proxy.lose_reply(after=b"UPDATE approvals", to=COMMIT)
                                     # on a connection that sent `after`, the next message holding
                                     # `to` reaches the server, whose answer is dropped and the
                                     # client's connection reset (proxy.lost counts them)

One thread forwards every connection (a selector loop); the controls are kept by that thread.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time

COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # psycopg's COMMIT: a simple Query message


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a connection that breaks does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Link:
    __slots__ = ("client", "server", "seen", "doomed")

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client, self.server = client, server
        self.seen = False  # the client sent lose_reply's `after`
        self.doomed = False  # the server's next answer is dropped and the client reset


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.paused = False
        self.refusing = False
        self.lost = 0  # answers dropped by lose_reply
        self._lose: tuple[bytes, bytes] | None = None
        self._links: dict[socket.socket, _Link] = {}
        self._reset_all = threading.Event()
        self._reset_done = threading.Event()
        self._closing = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    def url_for(self, url: str) -> str:
        """``url`` (a postgresql:// URL naming the target's port) through this proxy."""
        return url.replace(f":{self.target[1]}/", f":{self.port}/")

    # -- controls ---------------------------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def down(self) -> None:
        self.refusing = True
        self._reset_done.clear()
        self._reset_all.set()
        self._reset_done.wait(5)

    def up(self) -> None:
        self.refusing = False

    def lose_reply(self, *, after: bytes, to: bytes = COMMIT) -> None:
        """Once: on a connection whose client sent ``after``, forward the client's next message
        holding ``to``, then drop the server's answer and reset the client's connection."""
        for link in self._links.values():
            link.seen = False
        self._lose = (after, to)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        for link in list(self._links.values()):
            self._drop(link)
        self.listener.close()

    # -- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing.is_set():
            if self._reset_all.is_set():
                self._reset_all.clear()
                for link in list(self._links.values()):
                    self._drop(link)
                self._reset_done.set()
            for key, _ in self._selector.select(0.05):
                sock = key.fileobj
                if sock is self.listener:
                    self._accept()
                elif not self.paused and sock in self._links:
                    self._forward(sock, self._links[sock])
            if self.paused:
                time.sleep(0.01)  # what is readable stays so: do not spin on it

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        if self.refusing:
            _reset(client)
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        client.setblocking(True)
        server.setblocking(True)
        link = _Link(client, server)
        for sock in (client, server):
            self._links[sock] = link
            self._selector.register(sock, selectors.EVENT_READ, link)

    def _forward(self, sock: socket.socket, link: _Link) -> None:
        try:
            data = sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._drop(link, reset=False)
            return
        try:
            if sock is link.client:
                lose = self._lose
                if lose is not None and not link.doomed:
                    if lose[0] in data:
                        link.seen = True
                    if link.seen and lose[1] in data:
                        link.doomed, self._lose = True, None
                link.server.sendall(data)
            elif link.doomed:
                self.lost += 1
                self._drop(link)
            else:
                link.client.sendall(data)
        except OSError:
            self._drop(link)

    def _drop(self, link: _Link, reset: bool = True) -> None:
        for sock in (link.client, link.server):
            if self._links.pop(sock, None) is not None:
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
            if reset:
                _reset(sock)
            else:
                sock.close()
