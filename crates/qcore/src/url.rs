//! Broker and backend URLs as they may be shown: in logs, errors and
//! `describe()`.

/// `url` with its password replaced by `***`: the user, host, port, path
/// and query stay (a `password=` query parameter is hidden too). A URL
/// without a password comes back unchanged, and so does text that is not a
/// URL; this never panics.
///
/// The user information ends at the last `@`, so a password holding an
/// unescaped `/`, `?`, `@` or `#` is hidden whole (an `@` in the query
/// hides the host as well: more is hidden, nothing leaks).
///
/// ```
/// assert_eq!(qcore::url::redact("amqp://guest:s3cret@rabbit:5672//"), "amqp://guest:***@rabbit:5672//");
/// assert_eq!(qcore::url::redact("redis://:pw@localhost/0"), "redis://:***@localhost/0");
/// assert_eq!(qcore::url::redact("sqlite:///var/qtask.db"), "sqlite:///var/qtask.db");
/// ```
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    out.push_str("://");
    let location = match rest.rsplit_once('@') {
        Some((userinfo, location)) => {
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            location
        }
        None => rest,
    };
    let Some((before_query, query)) = location.split_once('?') else {
        out.push_str(location);
        return out;
    };
    out.push_str(before_query);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                out.push_str(key);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn hides_the_password_and_keeps_the_rest() {
        for (url, shown) in [
            ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
            ("postgres://u:secret@h/db?schema=s1&sslmode=require", "postgres://u:***@h/db?schema=s1&sslmode=require"),
            ("redis://:s%40cret@10.0.0.1:6380/5", "redis://:***@10.0.0.1:6380/5"),
            ("rediss://alice:pw@h/2?socket_timeout=3", "rediss://alice:***@h/2?socket_timeout=3"),
            ("amqp://us%40er:p%40ss:w@rabbit.example:5673/v", "amqp://us%40er:***@rabbit.example:5673/v"),
            ("amqp://u:p@[::1]:5680/", "amqp://u:***@[::1]:5680/"),
            ("amqp://u:@h", "amqp://u:***@h"),
            // Unescaped `/`, `@`, `#`, `?` in a password: hidden whole; an `@`
            // in the query hides the host too.
            ("amqp://u:pa/ss@h/v", "amqp://u:***@h/v"),
            ("amqp://u:p@ss@h/v", "amqp://u:***@h/v"),
            ("amqp://u:p#ss@h/v", "amqp://u:***@h/v"),
            ("amqp://u:p?ss@h/v", "amqp://u:***@h/v"),
            ("postgres://u:pw@h/db?application_name=me@x", "postgres://u:***@x"),
            ("postgres://u@h/db?password=secret&x=1", "postgres://u@h/db?password=***&x=1"),
            ("postgres://h/db?PASSWORD=secret", "postgres://h/db?PASSWORD=***"),
            ("amqp://u:secret@h1;amqp://h2", "amqp://u:***@h1;amqp://h2"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn leaves_urls_without_a_password_alone() {
        for url in [
            "redis://localhost",
            "redis://127.0.0.1:6379/0",
            "amqp://guest@h//",
            "postgres://postgres@127.0.0.1/test?schema=abc&application_name=x",
            "sqlite:///tmp/q.db",
            "sqlite://qtask.db",
            "sqlite::memory:",
            "rpc://",
            "memory://",
            "",
            "not a url",
            "postgres://h/db?application_name=me@x",
        ] {
            assert_eq!(redact(url), url);
        }
    }

    #[test]
    fn never_panics_on_garbage() {
        for url in
            ["://", "@", ":@", "a://@", "a://:@", "a://?", "a://@?&=&password", "é://ü:ö@ß/ä?password=ü", "a://x?=&&="]
        {
            let shown = redact(url);
            assert!(!shown.contains('ö'), "{url} -> {shown}");
        }
        // Arbitrary text built from the characters that matter.
        let alphabet = ['a', ':', '/', '@', '?', '&', '=', '#', '[', ']', 'é', '%'];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5000 {
            let len = rng.usize(0..24);
            let s: String = (0..len).map(|_| alphabet[rng.usize(..alphabet.len())]).collect();
            let _ = redact(&s);
            let _ = redact(&format!("x://{s}"));
        }
    }
}
