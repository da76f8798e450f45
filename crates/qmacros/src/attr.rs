//! Parsing `#[task(...)]` options into typed values.
//!
//! Every value is checked here, at compile time, so the generated
//! `options()` never fails at run time.

use std::collections::HashSet;

use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, LitStr, Path};

/// Every key `#[task]` accepts, for the "unknown option" message.
const KEYS: &[&str] = &[
    "name",
    "max_retries",
    "default_retry_delay",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "autoretry_for",
    "acks_late",
    "time_limit",
    "soft_time_limit",
    "rate_limit",
    "queue",
    "ignore_result",
    "track_started",
    "crate",
];

/// A duration given in seconds (integer or float), split like
/// `Duration::new(secs, nanos)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Secs {
    pub(crate) secs: u64,
    pub(crate) nanos: u32,
}

/// The parsed attribute. `None` means "not given": the field keeps
/// `TaskOptions::default()`'s value.
#[derive(Default)]
pub(crate) struct TaskAttr {
    pub(crate) name: Option<LitStr>,
    pub(crate) krate: Option<Path>,
    /// `Some(None)`: `max_retries = None` (retry forever).
    pub(crate) max_retries: Option<Option<u32>>,
    pub(crate) default_retry_delay: Option<Secs>,
    /// `Some(None)`: `retry_backoff = false` (or 0).
    pub(crate) retry_backoff: Option<Option<Secs>>,
    pub(crate) retry_backoff_max: Option<Secs>,
    pub(crate) retry_jitter: Option<bool>,
    pub(crate) autoretry_for: Option<Vec<String>>,
    pub(crate) acks_late: Option<bool>,
    pub(crate) time_limit: Option<Secs>,
    pub(crate) soft_time_limit: Option<Secs>,
    pub(crate) rate_limit: Option<String>,
    pub(crate) queue: Option<String>,
    pub(crate) ignore_result: Option<bool>,
    pub(crate) track_started: Option<bool>,
    seen: HashSet<String>,
}

impl TaskAttr {
    /// Parse one `key = value` of the attribute (used with `syn::meta::parser`).
    pub(crate) fn parse_one(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = match meta.path.get_ident() {
            Some(ident) => ident.to_string(),
            None => return Err(meta.error(unknown_key_message(&path_text(&meta.path)))),
        };
        if key == "bind" {
            return Err(meta.error(
                "`bind` is not needed: take `ctx: TaskContext` (or `&TaskContext`) as the first parameter \
                 and the task receives its context",
            ));
        }
        if !KEYS.contains(&key.as_str()) {
            return Err(meta.error(unknown_key_message(&key)));
        }
        if !self.seen.insert(key.clone()) {
            return Err(meta.error(format!("`{key}` is given more than once")));
        }
        if meta.input.is_empty() || meta.input.peek(syn::Token![,]) {
            return Err(meta.error(format!("`{key}` needs a value: `{key} = ...`")));
        }
        let expr: Expr = meta.value()?.parse()?;
        let expr = unwrap_groups(expr);
        match key.as_str() {
            "name" => {
                let s = lit_str(&expr, &key)?;
                if s.value().trim().is_empty() {
                    return Err(syn::Error::new(s.span(), "the task name must not be empty"));
                }
                self.name = Some(s);
            }
            "crate" => self.krate = Some(crate_path(&expr)?),
            "max_retries" => {
                self.max_retries = Some(if is_none(&expr) { None } else { Some(lit_u32(&expr, &key)?) });
            }
            "default_retry_delay" => self.default_retry_delay = Some(secs(&expr, &key)?),
            "retry_backoff" => {
                self.retry_backoff = Some(match &expr {
                    Expr::Lit(ExprLit { lit: Lit::Bool(b), .. }) => b.value.then_some(Secs { secs: 1, nanos: 0 }),
                    _ => {
                        let s = secs(&expr, &key).map_err(|_| {
                            syn::Error::new(
                                expr.span(),
                                "`retry_backoff` takes `true`, `false` or a factor in seconds (e.g. `2` or `0.5`)",
                            )
                        })?;
                        // Celery treats a falsy factor (0) as "no backoff".
                        (s != Secs { secs: 0, nanos: 0 }).then_some(s)
                    }
                });
            }
            "retry_backoff_max" => self.retry_backoff_max = Some(secs(&expr, &key)?),
            "retry_jitter" => self.retry_jitter = Some(lit_bool(&expr, &key)?),
            "autoretry_for" => self.autoretry_for = Some(string_list(&expr)?),
            "acks_late" => self.acks_late = Some(lit_bool(&expr, &key)?),
            "time_limit" => self.time_limit = Some(secs(&expr, &key)?),
            "soft_time_limit" => self.soft_time_limit = Some(secs(&expr, &key)?),
            "rate_limit" => {
                let s = lit_str(&expr, &key)?;
                if let Err(e) = check_rate_limit(&s.value()) {
                    return Err(syn::Error::new(s.span(), e));
                }
                self.rate_limit = Some(s.value());
            }
            "queue" => {
                let s = lit_str(&expr, &key)?;
                if s.value().trim().is_empty() {
                    return Err(syn::Error::new(s.span(), "the queue name must not be empty"));
                }
                self.queue = Some(s.value());
            }
            "ignore_result" => self.ignore_result = Some(lit_bool(&expr, &key)?),
            "track_started" => self.track_started = Some(lit_bool(&expr, &key)?),
            _ => return Err(meta.error(unknown_key_message(&key))),
        }
        Ok(())
    }

