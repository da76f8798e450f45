//! [`App`]: the task registry, configuration, routing and the producer API.

mod canvas;
mod send;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};

pub use canvas::{Parent, PreparedSend};
pub use send::SendOptions;

use crate::async_result::AsyncResult;
use crate::backend::ResultBackend;
use crate::broker::Broker;
use crate::config::Config;
use crate::error::Error;
use crate::message::Message;
use crate::result::ResultMeta;
use crate::signature::Signature;
use crate::task::{RequestInfo, Task, TaskOptions};

/// A signature that knows the Rust type of its task's result.
///
/// `#[task]` generates `add::s(2, 3) -> TypedSignature<i64>`.
#[derive(Debug, Clone)]
pub struct TypedSignature<T> {
    sig: Signature,
    _out: PhantomData<fn() -> T>,
}

impl<T> TypedSignature<T> {
    /// Wrap a signature whose task returns `T`.
    pub fn new(sig: Signature) -> Self {
        TypedSignature { sig, _out: PhantomData }
    }

    /// The untyped signature.
    pub fn signature(&self) -> &Signature {
        &self.sig
    }

    /// Change the untyped signature (options, immutability) keeping the type.
    pub fn map(self, f: impl FnOnce(Signature) -> Signature) -> Self {
        TypedSignature::new(f(self.sig))
    }
}

impl<T> From<TypedSignature<T>> for Signature {
    fn from(t: TypedSignature<T>) -> Signature {
        t.sig
    }
}

/// Anything [`App::delay`] can send: a [`Signature`] (result read as JSON)
/// or a [`TypedSignature`].
pub trait IntoSignature {
    /// The type the result decodes to.
    type Output;
    /// The signature to send.
    fn into_signature(self) -> Signature;
}

impl IntoSignature for Signature {
    type Output = Value;
    fn into_signature(self) -> Signature {
        self
    }
}

impl<T> IntoSignature for TypedSignature<T> {
    type Output = T;
    fn into_signature(self) -> Signature {
        self.sig
    }
}

struct Inner {
    config: Config,
    broker: Arc<dyn Broker>,
    backend: Option<Arc<dyn ResultBackend>>,
    tasks: RwLock<HashMap<String, Arc<dyn Task>>>,
    origin: String,
    reply_to: String,
    declared: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Stamps the `task-sent` events (`task_send_sent_event`).
    sent_events: crate::event::EventSender,
}

/// The application: configuration, broker, result backend and the tasks it
/// knows. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("broker", &self.inner.broker.describe())
            .field("backend", &self.inner.backend.as_ref().map(|b| b.describe()))
            .finish()
    }
}

/// Builds an [`App`].
#[derive(Default)]
pub struct AppBuilder {
    config: Option<Config>,
    broker: Option<Arc<dyn Broker>>,
    backend: Option<Arc<dyn ResultBackend>>,
}

impl AppBuilder {
    /// Use these settings (default: [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The broker (required).
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// The result backend (optional: without one, results are not stored).
    pub fn backend(mut self, backend: Arc<dyn ResultBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Build the app.
    pub fn build(self) -> Result<App, Error> {
        let broker = self.broker.ok_or_else(|| Error::Config("an App needs a broker".into()))?;
        let host = crate::node::hostname();
        let origin = format!("gen{}@{}", std::process::id(), host);
        Ok(App {
            inner: Arc::new(Inner {
                config: self.config.unwrap_or_default(),
                broker,
                tasks: RwLock::new(HashMap::new()),
                sent_events: crate::event::EventSender::new(origin.clone()),
                origin,
                reply_to: self
                    .backend
                    .as_ref()
                    .and_then(|b| b.reply_to())
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                declared: std::sync::Mutex::new(Default::default()),
                backend: self.backend,
            }),
        })
    }
}

impl App {
    /// Start building an app.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// The result backend, if any.
    pub fn backend(&self) -> Option<&Arc<dyn ResultBackend>> {
        self.inner.backend.as_ref()
    }

    /// The node name producers put in `origin` (`gen<pid>@<host>`).
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// This process's reply queue id (`reply_to` property).
    pub fn reply_to(&self) -> &str {
        &self.inner.reply_to
    }

    /// Register a task under its name (replacing one of the same name).
    pub fn register<T: Task>(&self, task: T) -> &Self {
        self.register_arc(Arc::new(task))
    }

    /// Register a shared task object.
    pub fn register_arc(&self, task: Arc<dyn Task>) -> &Self {
        let name = task.name().to_string();
        self.inner.tasks.write().unwrap_or_else(|p| p.into_inner()).insert(name, task);
        self
    }

    /// The task registered as `name`, else the builtin of that name
    /// (`celery.chord_unlock`, see [`chord_unlock`](crate::chord_unlock)).
    pub fn task(&self, name: &str) -> Option<Arc<dyn Task>> {
        let registered = self.inner.tasks.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        registered.or_else(|| crate::chord_unlock::builtin(name))
    }

    /// Names of all registered tasks, sorted (the builtins are not listed).
    pub fn registered(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.tasks.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        v.sort();
        v
    }

