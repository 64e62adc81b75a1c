"""One slow call never stalls other agents: STS, JWKS and the store are never waited on inside
the event loop. The upstream here is a canned AWS stand-in whose STS answers one principal
late (moto cannot be made slow)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import botocore.exceptions

from tests.support.gateway import Gateway
from tests.test_identity_e2e import client

ROOT = Path(__file__).resolve().parent.parent


def test_a_slow_sts_call_does_not_stall_other_agents(tmp_path, issuer):
    ready = tmp_path / "port"
    upstream = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_upstream.py"), "--ready-file", str(ready),
                                 "--slow-sts", "slow-agent", "--slow-sts-seconds", "6"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if ready.exists() and ready.read_text():
                break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{ready.read_text()}"
        with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=url, aws_key=("k", "s")) as gw:
            fast = client(gw, "dynamodb", proxy_token=issuer.mint("fast-agent"))
            fast.list_tables()  # credentials cached
            slow_done = threading.Event()

            def slow_call():
                try:
                    client(gw, "dynamodb", proxy_token=issuer.mint("slow-agent")).list_tables()
                except botocore.exceptions.BotoCoreError:
                    pass
                slow_done.set()

            threading.Thread(target=slow_call, daemon=True).start()
            time.sleep(0.5)  # the slow agent's STS call is now pending
            latencies = []
            for _ in range(10):
                t = time.time()
                fast.list_tables()
                latencies.append(time.time() - t)
            assert not slow_done.is_set(), "the slow agent's STS call should still be pending"
            assert max(latencies) < 1.0, latencies
            assert slow_done.wait(15)
    finally:
        upstream.terminate()
        upstream.wait()