    /// Whether any `TaskOptions` field was given.
    pub(crate) fn has_options(&self) -> bool {
        self.seen.iter().any(|k| k != "name" && k != "crate")
    }
}

fn unknown_key_message(key: &str) -> String {
    format!("unknown #[task] option `{key}`; expected one of: {}", KEYS.join(", "))
}

fn path_text(path: &Path) -> String {
    path.segments.iter().map(|s| s.ident.to_string()).collect::<Vec<_>>().join("::")
}

/// `(x)` and invisible groups (from `macro_rules!` fragments) around a value.
fn unwrap_groups(expr: Expr) -> Expr {
    match expr {
        Expr::Group(g) => unwrap_groups(*g.expr),
        Expr::Paren(p) => unwrap_groups(*p.expr),
        other => other,
    }
}

fn is_none(expr: &Expr) -> bool {
    matches!(expr, Expr::Path(p) if p.qself.is_none() && p.path.is_ident("None"))
}

fn is_negative(expr: &Expr) -> bool {
    matches!(expr, Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)))
}

fn lit_str(expr: &Expr, key: &str) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s.clone()),
        _ => Err(syn::Error::new(expr.span(), format!("`{key}` takes a string literal, e.g. `{key} = \"...\"`"))),
    }
}

fn lit_bool(expr: &Expr, key: &str) -> syn::Result<bool> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Bool(b), .. }) => Ok(b.value),
        _ => Err(syn::Error::new(expr.span(), format!("`{key}` takes `true` or `false`"))),
    }
}

fn lit_u32(expr: &Expr, key: &str) -> syn::Result<u32> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Int(i), .. }) => {
            i.base10_parse::<u32>().map_err(|_| syn::Error::new(i.span(), format!("`{key}` must fit in a u32")))
        }
        _ if is_negative(expr) => Err(syn::Error::new(expr.span(), format!("`{key}` must not be negative"))),
        _ => Err(syn::Error::new(expr.span(), format!("`{key}` takes a whole number (or `None` to retry forever)"))),
    }
}

/// Seconds as an integer or float literal.
fn secs(expr: &Expr, key: &str) -> syn::Result<Secs> {
    let whole_or_float = || {
        syn::Error::new(expr.span(), format!("`{key}` takes a number of seconds, e.g. `{key} = 30` or `{key} = 2.5`"))
    };
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Int(i), .. }) => {
            let secs = i.base10_parse::<u64>().map_err(|_| syn::Error::new(i.span(), "too many seconds"))?;
            Ok(Secs { secs, nanos: 0 })
        }
        Expr::Lit(ExprLit { lit: Lit::Float(f), .. }) => {
            let v = f.base10_parse::<f64>().map_err(|_| whole_or_float())?;
            float_secs(v).ok_or_else(|| {
                syn::Error::new(f.span(), format!("`{key}` must be a finite, non-negative number of seconds"))
            })
        }
        _ if is_negative(expr) => Err(syn::Error::new(expr.span(), format!("`{key}` must not be negative"))),
        _ => Err(whole_or_float()),
    }
}

fn float_secs(v: f64) -> Option<Secs> {
    // 2^63 s is far beyond any sensible limit and keeps the cast exact enough.
    if !v.is_finite() || !(0.0..9.2e18).contains(&v) {
        return None;
    }
    let secs = v.trunc();
    let nanos = ((v - secs) * 1e9).round();
    // Rounding may carry into a whole second.
    if nanos >= 1e9 {
        Some(Secs { secs: secs as u64 + 1, nanos: 0 })
    } else {
        Some(Secs { secs: secs as u64, nanos: nanos as u32 })
    }
}

