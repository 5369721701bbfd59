"""The workers' listening sockets: one ``SO_REUSEPORT`` group, never joined to another process's."""

from __future__ import annotations

import select
import socket

import pytest

from msa_gateway.workers.supervisor import bind_sockets
from tests.support.procs import free_port


def reuseport_listener(port: int) -> socket.socket:
    """A listener as another gateway's worker group holds it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(8)
    return sock


def test_a_free_port_gets_the_whole_group_listening() -> None:
    port = free_port()
    socks = bind_sockets("127.0.0.1", port, 3)
    try:
        assert [s.getsockname() for s in socks] == [("127.0.0.1", port)] * 3
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        for sock in socks:
            sock.close()


def test_a_port_another_reuseport_group_listens_on_is_refused() -> None:
    port = free_port()
    other = reuseport_listener(port)
    try:
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}: Address already in use"):
            bind_sockets("127.0.0.1", port, 2)
    finally:
        other.close()


def test_the_port_can_be_taken_again_once_its_listeners_closed() -> None:
    """A connection the gateway closed first leaves TIME_WAIT behind: that is no listener."""
    port = free_port()
    first = bind_sockets("127.0.0.1", port, 2)
    client = socket.create_connection(("127.0.0.1", port), timeout=2)
    ready, _, _ = select.select(first, [], [], 2)
    accepted, _ = ready[0].accept()
    accepted.close()  # the server side closes first: its end waits in TIME_WAIT
    client.close()
    for sock in first:
        sock.close()
    again = bind_sockets("127.0.0.1", port, 2)
    for sock in again:
        sock.close()
