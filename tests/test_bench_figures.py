"""scripts/bench's figures: the goals' ratios from medians, and the same paired round by round."""

from __future__ import annotations

from scripts import bench


def small(name: str, c: int, per_round: list[dict]) -> dict:
    import statistics

    return {"part": "small", "name": name, "available": True, "concurrency": c, "per_round": per_round,
            **{k: statistics.median(r[k] for r in per_round) for k in ("rps", "p50_ms", "cpu_us_per_call")}}


def rounds(*values: tuple[float, float, float]) -> list[dict]:
    return [{"rps": rps, "p50_ms": p50, "cpu_us_per_call": cpu} for rps, p50, cpu in values]


def test_paired_figures_compare_each_round_with_the_same_round():
    # the machine slows down in round 2 for every target alike: each round's ratio stays 1.1
    scenarios = [
        small("mitmdump", 1, rounds((100, 5.0, 4000), (50, 10.0, 8000), (100, 5.0, 4000))),
        small("chain", 1, rounds((110, 4.5, 3600), (55, 9.0, 7200), (110, 4.5, 3600))),
        small("floor", 8, rounds((500, 2.0, 1000), (250, 4.0, 2000), (500, 2.0, 1000))),
        small("chain", 8, rounds((300, 3.0, 3000), (120, 7.0, 5000), (300, 3.0, 3000))),
        small("mitmdump", 8, rounds((250, 4.0, 4000), (100, 9.0, 9000), (250, 4.0, 4000))),
        # two workers against one at 32 agents: 1.5x, 1.2x, 1.5x round by round, whatever the machine's speed
        small("chain", 32, rounds((300, 90.0, 3000), (100, 250.0, 5000), (320, 80.0, 2900))),
        small("workers2", 32, rounds((450, 60.0, 3500), (120, 200.0, 6000), (480, 55.0, 3400))),
    ]
    p = bench.paired(scenarios)
    assert p["chain_vs_mitmdump_rps_c1"] == {"median": 1.1, "rounds": [1.1, 1.1, 1.1]}
    assert p["chain_added_p50_ms_c1"] == {"median": -0.5, "rounds": [-0.5, -1.0, -0.5]}
    assert p["chain_vs_mitmdump_rps_c8"]["rounds"] == [1.2, 1.2, 1.2]
    assert p["chain_vs_floor_cpu_c8"] == {"median": 3.0, "rounds": [3.0, 2.5, 3.0]}
    assert p["workers2_vs_chain_rps_c32"] == {"median": 1.5, "rounds": [1.5, 1.2, 1.5]}
    assert "chain_process_vs_mitmdump_rps_c1" not in p  # not measured: not reported
    # the goals' figures divide medians
    r, _ = bench.ratios(scenarios)
    assert r["chain_vs_mitmdump_rps_c1"] == 1.1 and r["chain_added_p50_ms_c1"] == -0.5


def test_a_round_a_target_missed_is_left_out():
    chain = rounds((90, 5.5, 4400))
    chain[0]["round"] = 2  # it failed in round 1
    scenarios = [
        small("mitmdump", 1, [{**r, "round": n} for n, r in enumerate(rounds((100, 5.0, 4000), (80, 6.0, 5000)), 1)]),
        small("chain", 1, chain),
    ]
    assert bench.paired(scenarios)["chain_vs_mitmdump_rps_c1"] == {"median": 1.12, "rounds": [1.12]}


def test_alternating_figures_compare_each_cycles_slices():
    """Short slices alternating between the targets a goal compares: each cycle's value is its own
    slices' ratio (or difference); a slice that failed leaves its cycle out; a goal whose targets
    did not both run is not reported."""
    def slice_(rps, p50, cpu):
        return {"rps": rps, "p50_ms": p50, "cpu_us_per_call": cpu}

    runs = {
        1: {"mitmdump": [slice_(100, 5.0, 4000), slice_(50, 10.0, 8000), slice_(100, 5.0, 4000)],
            "chain": [slice_(95, 5.2, 4100), None, slice_(105, 4.9, 3900)]},
        8: {"mitmdump": [slice_(250, 30.0, 4000), slice_(200, 40.0, 4500)],
            "floor": [slice_(600, 12.0, 1500), slice_(500, 15.0, 1800)],
            "chain": [slice_(260, 29.0, 3900), slice_(240, 33.0, 4200)]},
        32: {"chain": [slice_(1000, 30.0, 900), slice_(900, 33.0, 950), slice_(1100, 28.0, 880)],
             "workers2": [slice_(1250, 24.0, 1100), slice_(1260, 23.0, 1120), None]},
    }
    f = bench.alternating_figures(runs, 2.0)
    assert f["chain_vs_mitmdump_rps_c1"] == {"median": 1.0, "cycles": [0.95, 1.05], "slice_s": 2.0}
    assert f["chain_added_p50_ms_c1"]["cycles"] == [0.2, -0.1]
    assert f["chain_vs_mitmdump_rps_c8"]["cycles"] == [1.04, 1.2]
    assert f["chain_vs_floor_cpu_c8"] == {"median": 2.465, "cycles": [2.6, 2.33], "slice_s": 2.0}
    assert f["workers2_vs_chain_rps_c32"] == {"median": 1.325, "cycles": [1.25, 1.4], "slice_s": 2.0}
    assert bench.alternating_figures({1: runs[1]}, 2.0).keys() == {"chain_vs_mitmdump_rps_c1", "chain_added_p50_ms_c1"}


