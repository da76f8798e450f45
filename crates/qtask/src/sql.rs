//! The SQL adapters behind the facade: URLs (`postgres://`, `sqlite://`,
//! Celery's `db+…` spellings), settings from [`Config`], and enqueue on
//! commit (`SendInTx` on PostgreSQL, [`AfterCommit`] on any broker).

use std::sync::Arc;

use qcore::{App, AsyncResult, Broker, Config, Error, IntoSignature, Message, ResultBackend, SendOptions};

/// Adapter options from the app settings: `visibility_timeout` (or
/// `broker_transport_options.visibility_timeout`), `max_deliveries`, and
/// for the result backend Celery's `database_table_schemas.task` as the
/// PostgreSQL schema.
fn options(cfg: &Config, for_backend: bool) -> qsql::SqlOptions {
    let mut o = qsql::SqlOptions::from_config(cfg);
    if let Some(v) = cfg.broker_visibility_timeout() {
        o = o.visibility_timeout(v);
    }
    if for_backend {
        if let Some(s) = cfg.database_table_schemas.task.as_deref().filter(|s| !s.is_empty()) {
            o = o.schema(s);
        }
    }
    o
}

/// Whether `scheme` names a SQL database this build supports.
fn enabled(scheme: &str) -> bool {
    (cfg!(feature = "postgres") && matches!(scheme, "postgres" | "postgresql"))
        || (cfg!(feature = "sqlite") && scheme == "sqlite")
}

/// The qsql URL of a result backend URL, or `None` when it is not a SQL URL
/// this build supports. Accepts qtask's `postgres://…`, `postgresql://…`,
/// `sqlite://path`, `sqlite::memory:` and Celery's SQLAlchemy spellings
/// `db+postgresql://…`, `db+postgresql+psycopg2://…` and `db+sqlite:///path`
/// (SQLAlchemy: three slashes and a relative path, four for an absolute
/// one, `db+sqlite://` alone for memory).
pub(crate) fn backend_url(url: &str) -> Option<String> {
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("db+") {
        let (scheme, tail) = rest.split_once("://")?;
        let dialect = scheme.split('+').next().unwrap_or(scheme);
        if !enabled(dialect) {
            return None;
        }
        if dialect == "sqlite" {
            // SQLAlchemy: sqlite:///relative.db, sqlite:////absolute.db, sqlite:// = memory.
            return Some(match tail.strip_prefix('/') {
                None if tail.is_empty() => "sqlite::memory:".to_string(),
                None => format!("sqlite://{tail}"),
                Some("") | Some(":memory:") => "sqlite::memory:".to_string(),
                Some(path) => format!("sqlite://{path}"),
            });
        }
        return Some(format!("{dialect}://{tail}"));
    }
    let scheme = url.split_once("://").map(|(s, _)| s).or_else(|| url.split_once(':').map(|(s, _)| s))?;
    enabled(scheme).then(|| url.to_string())
}

/// The broker for a `postgres://` / `postgresql://` / `sqlite://` URL.
pub(crate) async fn connect_broker(url: &str, cfg: &Config) -> Result<Arc<dyn Broker>, Error> {
    let opts = options(cfg, false);
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        return Ok(Arc::new(qsql::SqliteBroker::connect(url, opts).await?));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let broker = Arc::new(qsql::PgBroker::connect(url, opts).await?);
        pg::remember(&broker);
        return Ok(broker);
    }
    let _ = opts;
    Err(Error::Config(format!("not a SQL broker URL this build supports: {url:?}")))
}

/// The result backend for a URL accepted by [`backend_url`].
pub(crate) async fn connect_backend(url: &str, cfg: &Config) -> Result<Arc<dyn ResultBackend>, Error> {
    Ok(Arc::new(qsql::SqlBackend::connect(url, options(cfg, true)).await?))
}

