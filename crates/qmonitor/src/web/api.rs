//! Flower's REST API (paths, parameters and JSON shapes of Flower 2.2) and
//! qtask's own cursor-paginated JSON (`/api/v1/...`).

// A refused request is its response (an HTTP error), returned as is.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::NaiveDateTime;
use qcore::control::{Client, ControlRequest};
use qcore::{App, SendOptions};
use serde_json::{json, Map, Value};

use super::{Actor, Ctx};
use crate::store::TaskQuery;

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/api/workers", get(workers))
        .route("/api/worker/shutdown/{node}", post(shutdown))
        .route("/api/worker/pool/restart/{node}", post(pool_restart))
        .route("/api/worker/pool/grow/{node}", post(pool_grow))
        .route("/api/worker/pool/shrink/{node}", post(pool_shrink))
        .route("/api/worker/pool/autoscale/{node}", post(autoscale))
        .route("/api/worker/queue/add-consumer/{node}", post(add_consumer))
        .route("/api/worker/queue/cancel-consumer/{node}", post(cancel_consumer))
        .route("/api/tasks", get(tasks))
        .route("/api/task/types", get(task_types))
        .route("/api/queues/length", get(queues_length))
        .route("/api/task/info/{id}", get(task_info))
        .route("/api/task/result/{id}", get(task_result))
        .route("/api/task/async-apply/{name}", post(send_task))
        .route("/api/task/send-task/{name}", post(send_task))
        .route("/api/task/revoke/{id}", post(revoke))
        .route("/api/task/timeout/{name}", post(timeout))
        .route("/api/task/rate-limit/{name}", post(rate_limit))
        .route("/api/v1/tasks", get(v1_tasks))
        .route("/api/v1/tasks/{id}", get(v1_task))
        .route("/api/v1/workers", get(v1_workers))
        .route("/api/v1/tasks/{id}/retry", post(v1_retry))
        .route("/api/v1/queues", get(v1_queues))
        .route("/api/v1/rates", get(v1_rates))
        .route("/api/v1/actions", get(v1_actions))
        .route("/api/v1/queues/{queue}/{action}", post(v1_queue_action))
}

/// Log an action with who did it, and keep it in the audit trail.
pub(crate) async fn audit(ctx: &Ctx, actor: &Actor, action: &str, target: &str) {
    tracing::info!(actor = %actor.0, action, target, "action");
    if let Err(e) = ctx.monitor.store().record(&actor.0, action, target).await {
        tracing::error!(error = %e, "cannot record an action");
    }
}

async fn v1_actions(State(ctx): State<Ctx>) -> Response {
    match ctx.monitor.store().actions(100).await {
        Ok(a) => Json(json!({ "actions": a })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(crate) fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "error": text.into() }))).into_response()
}

fn message(text: impl Into<String>) -> Response {
    Json(json!({ "message": text.into() })).into_response()
}

/// Parameters from the query string and, for a form body, the body (as
/// Tornado's `get_argument` reads them).
fn params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    if let Some(q) = query {
        out.extend(form_urlencoded(q.as_bytes()));
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        out.extend(form_urlencoded(body));
    }
    out
}

pub(crate) fn form_urlencoded(bytes: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(bytes)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|s| matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn control_client(ctx: &Ctx) -> Result<Client, Response> {
    ctx.app
        .as_ref()
        .map(|a| Client::new(a.broker().clone()))
        .ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "no broker to send through"))
}

fn app(ctx: &Ctx) -> Result<&App, Response> {
    ctx.app.as_ref().ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "no broker to send through"))
}

async fn workers(State(ctx): State<Ctx>, RawQuery(q): RawQuery) -> Response {
    let p = params(q.as_deref(), &HeaderMap::new(), b"");
    if truthy(p.get("refresh")) {
        let client = match control_client(&ctx) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Err(e) = ctx.monitor.refresh_inspect(&client, ctx.cfg.inspect_timeout).await {
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("inspect failed: {e}"));
        }
    }
    let now = qcore::time::now_epoch();
    let name = p.get("workername");
    let mut out = Map::new();
    for w in ctx.monitor.workers() {
        if name.is_some_and(|n| *n != w.hostname) {
            continue;
        }
        let v = if truthy(p.get("status")) { Value::Bool(w.alive(now)) } else { w.to_flower_json() };
        out.insert(w.hostname.clone(), v);
    }
    if name.is_some() && out.is_empty() {
        return error(StatusCode::NOT_FOUND, "Unknown worker");
    }
    Json(Value::Object(out)).into_response()
}

