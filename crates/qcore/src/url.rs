//! URLs in logs and errors: [`redact`] hides the password.

/// `url` with its password replaced by `***` (`redis://:***@host:6379/0`,
/// `amqp://guest:***@host//`); user, host, port, path and query are kept.
/// A URL without a password comes back unchanged; never panics.
///
/// ```
/// assert_eq!(qcore::url::redact("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
/// assert_eq!(qcore::url::redact("redis://:pw@h/0"), "redis://:***@h/0");
/// assert_eq!(qcore::url::redact("sqlite://qtask.db"), "sqlite://qtask.db");
/// ```
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first '/', '?' or '#'; userinfo ends at its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden_and_nothing_else_changes() {
        for (url, want) in [
            ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
            (
                "rediss://user:p@ss:w@rd@host/1?ssl_cert_reqs=required",
                "rediss://user:***@host/1?ssl_cert_reqs=required",
            ),
            ("amqp://guest:guest@localhost:5672/%2f", "amqp://guest:***@localhost:5672/%2f"),
            ("postgres://app:pw@db/test?sslmode=require", "postgres://app:***@db/test?sslmode=require"),
            ("postgres://app@db/test", "postgres://app@db/test"),
            ("amqp://host/vhost@x", "amqp://host/vhost@x"),
            ("sqlite://qtask.db", "sqlite://qtask.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("", ""),
            ("://:@", "://:***@"),
            ("nonsense", "nonsense"),
        ] {
            assert_eq!(redact(url), want, "{url}");
        }
    }
}
