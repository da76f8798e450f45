"""Drive the Flask app through its test client, as the example's test does:
POST the work, poll the status URL until the qtask worker's result is there.
Prints one JSON line per request: {"path", "final"}."""

import json
import sys
import time

from wsgi import app


def wait(client, url, deadline):
    while True:
        body = client.get(url).get_json()
        if body["status"] in ("SUCCESS", "FAILURE"):
            return body
        if time.monotonic() > deadline:
            raise SystemExit(f"no result at {url} in time; last {body}")
        time.sleep(0.02)


def main():
    client = app.test_client()
    deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 30)
    posts = [
        ("/api/v1/add", {"json": {"a": 5, "b": 7}}),
        ("/api/v1/words", {"data": "the cat and the hat and THE bat"}),
        ("/api/v1/add", {"json": {"a": 2**63 - 1, "b": 1}}),
    ]
    for path, kwargs in posts:
        resp = client.post(path, **kwargs)
        assert resp.status_code == 202, resp.data
        final = wait(client, resp.get_json()["status_url"], deadline)
        print(json.dumps({"path": path, "final": final}), flush=True)


if __name__ == "__main__":
    main()
