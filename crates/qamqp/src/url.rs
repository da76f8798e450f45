//! `amqp://` / `amqps://` URLs with kombu's conventions.

use std::fmt::Write as _;
use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use qcore::{BrokerError, ErrorKind};

/// A parsed broker URL.
///
/// `amqp://user:pass@host:port/vhost?heartbeat=60`, as kombu reads it:
/// user and password default to `guest`, host to `localhost`, port to 5672
/// (5671 for `amqps`), the vhost is the URL-decoded path without its first
/// `/` and an empty one means `/` (`amqp://host`, `amqp://host/` and
/// `amqp://host/%2f` all mean vhost `/`; `amqp://host//` too). `pyamqp://`
/// is accepted as a synonym of `amqp://`.
///
/// Query parameters: `heartbeat` (seconds, 0 = off; default 60),
/// `connection_timeout` (milliseconds) or kombu's `connect_timeout`
/// (seconds), `frame_max`, `channel_max`. Others are ignored with a warning.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    /// `amqps://`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host.
    pub vhost: String,
    /// Heartbeat in seconds (0 = off).
    pub heartbeat: u16,
    /// TCP/handshake timeout.
    pub connection_timeout: Option<Duration>,
    /// Largest frame proposed to the server.
    pub frame_max: Option<u32>,
    /// Most channels proposed to the server.
    pub channel_max: Option<u16>,
}

impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn bad(url: &str, why: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(ErrorKind::Config, format!("invalid AMQP URL {:?}: {why}", qcore::url::redact(url)))
}

fn percent_decode(s: &str, url: &str, what: &str) -> Result<String, BrokerError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => out.push(v),
                None => return Err(bad(url, format!("bad percent escape in the {what}"))),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(url, format!("the {what} is not UTF-8 once decoded")))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

