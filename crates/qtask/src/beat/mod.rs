//! Periodic tasks: Celery beat's schedules and messages (crate `qbeat`,
//! re-exported whole), and the stores and leases that need a server
//! client, which qbeat (core only) does not have:
//!
//! * [`DjangoStore`] (features `sqlite` / `postgres`): django-celery-beat
//!   2.9's own tables, what `qtask beat --scheduler django --db URL` runs;
//! * [`RedisLease`] (feature `redis`) and [`PgLease`] (feature
//!   `postgres`): the leader lease of replicas, `qtask beat --lock
//!   redis://…` or `--lock postgres://…`.

pub use qbeat::*;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod django;
#[cfg(feature = "postgres")]
mod pg_lease;
#[cfg(feature = "redis")]
mod redis_lease;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use django::DjangoStore;
#[cfg(feature = "postgres")]
pub use pg_lease::PgLease;
#[cfg(feature = "redis")]
pub use redis_lease::RedisLease;