/// Sends signatures after the caller's database transaction committed, on
/// any broker: Celery's `delay_on_commit` / Django's
/// `transaction.on_commit(lambda: task.delay(...))`.
///
/// Queue signatures while the transaction runs; after a successful commit
/// call [`committed`](Self::committed) to send them; on rollback call
/// [`rolled_back`](Self::rolled_back) or just drop the `AfterCommit`:
/// nothing is sent. Ids are assigned when a signature is queued, so the
/// result handle can be stored with the transaction's rows.
///
/// Unlike `SendInTx::send_in_tx` (PostgreSQL) this is not atomic: if the process dies
/// between the commit and [`committed`](Self::committed), the tasks are
/// lost (the rows are not). On PostgreSQL prefer `send_in_tx`.
///
/// ```
/// # use qtask::{AfterCommit, Signature};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), qtask::Error> {
/// let app = qtask::app("memory://").await?;
/// let mut on_commit = AfterCommit::new(&app);
/// let handle = on_commit.delay(Signature::new("emails.welcome").arg(42)).await?;
/// // ... INSERT the user, COMMIT ...
/// let commit_succeeded = true;
/// if commit_succeeded {
///     on_commit.committed().await?; // now the task is sent
/// } else {
///     on_commit.rolled_back(); // nothing is sent
/// }
/// # assert_eq!(app.broker().queue_len("celery").await?, 1);
/// # let _ = handle;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AfterCommit {
    app: App,
    pending: Vec<(String, Message)>,
}

impl AfterCommit {
    /// Collect sends for `app`.
    pub fn new(app: &App) -> AfterCommit {
        AfterCommit { app: app.clone(), pending: Vec::new() }
    }

    /// Queue a signature (task or canvas) to be sent at commit; returns
    /// its result handle now. A chord registers its size with the result
    /// backend at once (an unused counter expires with `result_expires`).
    pub async fn delay<S: IntoSignature>(&mut self, sig: S) -> Result<AsyncResult<S::Output>, Error> {
        self.apply_async(sig, SendOptions::new()).await
    }

    /// [`delay`](Self::delay) with options.
    pub async fn apply_async<S: IntoSignature>(
        &mut self,
        sig: S,
        options: SendOptions,
    ) -> Result<AsyncResult<S::Output>, Error> {
        let prepared = self.app.prepare(sig, options).await?;
        self.pending.extend(prepared.messages);
        Ok(prepared.result)
    }

    /// How many messages wait for the commit.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits for the commit.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The transaction committed: send everything queued, in order.
    pub async fn committed(self) -> Result<(), Error> {
        let broker = self.app.broker();
        let mut declared: Vec<&str> = Vec::new();
        for (q, _) in &self.pending {
            if !declared.contains(&q.as_str()) {
                broker.declare_queue(q).await?;
                declared.push(q);
            }
        }
        broker.publish_many(&self.pending).await?;
        Ok(())
    }

    /// The transaction rolled back: drop everything queued.
    pub fn rolled_back(self) {
        if !self.pending.is_empty() {
            tracing::debug!(messages = self.pending.len(), "transaction rolled back: tasks not sent");
        }
    }
}

#[cfg(feature = "postgres")]
pub use pg::{pg_broker, SendInTx};

