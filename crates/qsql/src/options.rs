//! Connection options and URL parsing.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

/// Options shared by [`SqlBackend`](crate::SqlBackend), [`PgBroker`](crate::PgBroker)
/// and [`SqliteBroker`](crate::SqliteBroker).
///
/// ```
/// use std::time::Duration;
/// let opts = qsql::SqlOptions::new().schema("jobs").visibility_timeout(Duration::from_secs(60));
/// assert_eq!(opts.schema.as_deref(), Some("jobs"));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SqlOptions {
    /// PostgreSQL schema holding every table (created if missing). Overrides
    /// a `?schema=` URL parameter. `None`: the connection's `search_path`
    /// (normally `public`). Ignored by SQLite.
    pub schema: Option<String>,
    /// Broker: how long a delivery stays leased to its consumer without a
    /// renewal. Consumers renew the leases of their unsettled deliveries every
    /// third of this, so it only bounds how long the deliveries of a crashed
    /// worker wait before they are given to another one. Default 30 s.
    pub visibility_timeout: Duration,
    /// Broker: deliveries after which an unacked message is dead-lettered as
    /// poison instead of delivered again. `None` (default): never.
    pub max_deliveries: Option<u32>,
    /// Size of the connection pool. Default 10 (PostgreSQL), 4 (SQLite).
    /// Every PostgreSQL consumer and subscription holds one more connection
    /// for LISTEN.
    pub max_connections: Option<u32>,
    /// PostgreSQL broker: longest idle sleep of a consumer between checks
    /// for due messages when no notification arrives (safety net for lost
    /// notifications). Default 5 s.
    pub idle_poll: Duration,
    /// Result backend: how often expired results and chord counters are
    /// deleted. Default 60 s.
    pub cleanup_interval: Duration,
    /// Result backend: how stored values are written and read
    /// (`result_serializer`, `result_accept_content`). Default: JSON,
    /// reading JSON and msgpack.
    pub codec: qcore::ResultCodec,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            schema: None,
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: None,
            max_connections: None,
            idle_poll: Duration::from_secs(5),
            cleanup_interval: Duration::from_secs(60),
            codec: qcore::ResultCodec::default(),
        }
    }
}

impl SqlOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the PostgreSQL schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Set the visibility timeout (lease length) of deliveries.
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = d;
        self
    }

    /// Dead-letter messages delivered `n` times without an ack.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = Some(n);
        self
    }

    /// Set the connection pool size.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n.max(1));
        self
    }

    /// Set the idle safety-net poll of PostgreSQL consumers.
    pub fn idle_poll(mut self, d: Duration) -> Self {
        self.idle_poll = d;
        self
    }

    /// Set how often expired results are deleted.
    pub fn cleanup_interval(mut self, d: Duration) -> Self {
        self.cleanup_interval = d;
        self
    }

    /// Set how the result backend writes and reads stored values.
    pub fn codec(mut self, codec: qcore::ResultCodec) -> Self {
        self.codec = codec;
        self
    }
}

/// A parsed database URL.
#[derive(Debug)]
pub(crate) enum DbUrl {
    Postgres { options: Box<PgConnectOptions>, schema: Option<String>, display: String },
    Sqlite { path: PathBuf, display: String },
    SqliteMemory,
}

/// Whether `s` is an identifier qsql accepts as a schema name.
fn valid_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

/// Parse a `postgres://`, `postgresql://`, `sqlite://path` or
/// `sqlite::memory:` URL. The error is a message for a Config error.
pub(crate) fn parse_url(url: &str, schema_opt: Option<&str>) -> Result<DbUrl, String> {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut schema = None;
        let mut rest = Vec::new();
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("schema", v)) => schema = Some(v.to_string()),
                _ => rest.push(pair),
            }
        }
        if let Some(s) = schema_opt {
            schema = Some(s.to_string());
        }
        if let Some(s) = &schema {
            if !valid_ident(s) {
                return Err(format!(
                    "invalid PostgreSQL schema name {s:?}: use letters, digits and _ (at most 63, not starting with a digit)"
                ));
            }
        }
        let pg_url = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
        let options = PgConnectOptions::from_str(&pg_url)
            .map_err(|e| format!("invalid PostgreSQL URL {}: {e}", qcore::url::redact(url)))?;
        Ok(DbUrl::Postgres { options: Box::new(options), schema, display: qcore::url::redact(url) })
    } else if let Some(rest) = url.strip_prefix("sqlite:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split_once('?').map_or(rest, |(p, _)| p);
        if rest.contains('?') {
            return Err(format!("sqlite URL {url:?} takes no parameters"));
        }
        if path == ":memory:" {
            return Ok(DbUrl::SqliteMemory);
        }
        if path.is_empty() {
            return Err(format!("sqlite URL {url:?} has no file path (sqlite://path/to/file.db)"));
        }
        Ok(DbUrl::Sqlite { path: PathBuf::from(path), display: url.to_string() })
    } else {
        Err(format!("unsupported URL {:?}: expected postgres://, postgresql:// or sqlite://", qcore::url::redact(url)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        match parse_url("postgres://postgres@127.0.0.1/test?schema=abc&application_name=x", None).unwrap() {
            DbUrl::Postgres { schema, .. } => assert_eq!(schema.as_deref(), Some("abc")),
            other => panic!("{other:?}"),
        }
        match parse_url("postgresql://u:secret@h:5432/db", Some("s1")).unwrap() {
            DbUrl::Postgres { schema, display, .. } => {
                assert_eq!(schema.as_deref(), Some("s1"));
                assert_eq!(display, "postgresql://u:***@h:5432/db");
            }
            other => panic!("{other:?}"),
        }
        match parse_url("sqlite://data/q.db", None).unwrap() {
            DbUrl::Sqlite { path, .. } => assert_eq!(path, PathBuf::from("data/q.db")),
            other => panic!("{other:?}"),
        }
        match parse_url("sqlite:///tmp/q.db", None).unwrap() {
            DbUrl::Sqlite { path, .. } => assert_eq!(path, PathBuf::from("/tmp/q.db")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_url("sqlite::memory:", None).unwrap(), DbUrl::SqliteMemory));
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(parse_url("mysql://x", None).is_err());
        assert!(parse_url("sqlite://", None).is_err());
        assert!(parse_url("sqlite://a.db?mode=ro", None).is_err());
        assert!(parse_url("postgres://h/db?schema=a;drop", None).is_err());
        assert!(parse_url("postgres://h/db", Some("1abc")).is_err());
    }
}
