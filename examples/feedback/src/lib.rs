//! # The feedback web app
//!
//! A feedback form whose confirmation email is sent in the background by a
//! qtask task, the Rust version of the classic Django + Celery tutorial
//! ("send_feedback_email_task"): the page answers at once with the task id,
//! a worker (in the same process here) sends the email, and the page can
//! follow the task's state and progress.
//!
//! * `GET /` — the form (email, message).
//! * `POST /feedback` — validates the form (`application/x-www-form-urlencoded`
//!   as the page posts it, or JSON). Invalid: **422** with the messages
//!   (JSON `{"errors": {"email": [...], "message": [...]}}` when the client
//!   accepts JSON, else the form again with the messages). Valid: enqueues
//!   [`TASK_NAME`] and answers **202** at once with the task id (JSON
//!   `{"task_id", "status_url"}`, or a page that follows the task).
//! * `GET /tasks/{id}` — the task's state as JSON:
//!   `{"task_id", "state", "progress": {"current", "total"} | null,
//!   "result", "error": {"type", "message"} | null}`.
//!
//! The task sends through [lettre]: an SMTP server when `FEEDBACK_SMTP_URL`
//! is set (`smtp://host:port`, no TLS: a local relay such as Mailpit),
//! else `.eml` files in `FEEDBACK_MAIL_DIR` (default `feedback-mail/`), or
//! standard output with `FEEDBACK_MAIL=stdout`. See [`Mailer::from_env`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{FromRequest, Path, Request, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{Address, AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use qtask::{
    App, Args, ExceptionInfo, MaxRetries, Signature, State, Task, TaskContext, TaskError, TaskOptions, TaskResult,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// The task's registered name.
pub const TASK_NAME: &str = "feedback.send_feedback_email";

/// The email's subject.
pub const SUBJECT: &str = "Your Feedback";

/// Longest accepted message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 5000;

/// Where emails go.
#[derive(Clone)]
pub enum Transport {
    /// An SMTP server (plain SMTP, no TLS).
    Smtp {
        /// The URL, for logs.
        url: String,
        /// The transport.
        transport: AsyncSmtpTransport<Tokio1Executor>,
    },
    /// `<id>.eml` files in a directory.
    Files(PathBuf),
    /// Printed on standard output.
    Stdout,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Smtp { url, .. } => write!(f, "Smtp({url})"),
            Transport::Files(dir) => write!(f, "Files({})", dir.display()),
            Transport::Stdout => f.write_str("Stdout"),
        }
    }
}

/// How the task sends: the transport, the sender, and an artificial delay
/// standing in for expensive work (the tutorial's `sleep(20)`), during
/// which the task reports progress.
#[derive(Debug, Clone)]
pub struct Mailer {
    /// Where emails go.
    pub transport: Transport,
    /// The `From:` address.
    pub from: Mailbox,
    /// Simulated work before sending, in 4 progress steps.
    pub delay: Duration,
}

impl Mailer {
    /// Files in `dir`, from `support@example.com`, no delay.
    pub fn files(dir: impl Into<PathBuf>) -> Mailer {
        Mailer { transport: Transport::Files(dir.into()), from: default_from(), delay: Duration::ZERO }
    }

    /// An SMTP server at `url` (`smtp://host[:port]`, port 25 by default):
    /// plain SMTP without TLS or login, for a local relay (Postfix, Mailpit,
    /// MailHog). This example is built without lettre's TLS features.
    pub fn smtp(url: &str) -> anyhow::Result<Mailer> {
        let bad = |why: &str| anyhow::anyhow!("invalid FEEDBACK_SMTP_URL {url:?}: {why}");
        let rest = url.strip_prefix("smtp://").ok_or_else(|| bad("expected smtp://host[:port]"))?;
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('@') || hostport.contains('/') || hostport.contains('?') {
            return Err(bad("only smtp://host[:port] is supported (no login, no TLS)"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("the port must be a number"))?),
            None => (hostport, 25),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(Duration::from_secs(30)))
            .build();
        let transport = Transport::Smtp { url: url.to_string(), transport };
        Ok(Mailer { transport, from: default_from(), delay: Duration::ZERO })
    }

