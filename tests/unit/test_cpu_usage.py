"""The benchmarks' CPU meter gives each process group the cores it used, read from /proc."""

from __future__ import annotations

import subprocess
import sys
import time

from qvl_devtools.bench.cpu_usage import CpuMeter


def test_the_busy_process_gets_its_cores_and_the_idle_one_none() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        time.sleep(0.3)  # past the interpreters' start-up
        meter = CpuMeter({"busy": [busy.pid], "idle": [idle.pid], "gone": [2**22 + 1]})
        meter.start()
        time.sleep(1.0)
        cores = meter.stop()
    finally:
        for p in (busy, idle):
            p.kill()
            p.wait()
    # A spinning process gets a share of the cores however loaded the machine is (about 2/9 of a core
    # at load 9 on 2 cores; `make test` runs two test workers beside it): far above the idle one's.
    assert cores["busy"] > 0.1, cores
    assert cores["idle"] < 0.05, cores
    assert cores["gone"] == 0, cores  # no such process: nothing, not an error
    assert cores["machine"] >= cores["busy"] - 0.05, cores
