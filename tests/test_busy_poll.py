"""The gateway's event loop polls for work a little before it sleeps (``busy_poll_us``): what its
selector returns and when, that polling stops and the loop sleeps (an idle gateway does not burn a
CPU), and that the setting is honoured and checked."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time

import pytest

from addons.gateway import BusyPollSelector, new_event_loop
from addons.settings import MAX_BUSY_POLL_US, Settings, SettingsError
from tests.support.gateway import Gateway


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


class _CountingEpoll(selectors.DefaultSelector):
    """The system's selector, counting the looks (a zero timeout) and the waits made through it."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = self.waits = 0

    def select(self, timeout: float | None = None) -> list:
        if timeout is not None and timeout <= 0:
            self.looks += 1
        else:
            self.waits += 1
        return super().select(timeout)


class Counted(BusyPollSelector, _CountingEpoll):
    """BusyPollSelector over the counting selector: its own ``super().select`` calls are counted."""


def registered(busy_poll: float, sock: socket.socket, peer: socket.socket | None = None) -> Counted:
    """A selector watching ``sock``; with ``peer``, one whose last wait ended with data (traffic is
    flowing), so that its next wait polls first."""
    sel = Counted(busy_poll)
    sel.register(sock, selectors.EVENT_READ)
    if peer is not None:
        peer.send(b"x")
        assert sel.select(5)
        sock.recv(16)
    return sel


def timed_select(sel: BusyPollSelector, timeout: float | None, peer: socket.socket | None = None,
                 send_after: float = 0.0) -> tuple[list, float, float]:
    """``sel.select(timeout)``, with ``peer`` sending a byte ``send_after`` seconds from now when
    given: the sockets it returned, the seconds it took, and the CPU seconds this thread spent."""
    if peer is not None:
        threading.Timer(send_after, peer.send, (b"x",)).start()
    cpu, started = time.thread_time(), time.monotonic()
    ready = sel.select(timeout)
    return [key.fileobj for key, _ in ready], time.monotonic() - started, time.thread_time() - cpu


def test_a_socket_with_data_is_returned_at_once(pair) -> None:
    a, b = pair
    sel = registered(0.5, a, b)
    b.send(b"x")
    started = time.monotonic()
    ready = sel.select(None)
    assert [key.fileobj for key, _ in ready] == [a]
    assert time.monotonic() - started < 0.25  # not after the half second of polling
    sel.close()


def test_it_polls_after_a_wait_that_brought_data_and_sleeps_after_one_that_did_not(pair) -> None:
    a, b = pair
    sel = registered(2.0, a, b)
    sel.looks = sel.waits = 0
    ready, took, _ = timed_select(sel, 10, b, send_after=0.2)
    assert ready == [a]
    assert took < 1.5
    # it polled through the wait (0.2 s), looking again and again, and did not sleep (on a busy
    # machine the looks are fewer, not none: each takes microseconds)
    assert sel.looks > 50 and sel.waits == 0, (sel.looks, sel.waits)
    a.recv(16)

    assert sel.select(0.01) == []  # a wait that ended by its timeout: traffic stopped
    sel.looks = sel.waits = 0
    ready, _, cpu = timed_select(sel, 10, b, send_after=0.2)
    assert ready == [a]
    assert (sel.looks, sel.waits) == (0, 1)  # it slept, once, until the data came
    assert cpu < 0.05
    sel.close()


def test_data_that_comes_after_the_poll_wakes_the_sleep_that_follows(pair) -> None:
    a, b = pair
    sel = registered(0.001, a, b)
    ready, took, cpu = timed_select(sel, 10, b, send_after=0.3)
    assert ready == [a]
    assert 0.25 < took < 5
    assert cpu < 0.15  # it polled 1 ms, then slept: not 0.3 s of CPU
    sel.close()


def test_a_timeout_shorter_than_the_poll_is_kept(pair) -> None:
    a, b = pair
    sel = registered(5.0, a, b)
    started = time.monotonic()
    assert sel.select(0.05) == []
    assert time.monotonic() - started < 1.0
    assert sel.select(0) == []
    sel.close()


def test_after_the_poll_it_sleeps_out_the_rest_of_the_timeout(pair) -> None:
    a, b = pair
    sel = registered(0.002, a, b)
    ready, took, cpu = timed_select(sel, 0.3)
    assert ready == []
    assert 0.28 < took < 5
    assert cpu < 0.15
    sel.close()