    /// From the environment: `FEEDBACK_SMTP_URL` (SMTP), else
    /// `FEEDBACK_MAIL=stdout`, else files in `FEEDBACK_MAIL_DIR` (default
    /// `feedback-mail`); `FEEDBACK_FROM` (default `support@example.com`);
    /// `FEEDBACK_DELAY_MS` (default 2000).
    pub fn from_env() -> anyhow::Result<Mailer> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut m = if let Some(url) = var("FEEDBACK_SMTP_URL") {
            Mailer::smtp(&url)?
        } else if var("FEEDBACK_MAIL").is_some_and(|v| v == "stdout") {
            Mailer { transport: Transport::Stdout, ..Mailer::files(".") }
        } else {
            Mailer::files(var("FEEDBACK_MAIL_DIR").unwrap_or_else(|| "feedback-mail".into()))
        };
        if let Some(from) = var("FEEDBACK_FROM") {
            m.from = from.parse().map_err(|e| anyhow::anyhow!("invalid FEEDBACK_FROM {from:?}: {e}"))?;
        }
        let delay_ms = match var("FEEDBACK_DELAY_MS") {
            Some(v) => {
                v.parse::<u64>().map_err(|_| anyhow::anyhow!("FEEDBACK_DELAY_MS must be milliseconds, got {v:?}"))?
            }
            None => 2000,
        };
        m.delay = Duration::from_millis(delay_ms);
        Ok(m)
    }
}

fn default_from() -> Mailbox {
    // A constant that parses: not input, so no error path.
    Mailbox::new(Some("Support".into()), Address::new("support", "example.com").expect("a valid constant address"))
}

/// The email's body, as in the tutorial.
pub fn body(message: &str) -> String {
    format!("\t{message}\n\nThank you!\n")
}

/// The task: send the feedback email to `email_address`.
///
/// Arguments (as Celery's `send_feedback_email_task(email_address, message)`):
/// the address and the message. Reports PROGRESS `{current, total}` while
/// it works; returns `{"to": address, "delivery": "smtp" | "file" | "stdout",
/// "file": path?}`. An SMTP failure is retried (3 times, backing off).
#[derive(Debug, Clone)]
pub struct SendFeedbackEmail {
    mailer: Arc<Mailer>,
}

impl SendFeedbackEmail {
    /// The task sending with `mailer`.
    pub fn new(mailer: Mailer) -> Self {
        SendFeedbackEmail { mailer: Arc::new(mailer) }
    }

    /// The signature of one call.
    pub fn s(email: &str, message: &str) -> Signature {
        Signature::new(TASK_NAME).arg(email).arg(message)
    }
}

const STEPS: u64 = 5;

#[async_trait]
impl Task for SendFeedbackEmail {
    fn name(&self) -> &str {
        TASK_NAME
    }

    fn options(&self) -> TaskOptions {
        TaskOptions {
            autoretry_for: vec!["SmtpError".into()],
            retry_backoff: Some(Duration::from_secs(2)),
            max_retries: MaxRetries::Limit(3),
            ..TaskOptions::default()
        }
    }