    /// Options of a registered task (defaults when unknown).
    pub fn task_options(&self, name: &str) -> TaskOptions {
        self.task(name).map(|t| t.options()).unwrap_or_default()
    }

    /// The queue a task goes to without an explicit `queue` option.
    pub fn route(&self, task: &str) -> String {
        let opt = self.task(task).and_then(|t| t.options().queue);
        self.inner.config.route(task, opt.as_deref())
    }

    /// Send a signature (task or canvas) now. Celery's `delay`/`apply_async`.
    pub async fn delay<S: IntoSignature>(&self, sig: S) -> Result<AsyncResult<S::Output>, Error> {
        self.apply_async(sig, SendOptions::new()).await
    }

    /// Send with options (countdown, eta, expires, priority, queue, task_id,
    /// headers, link, link_error).
    pub async fn apply_async<S: IntoSignature>(
        &self,
        sig: S,
        options: SendOptions,
    ) -> Result<AsyncResult<S::Output>, Error> {
        let res = self.apply_with(sig.into_signature(), options, None, None).await?;
        Ok(res.typed())
    }

    /// Send a task by name with JSON arguments (it need not be registered here).
    pub async fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Result<AsyncResult<Value>, Error> {
        let mut sig = Signature::new(name).with_args(args);
        sig.kwargs = kwargs;
        self.apply_async(sig, options).await
    }

    /// Wait until the broker holds every message sent before this call
    /// ([`Broker::flush`]): with RabbitMQ's pipelined publisher confirms (the
    /// default), a send returns once the message is written and its confirm
    /// is awaited in the background. Call it before the process exits.
    pub async fn flush(&self) -> Result<(), Error> {
        Ok(self.inner.broker.flush().await?)
    }

    /// A handle on the result of a task id.
    pub fn result<T>(&self, task_id: impl Into<String>) -> AsyncResult<T> {
        AsyncResult::new(self.clone(), task_id.into())
    }

    /// Declare a queue once per app (brokers make this idempotent anyway).
    pub(crate) async fn ensure_queue(&self, queue: &str) -> Result<(), Error> {
        {
            let declared = self.inner.declared.lock().unwrap_or_else(|p| p.into_inner());
            if declared.contains(queue) {
                return Ok(());
            }
        }
        self.inner.broker.declare_queue(queue).await?;
        self.inner.declared.lock().unwrap_or_else(|p| p.into_inner()).insert(queue.to_string());
        Ok(())
    }

    /// Publish a built message to `queue`, or run it here in eager mode.
    pub async fn dispatch(&self, queue: &str, msg: Message) -> Result<(), Error> {
        if self.config().task_always_eager {
            Box::pin(crate::run::run_eager(self, msg, queue)).await
        } else {
            self.ensure_queue(queue).await?;
            self.broker().publish(queue, &msg).await?;
            if self.config().task_send_sent_event {
                self.send_sent_event(queue, &msg).await;
            }
            Ok(())
        }
    }

    /// Publish `task-sent` for a message just sent to `queue` (Celery's
    /// producer with `task_send_sent_event`): best effort, as Celery's.
    pub(super) async fn send_sent_event(&self, queue: &str, msg: &Message) {
        use crate::event::{EventData, TaskSent, EVENT_EXCHANGE};
        let event = match msg.decode_task() {
            Ok(tm) => self.inner.sent_events.event(EventData::TaskSent(TaskSent::from_task(&tm, queue, "", queue))),
            Err(e) => {
                tracing::debug!(error = %e, "no task-sent event for an undecodable message");
                return;
            }
        };
        let sent = match event.to_message() {
            Ok(m) => self.inner.broker.publish_fanout(EVENT_EXCHANGE, &event.routing_key(), &m).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot publish task-sent");
        }
    }

    /// Fill the `result_extended` fields of a document from a request.
    pub fn extend_meta(&self, meta: &mut ResultMeta, req: &RequestInfo) {
        meta.name = Some(req.task.clone());
        meta.args = Some(Value::Array(req.args.clone()));
        meta.kwargs = Some(Value::Object(req.kwargs.clone()));
        meta.worker = Some(req.hostname.clone());
        meta.retries = Some(req.retries);
        meta.queue = Some(req.queue.clone());
    }

    /// Revoke a task: store REVOKED unless it already finished, and tell every
    /// worker (Celery's `revoke` broadcast on `celery.pidbox`). With
    /// `terminate`, a worker running it aborts it.
    pub async fn revoke(&self, task_id: &str, terminate: bool) -> Result<(), Error> {
        crate::control::revoked::store_revoked(self, task_id).await?;
        // Kept for workers that are down now (the broadcast is not persistent).
        crate::control::revoked::remember(self, &[task_id.to_owned()]).await?;
        let msg = crate::control::revoke_request(task_id, terminate, self.reply_to())?;
        self.inner.broker.publish_fanout(crate::control::PIDBOX_EXCHANGE, "", &msg).await?;
        Ok(())
    }
}
