"""The gateway's GIL switch interval follows the number of clients connected to the proxy: short
(0.5 ms) while one agent's calls come one after another, longer (2 ms) once several share the
event loop, and short again when they leave."""

from __future__ import annotations

import sys

import pytest
from mitmproxy.test import tflow

from addons.gateway import GIL_SWITCH_INTERVAL, GIL_SWITCH_INTERVAL_SHARED, SwitchInterval


@pytest.fixture
def restore_interval():
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_the_interval_follows_the_clients_connected(restore_interval):
    assert GIL_SWITCH_INTERVAL < GIL_SWITCH_INTERVAL_SHARED
    sys.setswitchinterval(0.005)  # CPython's default, as a process starts
    s = SwitchInterval()
    a, b, c = tflow.tclient_conn(), tflow.tclient_conn(), tflow.tclient_conn()

    s.client_connected(a)
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL)
    s.client_connected(b)
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_SHARED)
    s.client_connected(c)
    s.client_disconnected(a)
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_SHARED)  # still two
    s.client_disconnected(b)
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL)
    s.client_disconnected(c)
    s.client_disconnected(c)  # told twice: the count does not go below zero
    assert s.clients == 0
    s.client_connected(a)
    s.client_connected(b)
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_SHARED)
