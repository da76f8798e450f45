//! Host and node names: the one rule for a worker's node name (Celery's
//! `-n`/`worker_hostname`), used by the worker and by the brokers that name
//! things after it.

/// The prefix of a node name given without one (Celery's is `celery`).
const NODE_PREFIX: &str = "qtask";

/// This machine's host name (from `HOSTNAME` or `/etc/hostname`).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A worker's node name from `name` (Celery's `-n`, the `worker_hostname`
/// setting), on this machine's [`hostname`].
///
/// As Celery's `default_nodename` followed by `host_format`: no name gives
/// `qtask@<host>`; a name without `@` is the host part (`w1` →
/// `qtask@w1`); an empty part before or after the `@` takes the default
/// (`qtask`, the host name). Then `%h` becomes the host name, `%n` the host
/// name up to its first dot, `%d` the rest after that dot, `%i` `0` and
/// `%I` nothing (qtask has no pool processes), and `%%` a `%`. Any other
/// `%x` is kept as written (Celery refuses it).
///
/// ```
/// let host = qcore::hostname();
/// assert_eq!(qcore::node_name(None), format!("qtask@{host}"));
/// assert_eq!(qcore::node_name(Some("w1@%h")), format!("w1@{host}"));
/// assert_eq!(qcore::node_name(Some("w1@example")), "w1@example");
/// ```
pub fn node_name(name: Option<&str>) -> String {
    node_name_on(name.unwrap_or_default(), &hostname())
}

fn node_name_on(name: &str, host: &str) -> String {
    let (prefix, at) = match name.split_once('@') {
        Some((prefix, at)) => (prefix, at),
        None => ("", name),
    };
    let prefix = if prefix.is_empty() { NODE_PREFIX.to_string() } else { expand(prefix, host) };
    let at = if at.is_empty() { host.to_string() } else { expand(at, host) };
    format!("{prefix}@{at}")
}

/// Celery's `host_format` abbreviations in `s`.
fn expand(s: &str, host: &str) -> String {
    let (short, domain) = host.split_once('.').unwrap_or((host, ""));
    let mut out = String::with_capacity(s.len() + host.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(host),
            Some('n') => out.push_str(short),
            Some('d') => out.push_str(domain),
            Some('i') => out.push('0'),
            Some('I') => {}
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::node_name_on;

    #[test]
    fn celerys_node_name_rule_with_qtask_as_prefix() {
        let host = "worker3.prod.example.com";
        for (name, node) in [
            ("", "qtask@worker3.prod.example.com"),
            ("w1", "qtask@w1"),
            ("w1@", "w1@worker3.prod.example.com"),
            ("@h", "qtask@h"),
            ("@", "qtask@worker3.prod.example.com"),
            ("w1@example", "w1@example"),
            ("w1@%h", "w1@worker3.prod.example.com"),
            ("%h", "qtask@worker3.prod.example.com"),
            ("w1@%n", "w1@worker3"),
            ("w1@%n.%d", "w1@worker3.prod.example.com"),
            ("w1.%n@%d", "w1.worker3@prod.example.com"),
            ("w%i%I@%n", "w0@worker3"),
            ("100%%@%n", "100%@worker3"),
            ("a@b@c", "a@b@c"),
            ("w1@%x%", "w1@%x%"),
            ("ü@%n", "ü@worker3"),
        ] {
            assert_eq!(node_name_on(name, host), node, "{name:?}");
        }
        assert_eq!(node_name_on("w1@%n.%d", "localhost"), "w1@localhost.");
    }
}