/// Send a control command to one known worker; `reply`: wait for its answer.
async fn control(
    ctx: &Ctx,
    actor: &Actor,
    node: &str,
    request: ControlRequest,
    reply: bool,
) -> Result<Option<Value>, Response> {
    if ctx.monitor.worker(node).is_none() {
        return Err(error(StatusCode::NOT_FOUND, format!("Unknown worker '{node}'")));
    }
    let client = control_client(ctx)?;
    audit(ctx, actor, &request.method, &format!("{node} {}", Value::Object(request.arguments.clone()))).await;
    let request = request.to([node]);
    if reply {
        match client.call(request, ctx.cfg.inspect_timeout, Some(1)).await {
            Ok(r) => Ok(r.into_iter().next().map(|r| r.value)),
            Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        }
    } else {
        client
            .cast(&request, ctx.cfg.inspect_timeout)
            .await
            .map(|()| None)
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }
}

/// The worker's answer as Flower reports it: its `ok` text, or 403 with
/// its `error` text.
fn answer(v: Option<Value>, default: String) -> Response {
    match v {
        Some(v) if v.get("error").is_some() => {
            (StatusCode::FORBIDDEN, v.get("error").and_then(Value::as_str).unwrap_or_default().to_string())
                .into_response()
        }
        Some(v) => message(v.get("ok").and_then(Value::as_str).map_or(default, str::to_owned)),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the worker did not answer"),
    }
}

pub(crate) async fn worker_action(
    ctx: &Ctx,
    actor: &Actor,
    node: &str,
    action: &str,
    p: &HashMap<String, String>,
) -> Response {
    let n = p.get("n").and_then(|n| n.parse::<u64>().ok()).unwrap_or(1);
    match action {
        "shutdown" => match control(ctx, actor, node, ControlRequest::new("shutdown"), false).await {
            Ok(_) => message("Shutting down!"),
            Err(r) => r,
        },
        "pool_restart" => {
            match control(ctx, actor, node, ControlRequest::new("pool_restart").arg("reload", false), true).await {
                Ok(v) => answer(v, format!("Restarting '{node}' worker's pool")),
                Err(r) => r,
            }
        }
        "pool_grow" | "pool_shrink" => {
            match control(ctx, actor, node, ControlRequest::new(action).arg("n", n), true).await {
                Ok(v) => {
                    let verb = if action == "pool_grow" { "Growing" } else { "Shrinking" };
                    answer(
                        v.map(|v| if v.get("error").is_some() { v } else { json!({}) }),
                        format!("{verb} '{node}' worker's pool by {n}"),
                    )
                }
                Err(r) => r,
            }
        }
        "autoscale" => {
            let (Some(min), Some(max)) =
                (p.get("min").and_then(|v| v.parse::<u64>().ok()), p.get("max").and_then(|v| v.parse::<u64>().ok()))
            else {
                return error(StatusCode::BAD_REQUEST, "min and max are required");
            };
            let req = ControlRequest::new("autoscale").arg("max", max).arg("min", min);
            match control(ctx, actor, node, req, true).await {
                Ok(v) => answer(
                    v.map(|v| if v.get("error").is_some() { v } else { json!({}) }),
                    format!("Autoscaling '{node}' worker (min={min}, max={max})"),
                ),
                Err(r) => r,
            }
        }
        "add_consumer" | "cancel_consumer" => {
            let Some(queue) = p.get("queue").filter(|q| !q.is_empty()) else {
                return error(StatusCode::BAD_REQUEST, "queue is required");
            };
            match control(ctx, actor, node, ControlRequest::new(action).arg("queue", queue.clone()), true).await {
                Ok(v) => answer(v, format!("{action} {queue}")),
                Err(r) => r,
            }
        }
        "rate_limit" | "time_limit" => {
            let Some(task) = p.get("task").filter(|t| !t.is_empty()) else {
                return error(StatusCode::BAD_REQUEST, "task is required");
            };
            let mut q = p.clone();
            q.insert("workername".into(), node.to_string());
            task_limit(ctx, actor, task, &q, action == "rate_limit").await
        }
        _ => error(StatusCode::NOT_FOUND, "unknown action"),
    }
}

