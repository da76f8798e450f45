//! The HTTP side: auth, CSRF, read-only, the routes.
//!
//! - **Auth.** With users (`--basic-auth`) or tokens configured, every route
//!   but `/healthcheck` wants `Authorization: Basic` of a user or `Bearer`
//!   of a token (compared in constant time); else 401. Without any, the
//!   monitor is open, which the command line allows on a loopback address
//!   only ([`WebConfig::check_listen`]).
//! - **CSRF.** A double-submit cookie (`qm_csrf`, `SameSite=Strict`): every
//!   page form carries the token, and a form POST without the cookie's
//!   token is 403. A POST to `/api/...` passes with the token in
//!   `X-CSRF-Token`, with a bearer token, or when it does not come from a
//!   browser page of another origin (no `Origin`/`Sec-Fetch-Site`, or an
//!   `Origin` naming this host): scripts written for Flower keep working.
//! - **Read-only.** Every POST is 403.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use qcore::App;

use crate::monitor::Monitor;

mod api;
mod pages;

/// A user of basic auth. Its password is never printed (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User").field("name", &self.name).field("password", &"***").finish()
    }
}

impl User {
    /// Users as Flower's `--basic_auth` takes them: `user:pass`, several
    /// separated by commas.
    pub fn parse_list(s: &str) -> Result<Vec<User>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|pair| match pair.trim().split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok(User { name: u.into(), password: p.into() }),
                _ => Err("a basic-auth user is `name:password` (the password not empty)".to_string()),
            })
            .collect()
    }
}

/// How the web side runs.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Basic-auth users (none: no basic auth).
    pub users: Vec<User>,
    /// Bearer tokens for the API (none: no token auth).
    pub tokens: Vec<String>,
    /// Refuse every action.
    pub read_only: bool,
    /// Path the monitor is served under (`/monitor`; empty: the root).
    pub url_prefix: String,
    /// How long to wait for workers' answers to `inspect`.
    pub inspect_timeout: Duration,
    /// The broker, as shown on the pages (redacted by the router).
    pub broker: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            users: Vec::new(),
            tokens: Vec::new(),
            read_only: false,
            url_prefix: String::new(),
            inspect_timeout: Duration::from_secs(1),
            broker: String::new(),
        }
    }
}

impl WebConfig {
    /// Whether requests must authenticate.
    pub fn auth_required(&self) -> bool {
        !self.users.is_empty() || !self.tokens.is_empty()
    }

    /// Refuse to serve without auth on an address other than loopback,
    /// unless `unsafe_no_auth`.
    pub fn check_listen(&self, addr: &SocketAddr, unsafe_no_auth: bool) -> Result<(), String> {
        if self.auth_required() || unsafe_no_auth || addr.ip().is_loopback() {
            Ok(())
        } else {
            Err(format!(
                "refusing to serve the monitor on {addr} without auth: give --basic-auth user:pass \
                 (or --unsafe-no-auth to allow anyone who can reach it)"
            ))
        }
    }

    /// The prefix, normalised: empty, or `/something` without a trailing `/`.
    fn prefix(&self) -> String {
        let p = self.url_prefix.trim_matches('/');
        if p.is_empty() {
            String::new()
        } else {
            format!("/{p}")
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) monitor: Arc<Monitor>,
    pub(crate) app: Option<App>,
    pub(crate) cfg: Arc<WebConfig>,
    /// The normalised URL prefix.
    pub(crate) prefix: String,
}

/// Who made a request (for the action log): a user name, `token`, or
/// `anonymous`.
#[derive(Clone, Debug)]
pub(crate) struct Actor(pub(crate) String);

/// The CSRF token of the request (from its cookie, or new).
#[derive(Clone, Debug)]
pub(crate) struct Csrf(pub(crate) String);

/// The monitor's routes, ready to serve or to nest in another axum app
/// (under `cfg.url_prefix` if set). `app` is what actions go through
/// (revoke, send a task, worker control) and what results are read from;
/// without it they answer 503.
pub fn router(monitor: Arc<Monitor>, app: Option<App>, mut cfg: WebConfig) -> Router {
    cfg.broker = qcore::url::redact(&cfg.broker);
    let prefix = cfg.prefix();
    let ctx = Ctx { monitor, app, cfg: Arc::new(cfg), prefix: prefix.clone() };
    let guarded = Router::new()
        .merge(pages::routes())
        .merge(api::routes())
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(ctx.clone(), guard));
    let all = Router::new().route("/healthcheck", get(|| async { "OK" })).merge(guarded).with_state(ctx);
    if prefix.is_empty() {
        all
    } else {
        Router::new().nest(&prefix, all)
    }
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        ctx.monitor.metrics().render(),
    )
        .into_response()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who the `Authorization` header names, if it is right: `(actor, by token)`.
