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
