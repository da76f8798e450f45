"""Receive Celery events the way Flower does (celery's EventReceiver) and
print those of one node as JSON lines, until every wanted type was seen.

    python events.py NODE TYPE[,TYPE...] TIMEOUT_SECS

Prints "ready" once the receiver is subscribed, then one JSON object per
event of NODE, and exits 0 when each wanted type was seen at least once
(1 on timeout). Broker from PYAPP_BROKER.
"""

import json
import os
import sys
import time

from celery import Celery

node, wanted, timeout = sys.argv[1], set(sys.argv[2].split(",")), float(sys.argv[3])
app = Celery("events", broker=os.environ["PYAPP_BROKER"])
seen = set()
deadline = time.monotonic() + timeout


class Done(Exception):
    pass


def on_event(event):
    if event.get("hostname") != node:
        return
    print(json.dumps(event), flush=True)
    seen.add(event.get("type"))
    if wanted <= seen:
        raise Done()


with app.connection() as conn:
    recv = app.events.Receiver(conn, handlers={"*": on_event})
    recv.on_consume_ready = lambda *a, **kw: print("ready", flush=True)
    try:
        while time.monotonic() < deadline:
            try:
                recv.capture(limit=None, timeout=max(deadline - time.monotonic(), 0.1), wakeup=False)
            except (TimeoutError, OSError):
                pass
    except Done:
        sys.exit(0)
print(json.dumps({"missing": sorted(wanted - seen)}), flush=True)
sys.exit(1)