    async fn run(&self, ctx: TaskContext, args: Vec<Value>, kwargs: serde_json::Map<String, Value>) -> TaskResult {
        let mut a = Args::new(TASK_NAME, args, kwargs);
        let email: String = a.next("email_address")?;
        let message: String = a.next("message")?;
        a.finish()?;
        let to: Address =
            email.trim().parse().map_err(|e| TaskError::value_error(format!("invalid address {email:?}: {e}")))?;
        let ctx = &ctx;
        let progress =
            |i| async move { ctx.progress(i, STEPS).await.map_err(|e| TaskError::fail("BackendError", e.to_string())) };
        // The expensive part (the tutorial's sleep), in steps.
        for i in 1..STEPS {
            tokio::time::sleep(self.mailer.delay / (STEPS as u32 - 1)).await;
            progress(i).await?;
        }
        let mail = lettre::Message::builder()
            .from(self.mailer.from.clone())
            .to(Mailbox::new(None, to))
            .subject(SUBJECT)
            .header(ContentType::TEXT_PLAIN)
            .body(body(&message))
            .map_err(|e| TaskError::value_error(format!("cannot build the email: {e}")))?;
        let outcome = match &self.mailer.transport {
            Transport::Smtp { transport, .. } => {
                transport.send(mail).await.map_err(|e| TaskError::fail("SmtpError", e.to_string()))?;
                json!({"to": email, "delivery": "smtp"})
            }
            Transport::Files(dir) => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| TaskError::fail("OSError", format!("cannot create {}: {e}", dir.display())))?;
                let id = AsyncFileTransport::<Tokio1Executor>::new(dir)
                    .send(mail)
                    .await
                    .map_err(|e| TaskError::fail("OSError", e.to_string()))?;
                let file = dir.join(format!("{id}.eml"));
                json!({"to": email, "delivery": "file", "file": file.display().to_string()})
            }
            Transport::Stdout => {
                println!("{}\n{}", String::from_utf8_lossy(&mail.formatted()), "-".repeat(79));
                json!({"to": email, "delivery": "stdout"})
            }
        };
        progress(STEPS).await?;
        tracing::info!(to = %email, "feedback email sent");
        Ok(outcome)
    }
}

/// The form's fields (missing ones are empty).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FeedbackForm {
    /// The sender's address.
    #[serde(default)]
    pub email: String,
    /// The feedback.
    #[serde(default)]
    pub message: String,
}

/// Field name → messages, like Django's `form.errors`.
pub type FormErrors = BTreeMap<&'static str, Vec<String>>;

/// Check the form; the cleaned `(email, message)` or the errors.
pub fn validate(form: &FeedbackForm) -> Result<(String, String), FormErrors> {
    let mut errors = FormErrors::new();
    let email = form.email.trim();
    if email.is_empty() {
        errors.entry("email").or_default().push("Enter your email address.".into());
    } else if !valid_email(email) {
        errors.entry("email").or_default().push("Enter a valid email address.".into());
    }
    let message = form.message.trim();
    let chars = message.chars().count();
    if message.is_empty() {
        errors.entry("message").or_default().push("Enter a message.".into());
    } else if chars > MAX_MESSAGE_CHARS {
        errors
            .entry("message")
            .or_default()
            .push(format!("Keep the message under {MAX_MESSAGE_CHARS} characters (it has {chars})."));
    }
    if errors.is_empty() {
        Ok((email.to_string(), message.to_string()))
    } else {
        Err(errors)
    }
}

/// An address lettre accepts, with a dotted domain (`user@localhost` is refused).
fn valid_email(s: &str) -> bool {
    s.len() <= 254
        && Address::from_str(s).is_ok_and(|a| {
            let d = a.domain();
            d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
        })
}

/// The router of the app. The task must be registered on `app` (see
/// [`register`]) and a worker must consume its queue.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(form_page))
        .route("/feedback", post(submit))
        .route("/tasks/{id}", get(task_status))
        .with_state(app)
}

/// Register [`SendFeedbackEmail`] sending with `mailer`.
pub fn register(app: &App, mailer: Mailer) {
    app.register(SendFeedbackEmail::new(mailer));
}

fn wants_json(headers: &HeaderMap) -> bool {
    let accepts = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let sends = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    accepts.contains("application/json") || (sends.starts_with("application/json") && !accepts.contains("text/html"))
}

async fn form_page() -> Html<String> {
    Html(page(&FeedbackForm::default(), &FormErrors::new()))
}