#[cfg(feature = "postgres")]
mod pg {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex, Weak};

    use qcore::{App, AsyncResult, Error, IntoSignature, SendOptions};
    use qsql::PgBroker;
    use sqlx::{Postgres, Transaction};

    /// PostgreSQL brokers made by [`crate::connect`], to find the one behind
    /// an app's `Arc<dyn Broker>`.
    static BROKERS: Mutex<Vec<Weak<PgBroker>>> = Mutex::new(Vec::new());

    pub(super) fn remember(broker: &Arc<PgBroker>) {
        let mut list = BROKERS.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(broker));
    }

    /// The [`PgBroker`] of an app whose broker came from
    /// [`connect`](crate::connect) / [`app_from_config`](crate::app_from_config)
    /// with a `postgres://` URL (for its pool, dead letters...). `None` for
    /// other brokers.
    pub fn pg_broker(app: &App) -> Option<Arc<PgBroker>> {
        let target = Arc::as_ptr(app.broker()) as *const u8;
        let list = BROKERS.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().find(|w| w.as_ptr() as *const u8 == target).and_then(Weak::upgrade)
    }

    type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

    /// Enqueue on commit with the PostgreSQL broker: the task is written in
    /// the caller's transaction, so it exists if and only if the
    /// transaction commits, and workers are woken at the commit.
    ///
    /// The transaction must be on the broker's database (any pool; the
    /// broker's own is [`pg_broker`]`(&app).pool()`). In eager mode
    /// (`task_always_eager`) the task runs at once, as `delay` would.
    ///
    /// It works with apps whose broker came from a `postgres://` URL
    /// ([`crate::connect`], [`crate::app_from_config`]); for an app built by
    /// hand around a [`PgBroker`], do the same in two steps:
    /// [`App::prepare`] builds the messages and
    /// [`PgBroker::publish_in_tx`] writes each of them in the transaction.
    ///
    /// ```no_run
    /// use qtask::{SendInTx, Signature};
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let app = qtask::app("postgres://postgres@127.0.0.1/test").await?;
    /// let pool = qtask::pg_broker(&app).expect("a postgres:// app").pool().clone();
    /// let mut tx = pool.begin().await?;
    /// qtask::sqlx::query("INSERT INTO users (id) VALUES (7)").execute(&mut *tx).await?;
    /// let result = app.send_in_tx(&mut tx, Signature::new("emails.welcome").arg(7)).await?;
    /// tx.commit().await?; // the task and the user exist from now on, or neither
    /// # let _ = result; Ok(()) }
    /// ```
    pub trait SendInTx {
        /// Send a signature (task or canvas) inside `tx`.
        fn send_in_tx<'a, 'c, S>(
            &'a self,
            tx: &'a mut Transaction<'c, Postgres>,
            sig: S,
        ) -> BoxFut<'a, Result<AsyncResult<S::Output>, Error>>
        where
            S: IntoSignature,
            S::Output: 'a,
            'c: 'a;

        /// [`send_in_tx`](Self::send_in_tx) with options.
        fn apply_in_tx<'a, 'c, S>(
            &'a self,
            tx: &'a mut Transaction<'c, Postgres>,
            sig: S,
            options: SendOptions,
        ) -> BoxFut<'a, Result<AsyncResult<S::Output>, Error>>
        where
            S: IntoSignature,
            S::Output: 'a,
            'c: 'a;
    }

    impl SendInTx for App {
        fn send_in_tx<'a, 'c, S>(
            &'a self,
            tx: &'a mut Transaction<'c, Postgres>,
            sig: S,
        ) -> BoxFut<'a, Result<AsyncResult<S::Output>, Error>>
        where
            S: IntoSignature,
            S::Output: 'a,
            'c: 'a,
        {
            self.apply_in_tx(tx, sig, SendOptions::new())
        }

        fn apply_in_tx<'a, 'c, S>(
            &'a self,
            tx: &'a mut Transaction<'c, Postgres>,
            sig: S,
            options: SendOptions,
        ) -> BoxFut<'a, Result<AsyncResult<S::Output>, Error>>
        where
            S: IntoSignature,
            S::Output: 'a,
            'c: 'a,
        {
            let sig = sig.into_signature();
            Box::pin(async move {
                if self.config().task_always_eager {
                    return Ok(self.apply_async(sig, options).await?.typed());
                }
                let broker = pg_broker(self).ok_or_else(|| {
                    Error::Config(format!(
                        "send_in_tx needs the PostgreSQL broker (a postgres:// broker_url), this app uses {}; \
                         use AfterCommit with other brokers",
                        self.broker().describe()
                    ))
                })?;
                let prepared = self.prepare(sig, options).await?;
                for (queue, message) in &prepared.messages {
                    broker.publish_in_tx(tx, queue, message).await?;
                }
                Ok(prepared.result.typed())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backend_url;

    #[test]
    fn celery_database_backend_urls() {
        if cfg!(feature = "postgres") {
            assert_eq!(backend_url("db+postgresql://u@h/db").as_deref(), Some("postgresql://u@h/db"));
            assert_eq!(backend_url("db+postgresql+psycopg2://u@h/db?x=1").as_deref(), Some("postgresql://u@h/db?x=1"));
            assert_eq!(backend_url("postgres://h/db").as_deref(), Some("postgres://h/db"));
        }
        if cfg!(feature = "sqlite") {
            assert_eq!(backend_url("db+sqlite:///results.db").as_deref(), Some("sqlite://results.db"));
            assert_eq!(backend_url("db+sqlite:////var/r.db").as_deref(), Some("sqlite:///var/r.db"));
            assert_eq!(backend_url("db+sqlite://").as_deref(), Some("sqlite::memory:"));
            assert_eq!(backend_url("sqlite://q.db").as_deref(), Some("sqlite://q.db"));
            assert_eq!(backend_url("sqlite::memory:").as_deref(), Some("sqlite::memory:"));
        }
        assert_eq!(backend_url("db+mysql://h/db"), None);
        assert_eq!(backend_url("redis://h"), None);
    }
}
