//! The [`ResultBackend`] contract.
//!
//! # Contract
//!
//! * [`store`](ResultBackend::store) writes the whole document for a task id,
//!   with an expiry. **A stored SUCCESS is never overwritten** (Celery guards
//!   every write the same way), so a task redelivered after it succeeded
//!   cannot turn its result back into STARTED or FAILURE.
//! * [`get`](ResultBackend::get) returns `None` when nothing is stored (the
//!   reader reports PENDING).
//! * [`wait`](ResultBackend::wait) returns as soon as the state is ready
//!   (SUCCESS, FAILURE, REVOKED); stores with push (Redis pub/sub, PostgreSQL
//!   LISTEN) wake at once, others poll. It fails with
//!   [`ErrorKind::Timeout`] when the timeout passes.
//! * Chord join: [`chord_part`](ResultBackend::chord_part) counts each header
//!   task at most once (by task id and index, so a redelivered header task
//!   never counts twice) and returns [`ChordJoin::Complete`] to **exactly
//!   one** caller, with the parts ordered by group index.
//! * Disconnects surface as [`ErrorKind::Connection`]; the caller retries.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::{BackendError, ErrorKind};
use crate::result::ResultMeta;
use crate::state::State;

/// The result of one chord header task, as recorded by the join.
#[derive(Debug, Clone, PartialEq)]
pub struct ChordPart {
    /// Header task id.
    pub task_id: String,
    /// Its index in the header.
    pub index: u64,
    /// Its final state (SUCCESS or FAILURE/REVOKED).
    pub status: State,
    /// Its return value or exception map.
    pub result: Value,
}

/// What [`ResultBackend::chord_part`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum ChordJoin {
    /// Recorded; more parts are missing.
    Waiting {
        /// Parts recorded so far.
        done: u64,
        /// Chord size.
        size: u64,
    },
    /// This part was already recorded (a redelivered header task).
    Duplicate,
    /// This call completed the chord; the caller sends the body. Parts are
    /// ordered by index.
    Complete(Vec<ChordPart>),
}

/// How a backend joins the header of a chord.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChordSupport {
    /// The backend counts finished header tasks itself
    /// ([`ResultBackend::chord_init`] / [`ResultBackend::chord_part`]),
    /// as Celery's Redis backend does.
    Native,
    /// No native join: the producer sends Celery's `celery.chord_unlock`
    /// task, which polls the header's results (Celery's database backend);
    /// see [`chord_unlock`](crate::chord_unlock).
    Unlock,
    /// Chords cannot be run with this backend (Celery's `rpc://`): sending
    /// one is an error before anything is published.
    Unsupported,
}

/// What a [`ResultBackend`] can do beyond storing and reading results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendCapabilities {
    /// `save_group` / `get_group` work (`GroupResult.save()`).
    pub groups: bool,
    /// How chords are joined.
    pub chords: ChordSupport,
}

impl BackendCapabilities {
    /// Groups and a native chord join.
    pub fn all() -> Self {
        BackendCapabilities { groups: true, chords: ChordSupport::Native }
    }

    /// Set whether groups can be saved.
    pub fn groups(mut self, groups: bool) -> Self {
        self.groups = groups;
        self
    }

    /// Set how chords are joined.
    pub fn chords(mut self, chords: ChordSupport) -> Self {
        self.chords = chords;
        self
    }
}

/// Where task states and results are stored. Object safe.
#[async_trait]
pub trait ResultBackend: Send + Sync + 'static {
    /// Store `meta` for `meta.task_id`, expiring after `ttl` (None: never).
    /// Skips the write if SUCCESS is already stored.
    async fn store(&self, meta: &ResultMeta, ttl: Option<Duration>) -> Result<(), BackendError>;

    /// Store `meta` for the task whose request named `reply_to` (the
    /// message's `reply_to` property). Workers record states through this;
    /// only backends that deliver results to the caller (Celery's `rpc://`)
    /// use `reply_to`, the default is [`store`](Self::store).
    async fn store_for(
        &self,
        meta: &ResultMeta,
        ttl: Option<Duration>,
        reply_to: Option<&str>,
    ) -> Result<(), BackendError> {
        let _ = reply_to;
        self.store(meta, ttl).await
    }

    /// The `reply_to` an [`App`](crate::App) using this backend must send
    /// with its tasks for their results to reach it (the reply queue of an
    /// `rpc://` backend); `None` (the default) when results do not travel
    /// to the caller.
    fn reply_to(&self) -> Option<String> {
        None
    }

    /// The stored document, or `None`.
    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError>;

    /// Several documents at once, in the order of `task_ids`.
    async fn get_many(&self, task_ids: &[String]) -> Result<Vec<Option<ResultMeta>>, BackendError> {
        let mut out = Vec::with_capacity(task_ids.len());
        for id in task_ids {
            out.push(self.get(id).await?);
        }
        Ok(out)
    }

    /// Wait until the task is ready and return its document.
    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta, BackendError> {
        poll_until_ready(self, task_id, timeout).await
    }

    /// Delete the stored document.
    async fn forget(&self, task_id: &str) -> Result<(), BackendError>;

    /// Save the member ids of a group (`GroupResult.save()`).
    async fn save_group(&self, group_id: &str, task_ids: &[String], ttl: Option<Duration>) -> Result<(), BackendError>;

    /// The member ids of a saved group.
    async fn get_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError>;

    /// Prepare the join of a chord of `size` header tasks.
    async fn chord_init(&self, group_id: &str, size: u64, ttl: Option<Duration>) -> Result<(), BackendError>;

    /// What this backend can do beyond storing and reading results (by
    /// default everything: groups and a native chord join). Callers decide
    /// from this, before sending anything, rather than from an
    /// [`ErrorKind::Unsupported`] at run time.
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities::all()
    }

    /// Record one finished header task; see [`ChordJoin`].
    async fn chord_part(
        &self,
        group_id: &str,
        part: &ChordPart,
        ttl: Option<Duration>,
    ) -> Result<ChordJoin, BackendError>;

    /// The backend URL with any password hidden, for logs.
    fn describe(&self) -> String;
}

/// Poll `get` with a growing interval (1 ms to 100 ms) until ready or timeout.
/// The default [`ResultBackend::wait`] for stores without push.
pub async fn poll_until_ready<B: ResultBackend + ?Sized>(
    backend: &B,
    task_id: &str,
    timeout: Duration,
) -> Result<ResultMeta, BackendError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(1);
    loop {
        if let Some(meta) = backend.get(task_id).await? {
            if meta.status.is_ready() {
                return Ok(meta);
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(BackendError::new(ErrorKind::Timeout, format!("task {task_id} not ready after {timeout:?}")));
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}
