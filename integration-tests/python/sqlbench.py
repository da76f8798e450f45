"""The Python Celery side of `cargo xtask bench postgres|sqlite`.

Celery 5.7 has no SQL broker of its own; kombu's SQLAlchemy transport
(`sqla+postgresql+psycopg2://…`, `sqla+sqlite:///…`) is the one it can use,
with results in Celery's database backend (`db+…`).

    python sqlbench.py enqueue N     one producer, sequential tasks.noop.apply_async()
    python sqlbench.py roundtrip M   sequential tasks.noop.delay().get() latencies

Worker: `python -m celery -A sqlbench worker -P prefork -c 2 -Q <queue>`.

Environment: SQLBENCH_BROKER (sqla+… URL), SQLBENCH_BACKEND (db+… URL,
optional: without it results are ignored), SQLBENCH_QUEUE, and
SQLBENCH_POLL (seconds between polls of an idle consumer and of
AsyncResult.get; kombu's default is 1.0 and get()'s 0.5).
Prints one JSON object.
"""

import json
import math
import os
import sys
import time

from celery import Celery
from kombu.transport import sqlalchemy as kombu_sqla

BROKER = os.environ["SQLBENCH_BROKER"]
BACKEND = os.environ.get("SQLBENCH_BACKEND") or None
QUEUE = os.environ.get("SQLBENCH_QUEUE", "celery")
POLL = float(os.environ.get("SQLBENCH_POLL", "1.0"))

# kombu reads `polling_interval` from the transport options, but its
# SQLAlchemy transport passes every transport option on to create_engine(),
# which rejects it: set the class attribute instead.
kombu_sqla.Transport.polling_interval = POLL

app = Celery("sqlbench", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=BACKEND is None,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=4,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
)


@app.task(name="tasks.noop")
def noop():
    return None


def enqueue(n):
    noop.apply_async()  # connect and create tables outside the timing
    t = time.perf_counter()
    for _ in range(n):
        noop.apply_async()
    s = time.perf_counter() - t
    return {"n": n, "seconds": s, "rate": n / s}


def roundtrip(calls):
    for _ in range(10):
        noop.delay().get(timeout=30, interval=POLL)
    lat = []
    for _ in range(calls):
        t = time.perf_counter()
        noop.delay().get(timeout=30, interval=POLL)
        lat.append((time.perf_counter() - t) * 1000.0)
    lat.sort()

    def at(p):
        return lat[max(math.ceil(len(lat) * p) - 1, 0)]

    return {"calls": len(lat), "p50_ms": at(0.5), "p99_ms": at(0.99), "mean_ms": sum(lat) / len(lat)}


if __name__ == "__main__":
    cmd, n = sys.argv[1], int(sys.argv[2])
    print(json.dumps({"enqueue": enqueue, "roundtrip": roundtrip}[cmd](n)))
