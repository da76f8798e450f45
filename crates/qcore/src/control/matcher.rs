//! Node-name patterns of a control request (`pattern` + `matcher`).

use regex::Regex;

/// How a request's `pattern` selects nodes, as kombu's matchers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matcher {
    /// Shell-style pattern (Python's `fnmatch`): `*`, `?`, `[seq]`, `[!seq]`,
    /// matching the whole name.
    Glob,
    /// A regular expression matched at the start of the name (Python's
    /// `re.match`).
    Pcre,
}

impl Matcher {
    /// The matcher named `name` on the wire (`glob`, `pcre`); `None` for
    /// another name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "glob" => Some(Matcher::Glob),
            "pcre" => Some(Matcher::Pcre),
            _ => None,
        }
    }

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Matcher::Glob => "glob",
            Matcher::Pcre => "pcre",
        }
    }

    /// Whether `node` matches `pattern`. An invalid pattern matches nothing.
    pub fn matches(self, pattern: &str, node: &str) -> bool {
        let re = match self {
            Matcher::Glob => format!("^(?s:{})\\z", glob_to_regex(pattern)),
            Matcher::Pcre => format!("^(?:{pattern})"),
        };
        Regex::new(&re).is_ok_and(|re| re.is_match(node))
    }
}

/// Python's `fnmatch.translate`, without the anchors.
fn glob_to_regex(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                while chars.get(i) == Some(&'*') {
                    i += 1;
                }
                out.push_str(".*");
            }
            '?' => out.push('.'),
            '[' => {
                // A set runs to the next `]` (a `]` right after `[` or `[!` is
                // part of it); without one, `[` is a literal.
                let mut j = i;
                if chars.get(j) == Some(&'!') {
                    j += 1;
                }
                if chars.get(j) == Some(&']') {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    out.push_str("\\[");
                    continue;
                }
                let (negate, body) = match chars[i..j].split_first() {
                    Some(('!', rest)) => (true, rest),
                    _ => (false, &chars[i..j]),
                };
                i = j + 1;
                out.push('[');
                if negate {
                    out.push('^');
                }
                for &c in body {
                    // Ranges keep their `-`; everything else is a literal
                    // (the regex crate gives `[`, `&&`, `~~` meanings in a set).
                    if c == '-' {
                        out.push('-');
                    } else {
                        out.push_str(&regex::escape(&c.to_string()));
                    }
                }
                out.push(']');
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Matcher::{Glob, Pcre};

    #[test]
    fn glob_is_fnmatch() {
        assert!(Glob.matches("w1@*", "w1@capture"));
        assert!(Glob.matches("*@capture", "w1@capture"));
        assert!(!Glob.matches("w1@*", "w2@capture"));
        assert!(Glob.matches("w?@capture", "w2@capture"));
        assert!(Glob.matches("w[12]@*", "w2@h"));
        assert!(!Glob.matches("w[!12]@*", "w2@h"));
        assert!(Glob.matches("w[!12]@*", "w3@h"));
        assert!(Glob.matches("a.b", "a.b"));
        assert!(!Glob.matches("a.b", "axb"), "a dot is literal");
        assert!(Glob.matches("w[@h", "w[@h"), "an unclosed set is literal");
        assert!(!Glob.matches("w1", "w1@capture"), "the whole name");
    }

    #[test]
    fn pcre_is_re_match() {
        assert!(Pcre.matches(r"w\d@", "w1@capture"), "anchored at the start only");
        assert!(!Pcre.matches("capture", "w1@capture"));
        assert!(Pcre.matches(".*capture$", "w1@capture"));
        assert!(!Pcre.matches("(", "w1@capture"), "an invalid pattern matches nothing");
    }
}
