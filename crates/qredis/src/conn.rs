//! One shared multiplexed connection with reconnect, and error mapping.
//!
//! Every command of a broker or backend goes through one
//! [`MultiplexedConnection`]: concurrent callers are pipelined on one socket
//! without a checkout round trip. When a command fails because the
//! connection is gone, the connection is dropped and the next command
//! dials again (fast failure while the server is away, no panics).
//! Blocking commands and pub/sub use their own dedicated connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig, Client, RedisError};
use qcore::{BackendError, BrokerError, ErrorKind};

use crate::url::RedisUrl;

/// Errors of the two adapter error types, built the same way.
pub(crate) trait AdapterError: Sized {
    fn make(kind: ErrorKind, message: String, source: Option<RedisError>) -> Self;
}

impl AdapterError for BrokerError {
    fn make(kind: ErrorKind, message: String, source: Option<RedisError>) -> Self {
        match source {
            Some(s) => BrokerError::with_source(kind, message, s),
            None => BrokerError::new(kind, message),
        }
    }
}

impl AdapterError for BackendError {
    fn make(kind: ErrorKind, message: String, source: Option<RedisError>) -> Self {
        match source {
            Some(s) => BackendError::with_source(kind, message, s),
            None => BackendError::new(kind, message),
        }
    }
}

/// Whether the error means the connection is unusable (drop it, dial again).
pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), redis::ErrorKind::BusyLoadingError)
}

/// The portable kind of a Redis error.
pub(crate) fn kind_of(e: &RedisError) -> ErrorKind {
    match e.kind() {
        _ if e.is_timeout() => ErrorKind::Timeout,
        redis::ErrorKind::BusyLoadingError
        | redis::ErrorKind::TryAgain
        | redis::ErrorKind::MasterDown
        | redis::ErrorKind::ReadOnly => ErrorKind::Connection,
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig => ErrorKind::Config,
        redis::ErrorKind::TypeError | redis::ErrorKind::ParseError => ErrorKind::Protocol,
        _ if is_connection_error(e) => ErrorKind::Connection,
        _ => ErrorKind::Other,
    }
}

/// Map a Redis error to an adapter error saying what was being done.
pub(crate) fn map_err<E: AdapterError>(what: &str, e: RedisError) -> E {
    E::make(kind_of(&e), what.to_string(), Some(e))
}

/// A shared connection that dials again after it broke.
pub(crate) struct Conn {
    client: Client,
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    dialing: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("generation", &self.generation.load(Ordering::Relaxed)).finish()
    }
}

/// A checked-out handle: the connection and the generation it belongs to.
pub(crate) struct Handle {
    generation: u64,
    pub(crate) conn: MultiplexedConnection,
}

impl Conn {
    pub(crate) fn new(
        url: &RedisUrl,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, RedisError> {
        let client = Client::open(url.info.clone())?;
        Ok(Conn {
            client,
            current: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(connect_timeout)
                .set_response_timeout(response_timeout),
            connect_timeout,
        })
    }

    /// The client (to open dedicated connections).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Open a dedicated connection whose commands may block up to `response_timeout`.
    pub(crate) async fn dedicated(&self, response_timeout: Duration) -> Result<MultiplexedConnection, RedisError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(response_timeout);
        self.client.get_multiplexed_async_connection_with_config(&cfg).await
    }

    fn cached(&self) -> Option<Handle> {
        let g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|(generation, conn)| Handle { generation: *generation, conn: conn.clone() })
    }

    /// The shared connection, dialing if there is none.
    pub(crate) async fn get(&self) -> Result<Handle, RedisError> {
        if let Some(h) = self.cached() {
            return Ok(h);
        }
        let _dial = self.dialing.lock().await;
        if let Some(h) = self.cached() {
            return Ok(h);
        }
        let conn = self.client.get_multiplexed_async_connection_with_config(&self.config).await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, conn.clone()));
        tracing::debug!(generation, "connected to redis");
        Ok(Handle { generation, conn })
    }

    /// Report the outcome of a command made on `h`: a connection error drops
    /// the shared connection so the next command dials again.
    pub(crate) fn check<T>(&self, h: &Handle, r: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &r {
            if is_connection_error(e) {
                let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(&*g, Some((generation, _)) if *generation == h.generation) {
                    tracing::warn!(error = %e, "redis connection lost; will reconnect");
                    *g = None;
                }
            }
        }
        r
    }
}

/// Run `body` with a connection from `conn`, mapping errors with `what`.
macro_rules! with_conn {
    ($conn:expr, $err:ty, $what:expr, |$c:ident| $body:expr) => {{
        let conn: &$crate::conn::Conn = &$conn;
        match conn.get().await {
            Err(e) => Err($crate::conn::map_err::<$err>($what, e)),
            Ok(mut h) => {
                let r = {
                    let $c = &mut h.conn;
                    $body.await
                };
                conn.check(&h, r).map_err(|e| $crate::conn::map_err::<$err>($what, e))
            }
        }
    }};
}
pub(crate) use with_conn;

/// [`with_conn!`] for a command that may run twice (a read, a `PING`): a
/// shared connection found broken (the server restarted while it sat idle)
/// is dropped by the first attempt, and the command is tried once more on a
/// fresh one, so a restart the caller never saw does not fail its read.
macro_rules! with_conn_read {
    ($conn:expr, $err:ty, $what:expr, |$c:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            match $crate::conn::with_conn!($conn, $err, $what, |$c| $body) {
                Err(e) if e.is_retryable() && attempt == 0 => attempt += 1,
                r => break r,
            }
        }
    }};
}
pub(crate) use with_conn_read;

/// The wait before reconnection attempt `attempt`: [`qcore::backoff::reconnect`]
/// from 100 ms, capped at 10 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    qcore::backoff::reconnect(attempt, Duration::from_millis(100), Duration::from_secs(10))
}
