//! Redis URLs: `redis://[[user]:password@]host[:port][/db]` and `rediss://`
//! (TLS). Query parameters are ignored with a warning. Invalid URLs are
//! errors of kind [`ErrorKind::Config`], never panics.

use deadpool_redis::redis::{ConnectionAddr, ConnectionInfo, ProtocolVersion, RedisConnectionInfo};
use qcore::ErrorKind;

/// A parsed Redis URL.
#[derive(Clone)]
pub(crate) struct RedisUrl {
    pub(crate) info: ConnectionInfo,
    pub(crate) db: i64,
    pub(crate) display: String,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// A URL error: kind Config, message only (the URL may hold a password).
#[derive(Debug)]
pub(crate) struct UrlError(pub(crate) String);

impl UrlError {
    pub(crate) fn kind(&self) -> ErrorKind {
        ErrorKind::Config
    }
}

fn percent_decode(s: &str) -> Result<String, UrlError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| UrlError("bad percent escape in redis URL".into()))?;
            let v = u8::from_str_radix(hex, 16).map_err(|_| UrlError("bad percent escape in redis URL".into()))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError("percent escape in redis URL is not UTF-8".into()))
}

/// Parse a `redis://` or `rediss://` URL.
pub(crate) fn parse(url: &str) -> Result<RedisUrl, UrlError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss://") {
        (true, r)
    } else {
        let scheme = url.split("://").next().unwrap_or("");
        return Err(UrlError(format!("not a redis URL (scheme {scheme:?}; expected redis:// or rediss://)")));
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (rest, _fragment) = rest.split_once('#').unwrap_or((rest, ""));
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        let names: Vec<&str> = q.split('&').map(|kv| kv.split('=').next().unwrap_or("")).collect();
        tracing::warn!(params = ?names, "redis URL query parameters are ignored");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(ui) => {
            let (u, p) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (ui, None),
            };
            let u = if u.is_empty() { None } else { Some(percent_decode(u)?) };
            let p = match p {
                Some(p) if !p.is_empty() => Some(percent_decode(p)?),
                _ => None,
            };
            // `redis://secret@host` (no colon) means a password, as redis-py reads it.
            match (u, p) {
                (Some(u), None) if !ui.contains(':') => (None, Some(u)),
                other => other,
            }
        }
    };
    let (host, port) = if let Some(after) = hostport.strip_prefix('[') {
        let (h, tail) = after.split_once(']').ok_or_else(|| UrlError("unclosed [ in redis URL host".into()))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p),
            None if tail.is_empty() => None,
            None => return Err(UrlError("junk after IPv6 host in redis URL".into())),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let host = if host.is_empty() { "localhost".to_string() } else { host };
    let port = match port {
        None | Some("") => 6379,
        Some(p) => p.parse::<u16>().map_err(|_| UrlError(format!("invalid port {p:?} in redis URL")))?,
    };
    let path = path.trim_end_matches('/');
    let db = if path.is_empty() {
        0
    } else {
        path.parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| UrlError(format!("invalid database {path:?} in redis URL (expected a number)")))?
    };
    let addr = if tls { tls_addr(host, port)? } else { ConnectionAddr::Tcp(host, port) };
    // `redis://secret@host` holds a password (see above), which `redact`
    // would take for a user: shown as `redis://:***@host`.
    let display = match userinfo {
        Some(ui) if !ui.is_empty() && !ui.contains(':') => qcore::url::redact(&url.replacen("://", "://:", 1)),
        _ => qcore::url::redact(url),
    };
    Ok(RedisUrl {
        info: ConnectionInfo {
            addr,
            redis: RedisConnectionInfo { db, username, password, protocol: ProtocolVersion::RESP2 },
        },
        db,
        display,
    })
}

#[cfg(feature = "tls")]
fn tls_addr(host: String, port: u16) -> Result<ConnectionAddr, UrlError> {
    // rustls needs a process-wide crypto provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None })
}

#[cfg(not(feature = "tls"))]
fn tls_addr(_host: String, _port: u16) -> Result<ConnectionAddr, UrlError> {
    Err(UrlError("rediss:// needs qredis built with the `tls` cargo feature".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(u: &RedisUrl) -> (String, u16) {
        match &u.info.addr {
            ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            other => panic!("not tcp: {other:?}"),
        }
    }

    #[test]
    fn parses_the_usual_forms() {
        let u = parse("redis://localhost").unwrap();
        assert_eq!(tcp(&u), ("localhost".into(), 6379));
        assert_eq!(u.db, 0);
        let u = parse("redis://:s%40cret@10.0.0.1:6380/5").unwrap();
        assert_eq!(tcp(&u), ("10.0.0.1".into(), 6380));
        assert_eq!(u.db, 5);
        assert_eq!(u.info.redis.password.as_deref(), Some("s@cret"));
        assert_eq!(u.info.redis.username, None);
        assert_eq!(u.display, "redis://:***@10.0.0.1:6380/5");
        let u = parse("redis://alice:pw@h/2?socket_timeout=3").unwrap();
        assert_eq!(u.info.redis.username.as_deref(), Some("alice"));
        assert_eq!(u.info.redis.password.as_deref(), Some("pw"));
        assert_eq!(u.display, "redis://alice:***@h/2?socket_timeout=3");
        let u = parse("redis://[::1]:7000/1").unwrap();
        assert_eq!(tcp(&u), ("::1".into(), 7000));
        assert_eq!(u.display, "redis://[::1]:7000/1");
        let u = parse("redis://pw@h").unwrap();
        assert_eq!(u.info.redis.password.as_deref(), Some("pw"));
        assert_eq!(u.display, "redis://:***@h");
        assert_eq!(parse("redis://alice@h:6390").unwrap().display, "redis://:***@h:6390");
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for bad in [
            "amqp://h",
            "redis://h:notaport",
            "redis://h/x",
            "redis://h/-1",
            "redis://[::1",
            "redis://h:99999",
            "redis://:%zz@h",
        ] {
            let e = parse(bad).err().unwrap_or_else(|| panic!("{bad} parsed"));
            assert_eq!(e.kind(), ErrorKind::Config);
        }
        #[cfg(not(feature = "tls"))]
        assert!(parse("rediss://h").is_err());
    }
}
