"""The Python Celery side of `cargo xtask bench redis`.

    python bench.py enqueue N     one producer, sequential tasks.noop.apply_async()
    python bench.py roundtrip M   sequential tasks.noop.delay().get() latencies

Settings from the environment as for pyapp.py. Prints one JSON object.
"""

import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pyapp import noop  # noqa: E402


def enqueue(n):
    noop.apply_async()  # connect and declare outside the timing
    t = time.perf_counter()
    for _ in range(n):
        noop.apply_async()
    s = time.perf_counter() - t
    return {"n": n, "seconds": s, "rate": n / s}


def roundtrip(calls):
    for _ in range(20):
        noop.delay().get(timeout=30)
    lat = []
    for _ in range(calls):
        t = time.perf_counter()
        noop.delay().get(timeout=30)
        lat.append((time.perf_counter() - t) * 1000.0)
    lat.sort()

    def at(p):
        return lat[max(math.ceil(len(lat) * p) - 1, 0)]

    return {"calls": len(lat), "p50_ms": at(0.5), "p99_ms": at(0.99), "mean_ms": sum(lat) / len(lat)}


def main():
    cmd, n = sys.argv[1], int(sys.argv[2])
    out = {"enqueue": enqueue, "roundtrip": roundtrip}[cmd](n)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