async fn submit(AxumState(app): AxumState<App>, req: Request) -> Response {
    let json = wants_json(req.headers());
    let is_json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let form = if is_json_body {
        Json::<FeedbackForm>::from_request(req, &()).await.map(|Json(f)| f).map_err(IntoResponse::into_response)
    } else {
        Form::<FeedbackForm>::from_request(req, &()).await.map(|Form(f)| f).map_err(IntoResponse::into_response)
    };
    let form = match form {
        Ok(f) => f,
        Err(rejection) => return rejection,
    };
    let (email, message) = match validate(&form) {
        Ok(v) => v,
        Err(errors) if json => {
            return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"errors": errors}))).into_response()
        }
        Err(errors) => return (StatusCode::UNPROCESSABLE_ENTITY, Html(page(&form, &errors))).into_response(),
    };
    let sent = app.delay(SendFeedbackEmail::s(&email, &message)).await;
    let id = match sent {
        Ok(r) => r.id().to_string(),
        Err(e) => {
            tracing::error!(error = %e, "cannot enqueue the feedback email");
            let body = json!({"error": "the feedback could not be queued, try again later"});
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    };
    let status_url = format!("/tasks/{id}");
    if json {
        (StatusCode::ACCEPTED, Json(json!({"task_id": id, "status_url": status_url}))).into_response()
    } else {
        (StatusCode::ACCEPTED, Html(thanks_page(&id))).into_response()
    }
}

/// The JSON view of a task's state.
pub async fn status_json(app: &App, id: &str) -> Result<Value, qtask::Error> {
    let meta = app.result::<Value>(id).meta().await?;
    let progress = match &meta.status {
        State::Custom(s) if s == "PROGRESS" => meta.result.clone(),
        _ => Value::Null,
    };
    let (result, error) = match &meta.status {
        State::Success => (meta.result.clone(), Value::Null),
        State::Failure | State::Revoked => {
            let exc = ExceptionInfo::from_value(&meta.result);
            let error = exc.map_or(Value::Null, |e| json!({"type": e.exc_type, "message": e.message()}));
            (Value::Null, error)
        }
        _ => (Value::Null, Value::Null),
    };
    Ok(json!({"task_id": id, "state": meta.status.to_string(), "progress": progress, "result": result, "error": error}))
}

async fn task_status(AxumState(app): AxumState<App>, Path(id): Path<String>) -> Response {
    match status_json(&app, &id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            tracing::error!(error = %e, task_id = %id, "cannot read the task state");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "the task state cannot be read now"})))
                .into_response()
        }
    }
}

/// HTML-escape text.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem}\
label{display:block;margin-top:1rem}input,textarea{width:100%;font:inherit;padding:.4rem}\
.error{color:#b00020;margin:.2rem 0}button{margin-top:1rem;padding:.5rem 1.5rem;font:inherit}";

fn page(form: &FeedbackForm, errors: &FormErrors) -> String {
    let errs = |field: &str| {
        errors.get(field).map_or(String::new(), |list| {
            list.iter().map(|m| format!("<p class=\"error\">{}</p>", esc(m))).collect::<String>()
        })
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Feedback</title><style>{STYLE}</style></head>\n\
         <body><h1>Send us your feedback</h1>\n\
         <form method=\"post\" action=\"/feedback\">\n\
         <label for=\"email\">Email</label><input id=\"email\" name=\"email\" type=\"email\" value=\"{email}\" required>{email_errors}\n\
         <label for=\"message\">Message</label><textarea id=\"message\" name=\"message\" rows=\"5\" required>{message}</textarea>{message_errors}\n\
         <button type=\"submit\">Send</button>\n</form></body></html>\n",
        email = esc(&form.email),
        message = esc(&form.message),
        email_errors = errs("email"),
        message_errors = errs("message"),
    )
}

fn thanks_page(id: &str) -> String {
    let id = esc(id);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Thank you</title><style>{STYLE}</style></head>\n\
         <body><h1>Thank you!</h1><p>Your feedback is on its way: task <a href=\"/tasks/{id}\"><code>{id}</code></a>.</p>\n\
         <p>State: <strong id=\"state\">PENDING</strong> <span id=\"progress\"></span></p><p><a href=\"/\">Send more feedback</a></p>\n\
         <script>\n\
         async function poll() {{\n\
           const s = await (await fetch('/tasks/{id}')).json();\n\
           document.getElementById('state').textContent = s.state;\n\
           document.getElementById('progress').textContent = s.progress ? `${{s.progress.current}}/${{s.progress.total}}` : '';\n\
           if (!['SUCCESS', 'FAILURE', 'REVOKED'].includes(s.state)) setTimeout(poll, 300);\n\
         }}\n\
         poll();\n\
         </script></body></html>\n"
    )
}
