"""The Python Celery side of the interop tests.

The same task names as qtask's `interop-worker` (tasks.add, tasks.mul,
tasks.xsum, tasks.sleep, tasks.fail, tasks.progress, tasks.noop) plus a few
Python-only tasks the tests need (a task that retries, a chord body that
counts its runs).

Configured from the environment so every test owns its names:

    PYAPP_BROKER      broker URL (required)
    PYAPP_BACKEND     result backend URL (optional)
    PYAPP_QUEUE       default queue (default "celery")
    PYAPP_SERIALIZER  task serializer: json | msgpack (default json)
    PYAPP_RESULT_SERIALIZER  result serializer: json | msgpack | pickle (default json)
    PYAPP_IGNORE_RESULT  "1" to not store results (benchmarks)
    PYAPP_REMOTE_CONTROL "1" to answer inspect/control broadcasts

Worker: `python -m celery -A pyapp worker -P solo -Q <queue> --without-mingle --without-gossip`
"""

import os
import time

from celery import Celery

BROKER = os.environ["PYAPP_BROKER"]
BACKEND = os.environ.get("PYAPP_BACKEND") or None
QUEUE = os.environ.get("PYAPP_QUEUE", "celery")
SERIALIZER = os.environ.get("PYAPP_SERIALIZER", "json")
RESULT_SERIALIZER = os.environ.get("PYAPP_RESULT_SERIALIZER", "json")

app = Celery("pyapp", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_serializer=SERIALIZER,
    accept_content=["json", "msgpack"],
    result_accept_content=["json", "msgpack", "pickle"],
    result_serializer=RESULT_SERIALIZER,
    task_default_queue=QUEUE,
    result_extended=True,
    task_ignore_result=os.environ.get("PYAPP_IGNORE_RESULT") == "1",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=int(os.environ.get("PYAPP_PREFETCH_MULTIPLIER", "1")),
    # PYAPP_REMOTE_CONTROL=1: answer inspect/control (the control tests).
    worker_enable_remote_control=os.environ.get("PYAPP_REMOTE_CONTROL") == "1",
    worker_send_task_events=False,
)
if os.environ.get("PYAPP_MAX_PRIORITY"):
    # RabbitMQ: declare task queues with x-max-priority (as the qtask side does).
    app.conf.task_queue_max_priority = int(os.environ["PYAPP_MAX_PRIORITY"])


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y


@app.task(name="tasks.xsum")
def xsum(numbers):
    return sum(numbers)


@app.task(name="tasks.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="tasks.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="tasks.progress", bind=True)
def progress(self, steps):
    for i in range(1, steps + 1):
        time.sleep(0.01)
        self.update_state(state="PROGRESS", meta={"current": i, "total": steps})
    return steps


@app.task(name="tasks.noop")
def noop():
    return None


@app.task(name="tasks.retry_until", bind=True, max_retries=10)
def retry_until(self, times):
    """Retry (countdown 0.1 s) until it has been retried `times` times; return the retry count."""
    if self.request.retries < times:
        raise self.retry(countdown=0.1, exc=RuntimeError("not yet"))
    return self.request.retries


@app.task(name="tasks.count_sum")
def count_sum(numbers, counter):
    """Chord body: INCR the Redis key `counter` (how many times the body ran), return the sum."""
    import redis

    # The counter lives in Redis: the broker's, or the backend's when the
    # broker is RabbitMQ.
    url = BROKER if BROKER.startswith("redis") else BACKEND
    redis.Redis.from_url(url).incr(counter)
    return sum(numbers)