macro_rules! worker_route {
    ($fn_name:ident, $action:literal) => {
        async fn $fn_name(
            State(ctx): State<Ctx>,
            Extension(actor): Extension<Actor>,
            Path(node): Path<String>,
            RawQuery(q): RawQuery,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            worker_action(&ctx, &actor, &node, $action, &params(q.as_deref(), &headers, &body)).await
        }
    };
}

worker_route!(shutdown, "shutdown");
worker_route!(pool_restart, "pool_restart");
worker_route!(pool_grow, "pool_grow");
worker_route!(pool_shrink, "pool_shrink");
worker_route!(autoscale, "autoscale");
worker_route!(add_consumer, "add_consumer");
worker_route!(cancel_consumer, "cancel_consumer");

/// Flower's default `max_tasks`.
const FLOWER_MAX_TASKS: u64 = 100_000;

fn parse_time(s: &str) -> Option<f64> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").ok().map(|t| t.and_utc().timestamp() as f64)
}

fn none_if_all(v: Option<&String>) -> Option<String> {
    v.filter(|s| !s.is_empty() && s.as_str() != "All").cloned()
}

async fn tasks(State(ctx): State<Ctx>, RawQuery(q): RawQuery) -> Response {
    let p = params(q.as_deref(), &HeaderMap::new(), b"");
    let mut query = TaskQuery {
        state: none_if_all(p.get("state")),
        name: none_if_all(p.get("taskname")),
        worker: none_if_all(p.get("workername")),
        search: p.get("search").filter(|s| !s.is_empty()).cloned(),
        sort_by: p.get("sort_by").filter(|s| !s.is_empty()).cloned(),
        offset: p.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0),
        // Flower answers from at most `max_tasks` (100,000) tasks in memory:
        // without a limit, the newest 100,000.
        limit: p.get("limit").and_then(|l| l.parse().ok()).unwrap_or(FLOWER_MAX_TASKS),
        ..TaskQuery::default()
    };
    for (key, slot) in [("received_start", &mut query.received_start), ("received_end", &mut query.received_end)] {
        if let Some(v) = p.get(key).filter(|v| !v.is_empty()) {
            match parse_time(v) {
                Some(t) => *slot = Some(t),
                None => return error(StatusCode::BAD_REQUEST, format!("{key}: expected %Y-%m-%d %H:%M")),
            }
        }
    }
    match ctx.monitor.store().tasks(&query).await {
        Ok(rows) => {
            let map: Map<String, Value> = rows.into_iter().map(|(_, t)| (t.uuid.clone(), t.to_json())).collect();
            Json(Value::Object(map)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn task_types(State(ctx): State<Ctx>) -> Response {
    match ctx.monitor.store().task_types().await {
        Ok(t) => Json(json!({ "task-types": t })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The queues the workers consume (from `inspect active_queues`), else
/// the default queue.
pub(crate) fn known_queues(ctx: &Ctx) -> Vec<String> {
    let mut names: Vec<String> = ctx
        .monitor
        .workers()
        .iter()
        .filter_map(|w| w.inspect.get("active_queues").and_then(Value::as_array).cloned())
        .flatten()
        .filter_map(|q| q.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    if let Some(app) = &ctx.app {
        names.push(app.config().task_default_queue.clone());
    }
    names.sort();
    names.dedup();
    names
}

pub(crate) async fn queue_lengths(ctx: &Ctx) -> Result<Vec<(String, u64)>, Response> {
    let app = app(ctx)?;
    let mut out = Vec::new();
    for q in known_queues(ctx) {
        match app.broker().queue_len(&q).await {
            Ok(n) => out.push((q, n)),
            Err(e) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        }
    }
    Ok(out)
}

async fn queues_length(State(ctx): State<Ctx>) -> Response {
    match queue_lengths(&ctx).await {
        Ok(qs) => {
            let list: Vec<Value> = qs.into_iter().map(|(name, n)| json!({ "name": name, "messages": n })).collect();
            Json(json!({ "active_queues": list })).into_response()
        }
        Err(r) => r,
    }
}

async fn task_info(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    match ctx.monitor.store().task(&id).await {
        Ok(Some(t)) => Json(t.to_json()).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("Unknown task '{id}'")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn task_result(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    let app = match app(&ctx) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if app.backend().is_none() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "No result backend configured");
    }
    match app.result::<Value>(id.clone()).meta().await {
        Ok(meta) => {
            let mut m = Map::new();
            m.insert("task-id".into(), Value::String(id));
            m.insert("state".into(), Value::String(meta.status.as_str().to_string()));
            if meta.status.as_str() == "SUCCESS" || meta.status.as_str() == "FAILURE" {
                m.insert("result".into(), meta.result.clone());
            }
            if meta.status.as_str() == "FAILURE" {
                m.insert("traceback".into(), meta.traceback.clone().map_or(Value::Null, Value::String));
            }
            Json(Value::Object(m)).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn send_task(
    State(ctx): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let app = match app(&ctx) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let opts: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice(&body) {
            Ok(Value::Object(m)) => m,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the body is a JSON object: {\"args\": [...], \"kwargs\": {...}}",
                )
            }
        }
    };
    let args = match opts.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return error(StatusCode::BAD_REQUEST, "args must be a list"),
    };
    let kwargs = match opts.get("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return error(StatusCode::BAD_REQUEST, "kwargs must be an object"),
    };
    let mut send = SendOptions::new();
    if let Some(c) = opts.get("countdown").and_then(Value::as_f64).filter(|c| c.is_finite() && *c >= 0.0) {
        send = send.countdown(Duration::from_secs_f64(c));
    }
    if let Some(e) = opts.get("expires").and_then(Value::as_f64).filter(|c| c.is_finite() && *c >= 0.0) {
        send = send.expires_in(Duration::from_secs_f64(e));
    }
    if let Some(eta) = opts.get("eta").and_then(Value::as_str) {
        match NaiveDateTime::parse_from_str(eta, "%Y-%m-%d %H:%M:%S%.f") {
            Ok(t) => send = send.eta(t.and_utc()),
            Err(_) => return error(StatusCode::BAD_REQUEST, "eta: expected %Y-%m-%d %H:%M:%S.%f"),
        }
    }
    if let Some(q) = opts.get("queue").and_then(Value::as_str) {
        send = send.queue(q);
    }
    if let Some(p) = opts.get("priority").and_then(Value::as_u64) {
        send = send.priority(p.min(255) as u8);
    }
    match app.send_task(&name, args, kwargs, send).await {
        Ok(res) => {
            audit(&ctx, &actor, "send-task", &format!("{name} as {}", res.id())).await;
            let mut m = Map::new();
            m.insert("task-id".into(), Value::String(res.id().to_string()));
            if app.backend().is_some() {
                m.insert("state".into(), Value::String("PENDING".into()));
            }
            Json(Value::Object(m)).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Revoke (and maybe terminate with `signal`) a task; what the page's
/// button and the API do.
pub(crate) async fn do_revoke(
    ctx: &Ctx,
    actor: &Actor,
    id: &str,
    terminate: bool,
    signal: &str,
) -> Result<(), Response> {
    let app = app(ctx)?;
    let what = if terminate { format!("{id} (terminate, {signal})") } else { id.to_string() };
    audit(ctx, actor, "revoke", &what).await;
    let result = if signal.eq_ignore_ascii_case("SIGTERM") || !terminate {
        app.revoke(id, terminate).await
    } else {
        let req = ControlRequest::new("revoke").arg("task_id", id).arg("terminate", terminate).arg("signal", signal);
        Client::new(app.broker().clone()).cast(&req, Duration::from_secs(60)).await
    };
    result.map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

async fn revoke(
    State(ctx): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(q.as_deref(), &headers, &body);
    let signal = p.get("signal").cloned().unwrap_or_else(|| "SIGTERM".into());
    match do_revoke(&ctx, &actor, &id, truthy(p.get("terminate")), &signal).await {
        Ok(()) => message(format!("Revoked '{id}'")),
        Err(r) => r,
    }
}

async fn task_limit(ctx: &Ctx, actor: &Actor, name: &str, p: &HashMap<String, String>, rate: bool) -> Response {
    let Some(node) = p.get("workername").filter(|w| !w.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "workername is required");
    };
    let req = if rate {
        let Some(limit) = p.get("ratelimit") else {
            return error(StatusCode::BAD_REQUEST, "ratelimit is required");
        };
        ControlRequest::new("rate_limit").arg("task_name", name).arg("rate_limit", limit.clone())
    } else {
        let num = |k: &str| p.get(k).and_then(|v| v.parse::<f64>().ok()).map_or(Value::Null, Value::from);
        ControlRequest::new("time_limit").arg("task_name", name).arg("hard", num("hard")).arg("soft", num("soft"))
    };
    match control(ctx, actor, node, req, true).await {
        Ok(Some(v)) if v.get("error").is_some() => {
            (StatusCode::FORBIDDEN, v.get("error").and_then(Value::as_str).unwrap_or_default().to_string())
                .into_response()
        }
        Ok(Some(_)) => message(if rate { "new rate limit set successfully" } else { "time limits set successfully" }),
        Ok(None) => error(StatusCode::SERVICE_UNAVAILABLE, "the worker did not answer"),
        Err(r) => r,
    }
}

async fn timeout(
    State(ctx): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    task_limit(&ctx, &actor, &name, &params(q.as_deref(), &headers, &body), false).await
}

async fn rate_limit(
    State(ctx): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    task_limit(&ctx, &actor, &name, &params(q.as_deref(), &headers, &body), true).await
}

/// The filters of qtask's own lists (`state`, `name`, `worker`, `q`,
/// `before`, `limit`), as both the JSON and the pages take them.
pub(crate) fn v1_query(p: &HashMap<String, String>) -> TaskQuery {
    TaskQuery {
        state: none_if_all(p.get("state")),
        name: none_if_all(p.get("name")),
        worker: none_if_all(p.get("worker")),
        search: p.get("q").filter(|s| !s.trim().is_empty()).map(|s| s.trim().to_string()),
        before: p.get("before").and_then(|a| a.parse().ok()),
        limit: p.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50).clamp(1, 1000),
        ..TaskQuery::default()
    }
}

async fn v1_tasks(State(ctx): State<Ctx>, RawQuery(q): RawQuery) -> Response {
    let p = params(q.as_deref(), &HeaderMap::new(), b"");
    let query = v1_query(&p);
    match ctx.monitor.store().tasks(&query).await {
        Ok(rows) => {
            let next = if rows.len() as u64 == query.limit { rows.last().map(|(s, _)| *s) } else { None };
            let tasks: Vec<Value> = rows.into_iter().map(|(_, t)| t.to_json()).collect();
            Json(json!({ "tasks": tasks, "next": next })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn v1_task(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    let store = ctx.monitor.store();
    match (store.task(&id).await, store.timeline(&id).await) {
        (Ok(Some(t)), Ok(events)) => {
            let events: Vec<Value> = events.into_iter().map(|(_, _, _, v)| v).collect();
            Json(json!({ "task": t.to_json(), "events": events })).into_response()
        }
        (Ok(None), _) => error(StatusCode::NOT_FOUND, format!("Unknown task '{id}'")),
        (Err(e), _) | (_, Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn v1_workers(State(ctx): State<Ctx>) -> Response {
    let now = qcore::time::now_epoch();
    let list: Vec<Value> = ctx
        .monitor
        .workers()
        .into_iter()
        .map(|w| {
            json!({
                "hostname": w.hostname, "online": w.alive(now), "active": w.active, "processed": w.processed,
                "received": w.count("RECEIVED"), "succeeded": w.count("SUCCESS"), "failed": w.count("FAILURE"),
                "retried": w.count("RETRY"), "loadavg": w.loadavg, "last_heartbeat": w.last_heartbeat,
                "freq": w.freq, "sw_ident": w.sw_ident, "sw_ver": w.sw_ver,
            })
        })
        .collect();
    Json(json!({ "workers": list })).into_response()
}

/// Re-send a task with its original arguments, read from the result
/// backend (`result_extended` stores them). Event `args` are `repr()`
/// strings, possibly cut, so they are never used: without stored
/// arguments the retry is refused (409). Returns the new task id.
pub(crate) async fn do_retry(ctx: &Ctx, actor: &Actor, id: &str) -> Result<String, Response> {
    let app = app(ctx)?;
    if app.backend().is_none() {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "no result backend to read the arguments from"));
    }
    let meta = app
        .result::<Value>(id.to_string())
        .meta()
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let known = ctx.monitor.store().task(id).await.ok().flatten();
    let name = meta.name.clone().or_else(|| known.as_ref().and_then(|t| t.name.clone()));
    let (Some(name), Some(Value::Array(args))) = (name, meta.args.clone()) else {
        return Err(error(
            StatusCode::CONFLICT,
            "the result backend holds no arguments for this task (result_extended off, or expired): it cannot be re-sent faithfully",
        ));
    };
    let kwargs = match meta.kwargs.clone() {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut opts = SendOptions::new();
    if let Some(q) = meta.queue.clone().filter(|q| !q.is_empty()) {
        opts = opts.queue(q);
    }
    let sent = app
        .send_task(&name, args, kwargs, opts)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    audit(ctx, actor, "retry", &format!("{id} as {}", sent.id())).await;
    Ok(sent.id().to_string())
}

async fn v1_retry(State(ctx): State<Ctx>, Extension(actor): Extension<Actor>, Path(id): Path<String>) -> Response {
    match do_retry(&ctx, &actor, &id).await {
        Ok(new) => Json(json!({ "task-id": new, "retry-of": id })).into_response(),
        Err(r) => r,
    }
}

/// Purge a queue, or redrive / purge its dead letters.
pub(crate) async fn do_queue_action(ctx: &Ctx, actor: &Actor, queue: &str, action: &str) -> Result<String, Response> {
    let app = app(ctx)?;
    let broker = app.broker();
    let failed = |e: qcore::BrokerError| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let dead =
        || broker.dead_letters().ok_or_else(|| error(StatusCode::NOT_FOUND, "this broker keeps no dead letters"));
    let text = match action {
        "purge" => format!("{} messages purged", broker.purge(queue).await.map_err(failed)?),
        "redrive" => {
            format!("{} dead letters moved back to {queue}", dead()?.redrive(queue, usize::MAX).await.map_err(failed)?)
        }
        "purge_dead" => format!("{} dead letters deleted", dead()?.purge(queue).await.map_err(failed)?),
        _ => return Err(error(StatusCode::NOT_FOUND, "unknown action")),
    };
    audit(ctx, actor, action, &format!("{queue}: {text}")).await;
    Ok(text)
}

async fn v1_queue_action(
    State(ctx): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path((queue, action)): Path<(String, String)>,
) -> Response {
    match do_queue_action(&ctx, &actor, &queue, &action).await {
        Ok(text) => message(text),
        Err(r) => r,
    }
}

/// Each known queue: waiting messages and dead letters (`None`: the broker
/// keeps none).
pub(crate) async fn queue_table(ctx: &Ctx) -> Result<Vec<(String, u64, Option<u64>)>, Response> {
    let app = app(ctx)?;
    let mut out = Vec::new();
    for (q, n) in queue_lengths(ctx).await? {
        let dead = match app.broker().dead_letters() {
            Some(d) => Some(d.count(&q).await.map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?),
            None => None,
        };
        out.push((q, n, dead));
    }
    Ok(out)
}

async fn v1_queues(State(ctx): State<Ctx>) -> Response {
    match queue_table(&ctx).await {
        Ok(rows) => {
            let list: Vec<Value> =
                rows.into_iter().map(|(q, n, d)| json!({ "name": q, "messages": n, "dead_letters": d })).collect();
            Json(json!({ "queues": list })).into_response()
        }
        Err(r) => r,
    }
}

/// The task event types the rates count.
pub(crate) const RATE_TYPES: [&str; 3] = ["task-succeeded", "task-failed", "task-retried"];

/// Finished tasks per minute over the last `minutes` (oldest first, every
/// minute present): `(minute start, [succeeded, failed, retried])`.
pub(crate) async fn rates(ctx: &Ctx, minutes: u32) -> Result<Vec<(i64, [i64; 3])>, Response> {
    let now = qcore::time::now_epoch();
    let first = ((now / 60.0).floor() as i64 - i64::from(minutes) + 1) * 60;
    let rows = ctx
        .monitor
        .store()
        .rates(first as f64, &RATE_TYPES)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut out: Vec<(i64, [i64; 3])> = (0..i64::from(minutes)).map(|i| (first + i * 60, [0; 3])).collect();
    for (m, ty, n) in rows {
        let (Some(slot), Some(k)) = (out.iter_mut().find(|(t, _)| *t == m), RATE_TYPES.iter().position(|t| *t == ty))
        else {
            continue;
        };
        slot.1[k] += n;
    }
    Ok(out)
}

async fn v1_rates(State(ctx): State<Ctx>, RawQuery(q): RawQuery) -> Response {
    let p = params(q.as_deref(), &HeaderMap::new(), b"");
    let minutes = p.get("minutes").and_then(|m| m.parse().ok()).unwrap_or(60u32).clamp(1, 24 * 60);
    match rates(&ctx, minutes).await {
        Ok(rows) => {
            let list: Vec<Value> = rows
                .into_iter()
                .map(|(t, [s, f, r])| json!({ "minute": t, "succeeded": s, "failed": f, "retried": r }))
                .collect();
            Json(json!({ "per_minute": list })).into_response()
        }
        Err(r) => r,
    }
}