fn string_list(expr: &Expr) -> syn::Result<Vec<String>> {
    let one = |e: &Expr| -> syn::Result<String> {
        match e {
            Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) if !s.value().trim().is_empty() => Ok(s.value()),
            Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => {
                Err(syn::Error::new(s.span(), "an error type name must not be empty"))
            }
            _ => Err(syn::Error::new(
                e.span(),
                "`autoretry_for` takes error type names as strings, e.g. `autoretry_for = [\"IoError\", \"ValueError\"]`",
            )),
        }
    };
    match expr {
        Expr::Array(a) => a.elems.iter().map(one).collect(),
        Expr::Lit(_) => Ok(vec![one(expr)?]),
        _ => Err(syn::Error::new(
            expr.span(),
            "`autoretry_for` takes a list of error type names, e.g. `autoretry_for = [\"IoError\", \"ValueError\"]`",
        )),
    }
}

/// `crate = "path"` (or an unquoted path).
fn crate_path(expr: &Expr) -> syn::Result<Path> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => {
            let mut path: Path = s
                .parse()
                .map_err(|e| syn::Error::new(s.span(), format!("`crate` must be a path like \"::qtask\": {e}")))?;
            // Give the path the string's span so errors point at it.
            for seg in &mut path.segments {
                seg.ident.set_span(s.span());
            }
            Ok(path)
        }
        Expr::Path(p) if p.qself.is_none() => Ok(p.path.clone()),
        _ => Err(syn::Error::new(expr.span(), "`crate` takes a path as a string, e.g. `crate = \"::qtask\"`")),
    }
}

/// The same checks as `qcore::RateLimit::parse`, so that a literal the
/// macro accepts always parses at run time.
pub(crate) fn check_rate_limit(s: &str) -> Result<(), String> {
    let s = s.trim();
    let (n, unit) = s.split_once('/').unwrap_or((s, "s"));
    let count: f64 = n.trim().parse().map_err(|_| format!("invalid rate limit {s:?}: expected like \"10/s\""))?;
    match unit.trim() {
        "s" | "m" | "h" => {}
        other => return Err(format!("invalid rate limit unit {other:?} in {s:?}: use s, m or h")),
    }
    if count < 0.0 || !count.is_finite() {
        return Err(format!("invalid rate limit {s:?}"));
    }
    Ok(())
}

