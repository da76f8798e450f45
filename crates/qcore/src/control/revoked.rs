//! Durable revokes: the ids revoked are kept in the result backend, so a
//! worker that starts later (or was down when the `revoke` broadcast went
//! out: pidbox broadcasts are not persistent) still refuses to run them.
//!
//! The list lives in one group document of the result backend
//! ([`REVOKED_GROUP`]: `celery-taskset-meta-qtask.revoked` on Redis), with
//! the backend's `result_expires`, at most [`REVOKED_MAX`] ids (Celery's
//! worker keeps as many). Writers merge into it (read, add, write); two
//! revokes at the same instant can lose one of them from the list, which
//! then still has its REVOKED state stored and its broadcast.

use crate::app::App;
use crate::error::Error;
use crate::result::ResultMeta;

/// The group id of the revoked list in the result backend.
pub const REVOKED_GROUP: &str = "qtask.revoked";
/// How many ids the list keeps (the newest).
pub const REVOKED_MAX: usize = 50_000;

/// Add `ids` to the durable list (nothing without a result backend).
pub async fn remember(app: &App, ids: &[String]) -> Result<(), Error> {
    let Some(backend) = app.backend() else { return Ok(()) };
    if ids.is_empty() {
        return Ok(());
    }
    let mut all = backend.get_group(REVOKED_GROUP).await?.unwrap_or_default();
    let before = all.len();
    for id in ids {
        if !all.contains(id) {
            all.push(id.clone());
        }
    }
    if all.len() == before {
        return Ok(());
    }
    if all.len() > REVOKED_MAX {
        all.drain(..all.len() - REVOKED_MAX);
    }
    backend.save_group(REVOKED_GROUP, &all, Some(app.config().result_expires)).await?;
    Ok(())
}

/// The durable list (empty without a result backend).
pub async fn load(app: &App) -> Result<Vec<String>, Error> {
    let Some(backend) = app.backend() else { return Ok(Vec::new()) };
    Ok(backend.get_group(REVOKED_GROUP).await?.unwrap_or_default())
}

/// Store REVOKED for a task that has not finished (what Celery's worker
/// does on a `revoke` broadcast; `children` is null, there is no request).
/// A finished task's state is kept.
pub async fn store_revoked(app: &App, task_id: &str) -> Result<(), Error> {
    let Some(backend) = app.backend() else { return Ok(()) };
    let current = backend.get(task_id).await?;
    if current.as_ref().is_none_or(|m| !m.status.is_ready()) {
        let mut meta =
            ResultMeta::new(task_id, crate::State::Revoked, crate::ExceptionInfo::revoked("revoked").to_value());
        meta.children = None;
        backend.store(&meta, Some(app.config().result_expires)).await?;
    }
    Ok(())
}
