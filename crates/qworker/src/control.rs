//! Remote control answered as Celery's worker answers it: the worker
//! subscribes to `celery.pidbox`, runs the requests addressed to it
//! ([`ControlRequest::addressed_to`]) and replies `{node: answer}` to the
//! request's `reply_to` (FACTS §5; reply shapes as in the captured
//! `pidbox/*/inspect-*.reply0.decoded.json`).
//!
//! Inspect: `ping`, `stats`, `active` (`safe` too), `reserved`, `scheduled`,
//! `registered` (`taskinfoitems`), `active_queues`, `revoked`, `conf`,
//! `query_task`, `report`, `clock`, `hello`. Control: `revoke` (`terminate`,
//! `signal`), `terminate`, `revoke_by_stamped_headers`, `rate_limit`,
//! `time_limit`, `add_consumer`, `cancel_consumer`, `shutdown` (warm, no
//! reply, as Celery's), `pool_grow`, `pool_shrink`, `autoscale`,
//! `enable_events`, `disable_events`, `heartbeat`. Celery's other commands
//! answer `{"error": "not supported by qtask"}`, an unknown one
//! `{"error": "KeyError('<name>')"}` as kombu answers it; an argument of
//! the wrong type is a `TypeError`/`ValueError` error answer, never a panic.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use qcore::control::{ControlRequest, Reply, RequestHeaders, PIDBOX_EXCHANGE, REPLY_EXCHANGE};
use qcore::event::EventData;
use serde_json::{json, Map, Value};

use crate::worker::{backoff, Shared, TaskState};

/// Celery's commands qtask does not implement (answered "not supported").
const NOT_SUPPORTED: &[&str] = &[
    "objgraph",
    "memsample",
    "memdump",
    "election",
    "dump_tasks",
    "dump_conf",
    "pool_restart",
    "active_queues_pattern",
];

/// Subscribe to `celery.pidbox` (`None` if the broker has no fanout or
/// is away; the control loop then keeps trying).
pub(crate) async fn subscribe(shared: &Shared) -> Option<Box<dyn qcore::Subscription>> {
    match shared.app.broker().subscribe(PIDBOX_EXCHANGE, "").await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to remote control yet");
            None
        }
    }
}

/// Listen for remote-control broadcasts until the worker stops.
pub(crate) async fn control_loop(shared: Arc<Shared>, first: Option<Box<dyn qcore::Subscription>>) {
    let broker = shared.app.broker().clone();
    let mut attempt = 0;
    let mut first = first;
    loop {
        let sub = match first.take() {
            Some(s) => Ok(s),
            None => broker.subscribe(PIDBOX_EXCHANGE, "").await,
        };
        let mut sub = match sub {
            Ok(s) => s,
            Err(e) if e.kind() == qcore::ErrorKind::Unsupported => {
                tracing::info!("broker has no fanout: remote control is unavailable");
                return;
            }
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, "cannot subscribe to remote control; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
        };
        attempt = 0;
        loop {
            match sub.recv().await {
                Ok(Some((_rk, msg))) => match ControlRequest::from_message(&msg) {
                    Ok(req) if req.addressed_to(&shared.hostname) => {
                        if let Some(c) = RequestHeaders::from_message(&msg).clock {
                            shared.events.sender.adjust(c);
                        }
                        let answer = dispatch(&shared, &req).await;
                        if let (Some(answer), Some(reply_to)) = (answer, &req.reply_to) {
                            reply(&shared, &req, &reply_to.routing_key, answer).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed control message"),
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "remote control subscription failed; resubscribing");
                    break;
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(backoff(attempt)).await;
    }
}

async fn reply(shared: &Shared, req: &ControlRequest, routing_key: &str, answer: Value) {
    let clock = shared.events.sender.forward();
    let msg = match Reply::new(shared.hostname.clone(), answer).to_message(req.ticket.as_deref(), clock) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, method = %req.method, "cannot encode a control reply");
            return;
        }
    };
    if let Err(e) = shared.app.broker().publish_fanout(REPLY_EXCHANGE, routing_key, &msg).await {
        tracing::warn!(error = %e, method = %req.method, "cannot send a control reply");
    }
}

fn ok(text: impl Into<String>) -> Value {
    Reply::ok(text)
}

fn nok(text: impl Into<String>) -> Value {
    Reply::error(text)
}

fn arg<'a>(req: &'a ControlRequest, name: &str) -> Option<&'a Value> {
    req.arguments.get(name).filter(|v| !v.is_null())
}

