"""The link proxy itself: forwards, delays, cuts every connection at once, refuses while down, comes back."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from tests.faults import LinkProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_port():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def connection_is_dead(sock: socket.socket) -> bool:
    """True once the proxy has closed or reset it (a read returns EOF or fails)."""
    sock.settimeout(2)
    try:
        sock.sendall(b"x")
        return sock.recv(1) == b""
    except OSError:
        return True


def test_forwards_delays_cuts_refuses_and_restores(echo_port) -> None:
    with LinkProxy(echo_port) as proxy:
        a = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        payload = bytes(range(256)) * 1000
        assert roundtrip(a, payload) == payload
        assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)

        proxy.set_delay(0.2)
        started = time.monotonic()
        assert roundtrip(a, b"ping") == b"ping"
        assert time.monotonic() - started >= 0.4  # 0.2 s each way
        proxy.set_delay(0.0)

        b = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert roundtrip(b, b"hello") == b"hello"
        assert proxy.open_connections == 2
        proxy.cut()
        assert proxy.open_connections == 0
        assert connection_is_dead(a) and connection_is_dead(b)
        try:
            c = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)  # accepted by the kernel, then reset
        except ConnectionResetError:  # on a loaded machine the reset can land before connect() returns
            c = None
        assert c is None or connection_is_dead(c)
        deadline = time.monotonic() + 5
        while proxy.stats.refused < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.stats.refused >= 1

        proxy.restore()
        d = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert roundtrip(d, b"back") == b"back"

        proxy.cut(duration_s=0.5)
        assert connection_is_dead(d)
        time.sleep(0.8)
        assert not proxy.down
        e = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert roundtrip(e, b"again") == b"again"
        for sock in (a, b, c, d, e):
            if sock is not None:
                sock.close()
    assert proxy.open_connections == 0


def test_blackhole_swallows_traffic_until_restore(echo_port) -> None:
    with LinkProxy(echo_port) as proxy:
        a = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert roundtrip(a, b"one") == b"one"
        proxy.cut(blackhole=True)
        a.settimeout(0.5)
        a.sendall(b"lost")
        with pytest.raises(TimeoutError):  # no answer, no reset: a silent link
            a.recv(10)
        proxy.restore()  # frozen connections are reset so their peers reconnect
        assert connection_is_dead(a)
        b = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert roundtrip(b, b"two") == b"two"
        a.close()
        b.close()


def test_stops_by_itself_after_its_lifetime(echo_port) -> None:
    proxy = LinkProxy(echo_port, lifetime_s=0.5)
    proxy.start()
    proxy._thread.join(timeout=5)
    assert not proxy._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).recv(1)


def test_a_bandwidth_limit_paces_bytes_and_lifts(echo_port) -> None:
    payload = b"x" * 100_000  # 800 kbit: 0.4 s at 2 Mbit/s (the echo comes back through the same limit)
    with LinkProxy(echo_port) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        proxy.set_bandwidth(2e6)
        started = time.monotonic()
        assert roundtrip(sock, payload) == payload
        limited = time.monotonic() - started
        assert 0.35 < limited < 3.0, f"100 kB at 2 Mbit/s took {limited:.2f} s"
        proxy.set_bandwidth(None)
        started = time.monotonic()
        assert roundtrip(sock, payload) == payload
        assert time.monotonic() - started < limited / 4, "the limit stayed after it was lifted"
