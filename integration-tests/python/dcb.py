"""django-celery-beat rows through Django's ORM, for tests/beat_django.rs.

Reads one JSON command per line on stdin, answers one JSON line on stdout:

  {"op": "migrate"}
  {"op": "interval", "name", "task", "every", "period", "args", "kwargs", "queue", "headers", "priority"}
  {"op": "crontab", "name", "task", "minute", "hour", "timezone", "queue"}
  {"op": "solar", "name", "task", "event", "latitude", "longitude", "queue"}
  {"op": "clocked", "name", "task", "clocked_time" (ISO), "queue"}        (one_off)
  {"op": "save", "name", "fields": {...}}     model.save() (signals, date_changed)
  {"op": "update", "name", "fields": {...}}   QuerySet.update(): no signal, no date_changed
  {"op": "delete", "name"}
  {"op": "get", "name"}                       enabled, last_run_at, total_run_count
"""

import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dcb_settings")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django  # noqa: E402

django.setup()

from datetime import datetime  # noqa: E402

from django.core.management import call_command  # noqa: E402
from django_celery_beat.models import (  # noqa: E402
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)


def common(cmd):
    return dict(
        name=cmd["name"],
        task=cmd["task"],
        args=json.dumps(cmd.get("args", [])),
        kwargs=json.dumps(cmd.get("kwargs", {})),
        queue=cmd.get("queue"),
        headers=json.dumps(cmd.get("headers", {})),
        priority=cmd.get("priority"),
    )


def run(cmd):
    op = cmd["op"]
    if op == "migrate":
        call_command("migrate", verbosity=0)
        return {"ok": True}
    if op == "interval":
        s, _ = IntervalSchedule.objects.get_or_create(every=cmd["every"], period=cmd.get("period", "seconds"))
        t = PeriodicTask.objects.create(interval=s, **common(cmd))
        return {"id": t.id}
    if op == "crontab":
        s = CrontabSchedule.objects.create(
            minute=cmd.get("minute", "*"),
            hour=cmd.get("hour", "*"),
            day_of_week=cmd.get("day_of_week", "*"),
            day_of_month=cmd.get("day_of_month", "*"),
            month_of_year=cmd.get("month_of_year", "*"),
            timezone=cmd.get("timezone", "UTC"),
        )
        t = PeriodicTask.objects.create(crontab=s, **common(cmd))
        return {"id": t.id}
    if op == "solar":
        s, _ = SolarSchedule.objects.get_or_create(
            event=cmd["event"], latitude=cmd["latitude"], longitude=cmd["longitude"]
        )
        t = PeriodicTask.objects.create(solar=s, **common(cmd))
        return {"id": t.id}
    if op == "clocked":
        s = ClockedSchedule.objects.create(clocked_time=datetime.fromisoformat(cmd["clocked_time"]))
        t = PeriodicTask.objects.create(clocked=s, one_off=True, **common(cmd))
        return {"id": t.id}
    if op == "save":
        t = PeriodicTask.objects.get(name=cmd["name"])
        for k, v in cmd["fields"].items():
            setattr(t, k, json.dumps(v) if k in ("args", "kwargs", "headers") else v)
        t.save()
        return {"ok": True}
    if op == "update":
        fields = {k: (json.dumps(v) if k in ("args", "kwargs", "headers") else v) for k, v in cmd["fields"].items()}
        n = PeriodicTask.objects.filter(name=cmd["name"]).update(**fields)
        return {"updated": n}
    if op == "delete":
        n, _ = PeriodicTask.objects.filter(name=cmd["name"]).delete()
        return {"deleted": n}
    if op == "get":
        t = PeriodicTask.objects.get(name=cmd["name"])
        return {
            "enabled": t.enabled,
            "last_run_at": t.last_run_at.isoformat() if t.last_run_at else None,
            "total_run_count": t.total_run_count,
        }
    raise ValueError(f"unknown op {op!r}")


for line in sys.stdin:
    if not line.strip():
        continue
    try:
        out = run(json.loads(line))
    except Exception as e:  # the test shows it
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
