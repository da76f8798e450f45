"""Python Celery producer for the interop tests: sends tasks to a qtask worker
and reads the results back with AsyncResult.get().

    python producer.py SCENARIO [ARG...]

Settings come from the environment (see pyapp.py). Prints one JSON object:
each check's observed value, so the Rust test asserts on what Python saw.
A check that raised reports {"error": "<repr>"} instead of its value.
"""

import json
import os
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from celery import chain, chord, group  # noqa: E402
from celery.result import AsyncResult  # noqa: E402

from pyapp import QUEUE, SERIALIZER, add, app, fail, mul, progress, xsum  # noqa: E402

TIMEOUT = float(os.environ.get("PYAPP_TIMEOUT", "20"))


def exc_view(e):
    return {"type": type(e).__name__, "args": [str(a) if not isinstance(a, (int, float, str)) else a for a in e.args]}


def failure_view(r):
    """State and exception of a failed result, without raising."""
    r.get(timeout=TIMEOUT, propagate=False)
    res = r.result
    out = {"state": r.state}
    if isinstance(res, BaseException):
        out.update(exc_view(res))
    else:
        out["result"] = res
    return out


def date_done(r):
    d = r.date_done
    if isinstance(d, str):
        d = datetime.fromisoformat(d)
    if d is not None and d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp() if d else None


def messages():
    out = {}
    out["args"] = add.apply_async((2, 3)).get(timeout=TIMEOUT)
    out["kwargs"] = add.apply_async(kwargs={"x": 4, "y": 5}).get(timeout=TIMEOUT)
    out["mixed"] = add.apply_async((1,), {"y": 2}).get(timeout=TIMEOUT)
    out["list_arg"] = xsum.delay([1, 2, 3, 4]).get(timeout=TIMEOUT)
    out["big_int"] = add.delay(1099511627776, 1).get(timeout=TIMEOUT)
    out["send_task"] = app.send_task("tasks.mul", args=[6, 7]).get(timeout=TIMEOUT)
    out["other_queue"] = add.apply_async((10, 20), queue=QUEUE + "_other").get(timeout=TIMEOUT)

    try:
        fail.delay("boom \u00fc").get(timeout=TIMEOUT)
        out["failure"] = "no exception"
    except Exception as e:  # noqa: BLE001
        out["failure"] = exc_view(e)
    out["failure_state"] = failure_view(fail.delay("again"))

    t0 = time.time()
    r = add.apply_async((1, 1), countdown=0.5)
    out["countdown"] = r.get(timeout=TIMEOUT)
    out["countdown_delay"] = date_done(r) - t0

    eta = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    r = add.apply_async((2, 2), eta=eta)
    out["eta"] = r.get(timeout=TIMEOUT)
    out["eta_delay"] = date_done(r) - eta.timestamp()

    # A naive eta is sent naive (FACTS 1.5); Celery means UTC.
    eta = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=0.3)
    r = add.apply_async((3, 3), eta=eta)
    out["naive_eta"] = r.get(timeout=TIMEOUT)
    out["naive_eta_delay"] = date_done(r) - eta.replace(tzinfo=timezone.utc).timestamp()

    out["expired"] = failure_view(add.apply_async((1, 2), expires=datetime.now(timezone.utc) - timedelta(seconds=30)))
    out["not_expired"] = add.apply_async((1, 2), expires=60).get(timeout=TIMEOUT)

    r = progress.delay(40)
    seen = None
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if r.state == "PROGRESS":
            seen = r.info
            break
        if r.ready():
            break
        time.sleep(0.002)
    out["progress_meta"] = seen
    out["progress"] = r.get(timeout=TIMEOUT)
    return out


