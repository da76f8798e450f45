//! The pages: server-rendered (maud: HTML checked at compile time), readable
//! with JavaScript off; `app.js` swaps in fresh content when the event
//! stream (`/events/stream`) says something changed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures_util::stream::Stream;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::api::{do_queue_action, do_retry, do_revoke, form_urlencoded, queue_table, rates, v1_query, worker_action};
use super::{forbidden, form_csrf_ok, Actor, Csrf, Ctx};
use crate::state::{Task, Worker};

const STYLE: &str = include_str!("../../assets/style.css");
const SCRIPT: &str = include_str!("../../assets/app.js");

const STATES: &[&str] = &["PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED"];

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/", get(dashboard))
        .route("/tasks", get(tasks))
        .route("/task/{id}", get(task))
        .route("/task/{id}/revoke", post(revoke))
        .route("/task/{id}/retry", post(retry))
        .route("/queue/{queue}/action", post(queue_post))
        .route("/workers", get(workers))
        .route("/worker/{node}", get(worker))
        .route("/worker/{node}/action", post(worker_post))
        .route("/queues", get(queues))
        .route("/events/stream", get(stream))
        .route("/static/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }))
        .route("/static/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], SCRIPT) }))
}

fn layout(ctx: &Ctx, title: &str, body: Markup) -> Response {
    let p = &ctx.prefix;
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · qmonitor" }
                link rel="stylesheet" href={ (p) "/static/style.css" };
                script src={ (p) "/static/app.js" } defer {}
            }
            body data-stream={ (p) "/events/stream" } {
                header {
                    nav {
                        a.brand href={ (p) "/" } { "qmonitor" }
                        a href={ (p) "/" } { "Dashboard" }
                        a href={ (p) "/tasks" } { "Tasks" }
                        a href={ (p) "/workers" } { "Workers" }
                        a href={ (p) "/queues" } { "Queues" }
                        span.broker title="broker" { (ctx.cfg.broker) }
                        @if ctx.cfg.read_only { span.badge { "read-only" } }
                        span #live.live title="live updates" {}
                    }
                }
                main #main { (body) }
            }
        }
    };
    Html(page.into_string()).into_response()
}

