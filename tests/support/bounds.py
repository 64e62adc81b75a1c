"""How long a test waits before it calls a piece of work hung.

Tests that feed bombs and hostile input assert "no hang beyond a bound", not a speed: speed is
measured side by side by scripts/bench. The bound is generous because CI runs the suite on a shared
two-vCPU machine next to PostgreSQL and moto, and it still catches what it guards against: a
quadratic walk of 100,000 nesting levels, or an expanded entity or alias bomb, takes minutes.
``AGENTGATE_HANG_BOUND`` (seconds) changes it.
"""

import os
import time
from contextlib import contextmanager

HANG = float(os.environ.get("AGENTGATE_HANG_BOUND") or 10.0)


@contextmanager
def not_hung(bound: float = HANG):
    """Fail when the block takes longer than ``bound`` seconds."""
    started = time.perf_counter()
    yield
    took = time.perf_counter() - started
    assert took < bound, f"took {took:.1f} s (bound {bound:.0f} s): hung"