fn arg_str<'a>(req: &'a ControlRequest, name: &str) -> Option<&'a str> {
    arg(req, name).and_then(Value::as_str)
}

fn arg_f64(req: &ControlRequest, name: &str) -> Option<f64> {
    arg(req, name).and_then(|v| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
}

/// Python's `repr()` of a set of strings: `{'a', 'b'}`.
fn set_repr(ids: &[String]) -> String {
    let items: Vec<String> = ids.iter().map(|i| qcore::repr::repr(&Value::String(i.clone()))).collect();
    format!("{{{}}}", items.join(", "))
}

/// Run one request; `None` = no reply (Celery's `shutdown`).
async fn dispatch(shared: &Arc<Shared>, req: &ControlRequest) -> Option<Value> {
    let method = req.method.as_str();
    tracing::debug!(method, "remote control");
    Some(match method {
        "ping" => ok("pong"),
        "clock" => json!({ "clock": shared.events.sender.clock() }),
        "stats" => shared.stats_reply(),
        "active" => Value::Array(shared.requests(|s| matches!(s, TaskState::Active { .. }))),
        "reserved" => Value::Array(shared.requests(|s| matches!(s, TaskState::Reserved))),
        "scheduled" => Value::Array(shared.scheduled()),
        "registered" => Value::Array(shared.registered(arg(req, "taskinfoitems"))),
        "active_queues" => Value::Array(shared.queues().iter().map(|q| queue_info(q)).collect()),
        "revoked" => Value::Array(shared.revoked_ids().into_iter().map(Value::String).collect()),
        "conf" => shared.conf(),
        "query_task" => shared.query_task(&ids_arg(arg(req, "ids").or_else(|| arg(req, "id")))),
        "report" => ok(shared.report()),
        "hello" => {
            if arg_str(req, "from_node") == Some(shared.hostname.as_str()) {
                return None;
            }
            if let Some(v) = arg(req, "revoked") {
                let ids = ids_arg(Some(v));
                shared.revoke(&ids, false);
            }
            let revoked: Map<String, Value> =
                shared.revoked_ids().into_iter().map(|id| (id, json!(qcore::time::now_epoch()))).collect();
            json!({ "revoked": revoked, "clock": shared.events.sender.forward() })
        }
        "revoke" | "terminate" => {
            let ids = req.task_ids();
            let terminate = method == "terminate" || arg(req, "terminate").and_then(Value::as_bool).unwrap_or(false);
            tracing::info!(?ids, terminate, "revoke");
            let terminated = shared.revoke(&ids, terminate);
            shared.persist_revokes(&ids).await;
            if terminate {
                if terminated.is_empty() {
                    ok("terminate: tasks unknown")
                } else {
                    ok(format!("terminate: {}", terminated.join(", ")))
                }
            } else {
                ok(format!("tasks {} flagged as revoked", set_repr(&ids)))
            }
        }
        "revoke_by_stamped_headers" => match arg(req, "headers") {
            Some(Value::Object(h)) => {
                shared.revoke_stamps(h);
                ok(format!("headers {} flagged as revoked", qcore::repr::repr(&Value::Object(h.clone()))))
            }
            _ => nok("TypeError('headers must be a dict')"),
        },
        "rate_limit" => rate_limit(shared, req),
        "time_limit" => {
            let Some(task) = arg_str(req, "task_name") else { return Some(nok("unknown task")) };
            if shared.app.task(task).is_none() {
                return Some(nok("unknown task"));
            }
            shared.set_time_limits(task, arg_f64(req, "hard"), arg_f64(req, "soft"));
            ok("time limits set successfully")
        }
        "add_consumer" => {
            let Some(queue) = arg_str(req, "queue") else { return Some(nok("TypeError('queue is required')")) };
            if shared.add_queue(queue) {
                ok(format!("add consumer {queue}"))
            } else {
                ok(format!("already consuming from {}", qcore::repr::repr(&json!(queue))))
            }
        }
        "cancel_consumer" => {
            let Some(queue) = arg_str(req, "queue") else { return Some(nok("TypeError('queue is required')")) };
            shared.cancel_queue(queue);
            ok(format!("no longer consuming from {queue}"))
        }
        "shutdown" => {
            tracing::warn!("shutdown requested by remote control");
            shared.warm_shutdown();
            return None;
        }
        "pool_grow" | "pool_shrink" => {
            let n = arg(req, "n").and_then(Value::as_u64).unwrap_or(1) as usize;
            if method == "pool_grow" {
                shared.resize(shared.concurrency() + n);
                ok("pool will grow")
            } else {
                shared.resize(shared.concurrency().saturating_sub(n).max(1));
                ok("pool will shrink")
            }
        }
        "autoscale" => {
            let max = arg(req, "max").and_then(Value::as_u64);
            let min = arg(req, "min").and_then(Value::as_u64);
            match (max, min) {
                (Some(max), Some(min)) if max >= 1 && min <= max => {
                    // No autoscaler: the pool takes the maximum.
                    shared.resize(max as usize);
                    ok(format!("autoscale now max={max} min={min}"))
                }
                _ => nok("ValueError('autoscale needs max >= min >= 0')"),
            }
        }
        "enable_events" => {
            if shared.events.set_task_events(true) {
                ok("task events already enabled")
            } else {
                tracing::info!("Events of group {{task}} enabled by remote.");
                ok("task events enabled")
            }
        }
        "disable_events" => {
            if shared.events.set_task_events(false) {
                tracing::info!("Events of group {{task}} disabled by remote.");
                ok("task events disabled")
            } else {
                ok("task events already disabled")
            }
        }
        "heartbeat" => {
            shared.worker_event(EventData::WorkerHeartbeat);
            Value::Null
        }
        m if NOT_SUPPORTED.contains(&m) => nok("not supported by qtask"),
        m => nok(format!("KeyError({})", qcore::repr::repr(&json!(m)))),
    })
}

fn rate_limit(shared: &Shared, req: &ControlRequest) -> Value {
    let Some(task) = arg_str(req, "task_name") else { return nok("unknown task") };
    let rate = match arg(req, "rate_limit") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let limit = match qcore::RateLimit::parse(if rate.is_empty() { "0" } else { &rate }) {
        Ok(l) => l,
        Err(e) => return nok(format!("Invalid rate limit string: ValueError({})", qcore::repr::repr(&json!(e)))),
    };
    if shared.app.task(task).is_none() {
        tracing::error!(task, "rate limit attempt for unknown task");
        return nok("unknown task");
    }
    shared.ratelimit.set(task, limit);
    match limit {
        None => {
            tracing::info!(task, "rate limits disabled");
            ok("rate limit disabled successfully")
        }
        Some(_) => {
            tracing::info!(task, rate = %rate, "new rate limit");
            ok("new rate limit set successfully")
        }
    }
}

/// Task ids given as a list or one string.
fn ids_arg(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// A consumed queue as Celery's `active_queues` describes it (a direct
/// exchange of the same name, durable).
fn queue_info(name: &str) -> Value {
    json!({
        "name": name,
        "exchange": {
            "name": name, "type": "direct", "arguments": null, "durable": true, "passive": false,
            "auto_delete": false, "delivery_mode": null, "no_declare": false
        },
        "routing_key": name,
        "queue_arguments": null,
        "binding_arguments": null,
        "consumer_arguments": null,
        "durable": true,
        "exclusive": false,
        "auto_delete": false,
        "no_ack": false,
        "alias": null,
        "bindings": [],
        "no_declare": null,
        "expires": null,
        "message_ttl": null,
        "max_length": null,
        "max_length_bytes": null,
        "max_priority": null
    })
}

/// Fields of Celery's `stats` that depend on the process: `rusage` from
/// `/proc` where there is one.
pub(crate) fn rusage() -> Value {
    let mut utime = 0.0;
    let mut stime = 0.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name in parentheses; utime and stime are
        // the 14th and 15th fields, in clock ticks (100 per second on Linux).
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            utime = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
            stime = f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
        }
    }
    let maxrss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        })
        .unwrap_or(0);
    json!({
        "utime": utime, "stime": stime, "maxrss": maxrss, "ixrss": 0, "idrss": 0, "isrss": 0,
        "minflt": 0, "majflt": 0, "nswap": 0, "inblock": 0, "oublock": 0, "msgsnd": 0, "msgrcv": 0,
        "nsignals": 0, "nvcsw": 0, "nivcsw": 0
    })
}

