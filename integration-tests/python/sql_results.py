"""Celery's database result backend (SQLAlchemy) against qtask's tables.

    python sql_results.py read  URL '{"name": "task-id", ...}'
    python sql_results.py store URL '{"success": "id1", "failure": "id2", "progress": "id3"}'

`read` prints, for each name, what AsyncResult(id, backend=DatabaseBackend(url))
sees: {"state", "value"} for SUCCESS (from .get()), {"state", "exc_type",
"exc_message", "exc_module"} for FAILURE (the exception .get() raises),
{"state", "info"} otherwise. `store` writes SUCCESS 42, FAILURE
ValueError("boom from python") and PROGRESS {"current": 2, "total": 4} under
the given ids, as a Python worker would, and prints {"stored": true}.

URL is a SQLAlchemy URL without Celery's `db+` prefix
(postgresql://user@host/db?options=-csearch_path%3Dschema).
"""

import json
import sys

from celery import Celery
from celery.backends.database import DatabaseBackend
from celery.result import AsyncResult


def main():
    mode, url, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    app = Celery("sqlinterop")
    app.conf.update(result_serializer="json", result_accept_content=["json"], accept_content=["json"])
    backend = DatabaseBackend(url=url, app=app)
    out = {}
    if mode == "store":
        backend.store_result(ids["success"], 42, "SUCCESS")
        try:
            raise ValueError("boom from python")
        except ValueError as e:
            backend.mark_as_failure(ids["failure"], e)
        backend.store_result(ids["progress"], {"current": 2, "total": 4}, "PROGRESS")
        out["stored"] = True
    else:
        for name, task_id in ids.items():
            r = AsyncResult(task_id, backend=backend, app=app)
            entry = {"state": r.state}
            if r.state == "SUCCESS":
                entry["value"] = r.get(timeout=10)
            elif r.state == "FAILURE":
                try:
                    r.get(timeout=10)
                    entry["error"] = "get() did not raise"
                except Exception as e:  # the remote exception, rebuilt by Celery
                    entry["exc_type"] = type(e).__name__
                    entry["exc_message"] = str(e)
                    entry["exc_module"] = type(e).__module__
            else:
                entry["info"] = r.info
            out[name] = entry
    print(json.dumps(out))


if __name__ == "__main__":
    main()
