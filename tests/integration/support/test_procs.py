"""The test harness's ports: never handed out twice, and a started gateway is the one listening on its port."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.procs import PY, free_port, listens_on


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_listens_on_names_the_process_holding_the_listener_or_its_parent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert listens_on(os.getpid(), port)
        child = subprocess.Popen([PY, "-c", "import time; time.sleep(30)"])
        try:
            assert not listens_on(child.pid, port)  # a process without the socket
        finally:
            child.kill()
            child.wait()
    assert not listens_on(os.getpid(), port)  # closed: nobody listens


def test_a_gateway_whose_port_another_process_answers_on_fails_to_start() -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        gw = GatewayProcess({"services": {}})
        gw.port = s.getsockname()[1]  # what a port handed out twice would do
        gw.env["PORT"] = str(gw.port)
        try:
            with pytest.raises(RuntimeError, match=r"another process's|did not start"):
                gw.start()
        finally:
            gw.close()
