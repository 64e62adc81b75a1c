"""scripts/phase_probe.py: one agent's calls cut into phases from a proxy's socket events, and the
probe that notes those events in a real event loop; scripts/bench's table of them."""

from __future__ import annotations

import asyncio
import json
import os
import signal

from scripts import bench, phase_probe

UP = 9000  # the upstream's port in the synthetic events
AGENT = 50000


def call(t0: int, request: int, upstream: int, response: int, *, reads: int = 1, writes: int = 1) -> list:
    """One call's events from t0 (ns): the agent's request read in ``reads`` reads, sent upstream,
    answered, and written to the agent in ``writes`` writes spread over the response path's end."""
    ev = [(t0 + i, "r", AGENT) for i in range(reads)]
    sent = t0 + request
    ev.append((sent, "w", UP))
    answered = sent + upstream
    ev.append((answered, "r", UP))
    end = answered + response
    ev += [(end - (writes - 1 - i) * 10, "w", AGENT) for i in range(writes)]
    return ev


def test_calls_are_cut_into_the_four_phases_whatever_the_reads_and_writes():
    events = []
    t = 1_000_000
    # three calls: request path 400 µs, upstream 80 µs, response path 450 µs; the agent's turn 90 µs
    for reads, writes in ((1, 1), (3, 2), (2, 3)):
        events += call(t, 400_000, 80_000, 450_000, reads=reads, writes=writes)
        t += 400_000 + 80_000 + 450_000 + 90_000
    events += call(t, 400_000, 80_000, 450_000)  # the last call: no next request, so its turn is not known
    found = phase_probe.phases(list(reversed(events)), UP)  # in any order: sorted by time
    assert found == {"calls": 3, "request_us": 400.0, "upstream_us": 80.0, "response_us": 450.0, "turn_us": 90.0,
                     "sum_us": 1020.0}


def test_a_call_answered_by_the_proxy_itself_and_other_upstream_traffic_are_not_counted():
    events = call(0, 300_000, 50_000, 200_000)
    t = 300_000 + 50_000 + 200_000 + 100_000
    # a refused call: read, answered at once without upstream
    events += [(t, "r", AGENT), (t + 150_000, "w", AGENT)]
    t += 150_000 + 100_000
    events += call(t, 300_000, 50_000, 200_000)
    t += 300_000 + 50_000 + 200_000 + 100_000
    # the gateway's own STS call to the upstream while no call is under way: a write and a read upstream
    events += [(t - 60_000, "w", UP), (t - 40_000, "r", UP)]
    events += call(t, 300_000, 50_000, 200_000)
    t += 300_000 + 50_000 + 200_000 + 100_000
    events.append((t, "r", AGENT))
    found = phase_probe.phases(events, UP)
    assert found["calls"] == 3  # the two whole calls before the refused one's end, and the last
    assert (found["request_us"], found["upstream_us"], found["response_us"]) == (300.0, 50.0, 200.0)


def test_no_whole_call_is_none():
    assert phase_probe.phases([], UP) is None
    assert phase_probe.phases(call(0, 10, 10, 10), UP) is None  # never followed by a next request


def test_the_probe_notes_a_real_loop_s_reads_and_writes_between_two_signals(tmp_path, monkeypatch):
    import asyncio.selector_events as selector_events

    previous = signal.getsignal(phase_probe.SIGNAL)
    transport = selector_events._SelectorSocketTransport
    for name in ("write", "_read_ready__data_received", "_read_ready__get_buffer"):
        if hasattr(transport, name):
            monkeypatch.setattr(transport, name, getattr(transport, name))  # put back after the test
    out = tmp_path / "events.json"
    try:
        _probe_exchanges(out)
    finally:
        signal.signal(phase_probe.SIGNAL, previous)


def _probe_exchanges(out):
    phase_probe.install(out)

    async def exchange(n: int) -> tuple[int, int]:
        async def echo(reader, writer):
            while data := await reader.read(100):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            writer.write(b"ping")
            await writer.drain()
            assert await reader.readexactly(4) == b"ping"
        mine = writer.get_extra_info("sockname")[1]
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return port, mine

    asyncio.run(exchange(3))  # before the first signal: nothing kept
    os.kill(os.getpid(), phase_probe.SIGNAL)
    server_port, client_port = asyncio.run(exchange(5))
    assert not out.exists()
    os.kill(os.getpid(), phase_probe.SIGNAL)
    events = json.loads(out.read_text())
    # the client wrote 5 times to the server, which read and echoed 5 times, read back by the client
    to_server = [e for e in events if e[1] == "w" and e[2] == server_port]
    to_client = [e for e in events if e[1] == "w" and e[2] == client_port]
    assert len(to_server) == 5 and len(to_client) == 5
    assert sum(1 for e in events if e[1] == "r" and e[2] == client_port) >= 5  # the server's reads (and its EOF)
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    out.unlink()
    asyncio.run(exchange(2))  # after the second signal: nothing kept, nothing written
    assert not out.exists()


def test_the_bench_reports_the_phases():
    scenarios = [
        {"part": "phases", "id": "b", "name": "mitmdump", "available": True, "calls": 2400, "request_us": 502.0,
         "upstream_us": 111.5, "response_us": 428.6, "turn_us": 92.4, "sum_us": 1134.5},
        {"part": "phases", "id": "d", "name": "chain", "available": False, "reason": "no whole call"},
    ]
    assert bench._phase_rows({"scenarios": scenarios}) == [["(b) mitmdump", "2400", "502", "111.5", "428.6", "92.4",
                                                           "1134.5"]]
    md = bench.markdown({"scenarios": scenarios, "python": bench.python_build(),
                         "machine": {**bench.machine(), "loadavg_end": [0.1]}, "date": "today",
                         "optimised_pythons": [], "ratios": {}, "goals": {}, "unavailable": {}})
    assert bench.PHASE_TITLE in md and "| (b) mitmdump | 2400 | 502 | 111.5 | 428.6 | 92.4 | 1134.5 |" in md
