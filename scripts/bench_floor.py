"""The floor for the benchmarks: the gateway's own mitmproxy master (addons.gateway.GatewayMaster,
mitmproxy's core add-ons only, built as addons.gateway.serve builds it, on the gateway's own event
loop with its default busy poll) with one add-on that only re-targets every request to the bench
upstream, as scripts/bench_retarget.py does for mitmdump.
No authentication, policy, signing, masking or recording: what is left is mitmproxy's own cost
per call on this master, which no add-on chain can go below.

    PYTHONOPTIMIZE=1 python scripts/bench_floor.py --listen 127.0.0.1:8090 --upstream-port 8000 --confdir DIR

The CA agents must trust is DIR/mitmproxy-ca-cert.pem (created on first start).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mitmproxy import http, options  # noqa: E402

from addons import gateway  # noqa: E402
from addons.settings import Settings, parse_hostport  # noqa: E402


class Retarget:
    """Sends each request to the upstream as soon as its headers arrive; Host is kept."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.request.scheme = "http"
        flow.request.data.host = self.host
        flow.request.data.port = self.port


async def serve(listen: str, upstream_port: int, confdir: str) -> int:
    host, port = parse_hostport(listen, "listen")
    opts = options.Options(listen_host=host, listen_port=port, confdir=confdir)
    m = gateway.GatewayMaster(opts)
    m.addons.add(Retarget(upstream_port))
    m.options.update(connection_strategy="lazy", http3=False)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, m.shutdown)
    print(f"floor listening on {host}:{port} -> 127.0.0.1:{upstream_port}", file=sys.stderr, flush=True)
    await m.run()
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:8090")
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--confdir", required=True, help="mitmproxy's confdir: where its CA is kept")
    args = ap.parse_args()
    interval = getattr(gateway, "GIL_SWITCH_INTERVAL", None)
    if interval:
        sys.setswitchinterval(interval)  # as addons.gateway.run does
    # the gateway's own event loop (its busy poll, at the default setting or AGENTGATE_BUSY_POLL_US's, as
    # for a gateway), as addons.gateway.run makes it
    env = os.environ.get("AGENTGATE_BUSY_POLL_US")
    busy_poll_us = int(env) if env else Settings().busy_poll_us
    with asyncio.Runner(loop_factory=lambda: gateway.new_event_loop(busy_poll_us)) as runner:
        sys.exit(runner.run(serve(args.listen, args.upstream_port, args.confdir)))


if __name__ == "__main__":
    main()