def test_a_proxys_cpu_and_sleeps_split_between_its_main_thread_and_the_others():
    """loadgen reads the watched process's threads from /proc: here a process whose main thread
    spins while another thread sleeps and wakes 200 times, as a proxy's event loop and its store's
    writer thread would; and the bench turns the readings into figures per call."""
    import subprocess
    import sys
    import time

    from scripts.loadgen import thread_readings, thread_split

    child = subprocess.Popen([sys.executable, "-c", """
import sys, threading, time
def writer():
    sys.stdin.readline()
    for _ in range(200):
        time.sleep(0.002)
    print("done", flush=True)
    sys.stdin.readline()  # alive until the end: /proc keeps no counts of an ended thread
threading.Thread(target=writer, daemon=True).start()
end = time.monotonic() + 60
while time.monotonic() < end:
    pass
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        before = thread_readings(child.pid)
        assert len(before["threads"]) == 2 and sum(main for main, _, _ in before["threads"].values()) == 1
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "done\n"  # its 200 sleeps are over
        split = thread_split(before, thread_readings(child.pid))
    finally:
        child.kill()
        child.wait()
    assert split["main_cpu_s"] > 0.3  # it spun all along (200 sleeps of 2 ms, and waits for the GIL)
    assert split["threads_cpu_s"] < split["main_cpu_s"] / 3  # the other thread mostly slept
    assert split["threads_sleeps"] >= 200  # each sleep, and waits for the GIL besides
    figures = bench.thread_figures(split, 100)
    assert figures["threads_sleeps_per_call"] == round(split["threads_sleeps"] / 100, 2) >= 2
    assert figures["loop_cpu_us_per_call"] == round(split["main_cpu_s"] / 100 * 1e6)
    assert bench.thread_figures(None, 100) == dict.fromkeys(bench.THREAD_FIGURES)


def test_callgrind_instructions_by_object_add_up_to_the_dumps_total(tmp_path):
    """The instructions part counts with valgrind's callgrind: each shared object's own
    instructions, a call's inclusive cost not counted again in its caller. A real run of a program
    that spends its time hashing (OpenSSL's libcrypto) and in the interpreter."""
    import shutil
    import subprocess
    import sys

    assert shutil.which("valgrind"), "valgrind is missing (scripts/test installs it)"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp_path}/cg.out", sys.executable, "-c",
                    "import hashlib; hashlib.sha256(b'x' * 4_000_000).digest()"],
                   check=True, capture_output=True, timeout=300)
    dump = tmp_path / "cg.out"
    total, counts = bench.callgrind_dump(dump)
    assert total == next(int(line.split()[1]) for line in dump.read_text().splitlines() if line.startswith("summary:"))
    assert sum(counts.values()) == total  # counted from the start: the cost lines add up to the summary
    crypto = sum(v for k, v in counts.items() if k.startswith("libcrypto"))
    python = sum(v for k, v in counts.items() if k.startswith("libpython"))
    assert crypto > 0.3 * total  # 4 MB through SHA-256
    assert python > 0.1 * total  # the interpreter starting and importing
    assert all("/" not in k for k in counts)  # objects by file name


def test_instruction_rows_and_ratio():
    """Each row gives the count per call in all and net of what the idle proxy executes in the same
    time (its timers, which run by the clock and so weigh more per call the slower callgrind makes
    the proxy); the net ratio is of the net counts."""
    scenarios = [
        {"part": "instructions", "id": "c", "name": "floor", "available": True, "concurrency": 8, "calls": 1000,
         "instructions_per_call": 3_000_000, "instructions_per_call_net": 2_900_000,
         "idle_instructions_per_second": 1_600_000,
         "by_object": {"libpython3.12.so.1.0": 2_700_000, "libc.so.6": 300_000}},
        {"part": "instructions", "id": "d", "name": "chain", "available": True, "concurrency": 8, "calls": 500,
         "instructions_per_call": 6_000_000, "instructions_per_call_net": 5_800_000,
         "idle_instructions_per_second": 2_000_000,
         "by_object": {"libpython3.12.so.1.0": 5_100_000, "libsqlite3.so.0": 600_000, "libc.so.6": 300_000}},
    ]
    r, _ = bench.ratios(scenarios)
    assert r["chain_vs_floor_instructions_c8"] == 2.0
    assert r["chain_vs_floor_instructions_net_c8"] == 2.0
    rows = bench._instruction_rows({"scenarios": scenarios})
    assert rows == [["(c) floor", "8", "1000", "3.00 M", "2.90 M (1.6 M/s idle)", "90%", "libc.so.6 10%"],
                    ["(d) chain", "8", "500", "6.00 M", "5.80 M (2.0 M/s idle)", "85%",
                     "libsqlite3.so.0 10%, libc.so.6 5%"]]
    del scenarios[1]["instructions_per_call_net"]  # a row counted without its idle part says so
    assert bench._instruction_rows({"scenarios": scenarios})[1][4] == "–"