/// Celery's `stats.broker` from a (redacted) broker URL.
pub(crate) fn broker_info(url: &str) -> Value {
    let (scheme, rest) = url.split_once("://").unwrap_or((url, ""));
    let (userinfo, hostpart) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (hostport, vhost) = hostpart.split_once('/').unwrap_or((hostpart, ""));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => (h, p.parse::<u64>().ok()),
        _ => (hostport, None),
    };
    let userid = userinfo.and_then(|u| u.split(':').next()).filter(|u| !u.is_empty());
    let transport = match scheme {
        "amqp" | "amqps" => "amqp",
        "rediss" => "rediss",
        s => s,
    };
    json!({
        "hostname": host, "userid": userid, "virtual_host": vhost.split('?').next().unwrap_or(""),
        "port": port, "insist": false, "ssl": scheme.ends_with('s') && scheme != "redis",
        "transport": transport, "connect_timeout": 4, "transport_options": {}, "login_method": null,
        "uri_prefix": null, "heartbeat": 120.0, "failover_strategy": "round-robin", "alternates": []
    })
}

/// A request as Celery's `Request.info()` writes it.
pub(crate) fn request_info(
    req: &qcore::RequestInfo,
    priority: u8,
    time_start: Option<f64>,
    acknowledged: bool,
    worker_pid: Option<u32>,
) -> Value {
    json!({
        "id": req.id,
        "name": req.task,
        "args": req.args,
        "kwargs": req.kwargs,
        "type": req.task,
        "hostname": req.hostname,
        "time_start": time_start,
        "acknowledged": acknowledged,
        "delivery_info": {
            "exchange": "", "routing_key": req.queue, "priority": priority, "redelivered": req.redelivered
        },
        "worker_pid": worker_pid
    })
}

