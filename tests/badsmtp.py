"""A hand-written SMTP server that misbehaves in the ways aiosmtpd cannot: it drips its greeting
a byte at a time, greets with an endless multi-line reply, goes silent after DATA, or greets a
reconnect with 421. Otherwise it speaks just enough SMTP to take messages, and records them."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# A behaviour gets the connection's number (0 for the first) and the socket; it returns True
# when it handled the whole session itself.
Behaviour = Callable[[int, socket.socket], bool]


@dataclass
class BadServer:
    port: int
    behaviour: Behaviour | None = None
    data_silence: Callable[[int, int], bool] = lambda conn, n: False  # (conn, message) -> mute
    received: list[tuple[str, bytes]] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def drip_greeting(n: int, sock: socket.socket) -> bool:
    """A byte per second, for ever (a deadline must cut it off)."""
    for byte in b"220 slow.example.org ESMTP\r\n" * 1000:
        sock.sendall(bytes([byte]))
        time.sleep(1)
    return True


def endless_greeting(n: int, sock: socket.socket) -> bool:
    line = b"220-" + b"x" * 70 + b"\r\n"
    for _ in range(10_000_000):
        sock.sendall(line * 100)
    return True


def reconnect_refused(n: int, sock: socket.socket) -> bool:
    """The first connection is served; every later one is greeted with 421."""
    if n == 0:
        return False
    sock.sendall(b"421 4.3.2 busy, try later\r\n")
    return True


def _session(server: BadServer, n: int, sock: socket.socket) -> None:
    f = sock.makefile("rb")
    sock.sendall(b"220 bad.example.org ESMTP\r\n")
    rcpt = ""
    messages = 0
    while True:
        line = f.readline()
        if not line:
            return
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            sock.sendall(b"250-bad.example.org\r\n250 8BITMIME\r\n")
        elif verb == b"MAIL":
            sock.sendall(b"250 ok\r\n")
        elif verb == b"RCPT":
            rcpt = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
            sock.sendall(b"250 ok\r\n")
        elif verb == b"DATA":
            sock.sendall(b"354 go on\r\n")
            body = b""
            while (chunk := f.readline()) not in (b".\r\n", b""):
                body += chunk
            if server.data_silence(n, messages):
                time.sleep(3600)  # silent; the client must give up
                return
            messages += 1
            with server.lock:
                server.received.append((rcpt, body))
            sock.sendall(b"250 taken\r\n")
            if server.behaviour is reconnect_refused and messages == 1 and n == 0:
                return  # drop the line after one message: the client must reconnect
        elif verb == b"RSET" or verb == b"NOOP":
            sock.sendall(b"250 ok\r\n")
        elif verb == b"QUIT":
            sock.sendall(b"221 bye\r\n")
            return
        else:
            sock.sendall(b"502 no\r\n")


@contextmanager
def bad_server(behaviour: Behaviour | None = None, **kwargs: object) -> Iterator[BadServer]:
    state: dict[str, BadServer] = {}

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            server = state["s"]
            with server.lock:
                n = server.connections
                server.connections += 1
            try:
                if server.behaviour is None or not server.behaviour(n, self.request):
                    _session(server, n, self.request)
            except OSError:
                pass

    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    tcp.daemon_threads = True
    state["s"] = BadServer(tcp.server_address[1], behaviour, **kwargs)  # type: ignore[arg-type]
    thread = threading.Thread(target=tcp.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["s"]
    finally:
        tcp.shutdown()
        tcp.server_close()