fn authenticate(cfg: &WebConfig, headers: &HeaderMap) -> Option<(String, bool)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        let ok = cfg.tokens.iter().fold(false, |acc, t| acc | ct_eq(t.as_bytes(), token.trim().as_bytes()));
        return ok.then(|| ("token".to_string(), true));
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    let mut found = None;
    for u in &cfg.users {
        let ok = ct_eq(u.name.as_bytes(), name.as_bytes()) & ct_eq(u.password.as_bytes(), password.as_bytes());
        if ok {
            found = Some(u.name.clone());
        }
    }
    found.map(|n| (n, false))
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

pub(crate) fn forbidden(text: &str) -> Response {
    (StatusCode::FORBIDDEN, axum::Json(serde_json::json!({ "error": text }))).into_response()
}

/// Whether a POST to the API may come from a page of another site.
fn api_post_allowed(headers: &HeaderMap, csrf: Option<&str>, by_token: bool) -> bool {
    if by_token {
        return true;
    }
    if let (Some(sent), Some(cookie)) = (headers.get("x-csrf-token").and_then(|v| v.to_str().ok()), csrf) {
        if ct_eq(sent.as_bytes(), cookie.as_bytes()) {
            return true;
        }
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match (site, origin) {
        (None, None) => true,
        (Some("same-origin") | None, Some(o)) => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
            o.split_once("://").map(|(_, rest)| rest) == Some(host)
        }
        (Some(s), None) => s == "same-origin" || s == "none",
        _ => false,
    }
}

/// Auth, read-only, CSRF, and the CSRF cookie.
async fn guard(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let mut by_token = false;
    let actor = if ctx.cfg.auth_required() {
        match authenticate(&ctx.cfg, req.headers()) {
            Some((who, token)) => {
                by_token = token;
                who
            }
            None => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Basic realm=\"qmonitor\"")],
                    "authentication required",
                )
                    .into_response()
            }
        }
    } else {
        "anonymous".to_string()
    };
    let existing =
        cookie(req.headers(), "qm_csrf").filter(|c| c.len() == 32 && c.bytes().all(|b| b.is_ascii_hexdigit()));
    if req.method() == Method::POST {
        if ctx.cfg.read_only {
            return forbidden("the monitor is read-only");
        }
        // Page forms check their own token (it is in the body); the API
        // here.
        let path = req.uri().path();
        if path.contains("/api/") && !api_post_allowed(req.headers(), existing.as_deref(), by_token) {
            return forbidden("cross-site request refused (CSRF)");
        }
    }
    let fresh = existing.is_none();
    let token = existing.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(Actor(actor));
    req.extensions_mut().insert(Csrf(token.clone()));
    let mut resp = next.run(req).await;
    if fresh {
        let path = if ctx.prefix.is_empty() { "/".to_string() } else { ctx.prefix.clone() };
        let cookie = format!("qm_csrf={token}; Path={path}; SameSite=Strict; HttpOnly");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// Whether a page form's token is the cookie's.
pub(crate) fn form_csrf_ok(headers: &HeaderMap, sent: &str) -> bool {
    cookie(headers, "qm_csrf").is_some_and(|c| !c.is_empty() && ct_eq(c.as_bytes(), sent.as_bytes()))
}

#[cfg(test)]
mod tests;
