"""scripts/bench_chain.py --against: two trees run alternately, both sides' figures and their ratio
printed; a directory that is not an agentgate checkout is refused with a one-line reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_chain.py"


def test_against_a_directory_that_is_not_a_checkout_is_refused(tmp_path) -> None:
    p = subprocess.run([sys.executable, str(SCRIPT), "--against", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == (f"bench_chain: {tmp_path} is not an agentgate checkout "
                                "(no scripts/bench_chain.py and addons/)")
    assert p.stdout == ""


def test_against_runs_both_trees_alternately_and_prints_their_ratio() -> None:
    p = subprocess.run([sys.executable, str(SCRIPT), "--against", str(ROOT), "--pairs", "2", "--calls", "40",
                        "--rounds", "1", "--per-stage"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for side in ("this", "against"):
        assert out[side]["tree"] == str(ROOT)
        assert len(out[side]["cpu_us_per_call"]) == 2 and all(x > 0 for x in out[side]["cpu_us_per_call"])
        assert set(out[side]["stage_medians"]) >= {"Recorder", "Signer", "Masking", "Classify", "Egress", "Policy",
                                                   "Auth", "Approval"}
    assert out["ratio_of_medians"] == round(out["this"]["median"] / out["against"]["median"], 3)
    assert len(out["ratio_per_pair"]) == 2
    # the order alternates: the other tree first in the first pair, this one first in the second
    progress = [line.split(":")[0] for line in p.stderr.splitlines() if line.startswith("pair ")]
    assert progress == ["pair 1/2 against", "pair 1/2 this", "pair 2/2 this", "pair 2/2 against"]


def test_instructions_counts_the_measured_calls_only() -> None:
    """--instructions runs the chain under callgrind and reports instructions per call, counted
    from after the warm-up to the last call: a few million per call. Were the start-up counted too
    (imports, the store's migration, 200 warm-up calls: billions), 40 calls would show a hundred
    times that."""
    import shutil

    assert shutil.which("valgrind"), "valgrind is missing (scripts/test installs it)"
    p = subprocess.run([sys.executable, str(SCRIPT), "--instructions", "--calls", "40"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["calls"] == 40
    assert 500_000 < out["instructions_per_call"] < 20_000_000, out


def test_instructions_is_refused_with_the_profile() -> None:
    p = subprocess.run([sys.executable, str(SCRIPT), "--instructions", "--profile", "x.prof"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2
    assert "--instructions counts the whole run: not with --profile or --per-stage" in p.stderr


def test_it_runs_as_the_gateway_does_and_a_call_leaves_no_reference_cycle() -> None:
    """Started without PYTHONOPTIMIZE, the script runs with it, as scripts/run starts the gateway
    (mitmproxy's per-message type checks, which only run without it, leave each call's flow in
    reference cycles); and the chain's calls leave nothing for the cycle collector, which would
    otherwise walk and free every call's flow, records and bodies some time later."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONOPTIMIZE"}
    p = subprocess.run([sys.executable, str(SCRIPT), "--calls", "100", "--rounds", "1"], capture_output=True,
                       text=True, timeout=600, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["optimize"] == 1
    assert out["calls"] == 100
    assert out["cyclic_garbage_per_call"] == 0, out


def test_without_optimisation_the_cycles_are_counted() -> None:
    """The count above can tell: with PYTHONOPTIMIZE=0 set explicitly (kept as set), mitmproxy's
    type checks leave their cycles and the script reports them."""
    import os

    p = subprocess.run([sys.executable, str(SCRIPT), "--calls", "100", "--rounds", "1"], capture_output=True,
                       text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONOPTIMIZE": "0"})
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["optimize"] == 0
    assert out["cyclic_garbage_per_call"] > 10, out
