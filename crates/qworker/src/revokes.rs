//! The worker's side of durable revokes ([`qcore::control::revoked`]).

use qcore::{App, Error};

/// Remember `ids` as revoked for workers that start later, and store
/// REVOKED for those not finished (as Celery's worker does on a revoke).
pub(crate) async fn persist(app: &App, ids: &[String]) -> Result<(), Error> {
    for id in ids {
        qcore::control::revoked::store_revoked(app, id).await?;
    }
    qcore::control::revoked::remember(app, ids).await
}