fn fmt_time(t: Option<f64>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp_micros((t * 1e6) as i64))
        .map(|d| d.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

fn state_badge(state: &str) -> Markup {
    html! { span class={ "state state-" (state.to_lowercase()) } { (state) } }
}

fn workers_table(ctx: &Ctx, workers: &[Worker]) -> Markup {
    let now = qcore::time::now_epoch();
    let p = &ctx.prefix;
    html! {
        table.workers {
            thead { tr {
                th { "Worker" } th { "Status" } th.num { "Active" } th.num { "Processed" } th.num { "Succeeded" }
                th.num { "Failed" } th.num { "Retried" } th { "Load" } th { "Heartbeat" } th { "Software" }
            } }
            tbody {
                @for w in workers {
                    @let alive = w.alive(now);
                    tr data-worker=(w.hostname) {
                        td { a href={ (p) "/worker/" (w.hostname) } { (w.hostname) } }
                        td { @if alive { span.online { "online" } } @else { span.offline { "offline" } } }
                        td.num { (w.active) }
                        td.num { (w.count("RECEIVED")) }
                        td.num { (w.count("SUCCESS")) }
                        td.num { (w.count("FAILURE")) }
                        td.num { (w.count("RETRY")) }
                        td { (w.loadavg.iter().map(|l| format!("{l:.2}")).collect::<Vec<_>>().join(" / ")) }
                        td { @if w.last_heartbeat > 0.0 { (format!("{:.0} s ago", (now - w.last_heartbeat).max(0.0))) } @else { "never" } }
                        td { (w.sw_ident) " " (w.sw_ver) }
                    }
                }
            }
        }
    }
}

async fn dashboard(State(ctx): State<Ctx>) -> Response {
    let workers = ctx.monitor.workers();
    let counts = ctx.monitor.store().counts().await.unwrap_or_default();
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let queues = queue_table(&ctx).await.unwrap_or_default();
    let per_minute = rates(&ctx, 60).await.unwrap_or_default();
    let actions = ctx.monitor.store().actions(10).await.unwrap_or_default();
    let p = ctx.prefix.clone();
    let body = html! {
        h1 { "Dashboard" }
        section.cards {
            div.card { div.n { (workers.iter().filter(|w| w.alive(qcore::time::now_epoch())).count()) } div { "workers online" } }
            div.card { div.n { (total) } div { "tasks stored" } }
            @for (state, n) in &counts {
                a.card href={ (p) "/tasks?state=" (state) } { div.n { (n) } div { (state_badge(state)) } }
            }
        }
        h2 { "Workers" }
        (workers_table(&ctx, &workers))
        h2 { "Finished tasks per minute, last hour" }
        (rate_chart(&per_minute))
        @if !queues.is_empty() {
            h2 { "Queues" }
            section.cards {
                @for (q, n, dead) in &queues {
                    a.card href={ (p) "/queues" } {
                        div.n { (n) }
                        div { (q) @if let Some(d) = dead.filter(|d| *d > 0) { " · " (d) " dead" } }
                    }
                }
            }
        }
        @if !actions.is_empty() {
            h2 { "Recent actions" }
            table.actions {
                thead { tr { th { "When" } th { "Who" } th { "Action" } th { "On" } } }
                tbody { @for a in &actions { tr { td { (fmt_time(Some(a.ts))) } td { (a.actor) } td { (a.action) } td.mono { (a.target) } } } }
            }
        }
        p.muted { (ctx.monitor.events_seen()) " events since start" }
    };
    layout(&ctx, "Dashboard", body)
}

/// One bar of the chart: `x`, `y`, width, height (SVG numbers) and colour.
type Bar = (String, String, String, String, &'static str);

/// Stacked bars (succeeded, failed, retried) per minute, as inline SVG:
/// drawn on the server, so it shows without JavaScript.
fn rate_chart(rows: &[(i64, [i64; 3])]) -> Markup {
    const W: f64 = 900.0;
    const H: f64 = 110.0;
    const COLORS: [&str; 3] = ["#38a169", "#e53e3e", "#dd6b20"];
    let max = rows.iter().map(|(_, c)| c.iter().sum::<i64>()).max().unwrap_or(0).max(1) as f64;
    let bar = W / rows.len().max(1) as f64;
    let total: [i64; 3] = rows.iter().fold([0; 3], |mut acc, (_, c)| {
        for (a, n) in acc.iter_mut().zip(c) {
            *a += n;
        }
        acc
    });
    // Per minute: its tooltip and its bars `(x, y, width, height, colour)`.
    let bars: Vec<(String, Vec<Bar>)> = rows
        .iter()
        .enumerate()
        .map(|(i, (t, counts))| {
            let when =
                chrono::DateTime::from_timestamp(*t, 0).map(|d| d.format("%H:%M").to_string()).unwrap_or_default();
            let tip = format!("{when}: {} succeeded, {} failed, {} retried", counts[0], counts[1], counts[2]);
            let mut y = H;
            let mut rects = Vec::new();
            for (k, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                let h = (*n as f64 / max) * (H - 4.0);
                y -= h;
                rects.push((
                    format!("{:.1}", i as f64 * bar + 1.0),
                    format!("{y:.1}"),
                    format!("{:.1}", (bar - 2.0).max(1.0)),
                    format!("{h:.1}"),
                    COLORS[k],
                ));
            }
            (tip, rects)
        })
        .collect();
    html! {
        svg.chart viewBox={ "0 0 " (W) " " (H + 2.0) } width="100%" height=(H + 2.0) role="img" aria-label="finished tasks per minute" {
            line x1="0" y1=(H) x2=(W) y2=(H) stroke="#cbd2dc" {}
            @for (tip, rects) in &bars {
                g {
                    title { (tip) }
                    @for (x, y, w, h, fill) in rects { rect x=(x) y=(y) width=(w) height=(h) fill=(fill) {} }
                }
            }
        }
        p.muted.legend {
            span style="color:#38a169" { "■" } " succeeded " (total[0]) " · "
            span style="color:#e53e3e" { "■" } " failed " (total[1]) " · "
            span style="color:#dd6b20" { "■" } " retried " (total[2]) " · peak " (max as i64) "/min"
        }
    }
}

fn task_row(ctx: &Ctx, t: &Task) -> Markup {
    let p = &ctx.prefix;
    html! {
        tr data-task=(t.uuid) {
            td { a href={ (p) "/task/" (t.uuid) } { (t.name.as_deref().unwrap_or("?")) } }
            td.mono { a href={ (p) "/task/" (t.uuid) } title=(t.uuid) { (t.uuid) } }
            td { (state_badge(&t.state)) }
            td.mono.clip { (t.args.as_deref().unwrap_or("")) }
            td.mono.clip { (t.kwargs.as_deref().unwrap_or("")) }
            td.mono.clip { (t.result.as_deref().or(t.exception.as_deref()).unwrap_or("")) }
            td { (fmt_time(t.received.or(t.sent))) }
            td.num { @if let Some(r) = t.runtime { (format!("{r:.3}")) } }
            td { @if let Some(w) = &t.worker { a href={ (p) "/worker/" (w) } title=(w) { (w) } } }
        }
    }
}

async fn tasks(State(ctx): State<Ctx>, RawQuery(q): RawQuery) -> Response {
    let params: HashMap<String, String> = form_urlencoded(q.as_deref().unwrap_or("").as_bytes()).into_iter().collect();
    let query = v1_query(&params);
    let rows = match ctx.monitor.store().tasks(&query).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let names = ctx.monitor.store().task_types().await.unwrap_or_default();
    let workers = ctx.monitor.workers();
    let next = if rows.len() as u64 == query.limit { rows.last().map(|(s, _)| *s) } else { None };
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let p = ctx.prefix.clone();
    let keep: String = ["state", "name", "worker", "q"]
        .iter()
        .filter_map(|k| params.get(*k).filter(|v| !v.is_empty()).map(|v| format!("&{k}={}", url_encode(v))))
        .collect();
    let body = html! {
        h1 { "Tasks" }
        form.filters method="get" action={ (p) "/tasks" } {
            label { "State " select name="state" {
                option value="" { "All" }
                @for s in STATES { option value=(s) selected[get("state") == *s] { (s) } }
            } }
            label { "Name " select name="name" {
                option value="" { "All" }
                @for n in &names { option value=(n) selected[get("name") == *n] { (n) } }
            } }
            label { "Worker " select name="worker" {
                option value="" { "All" }
                @for w in &workers { option value=(w.hostname) selected[get("worker") == w.hostname] { (w.hostname) } }
            } }
            label { "Search " input type="search" name="q" value=(get("q")) placeholder="id, args, kwargs, result, exception"; }
            button type="submit" { "Filter" }
        }
        table.tasks #tasks {
            thead { tr {
                th { "Name" } th { "UUID" } th { "State" } th { "Args" } th { "Kwargs" } th { "Result" }
                th { "Received" } th.num { "Runtime" } th { "Worker" }
            } }
            tbody { @for (_, t) in &rows { (task_row(&ctx, t)) } }
        }
        @if rows.is_empty() { p.muted { "No tasks." } }
        nav.pager {
            @if params.contains_key("before") { a href={ (p) "/tasks?" (keep.trim_start_matches('&')) } { "« Newest" } }
            @if let Some(n) = next { a href={ (p) "/tasks?before=" (n) (keep) } { "Older »" } }
        }
    };
    layout(&ctx, "Tasks", body)
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn field(label: &str, v: Option<&str>) -> Markup {
    html! { @if let Some(v) = v { tr { th { (label) } td.mono { (v) } } } }
}

async fn task(
    State(ctx): State<Ctx>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let store = ctx.monitor.store();
    let t = match store.task(&id).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return (StatusCode::NOT_FOUND, layout(&ctx, "Unknown task", html! { h1 { "Unknown task " (id) } }))
                .into_response()
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let timeline = store.timeline(&id).await.unwrap_or_default();
    let msg: Option<String> =
        form_urlencoded(q.as_deref().unwrap_or("").as_bytes()).into_iter().find(|(k, _)| k == "msg").map(|(_, v)| v);
    let p = ctx.prefix.clone();
    let body = html! {
        @if let Some(m) = &msg { p.flash { (m) } }
        h1 { (t.name.as_deref().unwrap_or("?")) " " (state_badge(&t.state)) }
        p.mono { (t.uuid) }
        @if !ctx.cfg.read_only && !t.is_ready() {
            form.actions method="post" action={ (p) "/task/" (t.uuid) "/revoke" } {
                input type="hidden" name="csrf" value=(csrf.0);
                label { input type="checkbox" name="terminate" value="true"; " terminate if running" }
                button #revoke type="submit" { "Revoke" }
            }
        }
        @if !ctx.cfg.read_only && matches!(t.state.as_str(), "FAILURE" | "REVOKED" | "REJECTED") {
            form.actions method="post" action={ (p) "/task/" (t.uuid) "/retry" } {
                input type="hidden" name="csrf" value=(csrf.0);
                button #retry type="submit" { "Retry (same arguments)" }
            }
        }
        table.fields {
            (field("Args", t.args.as_deref()))
            (field("Kwargs", t.kwargs.as_deref()))
            (field("Result", t.result.as_deref()))
            (field("Exception", t.exception.as_deref()))
            (field("Worker", t.worker.as_deref()))
            (field("Client", t.client.as_deref()))
            (field("Sent", Some(fmt_time(t.sent)).filter(|s| !s.is_empty()).as_deref()))
            (field("Received", Some(fmt_time(t.received)).filter(|s| !s.is_empty()).as_deref()))
            (field("Started", Some(fmt_time(t.started)).filter(|s| !s.is_empty()).as_deref()))
            (field("Runtime", t.runtime.map(|r| format!("{r:.6} s")).as_deref()))
            (field("Retries", t.retries.map(|r| r.to_string()).as_deref()))
            (field("ETA", t.eta.as_deref()))
            (field("Expires", t.expires.as_deref()))
            (field("Routing key", t.routing_key.as_deref()))
            @if let Some(parent) = &t.parent_id { tr { th { "Parent" } td.mono { a href={ (p) "/task/" (parent) } { (parent) } } } }
            @if let Some(root) = t.root_id.as_ref().filter(|r| **r != t.uuid) { tr { th { "Root" } td.mono { a href={ (p) "/task/" (root) } { (root) } } } }
            @if !t.children.is_empty() {
                tr { th { "Children" } td.mono { @for c in &t.children { a href={ (p) "/task/" (c) } { (c) } br; } } }
            }
        }
        @if let Some(tb) = &t.traceback { h2 { "Traceback" } pre.traceback { (tb) } }
        h2 { "Timeline" }
        table.timeline {
            thead { tr { th { "Time" } th { "Event" } th { "From" } } }
            tbody { @for (ty, host, ts, _) in &timeline { tr { td { (fmt_time(Some(*ts))) } td { (ty) } td { (host) } } } }
        }
    };
    layout(&ctx, "Task", body)
}

async fn revoke(
    State(ctx): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded(&body).into_iter().collect();
    if !form_csrf_ok(&headers, form.get("csrf").map_or("", String::as_str)) {
        return forbidden("missing or wrong CSRF token");
    }
    let terminate = form.get("terminate").is_some_and(|v| v == "true");
    match do_revoke(&ctx, &actor, &id, terminate, "SIGTERM").await {
        Ok(()) => Redirect::to(&format!("{}/task/{id}?msg=Revoked", ctx.prefix)).into_response(),
        Err(r) => r,
    }
}

async fn retry(
    State(ctx): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded(&body).into_iter().collect();
    if !form_csrf_ok(&headers, form.get("csrf").map_or("", String::as_str)) {
        return forbidden("missing or wrong CSRF token");
    }
    match do_retry(&ctx, &actor, &id).await {
        Ok(new) => Redirect::to(&format!("{}/task/{id}?msg={}", ctx.prefix, url_encode(&format!("Re-sent as {new}"))))
            .into_response(),
        Err(r) => r,
    }
}

async fn queue_post(
    State(ctx): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded(&body).into_iter().collect();
    if !form_csrf_ok(&headers, form.get("csrf").map_or("", String::as_str)) {
        return forbidden("missing or wrong CSRF token");
    }
    let action = form.get("action").map_or("", String::as_str);
    match do_queue_action(&ctx, &actor, &queue, action).await {
        Ok(text) => Redirect::to(&format!("{}/queues?msg={}", ctx.prefix, url_encode(&text))).into_response(),
        Err(r) => r,
    }
}

async fn workers(State(ctx): State<Ctx>) -> Response {
    let workers = ctx.monitor.workers();
    layout(&ctx, "Workers", html! { h1 { "Workers" } (workers_table(&ctx, &workers)) })
}

fn json_block(v: Option<&Value>) -> Markup {
    html! { pre.json { (v.map(|v| serde_json::to_string_pretty(v).unwrap_or_default()).unwrap_or_else(|| "(no answer)".into())) } }
}

async fn worker(
    State(ctx): State<Ctx>,
    Extension(csrf): Extension<Csrf>,
    Path(node): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let Some(w) = ctx.monitor.worker(&node) else {
        return (StatusCode::NOT_FOUND, layout(&ctx, "Unknown worker", html! { h1 { "Unknown worker " (node) } }))
            .into_response();
    };
    // The live lists, asked now (a worker that does not answer in time
    // shows "(no answer)", never blocks the page longer than the timeout).
    let mut live = HashMap::new();
    if let Some(app) = &ctx.app {
        let client = qcore::control::Client::new(app.broker().clone());
        let methods = ["active", "reserved", "scheduled", "registered", "stats", "active_queues"];
        let asks = methods.map(|m| ctx.monitor.inspect_one(&client, &node, m, ctx.cfg.inspect_timeout));
        for (m, answer) in methods.into_iter().zip(futures_util::future::join_all(asks).await) {
            if let Ok(Some(v)) = answer {
                live.insert(m, v);
            }
        }
    }
    let get = |m: &str| live.get(m).or_else(|| w.inspect.get(m));
    let msg: Option<String> =
        form_urlencoded(q.as_deref().unwrap_or("").as_bytes()).into_iter().find(|(k, _)| k == "msg").map(|(_, v)| v);
    let p = ctx.prefix.clone();
    let action_url = format!("{p}/worker/{}/action", url_encode(&node));
    let form = |action: &str, label: &str, extra: Markup| {
        html! {
            form.actions method="post" action=(action_url) {
                input type="hidden" name="csrf" value=(csrf.0);
                input type="hidden" name="action" value=(action);
                (extra)
                button type="submit" { (label) }
            }
        }
    };
    let body = html! {
    @if let Some(m) = &msg { p.flash { (m) } }
    h1 { (w.hostname) }
    (workers_table(&ctx, std::slice::from_ref(&w)))
    @if !ctx.cfg.read_only {
        h2 { "Control" }
        div.controls {
            (form("pool_grow", "Grow pool", html! { input type="number" name="n" value="1" min="1"; }))
            (form("pool_shrink", "Shrink pool", html! { input type="number" name="n" value="1" min="1"; }))
            (form("add_consumer", "Add consumer", html! { input type="text" name="queue" placeholder="queue"; }))
            (form("cancel_consumer", "Cancel consumer", html! { input type="text" name="queue" placeholder="queue"; }))
            (form("rate_limit", "Set rate limit", html! {
                input type="text" name="task" placeholder="task name";
                input type="text" name="ratelimit" placeholder="10/m";
            }))
            (form("time_limit", "Set time limits", html! {
                input type="text" name="task" placeholder="task name";
                input type="number" name="soft" placeholder="soft s" min="0";
                input type="number" name="hard" placeholder="hard s" min="0";
            }))
            (form("shutdown", "Shut down", html! {}))
        }
    }
    h2 { "Active" } (json_block(get("active")))
    h2 { "Reserved" } (json_block(get("reserved")))
    h2 { "Scheduled" } (json_block(get("scheduled")))
    h2 { "Registered" } (json_block(get("registered")))
    h2 { "Queues" } (json_block(get("active_queues")))
    h2 { "Stats" } (json_block(get("stats")))
    h2 { "Configuration" } (json_block(w.inspect.get("conf")))
        };
    layout(&ctx, "Worker", body)
}

async fn worker_post(
    State(ctx): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(node): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded(&body).into_iter().collect();
    if !form_csrf_ok(&headers, form.get("csrf").map_or("", String::as_str)) {
        return forbidden("missing or wrong CSRF token");
    }
    let action = form.get("action").cloned().unwrap_or_default();
    let resp = worker_action(&ctx, &actor, &node, &action, &form).await;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message").or_else(|| v.get("error")).and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let text = if status.is_success() { text } else { format!("{status}: {text}") };
    Redirect::to(&format!("{}/worker/{}?msg={}", ctx.prefix, url_encode(&node), url_encode(&text))).into_response()
}

async fn queues(State(ctx): State<Ctx>, Extension(csrf): Extension<Csrf>, RawQuery(q): RawQuery) -> Response {
    let msg: Option<String> =
        form_urlencoded(q.as_deref().unwrap_or("").as_bytes()).into_iter().find(|(k, _)| k == "msg").map(|(_, v)| v);
    let p = ctx.prefix.clone();
    let button = |queue: &str, action: &str, label: &str| {
        html! {
            form.actions method="post" action={ (p) "/queue/" (url_encode(queue)) "/action" } {
                input type="hidden" name="csrf" value=(csrf.0);
                input type="hidden" name="action" value=(action);
                button type="submit" { (label) }
            }
        }
    };
    let body = match queue_table(&ctx).await {
        Ok(qs) => html! {
            @if let Some(m) = &msg { p.flash { (m) } }
            h1 { "Queues" }
            table.queues {
                thead { tr { th { "Queue" } th.num { "Messages" } th.num { "Dead letters" } @if !ctx.cfg.read_only { th { "Actions" } } } }
                tbody { @for (q, n, dead) in &qs { tr {
                    td { (q) }
                    td.num { (n) }
                    td.num { @if let Some(d) = dead { (d) } @else { "–" } }
                    @if !ctx.cfg.read_only { td {
                        (button(q, "purge", "Purge"))
                        @if dead.is_some_and(|d| d > 0) {
                            (button(q, "redrive", "Redrive dead letters"))
                            (button(q, "purge_dead", "Delete dead letters"))
                        }
                    } }
                } } }
            }
        },
        Err(_) => html! { h1 { "Queues" } p.muted { "The broker did not answer." } },
    };
    layout(&ctx, "Queues", body)
}

async fn stream(State(ctx): State<Ctx>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = ctx.monitor.subscribe();
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = match rx.recv().await {
            Ok(u) => serde_json::to_string(&u).unwrap_or_default(),
            // Too far behind: "something changed" is all that matters.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => "{}".to_string(),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(SseEvent::default().event("update").data(data)), rx))
    });
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
