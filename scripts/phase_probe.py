"""Where one agent's call spends its time inside a proxy, phase by phase.

    python scripts/phase_probe.py OUT PROGRAM [ARGS...]

runs PROGRAM (a Python script, such as mitmdump's, agentgate's or scripts/bench_floor.py; an
interpreter named first is skipped) in this process with a probe in asyncio's socket transport:
each time the event loop reads from a socket and each write to one, with the time and the peer's
port. Nothing is kept until the process gets SIGXCPU; it then keeps what follows, and at the next
SIGXCPU writes it to OUT as JSON (``[[monotonic_ns, "r" or "w", peer_port], ...]``) and stops
keeping. ``scripts/bench --only phases`` drives it.

``phases(events, upstream_port)`` reads one agent's calls out of those events: a read from the
agent starts a call, the first write to the upstream ends its request path, the first read from
the upstream ends the wait for upstream, the last write to the agent before the agent's next
request ends the response path, and that next request ends the agent's turn (the time between the
answer and the next request, the load generator's own work and the network both ways). At one
agent every call waits for the one before, so these four add up to the time per call; the proxy's
work in each window that is not on the path (done while upstream answers, or after the answer
went out) shows as a longer wait or turn than the floor's.

The probe itself costs a microsecond or two per socket event (about six per call), alike for every
proxy measured.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

MAX_EVENTS = 2_000_000  # about 330,000 calls at one agent: far more than a measurement keeps
SIGNAL = signal.SIGXCPU  # not one mitmproxy or the gateway uses (mitmdump's debug dumps take SIGUSR1 and SIGUSR2)


def install(out: Path) -> None:
    """Patch asyncio's selector socket transport to note reads and writes; SIGXCPU starts keeping
    them, and the next SIGXCPU writes them to ``out`` (atomically) and stops."""
    import asyncio.selector_events as selector_events

    transport = selector_events._SelectorSocketTransport  # noqa: SLF001 - a probe: it must see every read and write
    events: list[tuple[int, str, int]] = []
    state = {"on": False}
    clock = time.monotonic_ns

    def peer(t: Any) -> int:
        name = t._extra.get("peername")  # noqa: SLF001
        return name[1] if isinstance(name, tuple) and len(name) > 1 else -1

    def noting(kind: str, real: Any) -> Any:
        if kind == "w":
            def write(self: Any, data: Any) -> Any:
                if state["on"] and len(events) < MAX_EVENTS:
                    events.append((clock(), "w", peer(self)))
                return real(self, data)
            return write

        def read(self: Any, *args: Any) -> Any:
            if state["on"] and len(events) < MAX_EVENTS:
                events.append((clock(), "r", peer(self)))
            return real(self, *args)
        return read

    transport.write = noting("w", transport.write)
    for name in ("_read_ready__data_received", "_read_ready__get_buffer"):
        if hasattr(transport, name):
            setattr(transport, name, noting("r", getattr(transport, name)))

    def toggle(*_: Any) -> None:
        if not state["on"]:
            events.clear()
            state["on"] = True
            return
        state["on"] = False
        tmp = out.with_name(out.name + ".part")
        tmp.write_text(json.dumps(events))
        os.replace(tmp, out)
        events.clear()

    signal.signal(SIGNAL, toggle)


def phases(events: list, upstream_port: int) -> dict[str, Any] | None:
    """Medians (µs) of one agent's calls' four phases in a probe's events (see the module's text),
    and how many whole calls they come from; None when there is none."""
    request, upstream, response, turn = [], [], [], []
    start = sent = answered = wrote = None
    for t, kind, port in sorted(events, key=lambda e: e[0]):
        if port != upstream_port:
            if kind == "w":  # to the agent
                if start is not None:
                    wrote = t
            elif start is None or wrote is not None:  # a request: the first, or the next after an answer
                if sent is not None and answered is not None and wrote is not None and wrote > answered:
                    request.append(sent - start)
                    upstream.append(answered - sent)
                    response.append(wrote - answered)
                    turn.append(t - wrote)
                start, sent, answered, wrote = t, None, None, None
            # else: more of the request being read
        elif kind == "w":
            if start is not None and sent is None:
                sent = t
        elif sent is not None and answered is None:
            answered = t
    if not request:
        return None

    def median_us(xs: list[int]) -> float:
        return round(statistics.median(xs) / 1000, 1)

    out = {"calls": len(request), "request_us": median_us(request), "upstream_us": median_us(upstream),
           "response_us": median_us(response), "turn_us": median_us(turn)}
    out["sum_us"] = round(out["request_us"] + out["upstream_us"] + out["response_us"] + out["turn_us"], 1)
    return out


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit("usage: phase_probe.py OUT PROGRAM [ARGS...]")
    out, program = Path(argv[1]), argv[2:]
    if Path(program[0]).name.startswith("python") and len(program) > 1:
        program = program[1:]
    install(out)
    sys.argv = program
    runpy.run_path(program[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv)
