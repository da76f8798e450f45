//! [`AsyncResult`]: a handle on a sent task's state and result.

use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::app::App;
use crate::error::{Error, ErrorKind};
use crate::result::{ExceptionInfo, ResultMeta};
use crate::state::State;

/// The result of a sent task (or of a group: the list of its members' results).
pub struct AsyncResult<T = Value> {
    app: App,
    id: String,
    members: Option<Vec<AsyncResult<Value>>>,
    _out: PhantomData<fn() -> T>,
}

impl<T> Clone for AsyncResult<T> {
    fn clone(&self) -> Self {
        AsyncResult { app: self.app.clone(), id: self.id.clone(), members: self.members.clone(), _out: PhantomData }
    }
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult").field("id", &self.id).field("members", &self.members).finish()
    }
}

impl<T> AsyncResult<T> {
    /// A handle on task `id`.
    pub fn new(app: App, id: String) -> Self {
        AsyncResult { app, id, members: None, _out: PhantomData }
    }

    /// A handle on a group: `get` returns the members' results in order.
    pub fn group(app: App, group_id: String, members: Vec<AsyncResult<Value>>) -> Self {
        AsyncResult { app, id: group_id, members: Some(members), _out: PhantomData }
    }

    /// The task (or group) id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The members of a group result.
    pub fn children(&self) -> Option<&[AsyncResult<Value>]> {
        self.members.as_deref()
    }

    /// The same handle reading the result as another type.
    pub fn typed<U>(self) -> AsyncResult<U> {
        AsyncResult { app: self.app, id: self.id, members: self.members, _out: PhantomData }
    }

    fn backend(&self) -> Result<&std::sync::Arc<dyn crate::ResultBackend>, Error> {
        self.app.backend().ok_or(Error::NoBackend)
    }

    /// The stored document (PENDING when nothing is stored).
    pub async fn meta(&self) -> Result<ResultMeta, Error> {
        Ok(self.backend()?.get(&self.id).await?.unwrap_or_else(|| ResultMeta::pending(self.id.clone())))
    }

    /// The current state. For a group: SUCCESS when all succeeded, FAILURE if
    /// one failed, else PENDING/STARTED.
    pub async fn state(&self) -> Result<State, Error> {
        match &self.members {
            None => Ok(self.meta().await?.status),
            Some(members) => {
                let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
                let metas = self.backend()?.get_many(&ids).await?;
                let states: Vec<State> =
                    metas.into_iter().map(|m| m.map(|m| m.status).unwrap_or(State::Pending)).collect();
                Ok(if states.iter().all(|s| *s == State::Success) {
                    State::Success
                } else if let Some(s) = states.iter().find(|s| s.propagates()) {
                    s.clone()
                } else if states.iter().any(|s| *s != State::Pending) {
                    State::Started
                } else {
                    State::Pending
                })
            }
        }
    }

    /// Whether the task finished (SUCCESS, FAILURE, REVOKED).
    pub async fn ready(&self) -> Result<bool, Error> {
        match &self.members {
            None => Ok(self.state().await?.is_ready()),
            Some(members) => {
                let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
                let metas = self.backend()?.get_many(&ids).await?;
                Ok(metas.iter().all(|m| m.as_ref().is_some_and(|m| m.status.is_ready())))
            }
        }
    }

    /// The raw `result` field: the value, the exception map, or progress meta.
    pub async fn info(&self) -> Result<Value, Error> {
        Ok(self.meta().await?.result)
    }

    /// Delete the stored result.
    pub async fn forget(&self) -> Result<(), Error> {
        match &self.members {
            None => self.backend()?.forget(&self.id).await?,
            Some(members) => {
                for m in members {
                    self.backend()?.forget(&m.id).await?;
                }
            }
        }
        Ok(())
    }

    /// Revoke the task (or every member); with `terminate`, abort it if running.
    pub async fn revoke(&self, terminate: bool) -> Result<(), Error> {
        match &self.members {
            None => self.app.revoke(&self.id, terminate).await,
            Some(members) => {
                for m in members {
                    self.app.revoke(&m.id, terminate).await?;
                }
                Ok(())
            }
        }
    }

    async fn get_value(&self, timeout: Duration) -> Result<Value, Error> {
        match &self.members {
            None => {
                let backend = self.backend()?;
                let meta = backend.wait(&self.id, timeout).await.map_err(|e| {
                    if e.kind() == ErrorKind::Timeout {
                        Error::Timeout(self.id.clone())
                    } else {
                        Error::Backend(e)
                    }
                })?;
                value_of(meta)
            }
            Some(members) => {
                let deadline = tokio::time::Instant::now() + timeout;
                let mut out = Vec::with_capacity(members.len());
                for m in members {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    out.push(Box::pin(m.get_value(left)).await?);
                }
                Ok(Value::Array(out))
            }
        }
    }
}

fn value_of(meta: ResultMeta) -> Result<Value, Error> {
    if meta.status.propagates() {
        let exc = meta.exception().unwrap_or_else(|| ExceptionInfo::new("Exception", meta.result.to_string()));
        return Err(Error::TaskFailed { task_id: meta.task_id, state: meta.status.to_string(), exc });
    }
    Ok(meta.result)
}

impl<T: DeserializeOwned> AsyncResult<T> {
    /// Wait up to `timeout` for the result and decode it as `T`. A failed or
    /// revoked task gives [`Error::TaskFailed`] with the remote exception.
    pub async fn get(&self, timeout: Duration) -> Result<T, Error> {
        let v = self.get_value(timeout).await?;
        serde_json::from_value(v).map_err(|e| Error::ResultType { task_id: self.id.clone(), reason: e.to_string() })
    }
}