/// Parse the whole attribute argument list.
pub(crate) fn parse(args: proc_macro2::TokenStream) -> syn::Result<TaskAttr> {
    use syn::parse::Parser;
    let mut attr = TaskAttr::default();
    let parser = syn::meta::parser(|meta| attr.parse_one(meta));
    parser.parse2(args)?;
    Ok(attr)
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn err(ts: proc_macro2::TokenStream) -> String {
        match parse(ts) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_every_option() {
        let a = parse(quote!(
            name = "tasks.progress",
            max_retries = 5,
            default_retry_delay = 2,
            retry_backoff = true,
            retry_backoff_max = 60,
            retry_jitter = false,
            autoretry_for = ["IoError", "ValueError"],
            acks_late = true,
            time_limit = 30,
            soft_time_limit = 2.5,
            rate_limit = "10/s",
            queue = "slow",
            ignore_result = false,
            track_started = true,
            crate = "::qtask"
        ))
        .unwrap();
        assert_eq!(a.name.unwrap().value(), "tasks.progress");
        assert_eq!(a.max_retries, Some(Some(5)));
        assert_eq!(a.default_retry_delay, Some(Secs { secs: 2, nanos: 0 }));
        assert_eq!(a.retry_backoff, Some(Some(Secs { secs: 1, nanos: 0 })));
        assert_eq!(a.retry_backoff_max, Some(Secs { secs: 60, nanos: 0 }));
        assert_eq!(a.retry_jitter, Some(false));
        assert_eq!(a.autoretry_for, Some(vec!["IoError".to_string(), "ValueError".to_string()]));
        assert_eq!(a.acks_late, Some(true));
        assert_eq!(a.time_limit, Some(Secs { secs: 30, nanos: 0 }));
        assert_eq!(a.soft_time_limit, Some(Secs { secs: 2, nanos: 500_000_000 }));
        assert_eq!(a.rate_limit.as_deref(), Some("10/s"));
        assert_eq!(a.queue.as_deref(), Some("slow"));
        assert_eq!(a.ignore_result, Some(false));
        assert_eq!(a.track_started, Some(true));
        let krate = a.krate.unwrap();
        assert_eq!(quote!(#krate).to_string(), quote!(::qtask).to_string());
    }

    #[test]
    fn retry_backoff_forms() {
        assert_eq!(parse(quote!(retry_backoff = false)).unwrap().retry_backoff, Some(None));
        assert_eq!(parse(quote!(retry_backoff = 0)).unwrap().retry_backoff, Some(None));
        assert_eq!(parse(quote!(retry_backoff = 3)).unwrap().retry_backoff, Some(Some(Secs { secs: 3, nanos: 0 })));
        assert_eq!(
            parse(quote!(retry_backoff = 0.25)).unwrap().retry_backoff,
            Some(Some(Secs { secs: 0, nanos: 250_000_000 }))
        );
        assert_eq!(parse(quote!(max_retries = None)).unwrap().max_retries, Some(None));
        assert!(!parse(quote!(name = "x")).unwrap().has_options());
        assert!(parse(quote!(queue = "q")).unwrap().has_options());
    }

    #[test]
    fn float_seconds_round_and_carry() {
        assert_eq!(float_secs(0.000_000_000_4), Some(Secs { secs: 0, nanos: 0 }));
        assert_eq!(float_secs(1.999_999_999_9), Some(Secs { secs: 2, nanos: 0 }));
        assert_eq!(float_secs(-1.0), None);
        assert_eq!(float_secs(f64::INFINITY), None);
        assert_eq!(float_secs(f64::NAN), None);
    }

    #[test]
    fn clear_errors() {
        assert!(err(quote!(nme = "x")).starts_with("unknown #[task] option `nme`; expected one of: name,"));
        assert!(err(quote!(bind = true)).contains("take `ctx: TaskContext`"));
        assert_eq!(err(quote!(name = "a", name = "b")), "`name` is given more than once");
        assert_eq!(err(quote!(name = 1)), "`name` takes a string literal, e.g. `name = \"...\"`");
        assert_eq!(err(quote!(name = "")), "the task name must not be empty");
        assert_eq!(err(quote!(acks_late = "yes")), "`acks_late` takes `true` or `false`");
        assert_eq!(err(quote!(max_retries = -1)), "`max_retries` must not be negative");
        assert_eq!(err(quote!(max_retries = 1.5)), "`max_retries` takes a whole number (or `None` to retry forever)");
        assert_eq!(err(quote!(max_retries = 5000000000)), "`max_retries` must fit in a u32");
        assert_eq!(err(quote!(time_limit = -3)), "`time_limit` must not be negative");
        assert_eq!(
            err(quote!(time_limit = "30")),
            "`time_limit` takes a number of seconds, e.g. `time_limit = 30` or `time_limit = 2.5`"
        );
        assert!(err(quote!(retry_backoff = "yes")).starts_with("`retry_backoff` takes `true`, `false` or a factor"));
        assert!(err(quote!(autoretry_for = [IoError])).starts_with("`autoretry_for` takes error type names"));
        assert_eq!(err(quote!(autoretry_for = [""])), "an error type name must not be empty");
        assert_eq!(err(quote!(rate_limit = "10/d")), "invalid rate limit unit \"d\" in \"10/d\": use s, m or h");
        assert_eq!(err(quote!(rate_limit = "ten/s")), "invalid rate limit \"ten/s\": expected like \"10/s\"");
        assert_eq!(err(quote!(rate_limit = "-1/s")), "invalid rate limit \"-1/s\"");
        assert_eq!(err(quote!(queue)), "`queue` needs a value: `queue = ...`");
        assert!(err(quote!(crate = "not a path")).starts_with("`crate` must be a path like \"::qtask\""));
        assert!(err(quote!(a::b = 1)).starts_with("unknown #[task] option `a::b`"));
    }

    /// The macro's check and qcore's parser agree, so an accepted literal
    /// never silently becomes "no limit" at run time.
    #[test]
    fn rate_limit_check_matches_qcore() {
        for s in [
            "10/s", "100/m", "5/h", "7", "0", " 3 / m ", "1.5/s", "inf/s", "NaN", "-1/s", "ten/s", "10/d", "", "/s",
            "1e3/h", "10/",
        ] {
            assert_eq!(check_rate_limit(s).is_ok(), qcore::RateLimit::parse(s).is_ok(), "disagree on {s:?}");
            if let Err(e) = check_rate_limit(s) {
                assert_eq!(Err(e), qcore::RateLimit::parse(s), "message differs for {s:?}");
            }
        }
    }
}
