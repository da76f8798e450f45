//! # Calling an external API, with retries
//!
//! The Rust version of the tutorial's `call_external_api`: a task posts
//! JSON to an HTTP endpoint and retries network errors with exponential
//! backoff and jitter, up to `max_retries`, as Celery's
//! `autoretry_for=(RequestException,)`, `retry_backoff=True`,
//! `retry_jitter=True`, `max_retries=3`.
//!
//! What is retried and what is not (Celery retries whatever the task
//! raises as a `RequestException`; here the choice is explicit):
//! * a connection error, a time-out, a `5xx` or `429` answer: the error
//!   kind [`NETWORK_ERROR`], retried after `backoff × 2^retries` seconds at
//!   most (a random delay up to that, capped at 10 minutes); after
//!   `max_retries` the task fails with it;
//! * any other `4xx`: [`HTTP_ERROR`], not retried (the request is wrong;
//!   sending it again will not help);
//! * a `2xx` whose body is not JSON: `ValueError`, not retried.
//!
//! [`FlakyApi`] is a small local API that fails its first calls, for the
//! demo and the tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use qtask::{App, MaxRetries, Task, TaskContext, TaskError, TaskOptions, TaskResult};
use serde_json::{json, Map, Value};

/// The task's name.
pub const TASK_NAME: &str = "api.call_external_api";
/// Error kind of failures worth retrying (requests' `RequestException`).
pub const NETWORK_ERROR: &str = "RequestException";
/// Error kind of a `4xx` answer (requests' `HTTPError`), not retried.
pub const HTTP_ERROR: &str = "HTTPError";

/// `api.call_external_api(endpoint, data)`: POST `data` as JSON to
/// `endpoint`, return the JSON answer.
pub struct CallExternalApi {
    client: reqwest::Client,
    backoff: Duration,
}

impl CallExternalApi {
    /// Retries back off from `backoff` (Celery's `retry_backoff=True` is
    /// 1 s), doubling each time, with jitter.
    pub fn new(backoff: Duration) -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        CallExternalApi { client, backoff }
    }
}

#[async_trait]
impl Task for CallExternalApi {
    fn name(&self) -> &str {
        TASK_NAME
    }

    fn options(&self) -> TaskOptions {
        TaskOptions {
            max_retries: MaxRetries::Limit(3),
            autoretry_for: vec![NETWORK_ERROR.into()],
            retry_backoff: Some(self.backoff),
            retry_jitter: true,
            ..TaskOptions::default()
        }
    }

    async fn run(&self, _ctx: TaskContext, args: Vec<Value>, _kwargs: Map<String, Value>) -> TaskResult {
        let (endpoint, data) = match args.as_slice() {
            [Value::String(e), data] => (e, data),
            _ => return Err(TaskError::type_error("expected (endpoint, data)")),
        };
        let resp = self
            .client
            .post(endpoint)
            .json(data)
            .send()
            .await
            .map_err(|e| TaskError::fail(NETWORK_ERROR, format!("{endpoint}: {e}")))?;
        let status = resp.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(TaskError::fail(NETWORK_ERROR, format!("{status} from {endpoint}")));
        }
        if !status.is_success() {
            return Err(TaskError::fail(HTTP_ERROR, format!("{status} from {endpoint}")));
        }
        let body = resp.bytes().await.map_err(|e| TaskError::fail(NETWORK_ERROR, format!("{endpoint}: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| TaskError::value_error(format!("{endpoint} did not answer JSON: {e}")))
    }
}

/// Register [`CallExternalApi`] backing off from `backoff`.
pub fn register(app: &App, backoff: Duration) {
    app.register(CallExternalApi::new(backoff));
}

/// A local API whose `POST /echo` answers `503` to its first `failures`
/// calls, then `{"received": <body>, "attempt": n}`; any other path is 404.
#[derive(Clone)]
pub struct FlakyApi {
    failures: usize,
    calls: Arc<AtomicUsize>,
}

impl FlakyApi {
    /// Fail the first `failures` calls.
    pub fn new(failures: usize) -> Self {
        FlakyApi { failures, calls: Arc::new(AtomicUsize::new(0)) }
    }

    /// Calls received so far (on every path).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The API's routes.
    pub fn router(&self) -> Router {
        let count = self.clone();
        Router::new()
            .route("/echo", post(echo))
            .fallback(move || {
                count.calls.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::NOT_FOUND }
            })
            .with_state(self.clone())
    }
}

async fn echo(AxumState(api): AxumState<FlakyApi>, Json(body): Json<Value>) -> Result<Json<Value>, StatusCode> {
    let attempt = api.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if attempt <= api.failures {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(Json(json!({"received": body, "attempt": attempt})))
}
