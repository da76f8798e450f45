"""The Python half of a mixed system: a Flask API that sends tasks to a
qtask worker with Python Celery and reads their results.

Nothing here knows the worker is written in Rust: the tasks are sent by
name, as to any Celery worker, and the results are read with AsyncResult.

    pip install celery==5.7.0 redis flask
    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/0 \
        flask --app examples/mixed/python/wsgi.py run

    curl -s -X POST localhost:5000/api/v1/add -H 'Content-Type: application/json' -d '{"a": 5, "b": 7}'
    curl -s localhost:5000/api/v1/tasks/<task_id>
"""

import os

from celery import Celery
from flask import Flask, jsonify, request

app = Flask(__name__)
app.config["CELERY_BROKER_URL"] = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app.config["CELERY_RESULT_BACKEND"] = os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/0")

celery = Celery(app.import_name, broker=app.config["CELERY_BROKER_URL"], backend=app.config["CELERY_RESULT_BACKEND"])
celery.conf.task_default_queue = os.environ.get("MIXED_QUEUE", "celery")

BASE_URL = "/api/v1"


@app.route(f"{BASE_URL}/add", methods=["POST"])
def add():
    body = request.get_json(force=True)
    job = celery.send_task("tasks.very_slow_add", args=(body["a"], body["b"]))
    return jsonify({"task_id": job.id, "status_url": f"{BASE_URL}/tasks/{job.id}"}), 202


@app.route(f"{BASE_URL}/words", methods=["POST"])
def words():
    job = celery.send_task("tasks.word_count", args=(request.get_data(as_text=True),))
    return jsonify({"task_id": job.id, "status_url": f"{BASE_URL}/tasks/{job.id}"}), 202


@app.route(f"{BASE_URL}/tasks/<task_id>", methods=["GET"])
def task_status(task_id):
    result = celery.AsyncResult(task_id)
    response = {"task_id": task_id, "status": result.status}
    if result.status == "SUCCESS":
        response["result"] = result.get()
    elif result.status == "FAILURE":
        response["error"] = repr(result.result)
    return jsonify(response)
