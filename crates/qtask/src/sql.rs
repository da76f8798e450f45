//! Enqueue on commit: `SendInTx` on PostgreSQL, [`AfterCommit`] on any broker.

use qcore::{App, AsyncResult, Error, IntoSignature, Message, SendOptions};

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
        // Held by the broker (confirmed) before the caller moves on.
        broker.flush().await?;
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
    use std::sync::Arc;

    use qcore::{App, AsyncResult, Error, IntoSignature, SendOptions};
    use qsql::PgBroker;
    use sqlx::{Postgres, Transaction};

    /// The [`PgBroker`] of an app whose broker is one (a `postgres://`
    /// `broker_url`, or built by hand), for its pool; `None` for other brokers.
    pub fn pg_broker(app: &App) -> Option<Arc<PgBroker>> {
        qcore::broker::downcast::<PgBroker>(app.broker())
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
    /// It works with every app whose broker is a [`PgBroker`]; the same in
    /// two steps: [`App::prepare`] builds the messages and
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
