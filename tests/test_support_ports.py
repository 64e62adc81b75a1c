"""The test support's wait for a started server: a port picked free by one test process can be taken
by another's server before the process under test binds it (the suite runs in two processes); the
wait must then not report the other server as the one started, and a gateway starts on another
port instead of talking to it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support.gateway import Gateway, free_port, wait_port

LISTENER = "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"


def listener(port: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", LISTENER.format(port=port)])
    wait_port(port, proc=p)
    return p


def test_a_port_another_process_holds_is_not_taken_for_ours():
    port = free_port()
    other = listener(port)
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(TimeoutError, match="held by another process"):
            wait_port(port, timeout=1.5, proc=ours)
        wait_port(port, timeout=1.5)  # without a process to check, anything listening will do
    finally:
        other.kill()
        ours.kill()


def test_a_gateway_whose_port_was_taken_starts_on_another(tmp_path, issuer):
    g = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream="http://127.0.0.1:9", aws_key=("AKIAPORTTEST", "x"))
    taken = g.port
    other = listener(taken)
    try:
        with g:
            assert g.port != taken
            assert f'listen = "127.0.0.1:{g.port}"' in (g.home / "agentgate.toml").read_text()
            started = time.monotonic()
            wait_port(g.port, timeout=5, proc=g.proc)
            assert time.monotonic() - started < 1
    finally:
        other.kill()
