"""A TCP relay in the test process, in front of a server on loopback: listens on an address of
this host (booted machines reach moto through it, tests/hosts) and forwards every connection to
127.0.0.1:TARGET; given a server-side TLS context it terminates TLS first (an HTTPS endpoint of a
private CA in front of moto, test_tls_trust.py)."""

from __future__ import annotations

import socket
import ssl
import threading


class Relay:
    """Listens on ADDR:PORT (PORT 0: a free one, then in .port) and forwards each connection to
    127.0.0.1:TARGET. With TLS, handshakes it refused are counted in .handshakes_failed."""

    def __init__(self, addr: str, port: int, target: int, tls: ssl.SSLContext | None = None):
        self.target = target
        self.tls = tls
        self.sock = socket.create_server((addr, port))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.handshakes_failed = 0
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, name=f"relay-{addr}", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        if self.tls is not None:
            client.settimeout(10)
            try:
                client = self.tls.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError):
                self.handshakes_failed += 1
                client.close()
                return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        self.conns += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            if isinstance(dst, ssl.SSLSocket):
                dst.close()  # a TLS stream has no half-close: the exchange is over
            else:
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass
        self.thread.join(5)
