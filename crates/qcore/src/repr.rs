//! Python `repr()` of JSON values, for the `argsrepr`/`kwargsrepr` headers and
//! the string fields of events (`args`, `kwargs`, `result`).

use std::fmt::Write;

use serde_json::{Map, Value};

/// `repr(value)` as Python prints the equivalent object.
pub fn repr(v: &Value) -> String {
    let mut s = String::new();
    write_repr(&mut s, v);
    s
}

/// `repr(tuple(args))`: `(2, 3)`, `(1,)`, `()`.
pub fn args_repr(args: &[Value]) -> String {
    let mut s = String::from("(");
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        write_repr(&mut s, a);
    }
    if args.len() == 1 {
        s.push(',');
    }
    s.push(')');
    s
}

/// `repr(list(args))`: `[2, 3]` (how beat and `send_task` spell `argsrepr`).
pub fn list_repr(args: &[Value]) -> String {
    let mut s = String::new();
    write_list(&mut s, args);
    s
}

/// `repr(kwargs)`: `{'a': 1}`.
pub fn kwargs_repr(kwargs: &Map<String, Value>) -> String {
    let mut s = String::new();
    write_map(&mut s, kwargs);
    s
}

fn write_map(s: &mut String, m: &Map<String, Value>) {
    s.push('{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        write_str(s, k);
        s.push_str(": ");
        write_repr(s, v);
    }
    s.push('}');
}

fn write_str(s: &mut String, text: &str) {
    // Python picks single quotes unless the text has a single quote and no double quote.
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    s.push(quote);
    for c in text.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if c == quote => {
                s.push('\\');
                s.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(s, "\\x{:02x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push(quote);
}

fn write_repr(s: &mut String, v: &Value) {
    match v {
        Value::Null => s.push_str("None"),
        Value::Bool(true) => s.push_str("True"),
        Value::Bool(false) => s.push_str("False"),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                // Same digits as Python's float repr.
                let bytes = crate::json::to_vec(&f).unwrap_or_default();
                s.push_str(std::str::from_utf8(&bytes).unwrap_or("nan"));
            } else {
                let _ = write!(s, "{n}");
            }
        }
        Value::String(t) => write_str(s, t),
        Value::Array(a) => write_list(s, a),
        Value::Object(m) => write_map(s, m),
    }
}

fn write_list(s: &mut String, a: &[Value]) {
    s.push('[');
    for (i, x) in a.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        write_repr(s, x);
    }
    s.push(']');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn matches_python_repr() {
        assert_eq!(args_repr(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(args_repr(&[json!([2, 3, 4])]), "([2, 3, 4],)");
        assert_eq!(args_repr(&[json!(1), json!("two"), json!(3.5)]), "(1, 'two', 3.5)");
        let kw = json!({"flag": true, "nothing": null, "items": [1, 2], "nested": {"a": "b"}});
        assert_eq!(
            kwargs_repr(kw.as_object().unwrap()),
            "{'flag': True, 'nothing': None, 'items': [1, 2], 'nested': {'a': 'b'}}"
        );
        assert_eq!(repr(&json!("it's")), "\"it's\"");
    }
}
