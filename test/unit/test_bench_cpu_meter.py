"""The benchmarks' CPU meter sees a process that works in bursts shorter than a tick.

A steady controller wakes for a report, files it in well under a millisecond and
sleeps: user + system ticks from /proc/<pid>/stat sample such a process at the timer
tick and can read 0 over a whole window. The meter reads the scheduler's runtime.
"""

from __future__ import annotations

import subprocess
import sys

from bench.common import CpuMeter

# Bursts of ~50 µs of work with 2 ms sleeps between them: far below a 4-10 ms tick.
_BURSTY = """
import sys, time
sys.stdout.write("ready\\n"); sys.stdout.flush()
for _ in range(int(sys.argv[1])):
    end = time.perf_counter() + 50e-6
    while time.perf_counter() < end:
        pass
    time.sleep(0.002)
sys.stdout.write("done\\n"); sys.stdout.flush()
sys.stdin.read()  # alive until the meter has read it
"""


def test_the_meter_counts_work_done_between_ticks() -> None:
    bursts = 200
    child = subprocess.Popen(
        [sys.executable, "-c", _BURSTY, str(bursts)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        meter = CpuMeter(child.pid).start()
        assert child.stdout.readline() == "done\n"
        cpu_s, _ = meter.read()
    finally:
        child.kill()
        child.wait(timeout=30)
    # At least the busy-waits themselves; far less than the wall time slept.
    assert bursts * 50e-6 <= cpu_s < 5.0