def test_an_idle_loop_woken_by_timers_only_does_not_poll() -> None:
    """A loop woken by a timer every 20 ms for a second, with no traffic, sleeps between them: its
    CPU is a small part of the second (a loop that polled 30 ms after each would burn about all
    of it)."""
    loop = new_event_loop(30_000)
    assert isinstance(loop._selector, BusyPollSelector)  # noqa: SLF001 - asyncio's own attribute

    async def ticks() -> None:
        for _ in range(50):
            await asyncio.sleep(0.02)

    try:
        cpu, started = time.thread_time(), time.monotonic()
        loop.run_until_complete(ticks())
        used, took = time.thread_time() - cpu, time.monotonic() - started
    finally:
        loop.close()
    assert took >= 0.9
    assert used < 0.25 * took, (used, took)


def test_zero_is_asyncios_own_loop() -> None:
    loop = new_event_loop(0)
    try:
        assert not isinstance(loop._selector, BusyPollSelector)  # noqa: SLF001
        assert loop.run_until_complete(asyncio.sleep(0.01, "done")) == "done"
    finally:
        loop.close()


@pytest.mark.parametrize("value", [-1, MAX_BUSY_POLL_US + 1])
def test_the_setting_is_checked(value: int) -> None:
    with pytest.raises(SettingsError, match=f"busy_poll_us must be a number of microseconds from 0 to "
                                            f"{MAX_BUSY_POLL_US}, not {value}"):
        Settings(busy_poll_us=value).resolved()
    assert Settings(busy_poll_us=0).resolved().busy_poll_us == 0
    assert Settings().resolved().busy_poll_us == 300


def _cpu_seconds(pid: int) -> float:
    import os

    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("busy_poll_us", [None, 0])
def test_a_gateway_serves_calls_and_idles_without_burning_a_cpu(tmp_path, issuer, moto, busy_poll_us) -> None:
    """With the default busy poll and with none: calls through a real gateway work, and two idle
    seconds cost the gateway a small fraction of a CPU (a loop that never slept would take both)."""
    from tests.test_recording_commit import BUCKET, agent, put, start

    settings = {} if busy_poll_us is None else {"busy_poll_us": busy_poll_us}
    gw = start(tmp_path, issuer, moto, f"sqlite:///{tmp_path / 'gw' / 'agentgate.db'}", **settings)
    try:
        client = agent(gw, issuer, "idler")
        client.create_bucket(Bucket=BUCKET)
        assert [put(client, f"k{i}")[0] for i in range(5)] == [200] * 5
        time.sleep(1)  # the calls' own work done
        before = _cpu_seconds(gw.proc.pid)
        time.sleep(2)
        idle = _cpu_seconds(gw.proc.pid) - before
    finally:
        gw.stop()
    assert idle < 0.4, idle


def test_a_bad_value_stops_the_gateway_with_a_reason(tmp_path, issuer) -> None:
    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream="http://127.0.0.1:9", aws_key=("a", "b"))
    gw.init()
    p = gw.cli("run", check=False, env={"AGENTGATE_BUSY_POLL_US": "-5"}, timeout=60)
    assert p.returncode != 0
    assert "busy_poll_us must be a number of microseconds from 0 to 100000, not -5" in p.stderr
    assert "Traceback" not in p.stderr


def _wakeups(pid: int) -> int:
    """How many times the process's main thread has slept and been woken (voluntary switches)."""
    status = open(f"/proc/{pid}/task/{pid}/status").read()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_an_idle_gateway_wakes_seldom_and_its_console_still_dates_its_answers(tmp_path, issuer) -> None:
    """An idle gateway's event loop wakes only for what is due: the console's server ten times a
    second and the approvals' poll four times a second made it wake some 16 times a second with
    nothing to do. Its console still answers with the current Date (refreshed each second)."""
    import email.utils

    import httpx

    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream="http://127.0.0.1:9", aws_key=("a", "b"))
    gw.start()
    try:
        time.sleep(3)  # start-up's own work done
        before = _wakeups(gw.proc.pid)
        time.sleep(5)
        per_second = (_wakeups(gw.proc.pid) - before) / 5
        console = gw.settings["console_listen"]
        with httpx.Client(trust_env=False) as c:
            r = c.get(f"http://{console}/")
    finally:
        gw.stop()
    assert per_second < 8, per_second
    dated = email.utils.parsedate_to_datetime(r.headers["date"]).timestamp()
    assert abs(dated - time.time()) < 3, r.headers["date"]  # not the time the console started, 8 s before
