#!/usr/bin/env python3
"""Write the seed inputs of the fuzz targets (fuzz/seeds/<target>/) from the
captured Celery 5.7 vectors: real messages are the best start for a fuzzer.
Run once: python3 fuzz/make_seeds.py ../shared/celery-compat/vectors"""
import base64, glob, hashlib, json, os, struct, sys

vec = sys.argv[1] if len(sys.argv) > 1 else "../shared/celery-compat/vectors"
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")

def put(target, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    open(os.path.join(d, name), "wb").write(data)

def envelopes(sub):
    for p in sorted(glob.glob(os.path.join(vec, sub, "**", "*.raw.json"), recursive=True)):
        raw = open(p, "rb").read()
        try:
            env = json.loads(raw)
        except ValueError:
            continue
        if isinstance(env, dict) and "body" in env:
            yield raw, env

def body_of(env):
    b = env["body"]
    if env.get("properties", {}).get("body_encoding") == "base64":
        return base64.b64decode(b)
    return b.encode() if isinstance(b, str) else json.dumps(b).encode()

def flag(env):
    return b"\x01" if "msgpack" in env.get("content-type", "") else b"\x00"

for sub in ["redis-broker", "canvas", "redis-reliability", "result-sql"]:
    for raw, env in envelopes(sub):
        put("redis_envelope", raw)
        body = body_of(env)
        put("task_message", flag(env) + json.dumps(env.get("headers") or {}).encode() + b"\xff" + body)
        put("task_body", flag(env) + body)
for raw, env in envelopes("events/redis"):
    put("redis_envelope", raw)
    put("event", flag(env) + body_of(env))
for raw, env in envelopes("pidbox/redis"):
    put("redis_envelope", raw)
    put("pidbox", flag(env) + json.dumps(env.get("headers") or {}).encode() + b"\xff" + body_of(env))

def frames(data):
    i = 0
    while i + 7 <= len(data):
        kind, ch, size = struct.unpack(">BHI", data[i:i + 7])
        yield kind, data[i + 7:i + 7 + size]
        i += 8 + size

for p in sorted(glob.glob(os.path.join(vec, "**", "*.frames.bin"), recursive=True)):
    fs = list(frames(open(p, "rb").read()))
    header = next((pl for k, pl in fs if k == 2), None)
    body = b"".join(pl for k, pl in fs if k == 3)
    for k, pl in fs:
        if k == 1:
            put("amqp_frames", b"\x00" + pl)
    if header is not None:
        put("amqp_frames", b"\x01" + struct.pack(">H", len(header)) + header + body)

for p in sorted(glob.glob(os.path.join(vec, "result-redis", "*.raw.json"))):
    put("result_doc", open(p, "rb").read())

root = os.path.normpath(os.path.join(os.path.dirname(out), ".."))
for p in sorted(glob.glob(os.path.join(root, "**", "*.toml"), recursive=True)):
    if "/target" in p or "/fuzz/" in p or p.endswith("Cargo.toml"):
        continue
    put("config", open(p, "rb").read())
put("config", b"broker_url=redis://localhost:6379/0\ntask_acks_late=true\nworker_prefetch_multiplier=4\n")

for u in ["redis://:secretpw@localhost:6379/0", "rediss://user:secretpw@h:6380/2?ssl_cert_reqs=required",
          "amqp://guest:secretpw@localhost:5672//", "amqps://u:secretpw@h/vhost?heartbeat=30&frame_max=131072",
          "postgres://u:secretpw@localhost:5432/db?schema=qtask", "sqlite://qtask.db", "sqlite::memory:",
          "redis+socket:///tmp/redis.sock", "sentinel://:secretpw@h1:26379;sentinel://h2:26379"]:
    put("urls", u.encode())
print("seeds written to", out)