/// `registered` with `taskinfoitems`: `name [k=v ...]` as Celery writes it
/// (`max_retries` is the task's limit after the app setting, `None` = forever).
pub(crate) fn registered_line(
    name: &str,
    opts: &qcore::TaskOptions,
    max_retries: Option<u32>,
    items: &[&str],
) -> String {
    let mut fields = Vec::new();
    for item in items {
        let v = match *item {
            "rate_limit" => opts.rate_limit.map(|r| format!("{}/{}s", r.count, r.per.as_secs())),
            "time_limit" => opts.time_limit.map(|d| d.as_secs_f64().to_string()),
            "soft_time_limit" => opts.soft_time_limit.map(|d| d.as_secs_f64().to_string()),
            "acks_late" => opts.acks_late.map(|b| if b { "True" } else { "False" }.to_string()),
            "max_retries" => Some(max_retries.map_or_else(|| "None".to_string(), |n| n.to_string())),
            "ignore_result" => Some(if opts.ignore_result { "True" } else { "False" }.to_string()),
            _ => None,
        };
        if let Some(v) = v {
            fields.push(format!("{item}={v}"));
        }
    }
    if fields.is_empty() {
        name.to_owned()
    } else {
        format!("{name} [{}]", fields.join(" "))
    }
}

impl Shared {
    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_info_reads_urls() {
        let b = broker_info("redis://:********@127.0.0.1:6379/5");
        assert_eq!(b["hostname"], "127.0.0.1");
        assert_eq!(b["port"], 6379);
        assert_eq!(b["virtual_host"], "5");
        assert_eq!(b["transport"], "redis");
        let b = broker_info("amqp://guest:********@rabbit/%2f");
        assert_eq!(b["userid"], "guest");
        assert_eq!(b["port"], Value::Null);
        assert_eq!(b["transport"], "amqp");
        let b = broker_info("nonsense");
        assert_eq!(b["hostname"], "");
    }

    #[test]
    fn python_set_repr() {
        assert_eq!(set_repr(&["a".into()]), "{'a'}");
        assert_eq!(set_repr(&["a".into(), "b".into()]), "{'a', 'b'}");
    }
}