impl AmqpUrl {
    /// Parse a URL; every problem is an [`ErrorKind::Config`] error (never a
    /// panic), and the password never appears in the message.
    pub fn parse(url: &str) -> Result<Self, BrokerError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad(url, "expected amqp://..."))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "amqp" | "pyamqp" => false,
            "amqps" => true,
            other => return Err(bad(url, format!("unsupported scheme {other:?} (amqp, amqps)"))),
        };
        if rest.contains(';') {
            return Err(bad(url, "several hosts (failover URLs) are not supported"));
        }
        let rest = rest.split_once('#').map_or(rest, |(a, _)| a);
        let (rest, query) = rest.split_once('?').map_or((rest, ""), |(a, q)| (a, q));
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
        let (userinfo, hostport) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        let (user, password) = match userinfo {
            None => ("guest".to_string(), "guest".to_string()),
            Some(u) => {
                let (name, pass) = u.split_once(':').map_or((u, None), |(n, p)| (n, Some(p)));
                let name = percent_decode(name, url, "user name")?;
                let pass = match pass {
                    Some(p) => percent_decode(p, url, "password")?,
                    None => String::new(),
                };
                (if name.is_empty() { "guest".into() } else { name }, pass)
            }
        };
        let default_port = if tls { 5671 } else { 5672 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad(url, "unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad(url, "unexpected text after the IPv6 host")),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            None | Some("") => default_port,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad(url, format!("bad port {p:?}")))?,
        };
        let host = if host.is_empty() { "localhost".to_string() } else { percent_decode(&host, url, "host")? };
        if host.chars().any(|c| c.is_whitespace() || c == '/' || c == '@') {
            return Err(bad(url, format!("bad host {host:?}")));
        }
        let vhost = percent_decode(path.strip_prefix('/').unwrap_or(path), url, "vhost")?;
        let vhost = if vhost.is_empty() { "/".to_string() } else { vhost };
        let mut parsed = AmqpUrl {
            tls,
            host,
            port,
            user,
            password,
            vhost,
            heartbeat: 60,
            connection_timeout: None,
            frame_max: None,
            channel_max: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v, url, "query")?;
            let num = |what: &str| -> Result<f64, BrokerError> {
                v.parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n >= 0.0)
                    .ok_or_else(|| bad(url, format!("{what} must be a non-negative number, got {v:?}")))
            };
            match k {
                "heartbeat" => {
                    let n = num("heartbeat")?;
                    parsed.heartbeat =
                        if n > f64::from(u16::MAX) { return Err(bad(url, "heartbeat is too large")) } else { n as u16 };
                }
                "connection_timeout" => {
                    parsed.connection_timeout = Some(Duration::from_millis(num("connection_timeout")? as u64))
                }
                "connect_timeout" => {
                    parsed.connection_timeout = Some(Duration::from_secs_f64(num("connect_timeout")?.min(1e9)))
                }
                "frame_max" => parsed.frame_max = Some(num("frame_max")?.min(f64::from(u32::MAX)) as u32),
                "channel_max" => parsed.channel_max = Some(num("channel_max")?.min(f64::from(u16::MAX)) as u16),
                other => tracing::warn!(parameter = other, "ignoring unknown AMQP URL parameter"),
            }
        }
        #[cfg(not(feature = "tls"))]
        if tls {
            return Err(BrokerError::new(
                ErrorKind::Config,
                "amqps:// needs qamqp's `tls` cargo feature (qtask: feature `amqp-tls`)",
            ));
        }
        Ok(parsed)
    }

    /// The URL for logs: the password is replaced by `***`.
    pub fn describe(&self) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let pass = if self.password.is_empty() { "" } else { ":***" };
        format!("{scheme}://{}{pass}@{host}:{}/{}", percent_encode(&self.user), self.port, percent_encode(&self.vhost))
    }

    pub(crate) fn to_lapin(&self) -> AMQPUri {
        AMQPUri {
            scheme: if self.tls { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username: self.user.clone(), password: self.password.clone() },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                frame_max: self.frame_max,
                channel_max: self.channel_max,
                heartbeat: Some(self.heartbeat),
                connection_timeout: self.connection_timeout.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
                auth_mechanism: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> AmqpUrl {
        match AmqpUrl::parse(url) {
            Ok(u) => u,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn defaults_and_vhosts() {
        let u = ok("amqp://");
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_str(), u.password.as_str()),
            ("localhost", 5672, "guest", "guest")
        );
        assert_eq!(u.vhost, "/");
        assert_eq!(u.heartbeat, 60);
        for (url, vhost) in [
            ("amqp://h", "/"),
            ("amqp://h/", "/"),
            ("amqp://h//", "/"),
            ("amqp://h/%2f", "/"),
            ("amqp://h/%2F", "/"),
            ("amqp://h/prod", "prod"),
            ("amqp://h/a%2Fb", "a/b"),
            ("pyamqp://h:1234/x", "x"),
        ] {
            assert_eq!(ok(url).vhost, vhost, "{url}");
        }
    }

    #[test]
    fn credentials_hosts_ports_params() {
        let u = ok("amqp://us%40er:p%40ss:w@rabbit.example:5673/v?heartbeat=10&connect_timeout=2.5");
        assert_eq!(u.user, "us@er");
        assert_eq!(u.password, "p@ss:w");
        assert_eq!(u.host, "rabbit.example");
        assert_eq!(u.port, 5673);
        assert_eq!(u.heartbeat, 10);
        assert_eq!(u.connection_timeout, Some(Duration::from_millis(2500)));
        let v6 = ok("amqp://u:p@[::1]:5680/");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 5680));
        assert_eq!(v6.describe(), "amqp://u:***@[::1]:5680/%2F");
        assert_eq!(ok("amqp://u@h").password, "");
        let lapin = ok("amqp://a:b@h:1/v?heartbeat=0").to_lapin();
        assert_eq!(lapin.vhost, "v");
        assert_eq!(lapin.query.heartbeat, Some(0));
    }

    #[test]
    fn invalid_urls_are_config_errors_without_the_password() {
        for url in [
            "redis://h",
            "amqp//h",
            "amqp://u:secret@h:notaport/",
            "amqp://u:secret@h:0/",
            "amqp://u:secret@h:99999/",
            "amqp://u:secret@h/%zz",
            "amqp://u:secret@h/?heartbeat=-1",
            "amqp://u:secret@h/?heartbeat=abc",
            "amqp://u:secret@[::1/",
            "amqp://u:secret@h1;amqp://h2",
            "amqp://u:secret@h/%ff%fe",
        ] {
            match AmqpUrl::parse(url) {
                Ok(u) => panic!("{url} parsed as {u:?}"),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Config, "{url}");
                    assert!(!e.to_string().contains("secret"), "password leaked: {e}");
                }
            }
        }
    }

    #[test]
    fn describe_hides_the_password() {
        let u = ok("amqp://guest:topsecret@127.0.0.1:5672/%2f");
        assert_eq!(u.describe(), "amqp://guest:***@127.0.0.1:5672/%2F");
        assert!(!format!("{u:?}").contains("topsecret"));
    }
}