def canvas():
    out = {}
    out["chain"] = chain(add.s(1, 2), add.s(3), mul.s(10)).apply_async().get(timeout=TIMEOUT)
    out["group"] = group(add.s(i, i) for i in range(5)).apply_async().get(timeout=TIMEOUT)
    out["chord"] = chord((add.s(i, i) for i in range(10)), xsum.s()).apply_async().get(timeout=TIMEOUT)
    if SERIALIZER != "msgpack":
        # Celery 5.7 writes this message's msgpack body with a wrong map
        # length (its own worker rejects it: "Can't decode message body:
        # ExtraData"), so it is only checked with JSON.
        out["chain_group_chain"] = (
            chain(add.s(1, 1), group(add.s(1), add.s(2)), xsum.s()).apply_async().get(timeout=TIMEOUT)
        )
    out["chain_immutable"] = chain(add.s(1, 1), add.si(5, 5)).apply_async().get(timeout=TIMEOUT)

    cb = str(uuid.uuid4())
    r = add.apply_async((2, 2), link=mul.s(10).set(task_id=cb))
    out["link_parent"] = r.get(timeout=TIMEOUT)
    out["link"] = AsyncResult(cb, app=app).get(timeout=TIMEOUT)

    eb = str(uuid.uuid4())
    r = fail.apply_async(("first",), link_error=fail.s().set(task_id=eb))
    out["link_error_parent"] = failure_view(r)
    out["link_error_parent_id"] = r.id
    # tasks.fail as errback: it is called with the failed task's id, so it fails with that id as message.
    out["link_error"] = failure_view(AsyncResult(eb, app=app))
    return out


def retry():
    r = app.send_task("tasks.retry_until", args=[2])
    out = {"result": r.get(timeout=TIMEOUT)}
    try:
        app.send_task("tasks.retry_until", args=[20]).get(timeout=TIMEOUT)
        out["exhausted"] = "no exception"
    except Exception as e:  # noqa: BLE001
        out["exhausted"] = exc_view(e)
    return out


def send(name, *args):
    """Send one task (JSON args from argv) and print its id: for tests that start the worker later."""
    opts = json.loads(args[0]) if args else {}
    r = app.send_task(name, args=opts.get("args", []), kwargs=opts.get("kwargs", {}), **opts.get("options", {}))
    return {"id": r.id}


def get(task_id):
    """Wait for a result; report state and value (exceptions as views)."""
    r = AsyncResult(task_id, app=app)
    try:
        return {"state": "SUCCESS", "result": r.get(timeout=TIMEOUT)}
    except Exception as e:  # noqa: BLE001
        return {"state": r.state, **exc_view(e)}


def chord_json(spec):
    """Send a chord described in JSON and wait for it:
    {"header": [{"task", "args", "queue"}, ...], "body": {"task", "kwargs", "queue"}}.
    Prints {"result", "header_ids"}: the body's result and the header ids."""
    spec = json.loads(spec)
    header = [
        app.signature(h["task"], args=h.get("args", []), queue=h["queue"]).set(task_id=str(uuid.uuid4()))
        for h in spec["header"]
    ]
    b = spec["body"]
    body = app.signature(b["task"], kwargs=b.get("kwargs", {}), queue=b["queue"])
    r = chord(header, body).apply_async()
    return {"result": r.get(timeout=TIMEOUT), "header_ids": [h.id for h in header]}


def rpc():
    """With result_backend rpc:// (results as messages to this process's reply queue)."""
    out = {}
    # First: polling r.state reads the reply queue with basic_get only until
    # the first .get() starts Celery's result consumer (Celery behaviour).
    r = progress.delay(30)
    states = set()
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and not r.ready():
        states.add(r.state)
        time.sleep(0.002)
    out["progress_states"] = sorted(states)
    out["progress"] = r.get(timeout=TIMEOUT)
    out["args"] = add.apply_async((2, 3)).get(timeout=TIMEOUT)
    out["kwargs"] = add.apply_async(kwargs={"x": 4, "y": 5}).get(timeout=TIMEOUT)
    out["send_task"] = app.send_task("tasks.mul", args=[6, 7]).get(timeout=TIMEOUT)
    out["countdown"] = add.apply_async((1, 1), countdown=0.3).get(timeout=TIMEOUT)
    out["failure_state"] = failure_view(fail.delay("rpc boom"))
    out["expired"] = failure_view(add.apply_async((1, 2), expires=datetime.now(timezone.utc) - timedelta(seconds=30)))
    out["chain"] = chain(add.s(1, 2), add.s(3), mul.s(10)).apply_async().get(timeout=TIMEOUT)
    many = [add.delay(i, i) for i in range(20)]
    out["many"] = [m.get(timeout=TIMEOUT) for m in many]
    return out


SCENARIOS = {"messages": messages, "canvas": canvas, "retry": retry, "send": send, "get": get, "rpc": rpc, "chord": chord_json}


def main():
    name, *args = sys.argv[1:]
    fn = SCENARIOS[name]
    if name in ("messages", "canvas", "retry", "rpc"):
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001
            out = {"error": repr(e)}
    else:
        out = fn(*args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
